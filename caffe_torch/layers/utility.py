"""BVLC Caffe's utility layers: ArgMax, BatchReindex, Crop, Tile, Filter, Reduction, Parameter, Embed, MVN.

Index bottoms (BatchReindex's permutation, Filter's selector, Embed's ids) get no gradient: Caffe refuses to
back-propagate to them (a fatal CHECK); here they are simply not differentiated, so their diff stays zero.
"""

import torch

from ..proto import caffe_pb2
from .base import Layer, canonical_axis, count, register
from .neuron import no_backward


@register("ArgMax")
class ArgMax(Layer):
    """The top_k largest values' indices (and with out_max_val the values), along `axis`, or over each item's
    flattened C x H x W when no axis is given: then the top is N x 1 x top_k (N x 2 x top_k with out_max_val:
    channel 0 the indices, channel 1 the values), padded with trailing 1s to the bottom's number of axes.
    Ties: the larger index first (Caffe sorts (value, index) pairs with std::greater). No backward."""

    backward_not_implemented = True     # need_backward.py

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ap = param.argmax_param
        self.out_max_val = ap.out_max_val               # default false
        self.top_k = ap.top_k                           # default 1
        self.axis = canonical_axis(ap.axis, len(bottom_shapes[0]), self) if ap.HasField("axis") else None
        if self.top_k < 1:
            raise self.error("top_k must be at least 1")
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        if self.axis is not None:
            if self.top_k > s[self.axis]:
                raise self.error(f"top_k {self.top_k} exceeds the bottom's axis {self.axis} size {s[self.axis]}")
            return [s[: self.axis] + (self.top_k,) + s[self.axis + 1:]]
        if self.top_k > count(s, 1):
            raise self.error(f"top_k {self.top_k} exceeds the {count(s, 1)} values per item")
        shape = [1] * max(len(s), 3)
        shape[0], shape[1], shape[2] = s[0], 2 if self.out_max_val else 1, self.top_k
        return [tuple(shape)]

    def forward(self, x):
        data = x.detach()
        axis = self.axis if self.axis is not None else 1
        if self.axis is None:
            data = data.reshape(data.shape[0], -1)
        # descending by value, ties by descending index: a stable sort of the reversed axis
        flipped = data.flip(axis)
        values, order = torch.sort(flipped, dim=axis, descending=True, stable=True)
        values = values.narrow(axis, 0, self.top_k)
        indices = (data.shape[axis] - 1 - order.narrow(axis, 0, self.top_k)).to(x.dtype)
        if self.axis is not None:
            y = values if self.out_max_val else indices
        elif self.out_max_val:
            y = torch.stack([indices, values], dim=1)          # N x 2 x top_k
        else:
            y = indices.unsqueeze(1)                          # N x 1 x top_k
        y = y.reshape(self.top_shapes([tuple(x.shape)])[0]).contiguous()
        return no_backward(self, y, x)


@register("BatchReindex")
class BatchReindex(Layer):
    """top[i] = bottom[0][bottom[1][i]] along the first axis; the gradient is summed back into the picked rows.
    bottom[1] is a 1-D blob of item indices (floats holding integers)."""

    no_backward_to = (1,)           # "Cannot backprop to index." (need_backward.py)

    num_bottoms = (2, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        data, index = bottom_shapes
        if len(index) != 1:
            raise self.error(f"bottom[1] (the indices) must be 1-D, got shape {tuple(index)}")
        return [(index[0],) + tuple(data[1:])]

    def forward(self, x, index):
        idx = index.detach().long()
        if idx.numel() and (bool((idx < 0).any()) or bool((idx >= x.shape[0]).any())):
            raise self.error(f"an index is outside the batch [0, {x.shape[0]}): {idx.tolist()}")
        return x.index_select(0, idx)


@register("Crop")
class Crop(Layer):
    """Crop bottom[0] to bottom[1]'s shape on axes >= `axis` (default 2), starting at `offset` (one value for
    all those axes, one per axis, or none: 0). bottom[1] only gives the shape (no gradient, as Caffe)."""

    num_bottoms = (2, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.crop_param
        nd = len(bottom_shapes[0])
        self.start = canonical_axis(cp.axis, nd, self)
        self.offset = [int(o) for o in cp.offset]
        if len(self.offset) > 1 and self.start + len(self.offset) != nd:
            raise self.error(f"{len(self.offset)} offsets given for the {nd - self.start} axes from axis "
                             f"{self.start}: give one, or one per axis")
        self.top_shapes(bottom_shapes)

    def _offsets(self, bottom_shapes) -> list[int]:
        big, ref = bottom_shapes
        # Caffe reads bottom[1]->shape(i) for the cropped axes i < bottom 0's axes: a reference with more axes
        # is fine (the extra ones are not read), one with fewer aborts
        if len(ref) < len(big):
            raise self.error(f"bottom 1 (the reference) has {len(ref)} axes, fewer than bottom 0's {len(big)}")
        offs = []
        for i in range(len(big)):
            o = 0
            if i >= self.start and self.offset:
                o = self.offset[0] if len(self.offset) == 1 else self.offset[i - self.start]
            if i >= self.start and big[i] - o < ref[i]:
                raise self.error(f"crop of axis {i} is out of bounds: size {ref[i]} at offset {o} in {big[i]}")
            offs.append(o)
        return offs

    def top_shapes(self, bottom_shapes):
        big, ref = bottom_shapes
        self._offsets(bottom_shapes)
        return [tuple(big[:self.start]) + tuple(ref[self.start:len(big)])]

    def forward(self, x, ref):
        offs = self._offsets([tuple(x.shape), tuple(ref.shape)])
        y = x
        for i in range(self.start, x.dim()):
            y = y.narrow(i, offs[i], ref.shape[i])
        return y.clone(memory_format=torch.contiguous_format)     # its own memory even when nothing is cropped


@register("Tile")
class Tile(Layer):
    """Repeat the block of axes [axis, end) `tiles` times along `axis` (default 1)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        tp = param.tile_param
        self.axis = canonical_axis(tp.axis, len(bottom_shapes[0]), self)
        if not tp.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        if tp.tiles <= 0:
            raise self.error(f"tile_param.tiles must be positive, got {tp.tiles}")
        self.tiles = tp.tiles

    def top_shapes(self, bottom_shapes):
        s = list(bottom_shapes[0])
        s[self.axis] *= self.tiles
        return [tuple(s)]

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(*reps)


@register("Filter")
class Filter(Layer):
    """Keep the items (first axis) whose selector (the last bottom, N x 1 x ...) is nonzero, for each other
    bottom; tops are those bottoms filtered, so their first axis depends on the data (built full size, as Caffe's
    first Reshape). Items not kept get a zero gradient; the selector gets none."""

    no_backward_to = (-1,)          # the selector: Caffe aborts (need_backward.py)
    shapes_from_data = True         # the layers below re-check their shapes when the batch changes (net.py)

    num_bottoms = (2, None)
    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if len(param.top) != len(param.bottom) - 1:
            raise self.error(f"needs one top per filtered bottom ({len(param.bottom) - 1}), got {len(param.top)}")
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        selector = bottom_shapes[-1]
        if any(d != 1 for d in selector[1:]):
            raise self.error(f"the selector (last bottom) must be N x 1 x ..., got shape {tuple(selector)}")
        for s in bottom_shapes[:-1]:
            if s[0] != selector[0]:
                raise self.error(f"each bottom must have the selector's first dimension {selector[0]}, got {s}")
        return [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms):
        self.top_shapes([tuple(b.shape) for b in bottoms])
        keep = torch.nonzero(bottoms[-1].detach().reshape(-1) != 0).reshape(-1)
        out = tuple(b.index_select(0, keep) for b in bottoms[:-1])
        return out if len(out) > 1 else out[0]


@register("Reduction")
class Reduction(Layer):
    """Reduce all axes from `axis` (default 0) on: SUM, ASUM (sum of |x|), SUMSQ or MEAN, times coeff (default
    1). The top has the bottom's axes before `axis` (a 0-axis scalar for axis 0)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        rp = param.reduction_param
        self.op = rp.operation                       # default SUM
        self.axis = canonical_axis(rp.axis, len(bottom_shapes[0]), self) if bottom_shapes[0] else 0
        self.coeff = rp.coeff

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0][:self.axis])]

    def forward(self, x):
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        R = caffe_pb2.ReductionParameter
        if self.op == R.SUM:
            y = flat.sum(-1)
        elif self.op == R.MEAN:
            y = flat.sum(-1) / flat.shape[-1]
        elif self.op == R.ASUM:
            y = flat.abs().sum(-1)
        elif self.op == R.SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            raise self.error(f"unknown reduction operation {self.op}")
        return y * self.coeff if self.coeff != 1 else y


@register("Parameter")
class Parameter(Layer):
    """No bottom; its top is its one learnable blob (shape parameter_param.shape, zeros as Caffe's unfilled
    blob), so the top's diff is the blob's diff."""

    num_bottoms = (0, 0)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.shape = tuple(int(d) for d in param.parameter_param.shape.dim)
        self.add_blob(self.shape)

    def top_shapes(self, bottom_shapes):
        return [self.shape]

    def forward(self):
        return self.blobs[0].view(self.shape)


@register("Embed")
class Embed(Layer):
    """Lookup table: top = W[index] + b, W input_dim x num_output, b num_output; the top has the bottom's shape
    plus an axis of num_output. The bottom holds integer ids in [0, input_dim) and gets no gradient."""

    no_backward_to = (0,)           # "Can't backpropagate to EmbedLayer input." (need_backward.py)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ep = param.embed_param
        if ep.num_output <= 0:
            raise self.error("embed_param.num_output must be positive")
        if ep.input_dim <= 0:
            raise self.error("embed_param.input_dim must be positive")
        self.num_output, self.input_dim = ep.num_output, ep.input_dim
        self.bias_term = ep.bias_term                # default true
        self.add_blob((self.input_dim, self.num_output), ep.weight_filler)   # unset filler: constant 0
        if self.bias_term:
            self.add_blob((self.num_output,), ep.bias_filler)

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0]) + (self.num_output,)]

    def forward(self, index):
        idx = index.detach()
        ids = idx.long()
        if ids.numel() and (bool((ids < 0).any()) or bool((ids >= self.input_dim).any())
                            or bool((ids.to(idx.dtype) != idx).any())):
            raise self.error(f"ids must be integers in [0, {self.input_dim})")
        y = self.blobs[0].index_select(0, ids.reshape(-1))
        if self.bias_term:
            y = y + self.blobs[1]
        return y.reshape(tuple(index.shape) + (self.num_output,))


class _MVNVarianceFunction(torch.autograd.Function):
    """y = (x - mean) / (std + eps) over the last axis of a (num, dim) view, std the biased standard deviation;
    backward as Caffe's MVNLayer: dx = (dy - mean(dy) - y mean(dy y)) / (std + eps), which differs from the
    exact derivative by using std + eps instead of std in the last term."""

    @staticmethod
    def forward(ctx, x, eps):
        centred = x - x.mean(-1, keepdim=True)
        denom = (centred * centred).mean(-1, keepdim=True).sqrt() + eps
        y = centred / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, denom = ctx.saved_tensors
        dx = dy - dy.mean(-1, keepdim=True) - y * (dy * y).mean(-1, keepdim=True)
        return dx / denom, None


@register("MVN")
class MVN(Layer):
    """Mean-variance normalisation per item and channel (per item with across_channels): subtract the mean and,
    with normalize_variance (default true), divide by std + eps (default 1e-9; std biased). In place with
    normalize_variance, Caffe's backward reads the top diff after overwriting it (the same memory as the bottom
    diff) and gives a wrong gradient; this layer gives the right one there (not reproduced)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        mp = param.mvn_param
        if len(bottom_shapes[0]) > 4:
            raise self.error("Caffe's MVN takes at most 4 axes (num, channels, height, width)")
        self.normalize_variance = mp.normalize_variance
        self.across_channels = mp.across_channels     # default false
        self.eps = mp.eps

    def top_shapes(self, bottom_shapes):
        # Caffe reshapes the top as num x channels x height x width: fewer axes are padded with 1s
        return [tuple(bottom_shapes[0]) + (1,) * (4 - len(bottom_shapes[0]))]

    def forward(self, x):
        lead = 1 if self.across_channels or x.dim() < 2 else 2
        flat = x.reshape(count(x.shape[:lead]), -1)
        if self.normalize_variance:
            y = _MVNVarianceFunction.apply(flat, self.eps)
        else:
            y = flat - flat.mean(-1, keepdim=True)
        return y.reshape(self.top_shapes([tuple(x.shape)])[0])
