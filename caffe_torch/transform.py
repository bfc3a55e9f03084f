"""Caffe's DataTransformer (TransformationParameter) and the image decoding the data layers need.

Images are handled as Caffe holds them after OpenCV decodes them: uint8, channels in BGR order (gray: one
channel), laid out C x H x W once transformed. Pillow decodes; the channel order, the grayscale conversions and
the bilinear resize follow OpenCV's (cv::imread / cv::imdecode / cv::resize INTER_LINEAR) bit for bit, because
that is what Caffe's ImageData and Data layers see. (Checked against opencv-python-headless 4.10: resize on 921
random size pairs, 1 to 4 channels, and decoding of PNG (gray, RGB, RGBA, palette), JPEG, BMP and TIFF in all
three read modes, EXIF orientation included: no pixel differs.)

Transformation (Caffe's DataTransformer::Transform, for a raw Datum and for a decoded image alike), on a
(C, H, W) array `x`:
    crop:   crop_size > 0 takes a crop_size x crop_size window; TRAIN: offsets drawn uniformly from
            [0, H - crop_size] and [0, W - crop_size]; TEST: the centre, ((H - crop) // 2, (W - crop) // 2)
    mirror: TRAIN or TEST alike, a coin flip per image (mirror: true) flips the window left-right
    mean:   mean_file (a binaryproto of shape 1 x C x H x W, the *uncropped* size: the window's part of it is
            subtracted) or mean_value (one value, or one per channel); not both
    scale:  (x - mean) * scale, in float32 as Caffe computes it
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .proto import caffe_pb2


class TransformError(ValueError):
    """A transformation that cannot be applied (the caller names the layer and file)."""


# ------------------------------------------------------------------------------------------ decoding
def _bgr_to_gray(bgr: np.ndarray) -> np.ndarray:
    """OpenCV's codec conversion to gray (icvCvt_BGR2Gray_8u, used for BMP, TIFF, ...): (H, W, 3) -> (H, W),
    Y = (1868 B + 9617 G + 4899 R + 2^13) >> 14."""
    b, g, r = (bgr[..., i].astype(np.int32) for i in range(3))
    return ((b * 1868 + g * 9617 + r * 4899 + (1 << 13)) >> 14).astype(np.uint8)


def _png_rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """libpng's png_set_rgb_to_gray(0.299, 0.587) as OpenCV's PNG decoder asks for it: 15-bit weights
    (9797, 19234, 3737), truncated; alpha is dropped, not composited. (H, W, 3) RGB -> (H, W)."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    return ((r * 9797 + g * 19234 + b * 3737) >> 15).astype(np.uint8)


def image_to_hwc(img: Image.Image, color: bool | None, file_format: str | None = None) -> np.ndarray:
    """A loaded Pillow image as OpenCV decodes it: uint8 (H, W, C), colour in BGR(A) order.

    color True: 3 channels (cv::IMREAD_COLOR); False: 1 channel (IMREAD_GRAYSCALE: libpng's conversion for PNG,
    the JPEG decoder's own luma for JPEG (see `_open`), the codec conversion otherwise); None: the file's own
    channels, gray 1, colour 3, with alpha 4 (IMREAD_UNCHANGED, Caffe's DecodeDatumToCVMatNative). 16-bit gray
    keeps its high byte, as OpenCV's 8-bit reads do. `file_format`: Pillow's name of the file's format
    (default img.format)."""
    file_format = file_format or img.format
    if img.mode.startswith("I;16") or img.mode == "I":
        if color is None:
            raise TransformError(f"a {img.mode} (16/32-bit) image: Caffe's DataTransformer takes 8-bit images "
                                 "only (decode it with force_color or force_gray)")
        wide = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        gray = (wide >> (24 if img.mode == "I" else 8)).astype(np.uint8)
    elif img.mode in ("L", "1"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
    else:
        gray = None
    if gray is not None:
        return np.repeat(gray[:, :, None], 3, axis=2) if color else gray[:, :, None]
    if color is None and ("A" in img.mode or (img.mode == "P" and "transparency" in img.info)):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        return np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if color is False:
        gray = _png_rgb_to_gray(rgb) if file_format == "PNG" else _bgr_to_gray(rgb[:, :, ::-1])
        return gray[:, :, None]
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _open(source, color: bool | None) -> np.ndarray:
    with Image.open(source) as img:
        file_format = img.format
        if color is False and file_format == "JPEG":
            img.draft("L", img.size)        # libjpeg's own grayscale output (the luma plane), as OpenCV's
        img.load()
        if color is not None:
            # OpenCV (3.1 on) turns the image upright by its EXIF orientation, except with IMREAD_UNCHANGED
            img = ImageOps.exif_transpose(img)
        return image_to_hwc(img, color, file_format)


def decode_bytes(data: bytes, color: bool | None) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...) to uint8 (H, W, C), BGR order (see image_to_hwc)."""
    try:
        return _open(io.BytesIO(data), color)
    except (UnidentifiedImageError, OSError) as exc:
        raise TransformError(f"cannot decode encoded image ({len(data)} bytes): {exc}") from None


def read_image(path, color: bool) -> np.ndarray:
    """cv::imread(path, color ? IMREAD_COLOR : IMREAD_GRAYSCALE) as uint8 (H, W, 3 or 1)."""
    try:
        return _open(path, color)
    except FileNotFoundError:
        raise TransformError(f"could not open or find file {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise TransformError(f"cannot read image {path}: {exc}") from None


def _linear_taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """OpenCV's INTER_LINEAR taps along one axis: for each of `dst` samples, source indices i0, i1 and 11-bit
    fixed-point weights w0, w1 (w0 + w1 = 2048). Sample d sits at (d + 0.5) * src / dst - 0.5 (float32). Past
    the edges both indices clamp to the edge; OpenCV also zeroes the fraction there along x (`clamp_weights`)
    but keeps it along y, where the two taps then read the same row."""
    scale = 1.0 / (np.float64(dst) / np.float64(src))          # OpenCV: 1 / inv_scale, in double
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = (f - i0.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        low, high = i0 < 0, i0 >= src - 1
        f[low | high] = 0
        i0[low], i0[high] = 0, src - 1
    i1 = np.clip(i0 + 1, 0, src - 1)
    i0 = np.clip(i0, 0, src - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    return i0, i1, w0, w1


def resize_linear(hwc: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv::resize(img, Size(width, height)) with INTER_LINEAR for uint8 (H, W, C), bit for bit as OpenCV 4
    computes it: a horizontal pass with 11-bit weights (exact integers), then a vertical pass in OpenCV's
    vectorised fixed-point form, ((r0 >> 4) * w0 >> 16) + ((r1 >> 4) * w1 >> 16), rounded by (+ 2) >> 2."""
    if hwc.shape[0] == height and hwc.shape[1] == width:
        return hwc.copy()
    src = hwc.astype(np.int64)
    y0, y1, a0, a1 = _linear_taps(hwc.shape[0], height, clamp_weights=False)
    x0, x1, b0, b1 = _linear_taps(hwc.shape[1], width, clamp_weights=True)
    rows = src[:, x0, :] * b0[None, :, None] + src[:, x1, :] * b1[None, :, None]     # (H, width, C), x 2048
    a0, a1 = a0[:, None, None], a1[:, None, None]
    out = ((((rows[y0] >> 4) * a0) >> 16) + (((rows[y1] >> 4) * a1) >> 16) + 2) >> 2  # (height, width, C)
    return np.clip(out, 0, 255).astype(np.uint8)


def load_mean_file(path) -> np.ndarray:
    """A binaryproto mean (BlobProto, 1 x C x H x W or C x H x W) as float32 (C, H, W)."""
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(Path(path).read_bytes())
    except FileNotFoundError:
        raise TransformError(f"mean_file {path}: no such file") from None
    except Exception as exc:  # protobuf's DecodeError and friends
        raise TransformError(f"mean_file {path}: not a binary BlobProto ({exc})") from None
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise TransformError(f"mean_file {path}: {values.size} values for shape {shape}")
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise TransformError(f"mean_file {path}: expected a 1 x C x H x W blob, got shape {shape}")
    return values.reshape(shape)


# ------------------------------------------------------------------------------------------ transformer
class DataTransformer:
    """Caffe's DataTransformer for one layer: `shape(c, h, w)` (InferBlobShape) and `__call__(chw)`.

    Random choices (TRAIN crop offsets, mirror coins) come from `generator` (the net's torch generator, which
    caffe.set_random_seed reseeds); they cannot reproduce Caffe's own random stream."""

    def __init__(self, param: "caffe_pb2.TransformationParameter", phase: int, generator: torch.Generator):
        self.scale = np.float32(param.scale)           # default 1
        self.mirror = param.mirror                     # default false
        self.crop = int(param.crop_size)               # default 0 (no crop)
        self.phase = phase
        self.generator = generator
        if param.force_color and param.force_gray:
            raise TransformError("transform_param: cannot set both force_color and force_gray")
        # decoding of encoded Datums: None = the image's own channels
        self.color: bool | None = True if param.force_color else (False if param.force_gray else None)
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        self.mean_file: np.ndarray | None = None
        if param.HasField("mean_file"):
            if len(self.mean_values):
                raise TransformError("transform_param: cannot specify mean_file and mean_value at the same time")
            self.mean_file = load_mean_file(param.mean_file)

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        if self.crop:
            return (channels, self.crop, self.crop)
        return (channels, height, width)

    def __call__(self, chw: np.ndarray) -> np.ndarray:
        """(C, H, W) uint8 or float -> float32 (C, H', W')."""
        c, h, w = chw.shape
        if self.crop and (h < self.crop or w < self.crop):
            raise TransformError(f"crop_size {self.crop} is larger than the {h} x {w} image")
        do_mirror = self.mirror and self._randint(2) == 1
        h_off = w_off = 0
        ch, cw = h, w
        if self.crop:
            ch = cw = self.crop
            if self.phase == caffe_pb2.TRAIN:
                h_off, w_off = self._randint(h - self.crop + 1), self._randint(w - self.crop + 1)
            else:
                h_off, w_off = (h - self.crop) // 2, (w - self.crop) // 2
        x = chw[:, h_off:h_off + ch, w_off:w_off + cw].astype(np.float32)
        if self.mean_file is not None:
            if self.mean_file.shape != (c, h, w):
                raise TransformError(f"mean_file has shape {self.mean_file.shape}, the image is {(c, h, w)}")
            x = x - self.mean_file[:, h_off:h_off + ch, w_off:w_off + cw]
        elif len(self.mean_values):
            if len(self.mean_values) not in (1, c):
                raise TransformError(f"specify either 1 mean_value or as many as channels: {c} "
                                     f"(got {len(self.mean_values)})")
            x = x - (self.mean_values if len(self.mean_values) == c else
                     np.repeat(self.mean_values, c))[:, None, None]
        x = x * self.scale
        if do_mirror:
            x = x[:, :, ::-1]
        return np.ascontiguousarray(x, dtype=np.float32)
