"""The paper's spectrogram front end, batched (NumPy/SciPy on the CPU, PyTorch on any device).

Per crop x of L samples (the paper, arXiv 1807.08312, and its public scripts):
  1. DC removal: x - mean(x)
  2. pre-emphasis: y[0] = x[0], y[n] = x[n] - 0.97 x[n-1]
  3. F = ceil(|L - 400| / 160) frames of 400 samples every 160 samples, the signal zero-padded at the end
     to F*160 + 400 samples; each frame times a symmetric 400-point Hamming window (numpy.hamming)
  4. |rFFT| with 512 points -> 257 bins
  5. per frequency bin, over time: (S - mean_t) / std_t (population std)
Output (N, F, 257) float32, time x frequency (F = 300 for L = 48,241).

The one liberty taken: a bin whose std over time is exactly 0 (digital silence) is divided by 1 instead of
0, so it comes out as 0 rather than NaN. Everywhere else the result is the formula.
"""

from __future__ import annotations

import math

import numpy as np

FRAME_LENGTH = 400  # samples, 25 ms at 16 kHz
FRAME_SHIFT = 160  # samples, 10 ms
NFFT = 512
NUM_BINS = NFFT // 2 + 1  # 257
PREEMPHASIS = 0.97
SAMPLE_RATE = 16000


def num_frames(length: int) -> int:
    """Frames produced from a crop of `length` samples: ceil(|L - 400| / 160) (300 for 48,241)."""
    return math.ceil(abs(int(length) - FRAME_LENGTH) / FRAME_SHIFT)


def crop_length(frames: int) -> int:
    """Crop length (samples) that gives exactly `frames` frames: 160*(frames-1) + 401 (48,241 for 300)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return FRAME_SHIFT * (int(frames) - 1) + FRAME_LENGTH + 1


def _padded_length(length: int) -> int:
    return num_frames(length) * FRAME_SHIFT + FRAME_LENGTH


def _frame_index(frames: int) -> np.ndarray:
    # (frames, 400) sample indices into the padded signal
    return np.arange(frames)[:, None] * FRAME_SHIFT + np.arange(FRAME_LENGTH)[None, :]


def spectrogram(crops, dtype=np.float32, chunk: int = 8, workers: int = 1) -> np.ndarray:
    """Batched paper spectrogram on the CPU (NumPy + scipy.fft), vectorised over crops and frames.

    crops: (N, L) int16 or float array (a single (L,) crop gives (frames, 257)).
    dtype: np.float32 (default: single precision, within ~5e-5 of the float64 formula) or np.float64.
    chunk: crops transformed at a time; 8 keeps the (chunk, F, 512) FFT buffer in cache, which is ~2x faster
    than one big batch on a small CPU. workers: FFT threads (1 is fastest for these short FFTs; the loader
    parallelises with processes instead).
    Returns (N, frames, 257) of `dtype`, frames = num_frames(L).
    """
    import scipy.fft

    x = np.asarray(crops)
    single = x.ndim == 1
    if single:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"spectrogram expects (N, L) crops, got shape {x.shape}")
    n, length = x.shape
    if length < 2:
        raise ValueError(f"crop length {length} is too short for a spectrogram")
    work = np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    frames = num_frames(length)
    window = np.hamming(FRAME_LENGTH).astype(work)
    # exact crop means (int16 sums in int64); (N,)
    if np.issubdtype(x.dtype, np.integer):
        mean = x.sum(axis=1, dtype=np.int64) / length
    else:
        mean = x.mean(axis=1, dtype=np.float64)
    out = np.empty((n, frames, NUM_BINS), dtype=dtype)
    chunk = max(1, int(chunk))
    # reused buffers: pre-emphasised, zero-padded signal (chunk, F*160+400) and windowed frames zero-padded
    # to the FFT size (chunk, F, 512); the padding stays zero throughout
    emph = np.zeros((chunk, _padded_length(length)), dtype=work)
    frames_buf = np.zeros((chunk, frames, NFFT), dtype=work)
    for s in range(0, n, chunk):
        c = x[s : s + chunk]
        k = len(c)
        m = mean[s : s + k]
        e = emph[:k]
        # (x[n] - m) - 0.97 (x[n-1] - m) = x[n] - 0.97 x[n-1] - 0.03 m ; y[0] = x[0] - m
        e[:, 0] = c[:, 0] - m
        np.multiply(c[:, :-1], -PREEMPHASIS, out=e[:, 1:length], casting="unsafe")
        e[:, 1:length] += c[:, 1:]
        e[:, 1:length] -= ((1.0 - PREEMPHASIS) * m).astype(work)[:, None]
        # (k, F, 400) strided view of the frames, no copy
        framed = np.lib.stride_tricks.sliding_window_view(e, FRAME_LENGTH, axis=1)
        framed = framed[:, ::FRAME_SHIFT][:, :frames]
        np.multiply(framed, window, out=frames_buf[:k, :, :FRAME_LENGTH])
        mag = np.abs(scipy.fft.rfft(frames_buf[:k], axis=2, workers=workers))  # (k, F, 257)
        mu = mag.mean(axis=1, keepdims=True)
        sd = mag.std(axis=1, keepdims=True)
        sd[sd == 0] = 1.0
        mag -= mu
        mag /= sd
        out[s : s + k] = mag
    return out[0] if single else out


def spectrogram_torch(crops, dtype=None):
    """The same spectrogram on a torch tensor, on the tensor's device (the training step calls it on the GPU
    so that only raw int16 crops cross the bus).

    crops: (N, L) or (L,) tensor of int16 or float. dtype: computation/output dtype, default torch.float32
    (torch.float64 for a bit-for-bit-ish check against the NumPy version).
    Returns (N, frames, 257) (or (frames, 257)).
    """
    import torch

    dtype = dtype or torch.float32
    x = crops
    single = x.dim() == 1
    if single:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"spectrogram_torch expects (N, L) crops, got shape {tuple(x.shape)}")
    n, length = x.shape
    if length < 2:
        raise ValueError(f"crop length {length} is too short for a spectrogram")
    frames = num_frames(length)
    # DC removal: int16 -> float; the mean in float64 keeps it exact for long crops
    xf = x.to(dtype)
    mean = x.to(torch.float64).mean(dim=1, keepdim=True).to(dtype)
    xf = xf - mean
    emph = torch.cat([xf[:, :1], xf[:, 1:] - PREEMPHASIS * xf[:, :-1]], dim=1)  # (N, L)
    padded = torch.nn.functional.pad(emph, (0, _padded_length(length) - length))  # (N, F*160+400)
    framed = padded.unfold(1, FRAME_LENGTH, FRAME_SHIFT)[:, :frames]  # (N, F, 400), a view
    window = torch.hamming_window(FRAME_LENGTH, periodic=False, dtype=dtype, device=x.device)
    # windowed frames zero-padded to the FFT size, contiguous: (N, F, 512)
    windowed = torch.nn.functional.pad(framed * window, (0, NFFT - FRAME_LENGTH))
    spec = torch.fft.rfft(windowed, dim=2)  # (N, F, 257) complex
    # |.| via hypot: complex abs() is several times slower on the CPU
    mag = torch.hypot(spec.real, spec.imag)
    mu = mag.mean(dim=1, keepdim=True)
    sd = mag.std(dim=1, keepdim=True, unbiased=False)
    sd = torch.where(sd == 0, torch.ones_like(sd), sd)
    out = (mag - mu) / sd
    return out[0] if single else out
