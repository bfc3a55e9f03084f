"""Export rules: ArgMax, BatchReindex, Crop, Tile, Filter, Reduction, Parameter, Embed, MVN."""

import numpy as np

from ..proto import caffe_pb2
from .registry import LayerExport, TorchForward, onnx_rule, torch_rule

_INT64_MIN = np.iinfo(np.int64).min
_TO_FLOAT, _TO_INT64 = 1, 7          # ONNX TensorProto.FLOAT, INT64


def _flip(e: LayerExport, x: str, axis: int) -> str:
    return e.op("Slice", [x, e.g.ints([-1], e.n("flip_start")), e.g.ints([_INT64_MIN], e.n("flip_end")),
                          e.g.ints([axis], e.n("flip_axis")), e.g.ints([-1], e.n("flip_step"))])


@onnx_rule("ArgMax")
def argmax(e: LayerExport) -> list[str]:
    """TopK on the axis reversed, so that equal values list the larger index first (Caffe's order)."""
    layer = e.layer
    x, axis = e.x[0], layer.axis
    if axis is None:
        x, axis = e.g.reshape(x, [0, -1], e.n("flatten")), 1
    else:
        e.require_static(0, (axis,), "ArgMax")
    size = int(np.prod(e.in_shapes[0][1:])) if layer.axis is None else e.in_shapes[0][axis]
    values, index = e.g.op("TopK", [_flip(e, x, axis), e.g.ints([layer.top_k], e.n("k"))], e.n("topk"), 2,
                           axis=axis, largest=1, sorted=1)
    index = e.op("Sub", [e.g.ints([size - 1], e.n("last")), index])
    index = e.op("Cast", [index], to=_TO_FLOAT)
    if layer.axis is not None:
        return [e.op("Identity", [values if layer.out_max_val else index], e.tops[0])]
    parts = [index, values] if layer.out_max_val else [index]
    parts = [e.op("Unsqueeze", [p, e.g.ints([1], e.n("channel"))]) for p in parts]
    y = e.op("Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    return [e.reshape(y)]


@onnx_rule("BatchReindex")
def batch_reindex(e: LayerExport) -> list[str]:
    """Gather along the first axis at bottom 1's indices."""
    index = e.op("Cast", [e.x[1]], to=_TO_INT64)
    return [e.op("Gather", [e.x[0], index], e.tops[0], axis=0)]


@onnx_rule("Crop")
def crop(e: LayerExport) -> list[str]:
    """Slice at Caffe's offsets to bottom 1's sizes on the axes from `axis`."""
    layer = e.layer
    offs = layer._offsets([e.in_shapes[0], e.in_shapes[1]])
    axes = list(range(layer.start, len(e.in_shapes[0])))
    e.require_static(0, axes, "cropping")
    e.require_static(1, axes, "cropping")
    starts = [offs[a] for a in axes]
    ends = [offs[a] + e.in_shapes[1][a] for a in axes]
    return [e.op("Slice", [e.x[0], e.g.ints(starts, e.n("starts")), e.g.ints(ends, e.n("ends")),
                           e.g.ints(axes, e.n("axes"))], e.tops[0])]


@onnx_rule("Tile")
def tile(e: LayerExport) -> list[str]:
    """Tile `tiles` times along `axis` (the block of axes from it repeated, as torch's repeat)."""
    reps = [1] * len(e.in_shapes[0])
    reps[e.layer.axis] = e.layer.tiles
    return [e.op("Tile", [e.x[0], e.g.ints(reps, e.n("repeats"))], e.tops[0])]


@onnx_rule("Filter")
def filter_(e: LayerExport) -> list[str]:
    """Gather the items whose selector (last bottom) is nonzero: the first axis of the tops is data-dependent."""
    sel = e.g.reshape(e.x[-1], [-1], e.n("selector"))
    keep = e.op("NonZero", [e.op("Not", [e.op("Equal", [sel, e.const(0.0, "zero")])])])
    keep = e.g.reshape(keep, [-1], e.n("keep"))
    return [e.op("Gather", [x, keep], top, axis=0) for x, top in zip(e.x[:-1], e.tops)]


_REDUCE = {caffe_pb2.ReductionParameter.SUM: "ReduceSum", caffe_pb2.ReductionParameter.MEAN: "ReduceMean",
           caffe_pb2.ReductionParameter.ASUM: "ReduceL1", caffe_pb2.ReductionParameter.SUMSQ: "ReduceSumSquare"}


@onnx_rule("Reduction")
def reduction(e: LayerExport) -> list[str]:
    """SUM / MEAN / ASUM / SUMSQ over all axes from `axis`, times coeff."""
    layer = e.layer
    flat = e.g.reshape(e.x[0], [0] * layer.axis + [-1], e.n("flatten"))
    last = [e.tops[0]] if layer.coeff == 1 else 1
    y = e.g.reduce(_REDUCE[layer.op], flat, [layer.axis], e.tops[0] if layer.coeff == 1 else e.n("reduce"),
                   keepdims=False, outputs=last)
    return [y if layer.coeff == 1 else e.op("Mul", [y, e.const(layer.coeff, "coeff")], e.tops[0])]


@onnx_rule("Parameter")
def parameter(e: LayerExport) -> list[str]:
    """Its blob, as a constant."""
    return [e.const(e.blob(0).reshape(e.layer.shape), "value")]


@onnx_rule("Embed")
def embed(e: LayerExport) -> list[str]:
    """Gather rows of W at the ids (+ bias)."""
    ids = e.op("Cast", [e.x[0]], to=_TO_INT64)
    if not e.layer.bias_term:
        return [e.op("Gather", [e.const(e.blob(0), "weight"), ids], e.tops[0], axis=0)]
    y = e.op("Gather", [e.const(e.blob(0), "weight"), ids], axis=0)
    return [e.op("Add", [y, e.const(e.blob(1), "bias")], e.tops[0])]


@onnx_rule("MVN")
def mvn(e: LayerExport) -> list[str]:
    """Per item (and channel): subtract the mean, divide by std + eps (biased std) with normalize_variance; the
    top padded to 4 axes as Caffe's."""
    layer = e.layer
    lead = 1 if layer.across_channels or len(e.in_shapes[0]) < 2 else 2
    flat = e.g.reshape(e.x[0], [0] * lead + [-1], e.n("flatten"))
    centred = e.op("Sub", [flat, e.g.reduce("ReduceMean", flat, [lead], e.n("mean"))])
    if layer.normalize_variance:
        var = e.g.reduce("ReduceMean", e.op("Mul", [centred, centred]), [lead], e.n("var"))
        denom = e.op("Add", [e.op("Sqrt", [var]), e.const(layer.eps, "eps")])
        centred = e.op("Div", [centred, denom])
    return [e.reshape(centred)]


@torch_rule("MVN")
def mvn_torch(e: LayerExport) -> TorchForward:
    layer = e.layer
    lead = 1 if layer.across_channels or len(e.in_shapes[0]) < 2 else 2
    target = e.static_target()

    def forward(m, x):
        flat = x.flatten(lead)
        y = flat - flat.mean(-1, keepdim=True)
        if layer.normalize_variance:
            y = y / ((y * y).mean(-1, keepdim=True).sqrt() + layer.eps)
        return y.reshape(target)

    return TorchForward(forward)
