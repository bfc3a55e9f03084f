"""Errors raised by caffe_torch. Each names the file, the line and/or the layer it concerns."""


class CaffeError(Exception):
    """Base class of every error caffe_torch raises on bad input."""


class PrototxtError(CaffeError):
    """A net or solver prototxt that does not parse or does not make sense (names file and line)."""


class LayerError(CaffeError):
    """A layer whose parameters or bottoms are invalid (names the layer and its type)."""

    def __init__(self, layer_name: str, layer_type: str, message: str, where: str = ""):
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}layer '{layer_name}' (type {layer_type}): {message}")
        self.layer_name = layer_name
        self.layer_type = layer_type


class WeightsError(CaffeError):
    """A .caffemodel/.solverstate that is missing, corrupt, or does not fit the net."""
