"""speaker.evaluate's full-utterance protocol on a small caffe_torch net: equal to the crop protocol for an
utterance of exactly one crop, to a net built for the utterance's whole length, and, chunked, to the
time-weighted average of its chunks (fc5 is linear, so that average is computable from the chunks' fc5).

The nets compute in float64, so these identities hold to the arithmetic's rounding whatever the machine: the
protocol hands the pooled average to fc5 as float32 (each value within U32 of the float64 one, so fc5 within
U32 |W5| @ |pooled|) and returns float32 embeddings (within U32 of their value), and two float64 paths (other
input lengths, other summation orders) differ by at most 2 gamma_K M (tests/fp.py), K < 10^3 terms of
magnitude M < 10^2 here (z-scored spectrograms, weights of std 0.1): below FLOAT64_PATHS."""

import numpy as np
import pytest
import torch
from fp import U32, assert_within

import caffe_torch as caffe
from speaker.evaluate import _chunk_bounds, _device_spectrogram, embed, embed_full
from voxdata.frontend import crop_length


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
    return caffe.Net(str(p), weights=weights, phase=caffe.TEST, dtype=torch.float64)


FLOAT64_PATHS = 1e-9         # >= 2 gamma_K(U64) K M for K = 10^3, M = 10^2 (module docstring): ~5e-11


def assert_same(embedding, float64_ref, *ref_nets):
    """An embedding of the protocol against a float64 reference (or another embedding of the protocol) of the
    same quantity; ref_nets: nets whose res4_3p hold pooled features at least as large as the protocol's
    (they bound the fc5 input rounding)."""
    pooled = np.max([np.abs(n.blobs["res4_3p"].data).reshape(n.blobs["res4_3p"].data.shape[0], -1).max(axis=0)
                     for n in ref_nets], axis=0)
    fc5_input = 2 * U32 * (np.abs(ref_nets[0].params["fc5"][0].data) @ pooled)
    assert_within(embedding, float64_ref, 2 * U32 * np.abs(float64_ref) + fc5_input + FLOAT64_PATHS)


def fc5_of(net, x):
    """fc5 of one exact-length input through a net built for that length (its pooling = the whole time)."""
    frames = net.blobs["data"].data.shape[2]
    spec = _device_spectrogram(net, x[None]).numpy()      # the protocols' front end on a caffe_torch net
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
    assert_same(full, crop, net)
    assert net.blobs["data"].data.shape == (1, 1, 20, 257)


def test_whole_length_equals_net_of_that_length(setup, tmp_path):
    net, weights, audio = setup
    _, full = embed_full(net, ["long", "one_crop"], audio.__getitem__, max_frames=200, head_batch=1,
                         progress=False)
    net75 = make_net(tmp_path, 75, weights)
    assert_same(full[0], fc5_of(net75, audio["long"]), net75)
    # a short utterance is repeated up to one crop
    _, short = embed_full(net, ["short"], audio.__getitem__, max_frames=40, progress=False)
    rep = np.resize(audio["short"], crop_length(20))
    net20 = make_net(tmp_path, 20, weights)
    assert_same(short[0], fc5_of(net20, rep), net20)


def test_chunked_is_the_time_weighted_average_of_its_chunks(setup, tmp_path):
    net, weights, audio = setup
    assert _chunk_bounds(75, 40) == [(0, 38), (38, 75)]
    assert _chunk_bounds(80, 40) == [(0, 40), (40, 80)]
    assert _chunk_bounds(81, 40) == [(0, 27), (27, 54), (54, 81)]
    _, full = embed_full(net, ["long"], audio.__getitem__, max_frames=40, progress=False)
    x = audio["long"]
    parts, weights_h, nets = [], [], []
    for a, b in ((0, 38), (38, 75)):
        seg = x[160 * a : 160 * (b - 1) + 401]
        nets.append(make_net(tmp_path, b - a, weights))
        parts.append(fc5_of(nets[-1], seg))
        weights_h.append(trunk_h(b - a))
    ref = np.average(parts, axis=0, weights=weights_h)
    assert_same(full[0], ref, *nets)        # (the pooled average is at most the larger of the two chunks')


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
        # a: float64 rounded to float32; b: Caffe in float32, within (sum of its layers' gamma_(K+1)) M of the
        # exact value, M the output of the same net with |weights| on the largest input (tests/fp.py)
        assert_within(b, a, U32 * np.abs(a) + float32_forward_bound(tmp_path, weights, max_frames))


def float32_forward_bound(tmp_path, weights, max_frames):
    """Rounding bound of a float32 forward of net_text on a z-scored spectrogram of at most max_frames frames:
    a conv/inner-product output is a (K + 1)-term sum (bias included), the average pool an H-term one, PReLU
    and the division exact to u; summed over the layers, times the output of the all-|weights| net on the
    largest possible input (a z-score of F values is at most sqrt(F - 1)), which bounds every partial sum."""
    from fp import gamma

    net = make_net(tmp_path, 20, weights)
    n_terms = []
    for blobs in net.params.values():
        w = blobs[0].data
        if w.ndim > 1:                                   # conv / inner product: K inputs per output (+ bias)
            n_terms.append(w.size // w.shape[0] + 1)
        for blob in blobs:
            blob.data[...] = np.abs(blob.data)          # PReLU slopes too: the inputs are all >= 0 anyway
    n_terms.append(trunk_h(max_frames) + 2)              # the average pool: a sum of H, then a division
    net.blobs["data"].data[...] = np.sqrt(max_frames - 1)
    net.forward()
    # the largest time step of the trunk (the padded edges are smaller) in place of the average, then fc5
    net.blobs["res4_3p"].data[...] = net.blobs["conv2"].data.max(axis=2, keepdims=True)
    net.forward(start="fc5")
    magnitude = float(np.abs(net.blobs["fc5"].data).max())
    return sum(gamma(k, U32) for k in n_terms) * magnitude
