"""Export rules: the element-wise layers (ReLU, PReLU, Sigmoid, TanH, AbsVal, BNLL, Clip, ELU, Exp, Log, Power,
Threshold, Swish). Constants are the ones caffe_torch's forward computes from the fields (Exp's base^shift,
Log's 1 / ln(base), ...)."""

import torch

from .registry import LayerExport, TorchForward, onnx_rule, torch_rule


def _unary(op_type: str, doc: str, **attrs_of):
    def rule(e: LayerExport) -> list[str]:
        return [e.op(op_type, [e.x[0]], e.tops[0], **{k: f(e.layer) for k, f in attrs_of.items()})]

    rule.__doc__ = doc
    return rule


onnx_rule("Sigmoid")(_unary("Sigmoid", "Sigmoid."))
onnx_rule("TanH")(_unary("Tanh", "Tanh."))
onnx_rule("AbsVal")(_unary("Abs", "Abs."))
onnx_rule("BNLL")(_unary("Softplus", "Softplus: log(1 + exp(x))."))
onnx_rule("ELU")(_unary("Elu", "Elu with Caffe's alpha.", alpha=lambda layer: layer.alpha))


@onnx_rule("ReLU")
def relu(e: LayerExport) -> list[str]:
    """Relu, or LeakyRelu with negative_slope."""
    if e.layer.negative_slope == 0:
        return [e.op("Relu", [e.x[0]], e.tops[0])]
    return [e.op("LeakyRelu", [e.x[0]], e.tops[0], alpha=e.layer.negative_slope)]


@onnx_rule("PReLU")
def prelu(e: LayerExport) -> list[str]:
    """PRelu with the slope per channel (axis 1) or one shared slope (channel_shared)."""
    slope = e.blob(0).reshape(-1)
    nd = len(e.in_shapes[0])
    if not e.layer.channel_shared:
        slope = slope.reshape((-1,) + (1,) * (nd - 2))
    return [e.op("PRelu", [e.x[0], e.const(slope, "slope")], e.tops[0])]


@onnx_rule("Clip")
def clip(e: LayerExport) -> list[str]:
    """Clip to [min, max]."""
    return [e.op("Clip", [e.x[0], e.const(e.layer.min, "min"), e.const(e.layer.max, "max")], e.tops[0])]


def _scaled(e: LayerExport, x: str, factor: float, what: str, out: str | None = None) -> str:
    if factor == 1:
        return x if out is None else e.op("Identity", [x], out)
    return e.op("Mul", [x, e.const(factor, what)], out)


@onnx_rule("Exp")
def exp(e: LayerExport) -> list[str]:
    """base^(shift + scale x) = base^shift * exp(ln(base) scale x)."""
    y = e.op("Exp", [_scaled(e, e.x[0], e.layer.inner_scale, "inner_scale")],
             e.tops[0] if e.layer.outer_scale == 1 else None)
    return [_scaled(e, y, e.layer.outer_scale, "outer_scale", e.tops[0]) if e.layer.outer_scale != 1 else y]


@onnx_rule("Log")
def log(e: LayerExport) -> list[str]:
    """log(shift + scale x) / ln(base)."""
    layer = e.layer
    x = _scaled(e, e.x[0], layer.scale, "scale")
    if layer.shift != 0:
        x = e.op("Add", [x, e.const(layer.shift, "shift")])
    y = e.op("Log", [x], e.tops[0] if layer.base_scale == 1 else None)
    return [y if layer.base_scale == 1 else _scaled(e, y, layer.base_scale, "base_scale", e.tops[0])]


@onnx_rule("Power")
def power(e: LayerExport) -> list[str]:
    """(shift + scale x)^power; a constant when power * scale is 0 (as Caffe)."""
    layer = e.layer
    if layer.power * layer.scale == 0:
        value = 1.0 if layer.power == 0 else layer.shift ** layer.power
        zeros = e.op("Mul", [e.x[0], e.const(0.0, "zero")])
        return [e.op("Add", [zeros, e.const(value, "value")], e.tops[0])]
    x = _scaled(e, e.x[0], layer.scale, "scale")
    if layer.shift != 0:
        x = e.op("Add", [x, e.const(layer.shift, "shift")], e.tops[0] if layer.power == 1 else None)
    if layer.power == 1:
        return [x if layer.shift != 0 else e.op("Identity", [x], e.tops[0])]
    return [e.op("Pow", [x, e.const(layer.power, "power")], e.tops[0])]


@torch_rule("Power")
def power_torch(e: LayerExport) -> TorchForward:
    """The forward of caffe_torch's Power without its custom backward (an autograd Function: not traceable)."""
    layer = e.layer

    def forward(m, x):
        if layer.power * layer.scale == 0:
            return torch.full_like(x, 1.0 if layer.power == 0 else layer.shift ** layer.power)
        base = x * layer.scale if layer.scale != 1 else x
        if layer.shift != 0:
            base = base + layer.shift
        return torch.pow(base, layer.power) if layer.power != 1 else base

    return TorchForward(forward)


@onnx_rule("Threshold")
def threshold(e: LayerExport) -> list[str]:
    """1 where x > threshold, else 0."""
    above = e.op("Greater", [e.x[0], e.const(e.layer.threshold, "threshold")])
    return [e.op("Cast", [above], e.tops[0], to=1)]


@onnx_rule("Swish")
def swish(e: LayerExport) -> list[str]:
    """x sigmoid(beta x)."""
    s = e.op("Sigmoid", [_scaled(e, e.x[0], e.layer.beta, "beta")])
    return [e.op("Mul", [e.x[0], s], e.tops[0])]
