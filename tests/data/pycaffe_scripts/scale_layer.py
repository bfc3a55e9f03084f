"""A Python layer for train_netspec_python.py: top = s * bottom with one learnable scalar s (pycaffe API)."""

import json

import caffe


class LearnedScale(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 1 or len(top) != 1:
            raise Exception("LearnedScale takes one bottom and one top")
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = json.loads(self.param_str)["init"]

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = (bottom[0].data * top[0].diff).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff
