"""Convolution and Pooling (2-D, NCHW), with Caffe's output-size rules."""

import math

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import Layer, register


def _pair(repeated, h_field, w_field, has_hw: bool, default: int, what: str, layer: Layer) -> tuple[int, int]:
    """Caffe's kernel/stride/pad/dilation rule: either `x_h`/`x_w`, or a repeated `x` with 0 (default),
    1 (both axes) or 2 (h, w) values."""
    if has_hw:
        if len(repeated):
            raise layer.error(f"give either {what} or {what}_h/{what}_w, not both")
        return int(h_field), int(w_field)
    if len(repeated) == 0:
        return default, default
    if len(repeated) == 1:
        return int(repeated[0]), int(repeated[0])
    if len(repeated) == 2:
        return int(repeated[0]), int(repeated[1])
    raise layer.error(f"{what} has {len(repeated)} values; caffe_torch supports 2-D (1 or 2 values)")


@register("Convolution")
class Convolution(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.convolution_param
        if cp.axis != 1:
            raise self.error("only axis 1 (NCHW) is supported")
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-D bottom (N x C x H x W), got shape {bottom_shapes[0]}")
        if not cp.HasField("num_output") or cp.num_output == 0:
            raise self.error("convolution_param.num_output must be set")
        self.kernel = _pair(cp.kernel_size, cp.kernel_h, cp.kernel_w,
                            cp.HasField("kernel_h") or cp.HasField("kernel_w"), 0, "kernel_size", self)
        if min(self.kernel) <= 0:
            raise self.error("kernel_size (or kernel_h and kernel_w) must be set and positive")
        self.stride = _pair(cp.stride, cp.stride_h, cp.stride_w,
                            cp.HasField("stride_h") or cp.HasField("stride_w"), 1, "stride", self)
        self.pad = _pair(cp.pad, cp.pad_h, cp.pad_w, cp.HasField("pad_h") or cp.HasField("pad_w"), 0, "pad",
                         self)
        self.dilation = _pair(cp.dilation, 0, 0, False, 1, "dilation", self)
        self.group = cp.group                                     # default 1
        channels = bottom_shapes[0][1]
        if channels % self.group or cp.num_output % self.group:
            raise self.error(f"group {self.group} must divide both the input channels ({channels}) and "
                             f"num_output ({cp.num_output})")
        self.num_output = cp.num_output
        self.channels = channels
        self.add_blob((cp.num_output, channels // self.group, *self.kernel), cp.weight_filler)
        self.bias_term = cp.bias_term                             # default true
        if self.bias_term:
            self.add_blob((cp.num_output,), cp.bias_filler)

    def top_shapes(self, bottom_shapes):
        for b in bottom_shapes:
            if tuple(b) != tuple(bottom_shapes[0]):
                raise self.error(f"all bottoms must have the same shape, got {bottom_shapes}")
        if len(bottom_shapes[0]) != 4 or bottom_shapes[0][1] != self.channels:
            raise self.error(f"input size incompatible with convolution kernel: bottom {bottom_shapes[0]}, "
                             f"the layer was set up for {self.channels} channels")
        n, _, h, w = bottom_shapes[0]
        out = []
        for size, k, s, p, d in zip((h, w), self.kernel, self.stride, self.pad, self.dilation):
            out.append((size + 2 * p - (d * (k - 1) + 1)) // s + 1)
        return [(n, self.num_output, *out)] * len(self.param.top)

    def forward(self, *xs):
        bias = self.blobs[1] if self.bias_term else None
        ys = tuple(F.conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)
                   for x in xs)
        return ys

    num_bottoms = (1, None)
    num_tops = (1, None)

    def _check_counts(self, n_bottom, n_top):
        super()._check_counts(n_bottom, n_top)
        if n_bottom != n_top:
            raise self.error(f"needs as many tops as bottoms, got {n_bottom} bottoms and {n_top} tops")


_Pool = caffe_pb2.PoolingParameter


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
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.pooling_param
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-D bottom (N x C x H x W), got shape {bottom_shapes[0]}")
        self.method = pp.pool                                     # default MAX
        if self.method == _Pool.STOCHASTIC:
            raise self.error("STOCHASTIC pooling is not supported by caffe_torch")
        self.global_pooling = pp.global_pooling
        has_k = pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w")
        if self.global_pooling and has_k:
            raise self.error("with global_pooling, kernel size cannot be specified")
        if pp.HasField("kernel_size") and (pp.HasField("kernel_h") or pp.HasField("kernel_w")):
            raise self.error("give either kernel_size or kernel_h/kernel_w, not both")
        if not self.global_pooling and not has_k:
            raise self.error("pooling_param needs kernel_size (or kernel_h and kernel_w) or global_pooling")
        self.kernel = (pp.kernel_h, pp.kernel_w) if pp.HasField("kernel_h") else (pp.kernel_size,) * 2
        self.pad = (pp.pad_h, pp.pad_w) if (pp.HasField("pad_h") or pp.HasField("pad_w")) else (pp.pad,) * 2
        if pp.HasField("stride_h") or pp.HasField("stride_w"):
            self.stride = (pp.stride_h, pp.stride_w)
        else:
            self.stride = (pp.stride,) * 2                        # default 1
        if self.global_pooling:
            if any(self.pad) or self.stride != (1, 1):
                raise self.error("with global_pooling, pad must be 0 and stride 1")
        elif any(p >= k for p, k in zip(self.pad, self.kernel)):
            raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        if not self.global_pooling and (min(self.kernel) <= 0 or min(self.stride) <= 0):
            raise self.error(f"kernel {self.kernel} and stride {self.stride} must be positive")
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
        return [(n, c, *self._out(bottom_shapes[0]))]

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
            return F.max_pool2d(x, k, s)[:, :, :oh, :ow]
        # AVE: the sum over the window clipped to the image, divided by the window clipped to the padded
        # extent [-pad, size + pad) (Caffe's pool_size)
        if p[0] or p[1] or extra_h or extra_w:
            x = F.pad(x, (p[1], extra_w, p[0], extra_h))
        total = F.avg_pool2d(x, k, s, divisor_override=1)[:, :, :oh, :ow]
        return total / self._divisor(h, w, oh, ow, k, s, p, total)

    def _divisor(self, h, w, oh, ow, k, s, p, like):
        key = (h, w, like.dtype, like.device)
        d = self._divisors.get(key)
        if d is None:
            dh = torch.tensor(_ave_divisor(h, oh, k[0], s[0], p[0]), dtype=like.dtype)
            dw = torch.tensor(_ave_divisor(w, ow, k[1], s[1], p[1]), dtype=like.dtype)
            d = (dh[:, None] * dw[None, :]).to(like.device)
            self._divisors = {key: d}
        return d
