"""Layer implementations, one class per prototxt type. Importing this package registers all of them."""

from . import (  # noqa: F401  (imported for their @register side effect)
    activation,
    common,
    data,
    loss,
    losses_bvlc,
    lrn,
    margin,
    neuron,
    python,
    recurrent,
    shape,
    utility,
    vision,
)
from .base import BuildContext, Layer, known_types, layer_class, register

__all__ = ["BuildContext", "Layer", "known_types", "layer_class", "register"]


def __getattr__(name: str):
    """pycaffe's `caffe.layers` is NetSpec's layer maker (`L.Convolution(bottom, ...)`); this package is also
    `caffe_torch.layers`, so a CamelCase name that is not one of its own attributes makes a NetSpec layer."""
    if name[:1].isupper():
        from ..net_spec import layers as _netspec_layers

        return getattr(_netspec_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
