"""Reading VoxCeleb wav files: 16 kHz, mono, checked, with errors that name the file.

Every subtype soundfile reads is returned as int16 samples. Integer and compressed subtypes (PCM_U8/24/32,
u-law, ...) are converted by libsndfile itself (full scale to full scale). FLOAT and DOUBLE are not: asked for
int16, libsndfile casts the [-1, 1] floats without scaling, which rounds every sample to 0 (silence). They are
read as float64 and scaled by 32768 (the inverse of libsndfile's int16 -> float rule), rounded and clipped, so a
float file holding an int16 recording's samples / 32768 gives back exactly that recording. A NaN or inf sample
makes the file unusable (AudioError), found by the header check (wav_info) too, which reads float files whole.
"""

from __future__ import annotations

import logging
import os
import struct

import numpy as np

SAMPLE_RATE = 16000
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")     # the subtypes libsndfile does not scale when reading int16
_INT16_SCALE = 32768.0

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An unusable recording (unreadable, wrong rate, not mono, empty, truncated); names the file."""


def _riff_truncation(path: str) -> str | None:
    """For a RIFF/WAVE file, compare the data chunk's declared size with the bytes present.

    libsndfile silently shortens a truncated file, so a cut-off download would otherwise pass unnoticed.
    Returns a description of the problem, or None if the file is complete (or not a RIFF file).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, csize = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                present = size - pos - 8
                if csize != 0xFFFFFFFF and present < csize:
                    return f"truncated: data chunk declares {csize} bytes, {present} present"
                return None
            pos += 8 + csize + (csize & 1)
    return "truncated: no data chunk"


def wav_info(path: str, sample_rate: int = SAMPLE_RATE) -> int:
    """Check a file's header (rate, channels, length, truncation) without decoding; returns its length in
    samples. Raises AudioError naming the file. `.m4a` files go to voxdata.m4a (PyAV), the rest to soundfile."""
    import soundfile as sf

    path = os.fspath(path)
    if _is_m4a(path):
        from .m4a import m4a_info

        return m4a_info(path, sample_rate)
    try:
        info = sf.info(path)
    except Exception as e:  # LibsndfileError, RuntimeError, OSError: all mean "cannot read this file"
        raise AudioError(f"{path}: unreadable audio file ({e})") from None
    _check(path, info.samplerate, info.channels, info.frames, sample_rate)
    problem = _riff_truncation(path)
    if problem:
        raise AudioError(f"{path}: {problem}")
    if info.subtype in FLOAT_SUBTYPES:      # only float samples can be NaN or inf: read them all (rare files)
        _float_to_int16(sf.read(path, dtype="float64", always_2d=False)[0], path)
    return int(info.frames)


def _check(path, rate, channels, frames, sample_rate):
    if rate != sample_rate:
        raise AudioError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if channels != 1:
        raise AudioError(f"{path}: {channels} channels, expected mono")
    if frames <= 0:
        raise AudioError(f"{path}: empty recording (0 samples)")


def read_wav(path, sample_rate: int = SAMPLE_RATE, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Read a 16 kHz mono recording as int16 samples, shape (n,).

    start/stop read only a slice (in samples). Raises AudioError (a ValueError) naming the file if it is
    unreadable, not `sample_rate`, not mono, empty or truncated. Other subtypes are converted to int16 (see
    the module docstring; the paper's per-bin normalisation makes the scale irrelevant). `.m4a` (AAC, VoxCeleb2)
    is decoded by voxdata.m4a with the same rules.
    """
    import soundfile as sf

    path = os.fspath(path)
    if _is_m4a(path):
        from .m4a import read_m4a

        return read_m4a(path, sample_rate, start, stop)
    try:
        with sf.SoundFile(path) as f:
            _check(path, f.samplerate, f.channels, f.frames, sample_rate)
            if start:
                f.seek(start)
            n = (f.frames if stop is None else min(stop, f.frames)) - start
            if f.subtype in FLOAT_SUBTYPES:
                data = _float_to_int16(f.read(max(n, 0), dtype="float64", always_2d=False), path)
            else:
                data = f.read(max(n, 0), dtype="int16", always_2d=False)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{path}: unreadable audio file ({e})") from None
    if start == 0 and stop is None:
        if len(data) == 0:
            raise AudioError(f"{path}: empty recording (0 samples)")
        problem = _riff_truncation(path)
        if problem:
            raise AudioError(f"{path}: {problem}")
    return data


def _is_m4a(path: str) -> bool:
    from .m4a import is_m4a

    return is_m4a(path)


def _float_to_int16(x: np.ndarray, path: str) -> np.ndarray:
    """[-1, 1) float samples -> int16 by libsndfile's scale (x * 32768), rounded; beyond full scale clipped.
    A NaN or inf sample has no int16 value (numpy would make it 0 or a limit without a word): AudioError."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise AudioError(f"{path}: {int(bad.sum())} of {x.size} samples are NaN or inf (first at sample "
                         f"{int(np.flatnonzero(bad)[0])}): a damaged float recording")
    return np.clip(np.rint(x * _INT16_SCALE), -32768, 32767).astype(np.int16)


def write_wav(path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write int16 (n,) samples as 16-bit PCM wav, creating parent folders."""
    import soundfile as sf

    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    sf.write(path, np.asarray(samples, dtype=np.int16), sample_rate, subtype="PCM_16")
