"""caffe_torch.io (pycaffe's caffe.io), Classifier and Detector against NumPy references of pycaffe's documented
behaviour (the real caffe.io is compared in test_conformance_data.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

import caffe_torch
from caffe_torch import io as cio
from caffe_torch.classifier import Classifier
from caffe_torch.detector import Detector
from caffe_torch.proto import caffe_pb2


# ------------------------------------------------------------------------------------------ protobuf
def test_blobproto_legacy_and_nd_shapes():
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=range(6), diff=[0.5] * 6)
    arr = cio.blobproto_to_array(legacy)
    np.testing.assert_array_equal(arr, np.arange(6.0).reshape(1, 2, 1, 3))
    np.testing.assert_array_equal(cio.blobproto_to_array(legacy, return_diff=True), np.full((1, 2, 1, 3), 0.5))
    nd = caffe_pb2.BlobProto(data=range(24))
    nd.shape.dim.extend([2, 3, 4])
    np.testing.assert_array_equal(cio.blobproto_to_array(nd), np.arange(24.0).reshape(2, 3, 4))


def test_array_to_blobproto_round_trip_in_float32():
    x = np.random.default_rng(0).standard_normal((2, 3, 5))
    blob = cio.array_to_blobproto(x, diff=2 * x)
    assert list(blob.shape.dim) == [2, 3, 5] and not blob.HasField("num")
    np.testing.assert_array_equal(cio.blobproto_to_array(blob), x.astype(np.float32))
    np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), (2 * x).astype(np.float32))
    arrays = [x, np.arange(4.0)]
    back = cio.blobprotovector_str_to_arraylist(cio.arraylist_to_blobprotovector_str(arrays))
    assert len(back) == 2
    np.testing.assert_array_equal(back[0], x.astype(np.float32))
    np.testing.assert_array_equal(back[1], np.arange(4.0))


def test_datum_uint8_float_and_errors():
    u8 = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    d = cio.array_to_datum(u8, label=7)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 7)
    assert d.data == u8.tobytes() and not len(d.float_data)
    back = cio.datum_to_array(d)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, u8)
    f = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    d = cio.array_to_datum(f)
    assert not d.data and not d.HasField("label")
    np.testing.assert_array_equal(cio.datum_to_array(d), f.astype(np.float32).astype(np.float64))
    with pytest.raises(ValueError, match="Incorrect array shape"):
        cio.array_to_datum(np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------ images
def test_load_image_colour_gray_and_alpha(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((4, 5), 9, np.uint8)])).save(tmp_path / "rgba.png")
    im = cio.load_image(tmp_path / "rgb.png")
    assert im.dtype == np.float32 and im.shape == (4, 5, 3)
    np.testing.assert_allclose(im, rgb / 255.0, rtol=1e-6)
    np.testing.assert_allclose(cio.load_image(tmp_path / "rgba.png"), rgb / 255.0, rtol=1e-6)
    np.testing.assert_allclose(cio.load_image(tmp_path / "gray.png"), np.dstack([gray / 255.0] * 3), rtol=1e-6)
    np.testing.assert_allclose(cio.load_image(tmp_path / "gray.png", color=False), gray[:, :, None] / 255.0,
                               rtol=1e-6)
    # a colour file read as intensity: ITU-R 709 luma (scikit-image's rgb2gray)
    luma = (rgb / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(cio.load_image(tmp_path / "rgb.png", color=False)[:, :, 0], luma, atol=1e-6)


def test_resize_image_constant_range_and_identity():
    const = np.full((3, 4, 3), 0.25, np.float32)
    out = cio.resize_image(const, (5, 7))
    assert out.shape == (5, 7, 3) and out.dtype == np.float32 and np.all(out == np.float32(0.25))
    rng = np.random.default_rng(2)
    im = rng.uniform(-3, 5, (6, 8, 1)).astype(np.float32)
    up = cio.resize_image(im, (12, 16))
    assert up.shape == (12, 16, 1) and up.min() >= im.min() - 1e-5 and up.max() <= im.max() + 1e-5
    np.testing.assert_allclose(cio.resize_image(im, (6, 8)), im, atol=1e-5)
    # any other channel count: spline zoom; order 0 repeats pixels, so x2 nearest is a pixel doubling
    four = rng.uniform(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(cio.resize_image(four, (6, 4), interp_order=0),
                                  four.repeat(2, axis=0).repeat(2, axis=1))


def test_oversample_corners_centre_and_mirrors():
    ims = [np.random.default_rng(i).uniform(size=(7, 8, 2)).astype(np.float32) for i in range(2)]
    crops = cio.oversample(ims, (4, 5))
    assert crops.shape == (20, 4, 5, 2) and crops.dtype == np.float32
    # corners (0, 0), (0, 3), (3, 0), (3, 3); centre (3.5, 4) -/+ (2, 2.5) truncated to rows 1:5, cols 1:6
    origins = [(0, 0), (0, 3), (3, 0), (3, 3), (1, 1)]
    for n, im in enumerate(ims):
        for i, (y, x) in enumerate(origins):
            np.testing.assert_array_equal(crops[10 * n + i], im[y:y + 4, x:x + 5])
            np.testing.assert_array_equal(crops[10 * n + 5 + i], im[y:y + 4, x:x + 5][:, ::-1])


# ------------------------------------------------------------------------------------------ Transformer
def test_transformer_preprocess_and_deprocess():
    rng = np.random.default_rng(3)
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    mean = np.array([10.0, 20.0, 30.0])
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    img = rng.uniform(size=(4, 5, 3)).astype(np.float32)
    out = t.preprocess("data", img.copy())
    want = ((img.transpose(2, 0, 1)[::-1] * np.float32(255)) - mean[:, None, None].astype(np.float32)) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", out), img, atol=1e-6)
    # a different input size is resized first (to 4 x 5, channels kept)
    big = rng.uniform(size=(8, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(t.preprocess("data", big),
                               ((cio.resize_image(big, (4, 5)).transpose(2, 0, 1)[::-1] * 255) - mean[:, None, None])
                               * 0.5, rtol=1e-5, atol=1e-3)


def test_transformer_elementwise_mean_is_resized_and_checks():
    t = cio.Transformer({"data": (1, 1, 4, 6)})
    mean = np.arange(12, dtype=np.float64).reshape(1, 2, 6)
    t.set_mean("data", mean)
    lo, hi = mean.min(), mean.max()
    want = cio.resize_image(((mean - lo) / (hi - lo)).transpose(1, 2, 0), (4, 6)).transpose(2, 0, 1) * (hi - lo) + lo
    np.testing.assert_allclose(t.mean["data"], want)
    with pytest.raises(ValueError, match="not one of the net inputs"):
        t.set_raw_scale("label", 1)
    with pytest.raises(ValueError, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels"):
        t.set_mean("data", np.zeros(3))


# ------------------------------------------------------------------------------------------ Classifier / Detector
def forward_all_reference(net, blobs=None, **kwargs):
    """pycaffe's Net.forward_all: the inputs in net-batch-sized chunks (the last padded), outputs concatenated
    and trimmed. Used only while caffe_torch.Net has no forward_all of its own."""
    name, data = next(iter(kwargs.items()))
    batch = net.blobs[name].shape[0]
    outs = {k: [] for k in net.outputs}
    for start in range(0, len(data), batch):
        chunk = data[start:start + batch]
        padded = np.zeros((batch,) + chunk.shape[1:], np.float32)
        padded[:len(chunk)] = chunk
        for k, v in net.forward(**{name: padded}).items():
            outs[k].append(v[:len(chunk)].copy())
    return {k: np.concatenate(v) for k, v in outs.items()}


@pytest.fixture
def forward_all(monkeypatch):
    if not hasattr(caffe_torch.Net, "forward_all"):
        monkeypatch.setattr(caffe_torch.Net, "forward_all", forward_all_reference, raising=False)


CLASSIFIER_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5
        weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def softmax_ip(net, batch):
    w, b = (p.data.astype(np.float64) for p in net.params["ip"])
    z = batch.reshape(len(batch), -1) @ w.T + b
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def weights(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(CLASSIFIER_NET)
    caffe_torch.set_random_seed(4)
    caffe_torch.Net(str(tmp_path / "deploy.prototxt"), caffe_torch.TEST).save(str(tmp_path / "w.caffemodel"))
    return str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel")


def test_classifier_centre_crop_and_oversampled(weights, forward_all):
    torch.manual_seed(0)
    mean = np.array([0.1, 0.2, 0.3])
    clf = Classifier(*weights, image_dims=(6, 6), mean=mean, raw_scale=2.0, channel_swap=(2, 1, 0))
    rng = np.random.default_rng(5)
    images = [rng.uniform(size=(7, 9, 3)).astype(np.float32) for _ in range(3)]

    def prep(im):
        return (im.transpose(2, 0, 1)[::-1] * 2.0) - mean[:, None, None]

    resized = [cio.resize_image(im, (6, 6)) for im in images]
    centre = np.stack([prep(r[1:5, 1:5]) for r in resized])
    np.testing.assert_allclose(clf.predict(images, oversample=False), softmax_ip(clf, centre), rtol=1e-5, atol=1e-6)
    crops = cio.oversample(resized, (4, 4))
    want = softmax_ip(clf, np.stack([prep(c) for c in crops])).reshape(3, 10, 5).mean(1)
    np.testing.assert_allclose(clf.predict(images), want, rtol=1e-5, atol=1e-6)


def test_detector_windows_and_context_pad(weights, forward_all, tmp_path):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    image = rgb / np.float32(255)
    windows = [np.array([0, 0, 6, 5]), np.array([3, 4, 10, 12])]
    det = Detector(*weights, mean=np.array([0.5, 0.5, 0.5]))
    out = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in out] == [str(tmp_path / "im.png")] * 2
    assert all(d["window"] is w for d, w in zip(out, windows))
    batch = np.stack([cio.resize_image(image[w[0]:w[2], w[1]:w[3]].astype(np.float32), (4, 4)).transpose(2, 0, 1)
                      - 0.5 for w in windows])
    np.testing.assert_allclose(np.stack([d["prediction"] for d in out]), softmax_ip(det, batch), rtol=1e-5,
                               atol=1e-6)
    # context_pad 1 on a 4-pixel input: the box grows by 4 / 2; a window at the image corner is padded with
    # the mean (in raw input space) where the grown box leaves the image
    padded = Detector(*weights, mean=np.array([0.1, 0.2, 0.3]), raw_scale=2.0, context_pad=1)
    np.testing.assert_allclose(padded.crop_mean.reshape(3), [0.05, 0.1, 0.15])
    crop = padded.crop(image, np.array([0, 0, 3, 3]))
    assert crop.shape == (4, 4, 3)
    np.testing.assert_allclose(crop[0, 0], [0.05, 0.1, 0.15])
    inner = padded.crop(image, np.array([4, 4, 7, 7]))
    assert inner.shape == (4, 4, 3) and inner.min() >= 0 and inner.max() <= 1
