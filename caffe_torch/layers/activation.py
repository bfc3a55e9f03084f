"""ReLU, PReLU, Sigmoid, TanH, Softmax."""

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import Layer, canonical_axis, register


@register("ReLU")
class ReLU(Layer):
    """y = max(x, 0) + negative_slope * min(x, 0); the gradient at 0 takes the negative side, as Caffe."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.negative_slope = param.relu_param.negative_slope   # default 0

    def forward(self, x):
        if self.negative_slope == 0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)


@register("PReLU")
class PReLU(Layer):
    """ReLU with a learned slope per channel (axis 1), or one shared slope (a 0-axis blob, as Caffe);
    slope filler default constant 0.25."""

    legacy_bottoms = (0,)           # LayerSetUp: bottom[0]->channels()

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.prelu_param
        if len(bottom_shapes[0]) < 2:      # Caffe checks this even with channel_shared
            raise self.error("needs a bottom with a channel axis (at least 2-D)")
        self.channel_shared = pp.channel_shared                   # default false
        filler = pp.filler if pp.HasField("filler") \
            else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob(() if self.channel_shared else (bottom_shapes[0][1],), filler)

    def forward(self, x):
        w = self.blobs[0]
        return F.prelu(x, w if w.dim() == 1 else w.reshape(-1))     # (no view op per call for the usual 1-D)


@register("Sigmoid")
class Sigmoid(Layer):
    def forward(self, x):
        return torch.sigmoid(x)


@register("TanH")
class TanH(Layer):
    def forward(self, x):
        return torch.tanh(x)


@register("Softmax")
class Softmax(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.axis = canonical_axis(param.softmax_param.axis, len(bottom_shapes[0]), self)   # default 1

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)
