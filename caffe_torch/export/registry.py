"""Export rules, one per Caffe layer type, registered by type string (as caffe_torch's layer registry):

    @onnx_rule("ReLU")
    def relu(e: LayerExport) -> list[str]:          # ONNX tensor names of the layer's tops
        return [e.op("Relu", [e.x[0]], e.tops[0])]

A rule reads the layer as caffe_torch built it in the exported phase (`e.layer`: its parsed fields, its blobs
with the .caffemodel's weights) and the blob shapes, and writes ONNX nodes. It may return a bottom's name for a
top it leaves unchanged (Dropout at TEST, Split): the converter then aliases the blob. The TorchScript module
runs the caffe_torch layer's own forward, unless a `@torch_rule` gives the TEST-time forward in a form that
traces without fixing the batch size (or without the fork layers' in-place weight updates).

`refuse(type, reason)` records a type that is not exported and why; a type that has neither a rule nor a
refusal is refused as unknown. `export_table()` lists all of them (docs and tests).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .graph import Graph


class ExportError(Exception):
    """A net that cannot be exported as asked; the message is one line naming the layer, type and file:line."""


@dataclass
class LayerExport:
    """What a rule sees of one layer: the graph, the caffe_torch layer, its bottoms' ONNX names and the shapes.

    Shapes are those at the export's input shapes; `in_dynamic` / `out_dynamic` give, per bottom / top, the axes
    whose size follows a dynamic input dimension (the batch with --dynamic-batch, the embedder's time axis)."""

    g: Graph
    layer: object
    where: str
    x: list[str]
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]
    in_dynamic: list[frozenset[int]]
    out_dynamic: list[frozenset[int]]
    tops: list[str]
    param: object = field(init=False)

    def __post_init__(self):
        self.param = self.layer.param

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    def refuse(self, reason: str) -> ExportError:
        return refusal_error(self.name, self.type, self.where, reason)

    def n(self, what: str) -> str:
        """A name for a helper tensor or node of this layer."""
        return f"{self.name}/{what}"

    def blob(self, i: int) -> np.ndarray:
        return self.layer.blobs[i].detach().to("cpu").float().numpy().copy()

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs) -> str:
        """One node with one output, named `out` (claimed) or a fresh helper name."""
        if out is None:
            return self.g.op(op_type, inputs, self.n(op_type.lower()), 1, **attrs)
        return self.g.op(op_type, inputs, out, [out], **attrs)

    def const(self, value, what: str, dtype=np.float32) -> str:
        return self.g.const(value, self.n(what), dtype)

    def static_target(self, top: int = 0) -> list[int]:
        """Top `top`'s shape as an ONNX Reshape target: the fixed sizes, -1 for the one dynamic axis (more than
        one dynamic axis cannot be written as a Reshape target)."""
        shape, dyn = list(self.out_shapes[top]), self.out_dynamic[top]
        if len(dyn) > 1:
            raise self.refuse(f"top '{self.param.top[top]}' would have {len(dyn)} axes of dynamic size "
                              f"{sorted(dyn)}; export with a fixed batch (no --dynamic-batch)")
        for d in dyn:
            shape[d] = -1
        return shape

    def reshape(self, x: str, top: int = 0) -> str:
        return self.g.reshape(x, self.static_target(top), self.tops[top], outputs=[self.tops[top]])

    def require_static(self, bottom: int, axes: Sequence[int], what: str) -> None:
        dyn = sorted(set(axes) & self.in_dynamic[bottom])
        if dyn:
            raise self.refuse(f"{what} over axis {dyn[0]}, whose size is dynamic here; export with fixed input "
                              "shapes (no --dynamic-batch)")


def refusal_error(name: str, type_name: str, where: str, reason: str) -> ExportError:
    prefix = f"{where}: " if where else ""
    return ExportError(f"{prefix}layer '{name}' (type {type_name}) is not exported: {reason}")


class TorchForward(nn.Module):
    """A layer's TEST-time forward for TorchScript: `fn(self, *bottoms)`, the tensors it needs as buffers."""

    def __init__(self, fn: Callable, **tensors: torch.Tensor):
        super().__init__()
        self.fn = fn
        for name, t in tensors.items():
            self.register_buffer(name, t.detach().clone())

    def forward(self, *bottoms):
        return self.fn(self, *bottoms)


OnnxRule = Callable[[LayerExport], list[str]]
TorchRule = Callable[[LayerExport], nn.Module]

# data layers: their tops become the graph's inputs (the shapes from --input or from the layer's fields)
DATA_LAYERS = ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData")

_ONNX: dict[str, OnnxRule] = {}
_TORCH: dict[str, TorchRule] = {}
_REFUSED: dict[str, str] = {}


def onnx_rule(*type_names: str) -> Callable[[OnnxRule], OnnxRule]:
    def deco(fn: OnnxRule) -> OnnxRule:
        for t in type_names:
            if t in _ONNX or t in _REFUSED:
                raise ValueError(f"export rule for layer type {t!r} registered twice")
            _ONNX[t] = fn
        return fn

    return deco


def torch_rule(*type_names: str) -> Callable[[TorchRule], TorchRule]:
    """fn(e: LayerExport) -> a module whose forward(*bottoms) is the TEST-time forward TorchScript traces."""

    def deco(fn: TorchRule) -> TorchRule:
        for t in type_names:
            if t in _TORCH:
                raise ValueError(f"TorchScript rule for layer type {t!r} registered twice")
            _TORCH[t] = fn
        return fn

    return deco


def refuse(type_name: str, reason: str) -> None:
    if type_name in _ONNX or type_name in _REFUSED:
        raise ValueError(f"export rule for layer type {type_name!r} registered twice")
    _REFUSED[type_name] = reason


def onnx_rule_for(type_name: str, name: str, where: str) -> OnnxRule:
    if type_name in _ONNX:
        return _ONNX[type_name]
    reason = _REFUSED.get(type_name)
    if reason is None:
        reason = (f"no export rule for this type (rules exist for {', '.join(sorted(_ONNX))})")
    raise refusal_error(name, type_name, where, reason)


def torch_rule_for(type_name: str) -> TorchRule | None:
    return _TORCH.get(type_name)


def export_table() -> list[tuple[str, str, str]]:
    """(type, 'exported' | 'refused', note) for every type with a rule or a refusal, sorted by type."""
    rows = [(t, "exported", " ".join((fn.__doc__ or "").split("\n\n")[0].split())) for t, fn in _ONNX.items()]
    rows += [(t, "refused", why) for t, why in _REFUSED.items()]
    rows += [(t, "graph input", "its tops become inputs of the graph") for t in DATA_LAYERS]
    return sorted(rows)
