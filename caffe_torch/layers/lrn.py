"""LRN: local response normalisation (AlexNet, CaffeNet, GoogLeNet)."""

import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import Layer, register

_Region = caffe_pb2.LRNParameter


@register("LRN")
class LRN(Layer):
    """ACROSS_CHANNELS: y = x / (k + alpha / n * sum of x^2 over the n channels centred on x's, zeros
    beyond the first and last channel) ^ beta.
    WITHIN_CHANNEL: y = x / (1 + alpha / n^2 * sum of x^2 over the n x n square centred on x, zeros
    beyond the image) ^ beta; Caffe builds this one from Power, AVE Pooling (pad (n - 1) / 2, whose window
    never leaves the padded extent, so it always divides by n^2) and Eltwise, so `k` is not used.
    Defaults: local_size 5 (must be odd), alpha 1, beta 0.75, k 1. The backward is the derivative (Caffe's
    is too, written out). Bottom: N x C x H x W."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        lp = param.lrn_param
        self.size = lp.local_size
        if self.size % 2 != 1:
            raise self.error(f"local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = lp.alpha, lp.beta, lp.k
        self.region = lp.norm_region
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-D bottom (N x C x H x W), got shape {tuple(bottom_shapes[0])}")
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        half = (self.size - 1) // 2
        # zeros padded explicitly (torch's pooling refuses a window larger than the unpadded input)
        if self.region == _Region.ACROSS_CHANNELS:
            # mean of x^2 over a window of `size` channels: (N, 1, C + size - 1, H, W) pooled along C
            sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, half, half))
            scale = self.k + self.alpha * F.avg_pool3d(sq, (self.size, 1, 1), stride=1).squeeze(1)
        else:
            sq = F.pad(x * x, (half, half, half, half))
            scale = 1.0 + self.alpha * F.avg_pool2d(sq, self.size, stride=1)
        return x * scale.pow(-self.beta)
