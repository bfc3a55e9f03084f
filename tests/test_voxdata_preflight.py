"""Every soundfile subtype reads as the int16 recording it encodes (issue 15, item 1), and the pre-flight scan
reports every bad file at once and caches its results by path, size and mtime (item 2)."""

import os

import numpy as np
import pytest
import soundfile as sf

from voxdata import read_wav, scan_audio, spectrogram


def _speechlike(n=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 0.3 * np.sin(2 * np.pi * 220 * t / 16000) + 0.05 * rng.standard_normal(n)
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)     # an int16 recording


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_wav_is_the_int16_recording_it_holds(tmp_path, subtype):
    """libsndfile asked for int16 casts [-1, 1] floats without scaling (all zeros); read_wav must not."""
    x = _speechlike()
    p = tmp_path / "f.wav"
    sf.write(p, x.astype(np.float64) / 32768, 16000, subtype=subtype)      # exactly representable in float32
    np.testing.assert_array_equal(read_wav(p), x)
    np.testing.assert_array_equal(read_wav(p, start=100, stop=900), x[100:900])


def test_issue_repro_float_sine_is_not_silence(tmp_path):
    p = tmp_path / "f.wav"
    sf.write(p, 0.1 * np.sin(np.arange(16000) / 5), 16000, subtype="FLOAT")
    y = read_wav(p)
    assert y.dtype == np.int16 and np.abs(y).max() == round(0.1 * 32768)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"])
def test_every_subtype_gives_the_int16_spectrogram(tmp_path, subtype):
    """The same signal in any subtype gives the spectrogram of its int16 recording: the per-bin
    normalisation removes the scale, only the subtype's quantisation remains (8-bit and companded ones are
    coarser)."""
    x = _speechlike(seed=1)
    p = tmp_path / f"{subtype}.wav"
    sf.write(p, x.astype(np.float64) / 32768, 16000, subtype=subtype)
    y = read_wav(p)
    assert y.dtype == np.int16 and y.shape == x.shape
    ref, got = spectrogram(x[None, :4241]), spectrogram(y[None, :4241])
    tol = {"PCM_24": 1e-4, "PCM_32": 1e-4, "FLOAT": 1e-4, "DOUBLE": 1e-4}.get(subtype, 0.35)
    assert np.abs(ref - got).mean() < tol, subtype


def test_float_clips_beyond_full_scale(tmp_path):
    p = tmp_path / "loud.wav"
    # libsndfile's scale is 32768 (int16 v is stored as v / 32768): 0.75 is 24576, 32767/32768 is 32767
    sf.write(p, np.array([2.0, -2.0, 0.5, 0.75, -1.0, 32767 / 32768]), 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_wav(p), [32767, -32768, 16384, 24576, -32768, 32767])


def _bad_corpus(tmp_path):
    good = [tmp_path / f"g{i}.wav" for i in range(5)]
    for i, p in enumerate(good):
        sf.write(p, _speechlike(8000, seed=i), 16000, subtype="PCM_16")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    rate = tmp_path / "rate.wav"
    sf.write(rate, _speechlike(800), 8000, subtype="PCM_16")
    return good, [empty, rate, tmp_path / "gone.wav"]


def test_scan_reports_every_bad_file_at_once_and_caches(tmp_path, monkeypatch):
    good, bad = _bad_corpus(tmp_path)
    cache = tmp_path / "cache" / "check.json"
    res = scan_audio(good + bad, cache_file=cache, workers=3)
    assert res.good == [str(p) for p in good] and res.reused == 0
    assert len(res.bad) == 3
    for p, what in zip(bad, ("empty.wav", "8000 Hz", "gone.wav")):
        assert any(p.name in m for m in res.bad) and any(what in m for m in res.bad)
    assert cache.exists()

    # second scan: nothing is read again (wav_info would fail loudly if called)
    import voxdata.scan as scan

    def no_read(*a, **k):
        raise AssertionError("re-read a cached file")

    monkeypatch.setattr(scan, "wav_info", no_read)
    again = scan_audio(good + bad[:2], cache_file=cache)
    assert again.good == res.good and again.bad == res.bad[:2] and again.reused == 7
    monkeypatch.undo()

    # a changed file (size / mtime) is checked again
    sf.write(good[0], _speechlike(100), 16000, subtype="PCM_16")
    os.utime(good[0], ns=(1, 1))
    third = scan_audio(good, cache_file=cache, min_samples=1000)
    assert third.reused == 4 and len(third.bad) == 1 and "100 samples" in third.bad[0]


def test_scan_cache_in_an_unwritable_place_only_warns(tmp_path, caplog):
    good, _ = _bad_corpus(tmp_path)
    with caplog.at_level("WARNING"):
        res = scan_audio(good, cache_file="/proc/no/such/check.json")
    assert len(res.good) == 5 and "could not write the audio check cache" in caplog.text
