"""Python layers for the fuzz nets (`python_param { module: "tests.fuzz.pylayers" layer: ... }`). `import caffe`
gives the worker's engine: the real pycaffe, or caffe_torch bound to that name (tests/fuzz/worker.py). Every
layer defines setup and backward: real pycaffe's base class has none of its own (a subclass without them
recurses until RecursionError)."""

import caffe
import numpy as np


def _factor(layer) -> np.float32:
    return np.float32(float(layer.param_str) if layer.param_str else 1.0)


class LearnedScale(caffe.Layer):
    """y = w * k * x with one learnable scalar w (initialised by the fuzz's param values); k = param_str."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * _factor(self) * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        k = _factor(self)
        self.blobs[0].diff[...] += k * np.sum(top[0].diff * bottom[0].data, dtype=np.float32)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * k * top[0].diff


class TwoTops(caffe.Layer):
    """y1 = x + k, y2 = x * x."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
        top[1].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + _factor(self)
        top[1].data[...] = bottom[0].data * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff + 2 * bottom[0].data * top[1].diff


class SumAll(caffe.Layer):
    """y = k * sum(x), a (1,) top."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[0] = _factor(self) * np.sum(bottom[0].data, dtype=np.float32)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = _factor(self) * top[0].diff[0]
