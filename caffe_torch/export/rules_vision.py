"""Export rules: Convolution, Deconvolution, Im2col, Pooling, SPP, LRN.

Pooling keeps Caffe's geometry by writing it out: the input is padded explicitly (the pad on the left/top, on
the right/bottom as far as the last window reaches, Caffe's ceil rule with its clipping correction, as
caffe_torch's Pooling computes them), then pooled without padding and cut to Caffe's output size. MAX pads
with -FLT_MAX (the padding never wins); AVE pads with zeros and rescales each window by kernel area / Caffe's
divisor (the window clipped to the padded extent).
"""

import numpy as np

from ..layers.vision import _ave_divisor
from ..proto import caffe_pb2
from .registry import LayerExport, onnx_rule

_Pool = caffe_pb2.PoolingParameter
_FLT_MAX = 3.4028234663852886e38
_FLT_MIN = 1.1754943508222875e-38


def _conv_attrs(e: LayerExport) -> dict:
    g = e.layer.geometry
    return {"kernel_shape": list(g.kernel), "strides": list(g.stride), "pads": list(g.pad) * 2,
            "dilations": list(g.dilation)}


@onnx_rule("Convolution", "Deconvolution")
def convolution(e: LayerExport) -> list[str]:
    """Conv / ConvTranspose (groups, dilation, N-D), one node per bottom sharing the weights."""
    attrs = _conv_attrs(e)
    layer = e.layer
    inputs = [e.const(e.blob(0), "weight")]
    if layer.bias_term:
        inputs.append(e.const(e.blob(1), "bias"))
    op = "ConvTranspose" if layer.reverse else "Conv"
    if layer.axis == 1:
        return [e.op(op, [x, *inputs], top, group=layer.group, **attrs) for x, top in zip(e.x, e.tops)]
    # channels at a later axis: the axes before it are all batch; fold them into one, convolve, unfold
    folded = [-1] + list(e.in_shapes[0][layer.axis:])
    tops = []
    for i, (x, top) in enumerate(zip(e.x, e.tops)):
        y = e.op(op, [e.g.reshape(x, folded, e.n(f"fold{i}")), *inputs], group=layer.group, **attrs)
        tops.append(e.g.reshape(y, e.static_target(i), top, outputs=[top]))
    return tops


@onnx_rule("Im2col")
def im2col(e: LayerExport) -> list[str]:
    """A grouped Conv with one-hot kernels: output channel c * prod(kernel) + r is input channel c at kernel
    offset r (row-major), Caffe's im2col order."""
    attrs = _conv_attrs(e)
    if e.layer.geometry.axis != 1:
        raise e.refuse(f"channel axis {e.layer.geometry.axis}: only axis 1 is exported for Im2col")
    channels = e.in_shapes[0][1]
    kernel = e.layer.geometry.kernel
    k = int(np.prod(kernel))
    onehot = np.zeros((channels * k, 1, *kernel), dtype=np.float32)
    for c in range(channels):
        for r in range(k):
            onehot[(c * k + r, 0) + np.unravel_index(r, kernel)] = 1.0
    return [e.op("Conv", [e.x[0], e.const(onehot, "onehot")], e.tops[0], group=channels, **attrs)]


def pooling_nodes(e: LayerExport, layer, x: str, shape, out: str) -> str:
    """Caffe's pooling of `x` (shape `shape`, N x C x H x W) by the caffe_torch Pooling `layer`, into `out`."""
    k, s, p = layer._geometry(shape)
    h, w = shape[2], shape[3]
    oh, ow = layer._out(shape)
    name = f"{e.name}/{layer.name}" if layer is not e.layer else e.name
    if layer.global_pooling and layer.method in (_Pool.MAX, _Pool.AVE):
        return e.g.op("GlobalMaxPool" if layer.method == _Pool.MAX else "GlobalAveragePool", [x], out, [out])
    e.require_static(0, (2, 3), "pooling")
    extra_h = max(0, (oh - 1) * s[0] + k[0] - h - p[0])
    extra_w = max(0, (ow - 1) * s[1] + k[1] - w - p[1])
    ph, pw = h + p[0] + extra_h, w + p[1] + extra_w
    cut = ((ph - k[0]) // s[0] + 1, (pw - k[1]) // s[1] + 1) != (oh, ow)
    kk = k[0] * k[1]

    def padded(t: str, value: float) -> str:
        if not (p[0] or p[1] or extra_h or extra_w):
            return t
        pads = e.g.ints([0, 0, p[0], p[1], 0, 0, extra_h, extra_w], f"{name}/pads")
        return e.g.op("Pad", [t, pads, e.g.const(value, f"{name}/pad_value")], f"{name}/pad")

    def pool(op_type: str, t: str, final: bool) -> str:
        target = out if final and not cut else None
        y = e.g.op(op_type, [t], target or f"{name}/{op_type.lower()}", [target] if target else 1,
                   kernel_shape=list(k), strides=list(s))
        if cut:
            ends = e.g.ints([oh, ow], f"{name}/ends")
            y = e.g.op("Slice", [y, e.g.ints([0, 0], f"{name}/starts"), ends, e.g.ints([2, 3], f"{name}/axes")],
                       out if final else f"{name}/cut", [out] if final else 1)
        return y

    if layer.method == _Pool.MAX:
        return pool("MaxPool", padded(x, -_FLT_MAX), True)
    if layer.method == _Pool.AVE:
        divisor = np.outer(_ave_divisor(h, oh, k[0], s[0], p[0]), _ave_divisor(w, ow, k[1], s[1], p[1]))
        if np.all(divisor == kk):
            return pool("AveragePool", padded(x, 0.0), True)
        mean = pool("AveragePool", padded(x, 0.0), False)
        # the window sum (mean * kernel area) over Caffe's divisor
        return e.g.op("Mul", [mean, e.g.const(kk / divisor, f"{name}/rescale")], out, [out])
    if layer.phase != caffe_pb2.TEST:
        raise e.refuse("STOCHASTIC pooling in TRAIN draws random positions; export the TEST phase")
    # TEST: sum(x^2) / (FLT_MIN + sum(x)) over each window clipped to the image
    area = e.g.const(float(kk), f"{name}/area")
    sq = pool("AveragePool", padded(e.g.op("Mul", [x, x], f"{name}/square"), 0.0), False)
    sq = e.g.op("Mul", [sq, area], f"{name}/square_sum")
    total = e.g.op("Mul", [pool("AveragePool", padded(x, 0.0), False), area], f"{name}/sum")
    denom = e.g.op("Add", [total, e.g.const(_FLT_MIN, f"{name}/flt_min")], f"{name}/denominator")
    return e.g.op("Div", [sq, denom], out, [out])


@onnx_rule("Pooling")
def pooling(e: LayerExport) -> list[str]:
    """MAX / AVE / STOCHASTIC (TEST) with Caffe's ceil rule and clipping, global pooling."""
    if len(e.tops) > 1:
        raise e.refuse("the MAX mask top (Caffe's argmax index per window) has no ONNX counterpart here")
    return [pooling_nodes(e, e.layer, e.x[0], e.in_shapes[0], e.tops[0])]


@onnx_rule("SPP")
def spp(e: LayerExport) -> list[str]:
    """Each pyramid level's Pooling (as above), flattened per item and concatenated."""
    shape = e.in_shapes[0]
    e.require_static(0, (2, 3), "spatial pyramid pooling")
    pools = e.layer._levels(shape)
    if len(pools) == 1:
        return [pooling_nodes(e, pools[0], e.x[0], shape, e.tops[0])]
    flat = []
    for level, pool in enumerate(pools):
        y = pooling_nodes(e, pool, e.x[0], shape, e.n(f"level{level}"))
        flat.append(e.g.reshape(y, [0, -1], e.n(f"level{level}_flat")))
    return [e.op("Concat", flat, e.tops[0], axis=1)]


@onnx_rule("LRN")
def lrn(e: LayerExport) -> list[str]:
    """ACROSS_CHANNELS: ONNX LRN (the same formula, alpha / n); WITHIN_CHANNEL: x (1 + alpha mean of x^2 over
    the n x n square, zero-padded)^-beta."""
    layer = e.layer
    x = e.x[0]
    if layer.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        return [e.op("LRN", [x], e.tops[0], size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)]
    e.require_static(0, (2, 3), "within-channel LRN")
    half = (layer.size - 1) // 2
    sq = e.op("Mul", [x, x])
    sq = e.op("Pad", [sq, e.g.ints([0, 0, half, half, 0, 0, half, half], e.n("pads"))])
    mean = e.op("AveragePool", [sq], kernel_shape=[layer.size] * 2, strides=[1, 1])
    scale = e.op("Add", [e.op("Mul", [mean, e.const(layer.alpha, "alpha")]), e.const(1.0, "one")])
    return [e.op("Mul", [x, e.op("Pow", [scale, e.const(-layer.beta, "minus_beta")])], e.tops[0])]
