"""Loader: batches are deterministic in (seed, batch index), whatever the workers; resumable; cache = wav."""

import numpy as np
import pytest
import soundfile as sf

from voxdata import AudioError, EvalCrops, TrainBatches, build_cache, eval_crops, train_loader


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    paths, labels, signals = [], [], {}
    for i in range(6):
        # each file a distinct ramp so a crop tells which file (and where) it came from
        x = (np.arange(int(rng.integers(800, 3000))) + 5000 * i).astype(np.int16)
        p = str(d / f"f{i}.wav")
        sf.write(p, x, 16000, subtype="PCM_16")
        paths.append(p)
        labels.append(i % 3)
        signals[p] = x
    return d, paths, np.array(labels), signals


def _take(loader, n):
    out = []
    for k, (c, lab) in enumerate(loader):
        out.append((c.numpy().copy(), lab.numpy().copy()))
        if k + 1 == n:
            break
    return out


def test_batches_match_an_independent_draw(corpus):
    """Batch k written from the documented rule alone (loader and crops module docstrings), without the
    module's batch_rng or random_crop: generator = default_rng(SeedSequence([seed, 0, k])); per row: file
    index uniform in [0, n_files), then (augmentation) start uniform in [0, n), then reversal with
    probability 0.5; the crop is L samples of the repeated recording from start, reversed if drawn so."""
    _, paths, labels, signals = corpus
    ds = TrainBatches(paths, labels, batch_size=5, length=1000, seed=7)
    crops, labs = ds.batch(3)
    assert crops.shape == (5, 1000) and crops.dtype == np.int16 and labs.dtype == np.int64
    rng = np.random.default_rng(np.random.SeedSequence([7, 0, 3]))
    for b in range(5):
        i = int(rng.integers(0, len(paths)))
        x = signals[paths[i]]
        start = int(rng.integers(0, len(x)))
        reverse = rng.random() < 0.5
        expected = np.array([x[(start + j) % len(x)] for j in range(1000)], dtype=np.int16)
        np.testing.assert_array_equal(crops[b], expected[::-1] if reverse else expected)
        assert labs[b] == labels[i]


def test_deterministic_across_workers_and_resumable(corpus):
    _, paths, labels, _ = corpus
    kw = dict(batch_size=4, length=1200, seed=3, pin_memory=False)
    a = _take(train_loader(paths, labels, num_workers=0, **kw), 6)
    b = _take(train_loader(paths, labels, num_workers=2, **kw), 6)
    c = _take(train_loader(paths, labels, num_workers=1, start_batch=4, **kw), 2)
    for (ca, la), (cb, lb) in zip(a, b):
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_array_equal(la, lb)
    for (ca, la), (cc, lc) in zip(a[4:], c):
        np.testing.assert_array_equal(ca, cc)
        np.testing.assert_array_equal(la, lc)
    assert not np.array_equal(a[0][0], a[1][0])
    d = _take(train_loader(paths, labels, num_workers=0, **{**kw, "seed": 4}), 1)
    assert not np.array_equal(a[0][0], d[0][0])


def test_cache_gives_the_same_batches(corpus, tmp_path):
    _, paths, labels, signals = corpus
    cache = build_cache(paths, tmp_path / "cache", progress=False)
    assert len(cache) == len(paths)
    np.testing.assert_array_equal(cache.get(paths[2]), signals[paths[2]])
    kw = dict(batch_size=4, length=1200, seed=3, pin_memory=False, num_workers=0)
    a = _take(train_loader(paths, labels, **kw), 3)
    b = _take(train_loader(paths, labels, cache=str(tmp_path / "cache"), **{**kw, "num_workers": 2}), 3)
    for (ca, la), (cb, lb) in zip(a, b):
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_array_equal(la, lb)


def test_bad_files_raise_or_are_skipped(corpus, tmp_path):
    _, paths, labels, _ = corpus
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    p2 = [str(bad)] + paths
    l2 = np.concatenate([[9], labels])
    with pytest.raises(AudioError, match="bad.wav"):
        for s in range(20):
            TrainBatches(p2, l2, batch_size=8, length=500, seed=s).batch(0)
    ds = TrainBatches(p2, l2, batch_size=8, length=500, seed=0, on_error="skip")
    labs = np.concatenate([ds.batch(k)[1] for k in range(10)])
    assert ds.skipped > 0 and 9 not in labs
    with pytest.raises(AudioError, match="bad.wav"):
        build_cache(p2, tmp_path / "c1", progress=False)
    c = build_cache(p2, tmp_path / "c2", on_error="skip", progress=False)
    assert len(c) == len(paths) and len(c.skipped) == 1 and "bad.wav" in c.skipped[0]


def test_eval_crops(corpus):
    _, paths, _, signals = corpus
    a = [(c.numpy(), i) for c, i in eval_crops(paths, n_crops=5, length=4000, seed=1)]
    b = [(c.numpy(), i) for c, i in eval_crops(paths, n_crops=5, length=4000, seed=1, num_workers=2)]
    assert [i for _, i in a] == list(range(len(paths)))
    for (ca, _), (cb, _) in zip(a, b):
        assert ca.shape == (5, 4000) and ca.dtype == np.int16
        np.testing.assert_array_equal(ca, cb)
    # every crop is a window of the repeated (possibly reversed) recording
    x = signals[paths[0]]
    rep = np.tile(x, 4000 // len(x) + 2)
    for c in a[0][0]:
        fwd = c if c[1] == (c[0] + 1 if c[0] != x[-1] else x[0]) else c[::-1]
        start = int(np.flatnonzero(x == fwd[0])[0])
        np.testing.assert_array_equal(fwd, rep[start : start + 4000])
    assert EvalCrops(paths, n_crops=2, frames=10).length == 160 * 9 + 401


def test_crop_length_follows_frames(corpus):
    from voxdata import crop_length, spectrogram

    _, paths, labels, _ = corpus
    crops, _ = TrainBatches(paths, labels, batch_size=2, frames=7, seed=0).batch(0)
    assert crops.shape == (2, crop_length(7)) == (2, 1361)
    assert spectrogram(crops).shape == (2, 7, 257)
    assert TrainBatches(paths, labels).length == 48241  # the paper's 300 frames by default
