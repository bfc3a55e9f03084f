"""The batched spectrograms against a per-crop float64 implementation written straight from the paper."""

import math

import numpy as np
import pytest
import torch
from fp import U32, U64, assert_within

from voxdata import crop_length, num_frames, spectrogram, spectrogram_torch
from voxdata.synth import synth_utterance


def reference_spectrogram(x):
    """The paper's front end (voxdata/frontend.py's docstring), one crop, float64, one frame at a time."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    y = np.empty_like(x)
    y[0] = x[0]
    for n in range(1, len(x)):
        y[n] = x[n] - 0.97 * x[n - 1]
    frames = math.ceil(abs(len(x) - 400) / 160)
    y = np.concatenate([y, np.zeros(frames * 160 + 400 - len(x))])
    n = np.arange(400)
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * n / 399)  # symmetric, = numpy.hamming(400)
    s = np.empty((frames, 257))
    for t in range(frames):
        seg = y[t * 160 : t * 160 + 400] * hamming
        s[t] = np.abs(np.fft.rfft(seg, 512))
    return (s - s.mean(axis=0)) / s.std(axis=0)


def rounding_bound(x, u):
    """How far the spectrogram of crop x computed in precision u (U32 or U64) may lie from the float64
    formula, per (frame, bin), derived step by step (tests/fp.py; Higham 2002):
    - each windowed sample of frame t comes out of DC removal, pre-emphasis and windowing within
      6 u (|x[n]| + |x[n-1]| + |mean|) w[n] of its value (a few roundings of those magnitudes);
    - the DFT of that error is at most its 1-norm in every bin (<= sqrt(400) times its 2-norm); the FFT's own
      error is at most 7 log2(512) u ||X_t||_2 in 2-norm (radix-2 bound, twiddles within u), and
      ||X_t||_2 = sqrt(512) ||frame_t||_2 (Parseval); the magnitude adds 2 u s;
    - over the F frames of a bin, the mean moves by the mean of those errors plus F u mean(s) (its own sum),
      the standard deviation by their maximum (it is 1-Lipschitz in the max norm) plus (F + 4) u its rms;
    - z = (s - mu) / sigma then moves by (|ds| + |dmu| + |z| |dsigma|) / sigma, plus 2 u |z|."""
    x = np.asarray(x, dtype=np.float64)
    m = x.mean()
    frames = math.ceil(abs(len(x) - 400) / 160)
    pad = frames * 160 + 400 - len(x)
    mag_in = np.concatenate([np.abs(x) + np.abs(np.r_[0.0, x[:-1]]) + abs(m), np.zeros(pad)])
    d = x - m
    y = np.concatenate([d[:1], d[1:] - 0.97 * d[:-1], np.zeros(pad)])    # pre-emphasised, zero-padded
    window = np.hamming(400)
    idx = np.arange(frames)[:, None] * 160 + np.arange(400)[None, :]
    fw = y[idx] * window                                              # (F, 400)
    spec = np.abs(np.fft.rfft(fw, 512))                               # (F, 257)
    input_err = 6 * u * np.sqrt(400) * np.linalg.norm(mag_in[idx] * window, axis=1)
    fft_err = 7 * math.log2(512) * u * np.sqrt(512) * np.linalg.norm(fw, axis=1)
    ds = (input_err + fft_err)[:, None] + 2 * u * spec                # (F, 257)
    mu, sigma = spec.mean(axis=0), spec.std(axis=0)
    dmu = ds.mean(axis=0) + frames * u * mu
    dsigma = ds.max(axis=0) + (frames + 4) * u * np.sqrt((spec ** 2).mean(axis=0))
    z = (spec - mu) / sigma
    return (ds + dmu + np.abs(z) * dsigma) / sigma + 2 * u * np.abs(z)


@pytest.fixture(scope="module")
def random_crops():
    rng = np.random.default_rng(1)
    return rng.integers(-32768, 32768, size=(3, 48241)).astype(np.int16)


@pytest.fixture(scope="module")
def speech_crops():
    # real-speech-like: the synthetic corpus' voices (strong harmonics, pauses, low-level high bands)
    x = np.concatenate([synth_utterance(0, s, 0, 0, 3.2, 3.3)[:48241] for s in range(2)])
    return x.reshape(2, 48241)


def test_frames_and_lengths():
    assert crop_length(300) == 48241
    assert num_frames(48241) == 300
    for f in (1, 2, 100, 299, 300, 301):
        assert num_frames(crop_length(f)) == f
    assert num_frames(400) == 0
    assert num_frames(200) == math.ceil(200 / 160)  # |L - 400|


@pytest.mark.parametrize("kind", ["random", "speech"])
def test_numpy_matches_reference(kind, random_crops, speech_crops):
    crops = random_crops if kind == "random" else speech_crops
    ref = np.stack([reference_spectrogram(c) for c in crops])
    out = spectrogram(crops)
    assert out.shape == (len(crops), 300, 257) and out.dtype == np.float32
    assert_within(out, ref, np.stack([rounding_bound(c, U32) for c in crops]))
    out64 = spectrogram(crops, dtype=np.float64)
    assert_within(out64, ref, np.stack([rounding_bound(c, U64) for c in crops]))
    # chunking does not change anything; a single crop gives (frames, 257)
    np.testing.assert_array_equal(spectrogram(crops, chunk=1), out)
    np.testing.assert_array_equal(spectrogram(crops[0]), out[0])


def test_float_input_and_short_crops():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1000, size=(2, crop_length(100)))
    out = spectrogram(x)
    assert out.shape == (2, 100, 257)
    ref = np.stack([reference_spectrogram(c) for c in x])
    assert_within(out, ref, np.stack([rounding_bound(c, U32) for c in x]))


def test_silence_gives_zeros_not_nan():
    out = spectrogram(np.zeros((1, crop_length(10)), dtype=np.int16))
    assert np.all(out == 0)
    out_t = spectrogram_torch(torch.zeros(1, crop_length(10), dtype=torch.int16))
    assert torch.all(out_t == 0)


@pytest.mark.parametrize("kind", ["random", "speech"])
def test_torch_cpu_matches_reference(kind, random_crops, speech_crops):
    crops = random_crops if kind == "random" else speech_crops
    ref = np.stack([reference_spectrogram(c) for c in crops])
    out = spectrogram_torch(torch.from_numpy(crops))
    assert out.shape == (len(crops), 300, 257) and out.dtype == torch.float32
    assert_within(out.numpy(), ref, np.stack([rounding_bound(c, U32) for c in crops]))
    out64 = spectrogram_torch(torch.from_numpy(crops), dtype=torch.float64)
    assert_within(out64.numpy(), ref, np.stack([rounding_bound(c, U64) for c in crops]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["random", "speech"])
def test_torch_gpu_matches_reference(kind, random_crops, speech_crops):
    crops = random_crops if kind == "random" else speech_crops
    ref = np.stack([reference_spectrogram(c) for c in crops])
    out = spectrogram_torch(torch.from_numpy(crops).cuda())
    assert out.is_cuda and out.shape == (len(crops), 300, 257)
    assert_within(out.cpu().numpy(), ref, np.stack([rounding_bound(c, U32) for c in crops]))
