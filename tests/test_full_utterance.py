"""speaker.evaluate's full-utterance protocol on a small caffe_torch net: equal to the crop protocol for an
utterance of exactly one crop, to a net built for the utterance's whole length, and, chunked, to the
time-weighted average of its chunks (fc5 is linear, so that average is computable from the chunks' fc5)."""

import numpy as np
import pytest

import caffe_torch as caffe
from speaker.evaluate import _chunk_bounds, embed, embed_full
from voxdata.frontend import crop_length, spectrogram


def net_text(frames, kernel_h):
    return f"""name: "tiny"
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 2 dim: 1 dim: {frames} dim: 257 }} shape {{ dim: 2 dim: 1 dim: 1 dim: 1 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 3 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "gaussian" std: 0.1 }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu2" type: "PReLU" bottom: "conv2" top: "conv2" }}
layer {{ name: "res4_3p" type: "Pooling" bottom: "conv2" top: "res4_3p"
  pooling_param {{ pool: AVE kernel_h: {kernel_h} kernel_w: 1 stride: 1 }} }}
layer {{ name: "fc5" type: "InnerProduct" bottom: "res4_3p" top: "fc5"
  inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
"""


def trunk_h(frames):
    h = frames
    for _ in range(2):
        h = (h + 2 - 3) // 2 + 1
    return h


def make_net(tmp_path, frames, weights=None):
    p = tmp_path / f"net{frames}.prototxt"
    p.write_text(net_text(frames, trunk_h(frames)))
    return caffe.Net(str(p), weights, caffe.TEST) if weights else caffe.Net(str(p), caffe.TEST)


def fc5_of(net, x):
    """fc5 of one exact-length input through a net built for that length (its pooling = the whole time)."""
    frames = net.blobs["data"].data.shape[2]
    spec = spectrogram(x[None])[:, None]
    assert spec.shape[2] == frames
    net.blobs["data"].reshape(1, 1, frames, 257)
    net.blobs["label"].reshape(1, 1, 1, 1)
    net.reshape()
    net.blobs["data"].data[...] = spec
    net.forward()
    return np.array(net.blobs["fc5"].data[0], dtype=np.float64)


@pytest.fixture
def setup(tmp_path):
    net = make_net(tmp_path, 20)
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    rng = np.random.default_rng(0)
    audio = {
        "one_crop": rng.integers(-3000, 3000, crop_length(20)).astype(np.int16),
        "long": rng.integers(-3000, 3000, crop_length(75)).astype(np.int16),
        "short": rng.integers(-3000, 3000, 1000).astype(np.int16),
    }
    return net, weights, audio


def test_one_crop_equals_crop_protocol(setup):
    net, _, audio = setup
    ids, full = embed_full(net, ["one_crop"], audio.__getitem__, max_frames=40, progress=False)
    _, crop = embed(net, ["one_crop"], lambda u, rng: audio[u][None], progress=False)
    np.testing.assert_allclose(full, crop, rtol=1e-5, atol=1e-6)
    assert net.blobs["data"].data.shape == (1, 1, 20, 257)


def test_whole_length_equals_net_of_that_length(setup, tmp_path):
    net, weights, audio = setup
    _, full = embed_full(net, ["long", "one_crop"], audio.__getitem__, max_frames=200, head_batch=1,
                         progress=False)
    ref = fc5_of(make_net(tmp_path, 75, weights), audio["long"])
    np.testing.assert_allclose(full[0], ref, rtol=1e-5, atol=1e-6)
    # a short utterance is repeated up to one crop
    _, short = embed_full(net, ["short"], audio.__getitem__, max_frames=40, progress=False)
    rep = np.resize(audio["short"], crop_length(20))
    np.testing.assert_allclose(short[0], fc5_of(make_net(tmp_path, 20, weights), rep), rtol=1e-5, atol=1e-6)


def test_chunked_is_the_time_weighted_average_of_its_chunks(setup, tmp_path):
    net, weights, audio = setup
    assert _chunk_bounds(75, 40) == [(0, 38), (38, 75)]
    assert _chunk_bounds(80, 40) == [(0, 40), (40, 80)]
    assert _chunk_bounds(81, 40) == [(0, 27), (27, 54), (54, 81)]
    _, full = embed_full(net, ["long"], audio.__getitem__, max_frames=40, progress=False)
    x = audio["long"]
    parts, weights_h = [], []
    for a, b in ((0, 38), (38, 75)):
        seg = x[160 * a : 160 * (b - 1) + 401]
        parts.append(fc5_of(make_net(tmp_path, b - a, weights), seg))
        weights_h.append(trunk_h(b - a))
    ref = np.average(parts, axis=0, weights=weights_h)
    np.testing.assert_allclose(full[0], ref, rtol=1e-5, atol=1e-6)


def test_errors(setup):
    net, _, audio = setup
    with pytest.raises(ValueError, match="twice the net's 20 frames"):
        embed_full(net, ["long"], audio.__getitem__, max_frames=39, progress=False)
    with pytest.raises(ValueError, match="empty audio"):
        embed_full(net, ["x"], lambda u: np.zeros(0, np.int16), progress=False)


@pytest.mark.caffe
def test_real_pycaffe_gives_the_same_full_utterance_embeddings(setup, tmp_path):
    """Real Caffe reshapes each layer inside Layer::Forward, so the trunk-only forward on a longer input works
    there too, chunked or not, and gives caffe_torch's numbers."""
    from speaker.engine import try_import_pycaffe

    real, why = try_import_pycaffe()
    if real is None:
        pytest.skip(f"no real pycaffe: {why}")
    net, weights, audio = setup
    real_net = real.Net(str(tmp_path / "net20.prototxt"), weights, real.TEST)
    for max_frames in (40, 200):
        _, a = embed_full(net, ["long", "one_crop", "short"], audio.__getitem__, max_frames=max_frames,
                          head_batch=2, progress=False)
        _, b = embed_full(real_net, ["long", "one_crop", "short"], audio.__getitem__, max_frames=max_frames,
                          head_batch=2, progress=False)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
