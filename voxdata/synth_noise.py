"""Small synthetic stand-ins for MUSAN and for simulated room impulse responses, in their folder layouts, so that
the noise / reverberation augmentation (voxdata.augment) runs in the tests and the demo without downloads:

    musan/noise/synthetic/noise-synthetic-NNNN.wav     coloured noise (spectral tilt -2..+1, slow level changes)
    musan/music/synthetic/music-synthetic-NNNN.wav     note sequences: harmonic tones with decaying envelopes
    musan/speech/synthetic/speech-synthetic-NNNN.wav   voxdata.synth's speech (its own speakers: babble)
    simulated_rirs/{small,medium,large}room/RoomNNN/RoomNNN-NNNNN.wav
        a direct-path impulse after a short delay, then an exponentially decaying noise tail (-60 dB at RT60:
        0.1-0.3 s small, 0.3-0.6 s medium, 0.6-1.0 s large), as RIRS_NOISES' simulated_rirs are laid out.

All 16 kHz mono 16-bit; durations of the noise files 1.5-6 s (some shorter than a 3 s crop, which the
augmentation repeats). Every file comes from a generator seeded by (seed, kind, index).
"""

from __future__ import annotations

import os

import numpy as np

from .audio import SAMPLE_RATE, write_wav
from .synth import make_speaker, synth_speech

_ROOMS = (("smallroom", 0.1, 0.3), ("mediumroom", 0.3, 0.6), ("largeroom", 0.6, 1.0))


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 100 + kind, int(index)]))


def _to_int16(x: np.ndarray, peak: float) -> np.ndarray:
    return np.round(x * (peak * 32767 / (np.max(np.abs(x)) + 1e-12))).astype(np.int16)


def coloured_noise(r: np.random.Generator, n: int) -> np.ndarray:
    tilt = r.uniform(-2.0, 1.0)                     # power ~ f^tilt
    spec = np.fft.rfft(r.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 50.0)
    x = np.fft.irfft(spec * f ** (tilt / 2), n)
    level = np.interp(np.arange(n), np.linspace(0, n, 6), r.uniform(0.4, 1.0, 6))
    return x * level


def music(r: np.random.Generator, n: int) -> np.ndarray:
    t, x, pos = np.arange(n) / SAMPLE_RATE, np.zeros(n), 0
    while pos < n:
        dur = int(r.uniform(0.15, 0.6) * SAMPLE_RATE)
        f0 = 110.0 * 2 ** (r.integers(0, 36) / 12)
        seg = t[: min(dur, n - pos)]
        tone = sum(np.sin(2 * np.pi * f0 * h * seg) / h ** r.uniform(1.0, 2.0) for h in range(1, 7))
        x[pos : pos + len(seg)] += tone * np.exp(-seg / r.uniform(0.1, 0.5))
        pos += len(seg)
    return x


def room_impulse_response(r: np.random.Generator, rt60: float) -> np.ndarray:
    m = int(rt60 * SAMPLE_RATE)
    delay = int(r.integers(10, 80))
    tail = r.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m)       # -60 dB at rt60
    h = np.zeros(delay + m)
    h[delay] = r.uniform(1.0, 3.0) * np.sqrt(np.sum(tail**2))          # direct path above the tail's energy
    h[delay + 1 :] += tail[1:]
    return h


def make_noise_folders(out, seed: int = 0, noise: int = 6, music_files: int = 6, speech: int = 10,
                       rooms: int = 2, rirs_per_room: int = 4, min_dur: float = 1.5, max_dur: float = 6.0) -> dict:
    """Write `out`/musan/... and `out`/simulated_rirs/... (see the module doc). Returns the two folders and the
    file counts."""
    out = os.fspath(out)
    if min(noise, music_files, speech, rooms, rirs_per_room) < 1 or not 0 < min_dur <= max_dur:
        raise ValueError("need at least one file of each kind and 0 < min_dur <= max_dur")
    musan = os.path.join(out, "musan")
    for kind, (name, count) in enumerate((("noise", noise), ("music", music_files), ("speech", speech))):
        for i in range(count):
            r = _rng(seed, kind, i)
            n = int(r.uniform(min_dur, max_dur) * SAMPLE_RATE)
            if name == "noise":
                x = coloured_noise(r, n)
            elif name == "music":
                x = music(r, n)
            else:
                x = synth_speech(make_speaker(seed + 1000, i), r, n)
            write_wav(os.path.join(musan, name, "synthetic", f"{name}-synthetic-{i:04d}.wav"),
                      _to_int16(x, r.uniform(0.2, 0.6)))
    rir_root = os.path.join(out, "simulated_rirs")
    for kind, (room_type, lo, hi) in enumerate(_ROOMS):
        for room in range(rooms):
            name = f"Room{kind * rooms + room + 1:03d}"
            for j in range(rirs_per_room):
                r = _rng(seed, 10 + kind, room * rirs_per_room + j)
                write_wav(os.path.join(rir_root, room_type, name, f"{name}-{j + 1:05d}.wav"),
                          _to_int16(room_impulse_response(r, r.uniform(lo, hi)), 0.9))
    return {"musan": musan, "rirs": rir_root, "noise": noise, "music": music_files, "speech": speech,
            "rirs_count": len(_ROOMS) * rooms * rirs_per_room}
