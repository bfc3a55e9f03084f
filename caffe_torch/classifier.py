"""pycaffe's `caffe.Classifier`: a TEST-phase Net that classifies H x W x K images, resizing them to
`image_dims` and averaging the predictions over 10 oversampled crops (or taking the centre crop)."""

import numpy as np

from . import io as caffe_io
from .net import TEST, Net


def input_transformer(net, mean, input_scale, raw_scale, channel_swap) -> "caffe_io.Transformer":
    """The Transformer of Classifier and Detector for the net's first input: H x W x K images to K x H x W,
    then the given mean / input_scale / raw_scale / channel_swap (each only when given)."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """`Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None)`: the preprocessing options are the Transformer's, for the net's first input (images
    are transposed to K x H x W). `image_dims` (default: the input blob's H x W) is the size images are
    resized to before cropping."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = image_dims if image_dims is not None and len(image_dims) else self.crop_dims

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """(N, classes) output of the net's first output blob for N (H, W, K) images: the mean over the 10
        oversampled crops of each, or (oversample=False) the centre crop's."""
        images = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]),
                          dtype=np.float32)
        for i, im in enumerate(inputs):
            images[i] = caffe_io.resize_image(im, self.image_dims)
        if oversample:
            images = caffe_io.oversample(images, self.crop_dims)
        else:
            centre = np.array(self.image_dims) / 2.0
            box = np.concatenate([centre - self.crop_dims / 2.0, centre + self.crop_dims / 2.0]).astype(int)
            images = images[:, box[0]:box[2], box[1]:box[3], :]
        in_ = self.inputs[0]
        batch = np.zeros(np.array(images.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for i, im in enumerate(images):
            batch[i] = self.transformer.preprocess(in_, im)
        predictions = self.forward_all(**{in_: batch})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
