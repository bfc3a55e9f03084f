"""Flatten, Reshape, Concat, Slice: layers that only move data around."""

import torch

from .base import Layer, canonical_axis, count, register


@register("Flatten")
class Flatten(Layer):
    """Caffe's top shares the bottom's data and diff (ShareData / ShareDiff); here the top is a view of the
    bottom's data (a kept `.data` of either shows the other's writes)."""

    allows_in_place = False

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        fp = param.flatten_param
        nd = len(bottom_shapes[0])
        self.start = canonical_axis(fp.axis, nd, self)           # default 1
        self.end = canonical_axis(fp.end_axis, nd, self)         # default -1
        # Caffe: count(axis, end_axis + 1) CHECKs axis <= end_axis + 1; end_axis = axis - 1 inserts an axis of 1
        if self.end < self.start - 1:
            raise self.error(f"flatten_param: end_axis {fp.end_axis} is before axis {fp.axis} (at most one axis "
                             "before it: an axis of 1 is inserted)")

    def top_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        return [s[: self.start] + (count(s, self.start, self.end + 1),) + s[self.end + 1:]]

    def forward(self, x):
        return x.reshape(self.top_shapes([tuple(x.shape)])[0])


@register("Reshape")
class Reshape(Layer):
    """Replace axes [axis, axis + num_axes) by `shape`: 0 copies the bottom's dimension, one -1 is
    inferred. The top is a view of the bottom's data, as Caffe's shares it (from set-up on: reshape_layer.cpp's
    Reshape calls ShareData)."""

    allows_in_place = False
    shares_data_at_set_up = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        rp = param.reshape_param
        self.dims = [int(d) for d in rp.shape.dim]
        if sum(d == -1 for d in self.dims) > 1:
            raise self.error("at most one -1 in reshape_param.shape")
        if any(d < -1 for d in self.dims):
            raise self.error(f"invalid dimension in reshape_param.shape: {self.dims}")
        self.axis, self.num_axes = rp.axis, rp.num_axes          # defaults 0, -1
        self.top_shapes(bottom_shapes)                           # validate now, with the layer named

    def top_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        nd = len(s)
        start = self.axis if self.axis >= 0 else nd + self.axis + 1
        if not 0 <= start <= nd:
            raise self.error(f"axis {self.axis} out of range for a {nd}-D bottom")
        end = nd if self.num_axes == -1 else start + self.num_axes
        if end > nd or self.num_axes < -1:
            raise self.error(f"axis {self.axis} + num_axes {self.num_axes} out of range for {nd} axes")
        middle = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= nd:
                    raise self.error(f"shape dim {i} is 0 (copy) but the bottom has no axis {start + i}")
                middle.append(s[start + i])
            else:
                middle.append(d)
        out = list(s[:start]) + middle + list(s[end:])
        if -1 in out:
            known = count([d for d in out if d != -1])
            total = count(s)
            if known == 0 or total % known:
                raise self.error(f"cannot infer -1 in {self.dims} for a bottom of shape {s}")
            out[out.index(-1)] = total // known
        if count(out) != count(s):
            raise self.error(f"reshape from {s} to {tuple(out)} changes the count")
        return [tuple(out)]

    def forward(self, x):
        return x.reshape(self.top_shapes([tuple(x.shape)])[0])


@register("Concat")
class Concat(Layer):
    num_bottoms = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.concat_param
        if cp.HasField("axis") and cp.HasField("concat_dim"):
            raise self.error("concat_param: give either axis or concat_dim, not both")
        axis = cp.axis if cp.HasField("axis") or not cp.HasField("concat_dim") else cp.concat_dim
        self.axis = canonical_axis(axis, len(bottom_shapes[0]), self)
        self.top_shapes(bottom_shapes)
        # concat_layer.cpp's Reshape: a single bottom's top shares its data (and diff)
        self.shares_data_at_set_up = len(param.bottom) == 1

    def top_shapes(self, bottom_shapes):
        # ConcatLayer::Reshape's CHECKs, at every forward in Caffe (a Filter below may change one bottom's batch)
        ref = bottom_shapes[0]
        for s in bottom_shapes[1:]:
            if len(s) != len(ref) or any(a != b for i, (a, b) in enumerate(zip(s, ref)) if i != self.axis):
                shapes = ", ".join(f"'{n}' {tuple(b)}" for n, b in zip(self.param.bottom, bottom_shapes))
                raise self.error(f"bottoms must agree except on axis {self.axis}: {shapes}")
        s = list(bottom_shapes[0])
        s[self.axis] = sum(b[self.axis] for b in bottom_shapes)
        return [tuple(s)]

    def forward(self, *xs):
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=self.axis)


@register("Slice")
class Slice(Layer):
    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.slice_param
        if sp.HasField("axis") and sp.HasField("slice_dim"):
            raise self.error("slice_param: give either axis or slice_dim, not both")
        axis = sp.axis if sp.HasField("axis") or not sp.HasField("slice_dim") else sp.slice_dim
        self.axis = canonical_axis(axis, len(bottom_shapes[0]), self)
        self.points = [int(p) for p in sp.slice_point]
        n_top = len(param.top)
        if self.points and len(self.points) != n_top - 1:
            raise self.error(f"{n_top} tops need {n_top - 1} slice_point values, got {len(self.points)}")
        self.top_shapes(bottom_shapes)
        # slice_layer.cpp's Reshape: a single top shares the bottom's data (and diff)
        self.shares_data_at_set_up = n_top == 1

    def _sizes(self, dim: int) -> list[int]:
        n_top = len(self.param.top)
        if not self.points:
            if dim % n_top:
                raise self.error(f"axis size {dim} does not split evenly into {n_top} tops")
            return [dim // n_top] * n_top
        bounds = [0] + self.points + [dim]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        if any(s <= 0 for s in sizes):
            raise self.error(f"slice_point {self.points} must increase strictly within (0, {dim})")
        return sizes

    def top_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        return [s[: self.axis] + (n,) + s[self.axis + 1:] for n in self._sizes(s[self.axis])]

    def forward(self, x):
        if len(self.param.top) == 1:
            return x                   # Caffe: a single top shares the bottom's data and diff
        # Caffe copies each slice into its top's own (C-ordered) memory
        return tuple(t.clone(memory_format=torch.contiguous_format)
                     for t in torch.split(x, self._sizes(x.shape[self.axis]), dim=self.axis))
