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
        self.add_blob((cp.num_output, channels // self.group, *self.kernel), cp.weight_filler)
        self.bias_term = cp.bias_term                             # default true
        if self.bias_term:
            self.add_blob((cp.num_output,), cp.bias_filler)

    def top_shapes(self, bottom_shapes):
        n, _, h, w = bottom_shapes[0]
        out = []
        for size, k, s, p, d in zip((h, w), self.kernel, self.stride, self.pad, self.dilation):
            out.append((size + 2 * p - (d * (k - 1) + 1)) // s + 1)
        return [(n, self.num_output, *out)] * len(self.param.top)

    def forward(self, *xs):
        bias = self.blobs[1] if self.bias_term else None
        ys = tuple(F.conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group) for x in xs)
        return ys

    num_bottoms = (1, None)
    num_tops = (1, None)

    def _check_counts(self, n_bottom, n_top):
        super()._check_counts(n_bottom, n_top)
        if n_bottom != n_top:
            raise self.error(f"needs as many tops as bottoms, got {n_bottom} bottoms and {n_top} tops")


_Pool = caffe_pb2.PoolingParameter


def pooled_size(size: int, k: int, s: int, p: int) -> int:
    """Caffe's pooling output size: ceil((size + 2p - k) / s) + 1, minus one if the last window would start
    in the padding (so that it is clipped to the image)."""
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


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
        elif any(2 * p > k for p, k in zip(self.pad, self.kernel)):
            raise self.error(f"pad {self.pad} larger than half the kernel {self.kernel} is not supported")

    def _geometry(self, shape):
        if self.global_pooling:
            return (shape[2], shape[3]), (1, 1), (0, 0)
        return self.kernel, self.stride, self.pad

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        k, s, p = self._geometry(bottom_shapes[0])
        return [(n, c, pooled_size(h, k[0], s[0], p[0]), pooled_size(w, k[1], s[1], p[1]))]

    def forward(self, x):
        k, s, p = self._geometry(x.shape)
        if self.method == _Pool.MAX:
            # torch's ceil_mode drops a last window that starts in the padding: Caffe's rule.
            return F.max_pool2d(x, k, s, p, ceil_mode=True)
        # AVE: torch, like Caffe, divides by the window clipped to the padded extent (count_include_pad)
        return F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True)
