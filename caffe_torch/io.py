"""pycaffe's `caffe.io`: BlobProto / Datum <-> NumPy conversion, image loading and resizing, oversampling, and
the Transformer that prepares images for a net's input blob.

Behaviour and numbers are pycaffe's: images are float32 H x W x K in [0, 1] (scikit-image's conventions), resized
by `skimage.transform.resize` (1 or 3 channels, rescaled to [0, 1] around the call) or `scipy.ndimage.zoom`
(any other channel count), with the same arguments pycaffe passes. Two things pycaffe's own file gets wrong on a
current scikit-image, and which are done here as pycaffe intends: `load_image` uses `as_gray` (scikit-image
removed `as_grey`), and `resize_image` has its `resize` (the sdist's io.py lost that import).
"""

from collections.abc import Sequence

import numpy as np
import skimage
import skimage.io
import skimage.transform
from scipy.ndimage import zoom

from .proto import caffe_pb2


# ------------------------------------------------------------------------------------------ protobuf <-> array
def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as an array shaped by its legacy num/channels/height/width when any of them
    is set, else by `shape`. Its dtype is what NumPy makes of the repeated field, as in pycaffe (float32 with
    protobuf's upb backend, float64 where the field reads as Python floats)."""
    values = np.array(blob.diff if return_diff else blob.data)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> "caffe_pb2.BlobProto":
    """An N-D array (and optionally its diff, same shape; not checked, as pycaffe) as a BlobProto with `shape`."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(np.asarray(arr, dtype=np.float64).ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float64).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    """Arrays -> a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(serialized: bytes) -> list[np.ndarray]:
    """A serialized BlobProtoVector -> list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(serialized)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> "caffe_pb2.Datum":
    """A (C, H, W) array as a Datum: uint8 arrays as raw bytes (`data`), any other dtype as `float_data`."""
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, dtype=np.float64).ravel().tolist())
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum) -> np.ndarray:
    """A Datum's values as (C, H, W): uint8 for raw bytes, else float64 (the label is `datum.label`)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# ------------------------------------------------------------------------------------------ images
def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: (H, W, 3) RGB when `color` (gray images repeated, alpha dropped),
    else (H, W, 1) intensity."""
    img = skimage.img_as_float(skimage.io.imread(filename, as_gray=not color)).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize (H, W, K) to (new_dims[0], new_dims[1], K) as float32 with spline order `interp_order`."""
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            # scikit-image wants values in [0, 1]: rescale there and back
            im_std = (im - im_min) / (im_max - im_min)
            resized_std = skimage.transform.resize(im_std, new_dims, order=interp_order, mode="constant")
            resized = resized_std * (im_max - im_min) + im_min
        else:
            # a constant image (no range to rescale)
            return np.full((new_dims[0], new_dims[1], im.shape[-1]), im_min, dtype=np.float32)
    else:
        factors = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = zoom(im, factors + (1,), order=interp_order)
    return resized.astype(np.float32)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """The four corner crops and the centre crop of each (H, W, K) image, then the same five mirrored
    left-right: float32 (10 N, crop_h, crop_w, K)."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    centre = im_shape[:2] / 2.0
    boxes = np.empty((5, 4), dtype=int)       # (y0, x0, y1, x1); float corners truncate as in pycaffe
    corners = [(y, x) for y in (0, im_shape[0] - crop_dims[0]) for x in (0, im_shape[1] - crop_dims[1])]
    for i, (y, x) in enumerate(corners):
        boxes[i] = (y, x, y + crop_dims[0], x + crop_dims[1])
    boxes[4] = np.concatenate([centre - crop_dims / 2.0, centre + crop_dims / 2.0])
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    for n, im in enumerate(images):
        for i, (y0, x0, y1, x1) in enumerate(boxes):
            crops[10 * n + i] = im[y0:y1, x0:x1, :]
            crops[10 * n + 5 + i] = im[y0:y1, x0:x1, :][:, ::-1, :]
    return crops


# ------------------------------------------------------------------------------------------ Transformer
class Transformer:
    """Prepares (H', W', K) images for the input blobs `inputs` ({name: blob shape (N, K, H, W)}):

    preprocess: float32 -> resize to (H, W) -> transpose -> channel swap -> * raw_scale -> - mean -> * input_scale
    deprocess:  the inverse, in reverse order (on a squeezed copy).
    """

    def __init__(self, inputs: dict[str, Sequence[int]]):
        self.inputs = inputs
        self.transpose: dict[str, Sequence[int]] = {}
        self.channel_swap: dict[str, Sequence[int]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise ValueError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """(H', W', K) image -> (K, H, W) float32 input for blob `in_`."""
        self._check_input(in_)
        x = data.astype(np.float32, copy=False)
        in_dims = tuple(self.inputs[in_][2:])
        if x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_]), :, :]
        # in place from here, as pycaffe (its results keep float32 with NumPy's casting rules)
        if in_ in self.raw_scale:
            x *= self.raw_scale[in_]
        if in_ in self.mean:
            x -= self.mean[in_]
        if in_ in self.input_scale:
            x *= self.input_scale[in_]
        return x

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Undo `preprocess` (except the resize) on a (K, H, W) array."""
        self._check_input(in_)
        x = data.copy().squeeze()
        if in_ in self.input_scale:
            x /= self.input_scale[in_]
        if in_ in self.mean:
            x += self.mean[in_]
        if in_ in self.raw_scale:
            x /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order applied to the image, e.g. (2, 0, 1) for H x W x K -> K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order taken after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Multiplier applied before the mean is subtracted (255 for nets trained on [0, 255] images)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Mean subtracted after raw_scale: one value per channel (K,), or an elementwise (K, H, W) / (H, W)
        mean, resized to the input's H x W when it differs."""
        self._check_input(in_)
        shape = mean.shape
        if mean.ndim == 1:
            if shape[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3:
                raise ValueError("Mean shape invalid")
            in_shape = tuple(self.inputs[in_][1:])
            if shape != in_shape:
                lo, hi = mean.min(), mean.max()
                unit = (mean - lo) / (hi - lo)
                mean = resize_image(unit.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1)) * (hi - lo) + lo
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Multiplier applied last, after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale
