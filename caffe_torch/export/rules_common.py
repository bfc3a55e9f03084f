"""Export rules: InnerProduct, Eltwise, Scale, Bias, BatchNorm, Dropout, Split, Silence, Flatten, Reshape,
Concat, Slice, Softmax."""

import torch

from ..layers.margin import normalize_rows_
from ..proto import caffe_pb2
from .registry import LayerExport, TorchForward, onnx_rule, torch_rule

_Elt = caffe_pb2.EltwiseParameter


def inner_product_weight(layer) -> torch.Tensor:
    """InnerProduct's weight as its next forward uses it: with the fork's `normalize: true` each of the
    num_output runs of the blob rescaled by 1 / sqrt(||w||^2 + 1e-6) (caffe_torch's own function, on a copy)."""
    w = layer.blobs[0].detach().clone()
    if layer.normalize:
        normalize_rows_(w, 1e-6, rows=layer.num_output)
    return w


def _dense(e: LayerExport, x: str, weight, bias, axis: int, out: str) -> str:
    """y = flatten(x from axis) W^T + b, W (num_output, K) float32; the top keeps x's axes before `axis`."""
    w = e.const(weight, "weight")
    b = [e.const(bias, "bias")] if bias is not None else []
    if axis == 1:
        flat = e.op("Flatten", [x], axis=1) if len(e.in_shapes[0]) != 2 else x
        return e.op("Gemm", [flat, w, *b], out, transB=1)
    flat = e.g.reshape(x, [0] * axis + [-1], e.n("flatten"))     # (lead..., K); 0 keeps a lead axis
    y = e.op("MatMul", [flat, e.const(weight.T, "weight_t")])
    return e.op("Add", [y, b[0]], out) if b else e.op("Identity", [y], out)


@onnx_rule("InnerProduct")
def inner_product(e: LayerExport) -> list[str]:
    """Gemm (MatMul for axis > 1); the fork's `normalize: true` weights normalised as its forward does."""
    layer = e.layer
    w = inner_product_weight(layer).numpy()
    if layer.transpose:
        w = w.reshape(-1, layer.num_output).T         # the blob is K x N
    bias = e.blob(1) if layer.bias_term else None
    if layer.axis == 0:
        flat = e.g.reshape(e.x[0], [1, -1], e.n("flatten"))
        y = _dense(e, flat, w, bias, 1, e.g.fresh(e.n("gemm")))
        return [e.reshape(y)]
    return [_dense(e, e.x[0], w, bias, layer.axis, e.tops[0])]


@torch_rule("InnerProduct")
def inner_product_torch(e: LayerExport) -> TorchForward:
    layer = e.layer
    target = e.static_target()

    def forward(m, x):
        flat = x.flatten(layer.axis) if layer.axis > 0 else x.reshape(1, -1)
        y = flat @ m.weight if layer.transpose else flat @ m.weight.t()
        if layer.bias_term:
            y = y + m.bias
        return y.reshape(target) if layer.axis == 0 else y

    bias = {"bias": layer.blobs[1].detach().clone()} if layer.bias_term else {}
    return TorchForward(forward, weight=inner_product_weight(layer), **bias)


@onnx_rule("Eltwise")
def eltwise(e: LayerExport) -> list[str]:
    """SUM (with coefficients), PROD, MAX; a bottom of another shape (as many values) reshaped to bottom 0's."""
    layer = e.layer
    xs = [x if i == 0 or e.in_shapes[i] == e.in_shapes[0] else
          e.g.reshape(x, e.static_target(), e.n(f"bottom{i}")) for i, x in enumerate(e.x)]
    if layer.op == _Elt.SUM:
        coeff = layer.coeff or [1.0] * len(xs)
        terms = [x if c == 1 else e.op("Mul", [x, e.const(c, f"coeff{i}")]) for i, (x, c) in
                 enumerate(zip(xs, coeff))]
        op = "Sum"
    else:
        terms, op = xs, "Mul" if layer.op == _Elt.PROD else "Max"
    if op == "Mul":
        y = terms[0]
        for i, t in enumerate(terms[1:], start=1):
            y = e.op("Mul", [y, t], e.tops[0] if i == len(terms) - 1 else None)
        return [y]
    return [e.op(op, terms, e.tops[0])]


def _broadcast(e: LayerExport, value_shape, axis: int) -> tuple[int, ...]:
    """The shape that lines a blob covering axes [axis, axis + len) of bottom 0 up for ONNX broadcasting."""
    return tuple(value_shape) + (1,) * (len(e.in_shapes[0]) - axis - len(value_shape))


def _axis_operand(e: LayerExport, blob: int | None, what: str) -> str:
    """Scale's / Bias's operand: a learned blob (a constant) or bottom 1 (reshaped to broadcast)."""
    axis = e.layer.axis
    if blob is not None:
        value = e.blob(blob)
        e.require_static(0, range(axis, axis + value.ndim), f"a learned {what} blob")
        if e.type == "Scale" and blob == 0 and (e.layer.min_value is not None or e.layer.max_value is not None):
            value = value.clip(e.layer.min_value, e.layer.max_value)    # the fork clamps before use
        return e.const(value.reshape(_broadcast(e, value.shape, axis)), what)
    other = e.in_shapes[1]
    trailing = len(e.in_shapes[0]) - axis - len(other)
    if trailing == 0:
        return e.x[1]
    return e.g.reshape(e.x[1], [0] * len(other) + [1] * trailing, e.n(f"{what}_broadcast"))


@onnx_rule("Scale")
def scale(e: LayerExport) -> list[str]:
    """x * scale (+ bias), the scale learned (clamped by the fork's min/max) or bottom 1, over Caffe's axes."""
    layer = e.layer
    s = _axis_operand(e, 0 if layer.learned else None, "scale")
    if not layer.bias_term:
        return [e.op("Mul", [e.x[0], s], e.tops[0])]
    return [e.op("Add", [e.op("Mul", [e.x[0], s]), _axis_operand(e, len(layer.blobs) - 1, "bias")], e.tops[0])]


@onnx_rule("Bias")
def bias(e: LayerExport) -> list[str]:
    """x + bias, learned or bottom 1, over Caffe's axes."""
    return [e.op("Add", [e.x[0], _axis_operand(e, 0 if e.layer.learned else None, "bias")], e.tops[0])]


@onnx_rule("BatchNorm")
def batch_norm(e: LayerExport) -> list[str]:
    """(x - mean) / sqrt(var + eps): the stored statistics over the moving-average factor (blob 2; 0 gives 0)
    with use_global_stats (TEST's default), else the batch's own (nothing is updated)."""
    layer = e.layer
    nd = len(e.in_shapes[0])
    view = (-1,) + (1,) * (nd - 2) if nd >= 2 else (-1,)
    x = e.x[0]
    if layer.use_global_stats:
        # the same float32 arithmetic as caffe_torch's forward
        sf = layer.blobs[2].detach()[0]
        factor = torch.where(sf == 0, torch.zeros_like(sf), 1.0 / sf)
        mean = (layer.blobs[0].detach() * factor).float().numpy().reshape(view)
        std = torch.sqrt(layer.blobs[1].detach() * factor + layer.eps).float().numpy().reshape(view)
        centred = e.op("Sub", [x, e.const(mean, "mean")])
        return [e.op("Div", [centred, e.const(std, "std")], e.tops[0])]
    axes = [0] + list(range(2, nd))
    centred = e.op("Sub", [x, e.g.reduce("ReduceMean", x, axes, e.n("mean"))])
    var = e.g.reduce("ReduceMean", e.op("Mul", [centred, centred]), axes, e.n("var"))
    std = e.op("Sqrt", [e.op("Add", [var, e.const(layer.eps, "eps")])])
    return [e.op("Div", [centred, std], e.tops[0])]


@onnx_rule("Dropout")
def dropout(e: LayerExport) -> list[str]:
    """Identity at TEST (Caffe scales at TRAIN time)."""
    if e.layer.phase != caffe_pb2.TEST and e.layer.ratio > 0:
        raise e.refuse("Dropout in TRAIN draws random masks; export the TEST phase")
    return [e.x[0]]


@onnx_rule("Split")
def split(e: LayerExport) -> list[str]:
    """Identity fan-out: every top is the bottom (Caffe inserts these itself)."""
    return [e.x[0]] * len(e.tops)


@onnx_rule("Silence")
def silence(e: LayerExport) -> list[str]:
    """Nothing (it only consumes blobs)."""
    return []


@onnx_rule("Flatten", "Reshape")
def reshape(e: LayerExport) -> list[str]:
    """Reshape to Caffe's top shape (axis / end_axis; 0 = copy and -1 = infer resolved by caffe_torch), the
    dynamic batch axis left to ONNX (-1)."""
    return [e.reshape(e.x[0])]


@torch_rule("Flatten", "Reshape")
def reshape_torch(e: LayerExport) -> TorchForward:
    target = e.static_target()
    return TorchForward(lambda m, x: x.reshape(target))


@onnx_rule("Concat")
def concat(e: LayerExport) -> list[str]:
    """Concat along Caffe's axis (concat_dim too)."""
    if len(e.x) == 1:
        return [e.x[0]]
    return [e.op("Concat", e.x, e.tops[0], axis=e.layer.axis)]


@onnx_rule("Slice")
def slice_(e: LayerExport) -> list[str]:
    """Split along Caffe's axis (slice_dim too) at the slice points, or evenly."""
    axis = e.layer.axis
    if len(e.tops) == 1:
        return [e.x[0]]
    e.require_static(0, (axis,), "slicing")
    sizes = e.layer._sizes(e.in_shapes[0][axis])
    return e.g.op("Split", [e.x[0], e.g.ints(sizes, e.n("sizes"))], e.name, list(e.tops), axis=axis)


@onnx_rule("Softmax")
def softmax(e: LayerExport) -> list[str]:
    """Softmax over Caffe's one axis (opset 13's Softmax)."""
    return [e.op("Softmax", [e.x[0]], e.tops[0], axis=e.layer.axis)]
