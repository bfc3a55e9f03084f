"""speaker.evaluate on a fake net with pycaffe's surface: the crop-averaging protocol, checked numerically.

The fake net is strict where pycaffe is strict: `forward` takes LAYER names for start/end, keyword blobs
only if they are exactly the net inputs, inputs keep their shape until `blob.reshape` + `net.reshape()`,
and an accuracy-like layer checks that the label batch matches (as Caffe's Accuracy layer CHECKs).
"""

from collections import OrderedDict

import numpy as np
import pytest
from fp import assert_within

from speaker.evaluate import crop_averaged_forward, embed, head_layer, identify, pool_layer
from voxdata.frontend import crop_length, spectrogram

FRAMES = 12  # short crops keep the test fast; the protocol does not depend on the length
BINS = 257
EMB = 6
CLASSES = 8


class Blob:
    def __init__(self, shape):
        self.data = np.zeros(shape, dtype=np.float32)

    @property
    def shape(self):
        return self.data.shape

    def reshape(self, *shape):
        self.data = np.full(shape, np.nan, dtype=np.float32)  # uninitialised, as far as callers may assume


def pool_fn(x):
    """(N, 1, F, 257) -> (N, 2, 1, 257): mean over time of x^2, and max over time (both nonlinear)."""
    return np.stack([(x[:, 0] ** 2).mean(axis=1), x[:, 0].max(axis=1)], axis=1)[:, :, None, :]


class FakeNet:
    """input -> pool (res4_3p) -> drop (in place) -> fc5 = tanh(W5 flat) -> fc6 = W6 fc5 -> acc."""

    def __init__(self, batch=4, extra_layer=False):
        rng = np.random.default_rng(123)
        self.W5 = rng.normal(size=(EMB, 2 * BINS)).astype(np.float32) * 0.05
        self.W6 = rng.normal(size=(CLASSES, EMB)).astype(np.float32)
        self.inputs = []  # as real pycaffe with an Input layer: the blobs are the Input layer's tops
        self.outputs = ["acc"]
        layers = [("input", [], ["data", "label"]), ("pool", ["data"], ["res4_3p"])]
        if extra_layer:
            layers.append(("silence", ["label"], []))
        layers += [
            ("drop", ["res4_3p"], ["res4_3p"]),
            ("fc5", ["res4_3p"], ["fc5"]),
            ("fc6", ["fc5"], ["fc6"]),
            ("acc", ["fc6", "label"], ["acc"]),
        ]
        self._layer_names = [n for n, _, _ in layers]
        self.bottom_names = OrderedDict((n, b) for n, b, _ in layers)
        self.top_names = OrderedDict((n, t) for n, _, t in layers)
        self.blobs = OrderedDict(data=Blob((batch, 1, FRAMES, BINS)), label=Blob((batch, 1, 1, 1)))
        self.blobs["label"].data[...] = 7  # stale labels from some earlier use
        self.forward_log = []  # (start, end, batch) of every forward
        self.reshape()

    def _shapes(self):
        n = self.blobs["data"].shape[0]
        return {"res4_3p": (n, 2, 1, BINS), "fc5": (n, EMB), "fc6": (n, CLASSES), "acc": ()}

    def reshape(self):
        for name, shape in self._shapes().items():
            if name not in self.blobs or self.blobs[name].shape != shape:
                self.blobs[name] = Blob(shape)

    def _run(self, layer):
        b = self.blobs

        def put(name, value):
            if b[name].data.shape != value.shape:
                raise RuntimeError(f"{layer}: top {name} {value.shape} != {b[name].data.shape} (no reshape?)")
            b[name].data[...] = value

        if layer == "pool":
            if b["data"].shape[1:] != (1, FRAMES, BINS):
                raise RuntimeError("data blob has the wrong sample shape")
            put("res4_3p", pool_fn(b["data"].data))
        elif layer == "fc5":
            x = b["res4_3p"].data.reshape(b["res4_3p"].shape[0], -1)
            put("fc5", np.tanh(x @ self.W5.T))
        elif layer == "fc6":
            put("fc6", b["fc5"].data @ self.W6.T)
        elif layer == "acc":
            if b["label"].shape[0] != b["fc6"].shape[0]:
                raise RuntimeError("Check failed: label count must match the number of predictions")
            if not np.isin(b["label"].data, np.arange(CLASSES)).all():
                raise RuntimeError("label out of range")
            put("acc", np.float32(0.0))

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        names = list(self._layer_names)
        s = names.index(start) if start is not None else 0
        e = names.index(end) if end is not None else len(names) - 1
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise Exception("Input blob arguments do not match net inputs.")
            for k, v in kwargs.items():
                if v.shape[0] != self.blobs[k].shape[0]:
                    raise Exception("Input is not batch sized")
                self.blobs[k].data[...] = v
        self.forward_log.append((start, end, self.blobs["data"].shape[0]))
        for layer in names[s : e + 1]:
            self._run(layer)
        outs = self.top_names[end] if end is not None else self.outputs
        return {o: self.blobs[o].data for o in outs}


def make_provider(n_crops):
    length = crop_length(FRAMES)

    def provider(path, rng):
        # Deterministic in (path, rng): noise plus a per-utterance tone so utterances differ.
        k = int(path.split("_")[1])
        t = np.arange(length)
        base = 3000 * np.sin(2 * np.pi * (200 + 50 * k) * t / 16000)
        noise = rng.normal(0, 500, size=(n_crops, length))
        return np.clip(base + noise, -32768, 32767).astype(np.int16)

    return provider


def expected_outputs(utts, provider, seed):
    """The protocol written out directly: average the pooled features, then the head, in float64."""
    net = FakeNet()
    W5, W6 = net.W5.astype(np.float64), net.W6.astype(np.float64)
    rng = np.random.default_rng(seed)
    fc5, fc6, single = [], [], []
    for u in utts:
        spec = spectrogram(provider(u, rng))[:, None].astype(np.float64)
        pooled = pool_fn(spec)  # (n_crops, 2, 1, 257)
        e = np.tanh(pooled.mean(axis=0).reshape(-1) @ W5.T)
        fc5.append(e)
        fc6.append(W6 @ e)
        single.append(np.tanh(pooled.reshape(len(pooled), -1) @ W5.T).mean(axis=0))  # the WRONG order
    return np.array(fc5), np.array(fc6), np.array(single)


def float32_bounds(utts, provider, seed, fc5, fc6):
    """How far the FakeNet's float32 arithmetic may put fc5 and fc6 from expected_outputs (tests/fp.py): the
    pooled features are means of FRAMES squares (nonnegative: relative error (FRAMES + 1) u) or maxima (exact),
    averaged over the crops and rounded to float32 (2 u more); fc5 = tanh(a 2*257-term sum), tanh 1-Lipschitz,
    then rounded (u |fc5|); fc6 a 6-term sum of those, rounded."""
    from fp import U32, gamma

    net = FakeNet()
    W5, W6 = np.abs(net.W5.astype(np.float64)), np.abs(net.W6.astype(np.float64))
    rng = np.random.default_rng(seed)
    mag5 = np.array([W5 @ np.abs(pool_fn(spectrogram(provider(u, rng))[:, None].astype(np.float64)).mean(axis=0))
                     .reshape(-1) for u in utts])
    b5 = (gamma(W5.shape[1], U32) + (FRAMES + 3) * U32) * mag5 + U32 * np.abs(fc5)
    b6 = gamma(EMB, U32) * (np.abs(fc5) @ W6.T) + b5 @ W6.T + U32 * np.abs(fc6)
    return b5, b6


UTTS = [f"utt_{i}" for i in range(5)]


def test_layer_lookup():
    net = FakeNet()
    assert pool_layer(net) == "pool"
    assert head_layer(net) == "drop"  # the in-place consumer right after the pooling layer
    with pytest.raises(ValueError, match="no layer of the net produces blob 'nope'"):
        pool_layer(net, "nope")
    with pytest.raises(ValueError, match=r"\['silence'\] sit between 'pool'"):
        head_layer(FakeNet(extra_layer=True))


@pytest.mark.parametrize("batch, head_batch", [(7, 64), (3, 2), (1, 1), (50, 5)])
def test_embed_averages_pooled_features_over_crops(batch, head_batch):
    provider = make_provider(n_crops=7)
    net = FakeNet()
    ids, emb = embed(net, UTTS, provider, rng=11, batch=batch, head_batch=head_batch, progress=False)
    ref5, ref6, wrong = expected_outputs(UTTS, provider, 11)
    assert ids == UTTS
    assert emb.shape == (5, EMB) and emb.dtype == np.float32
    assert_within(emb, ref5, float32_bounds(UTTS, provider, 11, ref5, ref6)[0])
    assert np.abs(emb - wrong).max() > 1e-3  # averaging embeddings instead would be detected
    # Pooling forwards in chunks of `batch` crops, then one head forward per group of head_batch utts.
    pool_runs = [n for s, e, n in net.forward_log if e == "pool"]
    head_runs = [n for s, e, n in net.forward_log if s == "drop"]
    per_utt = [min(batch, 7 - i) for i in range(0, 7, batch)]
    assert pool_runs == per_utt * 5
    assert sum(head_runs) == 5 and max(head_runs) <= head_batch


def test_identify_topk_against_reference():
    provider = make_provider(n_crops=4)
    _, ref6, _ = expected_outputs(UTTS, provider, 5)
    order = np.argsort(-ref6, axis=1)  # classes by decreasing score
    # utt 0, 1: correct; 2: ranked 3rd (top-5 hit); 3: ranked 6th; 4: ranked last
    labels = np.array([order[0, 0], order[1, 0], order[2, 2], order[3, 5], order[4, -1]])
    res = identify(FakeNet(), UTTS, labels, provider, rng=5, batch=3, head_batch=2, progress=False)
    assert res == {"top1": pytest.approx(2 / 5), "top5": pytest.approx(3 / 5), "n": 5}


def test_seed_reproducible_and_generator_accepted():
    provider = make_provider(n_crops=3)
    _, a = embed(FakeNet(), UTTS, provider, rng=1, progress=False)
    _, b = embed(FakeNet(), UTTS, provider, rng=np.random.default_rng(1), progress=False)
    _, c = embed(FakeNet(), UTTS, provider, rng=2, progress=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_several_output_blobs_at_once():
    provider = make_provider(n_crops=2)
    out = crop_averaged_forward(FakeNet(), UTTS, provider, ["fc5", "fc6"], rng=3, progress=False)
    ref5, ref6, _ = expected_outputs(UTTS, provider, 3)
    b5, b6 = float32_bounds(UTTS, provider, 3, ref5, ref6)
    assert_within(out["fc5"], ref5, b5)
    assert_within(out["fc6"], ref6, b6)


def test_errors():
    provider = make_provider(n_crops=2)
    with pytest.raises(ValueError, match="labels of shape"):
        identify(FakeNet(), UTTS, [0, 1], provider, progress=False)
    with pytest.raises(ValueError, match="no blob 'fc7'"):
        crop_averaged_forward(FakeNet(), UTTS, provider, ["fc7"], progress=False)
    with pytest.raises(ValueError, match="no utterances"):
        embed(FakeNet(), [], provider, progress=False)

    def short(path, rng):
        return np.zeros((2, crop_length(FRAMES + 3)), np.int16)

    with pytest.raises(ValueError, match=r"utt_0: crops of 2641 samples give inputs \(1, 15, 257\)"):
        embed(FakeNet(), UTTS, short, progress=False)

    def flat(path, rng):
        return np.zeros(crop_length(FRAMES), np.int16)

    with pytest.raises(ValueError, match=r"utt_0: crops_provider must return \(n_crops, L\)"):
        embed(FakeNet(), UTTS, flat, progress=False)


def test_device_path_matches_numpy_spectrograms_and_reads_back_once(tmp_path):
    """On a caffe_torch net the crops' spectrograms are computed with spectrogram_torch on the net's device and
    every result stays there until the end: the scores equal the NumPy path's (a spectrogram differs by
    float32 rounding, < 1e-5, so the outputs of this small net by less than 1e-4 relative), and the whole run
    of 6 utterances in 12 trunk batches and 3 head batches reads the device once (host syncs counted on the
    CPU)."""
    from fp import U32, assert_within
    from test_e2e import FRAMES, SOFTMAX_HEAD, TRUNK
    from test_voxdata_frontend import reference_spectrogram, rounding_bound

    import caffe_torch
    from caffe_torch.opcount import OpCounter
    from speaker.evaluate import _device_spectrogram
    from voxdata import crop_length, spectrogram

    (tmp_path / "net.prototxt").write_text(TRUNK.format(frames=FRAMES, pooled=FRAMES // 2)
                                           + SOFTMAX_HEAD.format(classes=4))
    caffe_torch.set_random_seed(1)
    net = caffe_torch.Net(str(tmp_path / "net.prototxt"), caffe_torch.TEST)
    audio = {f"u{i}": np.random.default_rng(i).integers(-3000, 3000, 4000 + 500 * i).astype(np.int16)
             for i in range(6)}

    def provider(path, rng):
        signal, n = audio[path], crop_length(FRAMES)
        starts = rng.integers(0, len(signal) - n, 5)
        return np.stack([signal[s:s + n] for s in starts])

    # both front ends compute in float32: each within the float32 rounding bound of the float64 formula (the
    # two differ by up to 3.4e-5 on these crops: "within 1e-5" of each other would not hold for NumPy's own)
    crops = provider("u3", np.random.default_rng(0))
    ref = np.stack([reference_spectrogram(c) for c in crops])
    bound = np.stack([rounding_bound(c, U32) for c in crops])
    assert_within(_device_spectrogram(net, crops)[:, 0].numpy(), ref, bound)
    assert_within(spectrogram(crops), ref, bound)
    runs = {}
    for on_device in (True, False):
        with OpCounter() as count:
            out = crop_averaged_forward(net, list(audio), provider, ["fc5", "fc6"], rng=4, batch=3, head_batch=2,
                                        progress=False, on_device=on_device)
        runs[on_device] = out, count.syncs
    (device, syncs), (numpy_path, _) = runs[True], runs[False]
    assert syncs == 1
    for b in ("fc5", "fc6"):
        assert device[b].dtype == np.float32 and device[b].shape == numpy_path[b].shape == (6, 8 if b == "fc5" else 4)
        np.testing.assert_allclose(device[b], numpy_path[b], rtol=1e-4, atol=1e-5)
