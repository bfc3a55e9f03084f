"""Convolution, Deconvolution, Im2col, Pooling and SPP, with Caffe's output-size rules."""

import itertools
import math

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import Layer, canonical_axis, count, register


def _per_axis(param, what: str, n: int, default: int | None, layer: Layer) -> tuple[int, ...]:
    """Caffe's kernel/stride/pad rule (BaseConvolutionLayer::LayerSetUp): either `what_h`/`what_w` (2-D only),
    or the repeated `what` with one value for every spatial axis, or one per axis, or none (`default`; None:
    required)."""
    field = "kernel_size" if what == "kernel" else what
    repeated = getattr(param, field)
    # each message ends with the words of Caffe's failed CHECK (base_conv_layer.cpp)
    if what != "dilation" and (param.HasField(f"{what}_h") or param.HasField(f"{what}_w")):
        if n != 2:
            raise layer.error(f"{what}_h and {what}_w can only be used for 2-D convolution ({n} spatial axes) "
                              f"(Caffe: \"{what}_h & {what}_w can only be used for 2D convolution\")")
        if len(repeated):
            raise layer.error(f"give either {field} or {what}_h/{what}_w, not both (Caffe: \"Either {field} or "
                              f"{what}_h/w should be specified; not both\")")
        return int(getattr(param, f"{what}_h")), int(getattr(param, f"{what}_w"))
    caffe = f"(Caffe: \"{field} must be specified once, or once per spatial dimension ({field} specified " \
            f"{len(repeated)} times; {n} spatial dims)\")"
    if len(repeated) == 0:
        if default is None:
            raise layer.error(f"{field} (or {what}_h and {what}_w) must be set {caffe}")
        return (default,) * n
    if len(repeated) == 1:
        return (int(repeated[0]),) * n
    if len(repeated) == n:
        return tuple(int(v) for v in repeated)
    raise layer.error(f"{field} must be given once, or once per spatial axis ({n}), not {len(repeated)} times "
                      f"{caffe}")


class ConvGeometry:
    """What Convolution, Deconvolution and Im2col read from convolution_param: the channel axis (`axis`,
    default 1; the axes before it are all batch), the spatial axes after it, and per spatial axis the kernel,
    stride (default 1), pad (default 0) and dilation (default 1)."""

    def __init__(self, cp, bottom_shape, layer: Layer):
        ndim = len(bottom_shape)
        self.axis = canonical_axis(cp.axis, ndim, layer)
        n = ndim - self.axis - 1
        if n < 1:
            raise layer.error(f"needs at least one spatial axis after the channel axis {self.axis}, got a "
                              f"{ndim}-D bottom")
        self.n_spatial = n
        self.kernel = _per_axis(cp, "kernel", n, None, layer)
        self.stride = _per_axis(cp, "stride", n, 1, layer)
        self.pad = _per_axis(cp, "pad", n, 0, layer)
        self.dilation = _per_axis(cp, "dilation", n, 1, layer)
        if min(self.kernel) <= 0:
            raise layer.error(f"kernel dimensions must be positive, got {self.kernel}")
        if min(self.stride) <= 0:
            raise layer.error(f"stride dimensions must be positive, got {self.stride}")

    def conv_out(self, spatial) -> tuple[int, ...]:
        """Convolution / im2col output size: (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1, rounded down."""
        return tuple((size + 2 * p - (d * (k - 1) + 1)) // s + 1
                     for size, k, s, p, d in zip(spatial, self.kernel, self.stride, self.pad, self.dilation))

    def deconv_out(self, spatial) -> tuple[int, ...]:
        """Deconvolution output size: stride (in - 1) + dilation (k - 1) + 1 - 2 pad."""
        return tuple(s * (size - 1) + d * (k - 1) + 1 - 2 * p
                     for size, k, s, p, d in zip(spatial, self.kernel, self.stride, self.pad, self.dilation))


    def window_slices(self, out):
        """Per kernel offset (row-major over the kernel axes), the index into the padded (N, C, *spatial) input
        that picks that offset of every window: one strided slice per spatial axis."""
        for offset in itertools.product(*(range(k) for k in self.kernel)):
            index = [slice(None), slice(None)]
            for o, d, s, n_out in zip(offset, self.dilation, self.stride, out):
                index.append(slice(o * d, o * d + s * (n_out - 1) + 1, s))
            yield tuple(index)

    def _pads(self) -> list[int]:
        pads = []
        for p in reversed(self.pad):
            pads += [p, p]
        return pads

    def im2col(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, *spatial) -> (N, C, prod(kernel), *out): Caffe's im2col (zeros outside the image)."""
        out = self.conv_out(x.shape[2:])
        x = F.pad(x, self._pads())
        return torch.stack([x[index] for index in self.window_slices(out)], dim=2)

    def col2im(self, cols: torch.Tensor, spatial) -> torch.Tensor:
        """The adjoint of im2col, (N, C, prod(kernel), *out) -> (N, C, *spatial): every column value added back
        where im2col took it from (Caffe's col2im; the padding is dropped)."""
        n, c = cols.shape[:2]
        padded = [size + 2 * p for size, p in zip(spatial, self.pad)]
        y = cols.new_zeros((n, c, *padded))
        for r, index in enumerate(self.window_slices(cols.shape[3:])):
            y[index] += cols[:, :, r]
        crop = (slice(None), slice(None)) + tuple(slice(p, p + size) for p, size in zip(self.pad, spatial))
        return y[crop]


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _BaseConvolution(Layer):
    """Convolution and Deconvolution: any channel axis, any number of spatial axes (torch's conv ops for 1 to
    3, Caffe's im2col / col2im beyond), groups, dilation, one or more bottoms sharing the weights (one top
    each)."""

    num_bottoms = (1, None)
    num_tops = (1, None)
    reverse = False                    # Deconvolution: weights (C_in, num_output / group, *kernel)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.convolution_param
        if not cp.HasField("num_output") or cp.num_output == 0:
            raise self.error("convolution_param.num_output must be set")
        g = ConvGeometry(cp, bottom_shapes[0], self)
        self.geometry = g
        self.axis, self.kernel, self.stride, self.pad, self.dilation = \
            g.axis, g.kernel, g.stride, g.pad, g.dilation
        self.group = cp.group                                     # default 1
        channels = bottom_shapes[0][g.axis]
        if channels % self.group or cp.num_output % self.group:
            raise self.error(f"group {self.group} must divide both the input channels ({channels}) and "
                             f"num_output ({cp.num_output})")
        self.num_output = cp.num_output
        self.channels = channels
        if self.reverse:
            wshape = (channels, cp.num_output // self.group, *self.kernel)
        else:
            wshape = (cp.num_output, channels // self.group, *self.kernel)
        self.add_blob(wshape, cp.weight_filler)
        self.bias_term = cp.bias_term                             # default true
        if self.bias_term:
            self.add_blob((cp.num_output,), cp.bias_filler)

    def _check_counts(self, n_bottom, n_top):
        super()._check_counts(n_bottom, n_top)
        if n_bottom != n_top:
            raise self.error(f"needs as many tops as bottoms, got {n_bottom} bottoms and {n_top} tops")

    def top_shapes(self, bottom_shapes):
        for b in bottom_shapes:
            if tuple(b) != tuple(bottom_shapes[0]):
                raise self.error(f"all bottoms must have the same shape, got {bottom_shapes}")
        shape = tuple(bottom_shapes[0])
        if len(shape) != self.axis + 1 + len(self.kernel) or shape[self.axis] != self.channels:
            raise self.error(f"input size incompatible with convolution kernel: bottom {shape}, the layer "
                             f"was set up for {self.channels} channels at axis {self.axis} and "
                             f"{len(self.kernel)} spatial axes")
        spatial = shape[self.axis + 1:]
        out = self.geometry.deconv_out(spatial) if self.reverse else self.geometry.conv_out(spatial)
        if min(out) <= 0:
            raise self.error(f"output size {out} is not positive for bottom {shape}")
        return [shape[: self.axis] + (self.num_output, *out)] * len(self.param.top)

    def forward(self, *xs):
        bias = self.blobs[1] if self.bias_term else None
        n = len(self.kernel)
        ys = []
        for x in xs:
            lead = tuple(x.shape[: self.axis])
            if self.axis != 1:                                      # (no view ops per call for the usual axis 1)
                x = x.reshape((-1,) + tuple(x.shape[self.axis:]))    # (N, C, *spatial), N = the lead axes
            if n > 3:
                y = self._forward_nd(x, bias)
            elif self.reverse:
                y = _DECONV_FN[n](x, self.blobs[0], bias, self.stride, self.pad, 0, self.group, self.dilation)
            else:
                y = _CONV_FN[n](x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)
            ys.append(y if self.axis == 1 else y.reshape(lead + tuple(y.shape[1:])))
        return tuple(ys)

    def _forward_nd(self, x, bias):
        """More than 3 spatial axes (torch has no such conv op): Caffe's own im2col / col2im with a matrix
        product per group. x: (N, C, *spatial)."""
        g, groups, w = self.geometry, self.group, self.blobs[0]
        n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
        k = w[0, 0].numel()
        if self.reverse:
            # (G, C/G, O/G * K) weights times (N, G, C/G, L) inputs -> columns (N, O, K, *spatial), then col2im
            wg = w.reshape(groups, c // groups, -1)
            cols = torch.einsum("gck,ngcl->ngkl", wg, x.reshape(n, groups, c // groups, -1))
            cols = cols.reshape(n, self.num_output, k, *spatial)
            y = g.col2im(cols, g.deconv_out(spatial))
        else:
            # (G, O/G, C/G * K) weights times (N, G, C/G * K, L) columns
            out = g.conv_out(spatial)
            cols = g.im2col(x).reshape(n, groups, (c // groups) * k, -1)
            y = torch.einsum("gok,ngkl->ngol", w.reshape(groups, self.num_output // groups, -1), cols)
            y = y.reshape(n, self.num_output, *out)
        if bias is not None:
            y = y + bias.reshape((1, -1) + (1,) * len(spatial))
        return y


@register("Convolution")
class Convolution(_BaseConvolution):
    """Weights (num_output, C / group, *kernel), bias (num_output,); output size per ConvGeometry.conv_out."""


@register("Deconvolution")
class Deconvolution(_BaseConvolution):
    """The transpose of Convolution (its forward is Convolution's backward data pass): weights
    (C_in, num_output / group, *kernel), output stride (in - 1) + dilation (k - 1) + 1 - 2 pad."""

    reverse = True


@register("Im2col")
class Im2col(Layer):
    """Caffe's im2col as a layer: top (lead..., C * prod(kernel), *out) where channel c * prod(kernel) + the
    row-major kernel offset holds the input at that offset of every window (zero in the padding)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        g = ConvGeometry(param.convolution_param, bottom_shapes[0], self)
        self.geometry = g

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        g = self.geometry
        if len(shape) != g.axis + 1 + g.n_spatial:
            raise self.error(f"bottom {shape} has a different number of axes than at setup")
        out = g.conv_out(shape[g.axis + 1:])
        if min(out) <= 0:
            raise self.error(f"output size {out} is not positive for bottom {shape}")
        k = 1
        for v in g.kernel:
            k *= v
        return [shape[: g.axis] + (shape[g.axis] * k, *out)]

    def forward(self, x):
        g = self.geometry
        lead, c, spatial = tuple(x.shape[: g.axis]), x.shape[g.axis], tuple(x.shape[g.axis + 1:])
        y = g.im2col(x.reshape((-1, c) + spatial))                    # (N, C, prod(kernel), *out)
        return y.reshape(lead + (-1,) + tuple(y.shape[3:]))


_Pool = caffe_pb2.PoolingParameter
_FLT_MIN = 1.1754943508222875e-38


def pooled_size(size: int, k: int, s: int, p: int, any_pad: bool | None = None) -> int:
    """Caffe's pooling output size: ceil((size + 2p - k) / s) + 1, minus one if the last window would start
    in the padding (so that it is clipped to the image). As in Caffe, that correction is made on both axes
    as soon as either axis is padded (`any_pad`; default: this axis's own pad)."""
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if (p > 0 if any_pad is None else any_pad) and (out - 1) * s >= size + p:
        out -= 1
    return out


def _ave_divisor(size: int, out: int, k: int, s: int, p: int) -> list[int]:
    """Caffe's AVE window sizes along one axis: each window clipped to the padded extent [-p, size + p)."""
    return [min(o * s - p + k, size + p) - (o * s - p) for o in range(out)]


@register("Pooling")
class Pooling(Layer):
    """MAX (optional second top: the mask, the index h * W + w of each window's first maximum in its
    channel's plane, -1 for a window wholly in the padding; no gradient flows through it), AVE and
    STOCHASTIC (Zeiler & Fergus; no padding, as in Caffe). STOCHASTIC in TRAIN picks, in each window clipped
    to the image, the first element whose running sum reaches u * (window sum), u ~ U[0, 1) drawn on the CPU
    from the layer's generator (so CPU and GPU nets draw alike; Caffe draws on the GPU and has no CPU
    version), and passes the gradient to it alone; in TEST it gives sum(x^2) / (FLT_MIN + sum(x)) per window,
    whose gradient caffe_torch takes as the derivative (Caffe's TEST backward reads stale indices)."""

    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.pooling_param
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-D bottom (N x C x H x W), got shape {bottom_shapes[0]}")
        self.method = pp.pool                                     # default MAX
        if len(param.top) > 1 and self.method != _Pool.MAX:
            raise self.error("only MAX pooling has a second (mask) top")
        self.global_pooling = pp.global_pooling
        # Caffe's PoolingLayer::LayerSetUp CHECKs, field by field
        has = pp.HasField
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("pooling_param: with global_pooling, kernel_size / kernel_h / kernel_w cannot "
                                 "be specified (Caffe: \"With Global_pooling: true Filter size cannot specified\")")
        elif has("kernel_size") == (has("kernel_h") and has("kernel_w")):
            raise self.error("pooling_param: the kernel is kernel_size OR kernel_h and kernel_w (both or "
                             "neither given) (Caffe: \"Filter size is kernel_size OR kernel_h and kernel_w; not "
                             "both\")")
        for what in ("pad", "stride"):
            # `what` alone, or both what_h and what_w without `what`
            if not ((not has(what) and has(f"{what}_h") and has(f"{what}_w"))
                    or (not has(f"{what}_h") and not has(f"{what}_w"))):
                raise self.error(f"pooling_param: {what} is {what} OR {what}_h and {what}_w (got "
                                 f"{', '.join(f for f in (what, f'{what}_h', f'{what}_w') if has(f))}) (Caffe: "
                                 f"\"{what} is {what} OR {what}_h and {what}_w are required\")")
        # kernel_size wins over a lone kernel_h or kernel_w, as in Caffe
        self.kernel = (pp.kernel_size,) * 2 if has("kernel_size") else (pp.kernel_h, pp.kernel_w)
        self.pad = (pp.pad_h, pp.pad_w) if has("pad_h") else (pp.pad,) * 2
        self.stride = (pp.stride_h, pp.stride_w) if has("stride_h") else (pp.stride,) * 2   # default 1
        if not self.global_pooling and min(self.kernel) <= 0:
            raise self.error(f"pooling_param: kernel dimensions {self.kernel} must be positive")
        if min(self.stride) <= 0:             # Caffe divides by it (a crash there)
            raise self.error(f"pooling_param: stride {self.stride} must be positive")
        if self.global_pooling:
            if any(self.pad) or self.stride != (1, 1):
                raise self.error("with global_pooling, pad must be 0 and stride 1 (Caffe: \"With Global_pooling: "
                                 "true; only pad = 0 and stride = 1\")")
        elif any(p >= k for p, k in zip(self.pad, self.kernel)):
            raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        if any(self.pad) and self.method == _Pool.STOCHASTIC:
            raise self.error("padding is implemented only for MAX and AVE pooling (Caffe: \"Padding implemented "
                             "only for average and max pooling\")")
        self._divisors: dict[tuple, torch.Tensor] = {}

    def _geometry(self, shape):
        if self.global_pooling:
            return (shape[2], shape[3]), (1, 1), (0, 0)
        return self.kernel, self.stride, self.pad

    def _out(self, shape):
        k, s, p = self._geometry(shape)
        any_pad = bool(p[0] or p[1])
        return (pooled_size(shape[2], k[0], s[0], p[0], any_pad),
                pooled_size(shape[3], k[1], s[1], p[1], any_pad))

    def top_shapes(self, bottom_shapes):
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-D bottom (N x C x H x W), got shape {bottom_shapes[0]}")
        n, c = bottom_shapes[0][:2]
        return [(n, c, *self._out(bottom_shapes[0]))] * len(self.param.top)

    def forward(self, x):
        k, s, p = self._geometry(x.shape)
        h, w = x.shape[2], x.shape[3]
        oh, ow = self._out(x.shape)
        # Pad explicitly (left/top by the pad, right/bottom as far as the last window reaches) and pool
        # without padding: every Caffe geometry (any pad < kernel, its ceil rule) then comes out exactly,
        # which torch's own padding/ceil_mode (pad <= kernel/2, its own last-window rule) does not give.
        extra_h = max(0, (oh - 1) * s[0] + k[0] - h - p[0])
        extra_w = max(0, (ow - 1) * s[1] + k[1] - w - p[1])
        if self.method == _Pool.MAX:
            # windows are clipped to the image (the padding never wins); an all-padding window gives
            # -FLT_MAX as Caffe's initial value
            if p[0] or p[1] or extra_h or extra_w:
                x = F.pad(x, (p[1], extra_w, p[0], extra_h), value=-3.4028234663852886e38)
            if len(self.param.top) == 1:
                return F.max_pool2d(x, k, s)[:, :, :oh, :ow]
            y, idx = F.max_pool2d(x, k, s, return_indices=True)
            y, idx = y[:, :, :oh, :ow], idx[:, :, :oh, :ow]
            # torch's index is into the padded plane; Caffe's into the image (-1: no image element)
            row, col = idx // x.shape[3] - p[0], idx % x.shape[3] - p[1]
            inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
            mask = torch.where(inside, row * w + col, torch.full_like(idx, -1))
            return y, mask.to(y.dtype)
        if self.method == _Pool.STOCHASTIC:
            return self._stochastic(x, k, s, oh, ow, extra_h, extra_w)
        # AVE: the sum over the window clipped to the image, divided by the window clipped to the padded
        # extent [-pad, size + pad) (Caffe's pool_size)
        if p[0] or p[1] or extra_h or extra_w:
            x = F.pad(x, (p[1], extra_w, p[0], extra_h))
        d = self._divisor(h, w, oh, ow, k, s, p, x)
        # one pool size for every window (no window clipped): torch's pooling divides the sum by it, as Caffe
        total = F.avg_pool2d(x, k, s, divisor_override=d if isinstance(d, int) else 1)
        if total.shape[2:] != (oh, ow):
            total = total[:, :, :oh, :ow]
        return total if isinstance(d, int) else total / d

    def _stochastic(self, x, k, s, oh, ow, extra_h, extra_w):
        # windows clipped to the image = windows over zeros appended right and below (a zero never moves
        # the running sum, so it is never the first element to reach the threshold)
        if extra_h or extra_w:
            x = F.pad(x, (0, extra_w, 0, extra_h))
        n, c = x.shape[:2]
        if self.phase == caffe_pb2.TEST:
            sq = F.avg_pool2d(x * x, k, s, divisor_override=1)[:, :, :oh, :ow]
            total = F.avg_pool2d(x, k, s, divisor_override=1)[:, :, :oh, :ow]
            return sq / (total + _FLT_MIN)
        # (N, C, window, positions) with the window in row-major order, positions row-major over (oh, ow)
        # (the padded extent is exactly (out - 1) * stride + kernel: oh * ow windows)
        windows = F.unfold(x.reshape(n * c, 1, *x.shape[2:]), k, stride=s).reshape(n, c, k[0] * k[1], oh * ow)
        running = windows.detach().cumsum(dim=2)
        u = torch.rand((n, c, 1, oh * ow), generator=self._generator, dtype=torch.float64)
        threshold = u.to(device=x.device, dtype=x.dtype) * running[:, :, -1:, :]
        # the first element whose running sum reaches the threshold (argmax of a boolean: its first True)
        pick = (running >= threshold).to(torch.uint8).argmax(dim=2, keepdim=True)
        y = windows.gather(2, pick).reshape(n, c, -1)
        return y.reshape(n, c, oh, ow)

    def _divisor(self, h, w, oh, ow, k, s, p, like):
        """Caffe's pool_size per output position: an int where it is the same for all, else an (oh, ow) tensor."""
        key = (h, w, like.dtype, like.device)
        d = self._divisors.get(key)
        if d is None:
            sizes_h, sizes_w = _ave_divisor(h, oh, k[0], s[0], p[0]), _ave_divisor(w, ow, k[1], s[1], p[1])
            if len(set(sizes_h)) == 1 and len(set(sizes_w)) == 1:
                d = int(sizes_h[0]) * int(sizes_w[0])
            else:
                dh = torch.tensor(sizes_h, dtype=like.dtype)
                dw = torch.tensor(sizes_w, dtype=like.dtype)
                d = (dh[:, None] * dw[None, :]).to(like.device)
            self._divisors = {key: d}
        return d


_SPP = caffe_pb2.SPPParameter
_SPP_TO_POOL = {_SPP.MAX: _Pool.MAX, _SPP.AVE: _Pool.AVE, _SPP.STOCHASTIC: _Pool.STOCHASTIC}


@register("SPP")
class SPP(Layer):
    """Spatial pyramid pooling: for level l = 0 .. pyramid_height - 1, a Pooling with 2^l x 2^l bins over the
    whole image (kernel = stride = ceil(size / 2^l), pad = (kernel 2^l - size + 1) / 2 per axis), each level's
    N x C x 2^l x 2^l output flattened to N x (C 4^l) and the levels concatenated along axis 1. With
    pyramid_height 1 the top is that one pooling's N x C x 1 x 1. The pools follow the bottom's H x W when
    the net is reshaped, as Caffe rebuilds them."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.spp_param
        if sp.pyramid_height < 1:
            raise self.error("spp_param.pyramid_height must be at least 1")
        self.pyramid_height = sp.pyramid_height
        self.pool = _SPP_TO_POOL[sp.pool]                         # default MAX
        self._ctx = ctx
        self._pools: dict[tuple[int, int], list[Pooling]] = {}
        self.top_shapes(bottom_shapes)

    def _levels(self, shape) -> list[Pooling]:
        if len(shape) != 4 or min(shape[2:]) <= 0:
            raise self.error(f"needs a 4-D bottom (N x C x H x W) with H, W > 0, got shape {tuple(shape)}")
        key = (int(shape[2]), int(shape[3]))
        if key not in self._pools:
            pools = []
            for level in range(self.pyramid_height):
                bins = 2 ** level
                lp = caffe_pb2.LayerParameter(name=f"{self.name}/pool{level}", type="Pooling",
                                              bottom=[self.param.bottom[0]], top=[f"{self.name}/pool{level}"])
                pp = lp.pooling_param
                pp.pool = self.pool
                for axis, size in (("h", key[0]), ("w", key[1])):
                    kernel = -(-size // bins)                        # ceil(size / bins)
                    setattr(pp, f"kernel_{axis}", kernel)
                    setattr(pp, f"stride_{axis}", kernel)
                    setattr(pp, f"pad_{axis}", (kernel * bins - size + 1) // 2)
                pools.append(Pooling(lp, [tuple(shape)], self._ctx))
            self._pools = {key: pools}
        return self._pools[key]

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        pools = self._levels(shape)
        if self.pyramid_height == 1:
            return pools[0].top_shapes([shape])
        return [(shape[0], sum(count(p.top_shapes([shape])[0], 1) for p in pools))]

    def forward(self, x):
        pools = self._levels(x.shape)
        if self.pyramid_height == 1:
            return pools[0](x)
        return torch.cat([p(x).reshape(x.shape[0], -1) for p in pools], dim=1)
