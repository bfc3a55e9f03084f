"""A synthetic corpus in the exact VoxCeleb1 layout, for working without the real data.

    wav/idNNNNN/<11-char video id>/NNNNN.wav  (16 kHz mono int16), iden_split.txt, veri_test.txt,
    vox1_meta.csv (tab separated; Set = test for the held-out verification speakers)

Speech is made by a source-filter model in the STFT domain (hop 128, 512-point frames):
- speaker (its own voice, fixed over all its recordings): mean pitch and pitch range, jitter, glottal open
  quotient (harmonic richness), breathiness (aspiration noise), vocal-tract length (scales every formant),
  its own per-vowel formant offsets, higher formants F4/F5, formant bandwidths, a fixed anti-resonance
  (piriform-fossa-like notch) and speaking rate;
- video (the channel): an EQ curve, band limit, reverberation (RT60 0.05-0.6 s), additive coloured noise
  (SNR 5-30 dB) and level;
- utterance: its own random phone sequence (vowels, nasals, fricatives, plosives, pauses) with coarticulated
  formant tracks and an intonation contour, 4-10 s long.
The per-frequency normalisation of the spectrogram removes any fixed per-bin gain, so neither a speaker's
spectral tilt nor a video's EQ is a shortcut: a network has to use pitch, formants and voice quality, under
channel noise and reverberation that differ between the training and the test videos.

Every random number comes from a generator seeded by (seed, speaker[, video[, utterance]]), so a corpus
is the same for a given seed whatever the number of worker processes.
"""

from __future__ import annotations

import logging
import os
import string
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .audio import SAMPLE_RATE, write_wav

log = logging.getLogger(__name__)

HOP = 128
NFFT = 512
FIRST_ID = 10001
_VIDEO_CHARS = string.ascii_letters + string.digits + "-_"

# Peterson & Barney style (F1, F2, F3) targets in Hz for an adult male vocal tract
VOWELS = np.array(
    [
        [270, 2290, 3010],
        [390, 1990, 2550],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [730, 1090, 2440],
        [570, 840, 2410],
        [440, 1020, 2240],
        [300, 870, 2240],
        [640, 1190, 2390],
        [490, 1350, 1690],
    ],
    dtype=np.float64,
)
NASALS = np.array([[250, 1100, 2300], [250, 1600, 2500]], dtype=np.float64)
# fricatives: (centre Hz, bandwidth Hz, voiced?)
FRICATIVES = [(6500, 2500, 0), (3000, 1200, 0), (4500, 5000, 0), (6000, 2500, 1), (3000, 1200, 1)]


@dataclass
class Speaker:
    f0: float  # mean pitch (Hz)
    f0_range: float  # intonation depth (semitones, std)
    jitter: float
    open_quotient: float
    breath: float  # aspiration noise relative to voicing
    vtl: float  # formant scale (1 = adult male reference)
    vowel_offsets: np.ndarray  # (10, 3) multiplicative formant offsets
    f45: tuple[float, float]  # F4, F5 (Hz)
    bw_scale: float
    notch: tuple[float, float, float]  # anti-resonance (Hz, bandwidth Hz, depth 0..1)
    rate: float  # speaking-rate factor (phone durations divided by it)
    gender: str


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def make_speaker(seed: int, index: int) -> Speaker:
    r = _rng(seed, 1, index)
    female = r.random() < 0.5
    f0 = float(np.exp(r.normal(np.log(205 if female else 118), 0.16)))
    vtl = float(r.uniform(1.06, 1.22) if female else r.uniform(0.88, 1.04))
    return Speaker(
        f0=f0,
        f0_range=float(r.uniform(1.0, 3.5)),
        jitter=float(r.uniform(0.003, 0.02)),
        open_quotient=float(r.uniform(0.4, 0.8)),
        breath=float(np.exp(r.uniform(np.log(0.02), np.log(0.4)))),
        vtl=vtl,
        vowel_offsets=np.exp(r.normal(0.0, 0.06, size=(len(VOWELS), 3))),
        f45=(float(r.uniform(3200, 3900) * vtl), float(r.uniform(4200, 5000) * vtl)),
        bw_scale=float(r.uniform(0.7, 1.6)),
        notch=(float(r.uniform(1500, 5000)), float(r.uniform(150, 600)), float(r.uniform(0.3, 0.9))),
        rate=float(r.uniform(0.8, 1.25)),
        gender="f" if female else "m",
    )


def _envelope(freqs: np.ndarray, formants: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """Cascade of 2-pole resonances, unit gain at DC. freqs (B,), formants/bws (T, K) -> (T, B) float32."""
    f2 = (freqs.astype(np.float32) ** 2)[None, :]  # (1, B)
    env = np.ones((formants.shape[0], len(freqs)), dtype=np.float32)
    for k in range(formants.shape[1]):  # one (T, B) product per formant keeps the work in cache
        fk2 = (formants[:, k : k + 1] ** 2).astype(np.float32)
        bk2 = (bws[:, k : k + 1] ** 2).astype(np.float32)
        env *= fk2 / np.sqrt((fk2 - f2) ** 2 + f2 * bk2)
    return env


def _stft(x: np.ndarray, win: np.ndarray) -> np.ndarray:
    pad = np.concatenate([np.zeros(NFFT, x.dtype), x, np.zeros(NFFT, x.dtype)])
    frames = np.lib.stride_tricks.sliding_window_view(pad, NFFT)[::HOP]
    return scipy.fft.rfft(frames * win, axis=1)  # (T, 257)


def _istft(spec: np.ndarray, win: np.ndarray, n: int) -> np.ndarray:
    frames = scipy.fft.irfft(spec, n=NFFT, axis=1) * win  # (T, 512)
    t = len(frames)
    out = np.zeros((t - 1) * HOP + NFFT)
    # overlap-add, 4 interleaved groups so that each group's frames do not overlap: (T/4, 512) reshapes
    for g in range(NFFT // HOP):
        sel = frames[g :: NFFT // HOP]
        seg = out[g * HOP : g * HOP + len(sel) * NFFT]
        seg[: len(sel) * NFFT] += sel.reshape(-1)[: len(seg)]
    norm = np.sum(win**2) / HOP  # constant overlap-add gain of hann^2 at hop N/4
    return out[NFFT : NFFT + n] / norm


def _phones(r: np.random.Generator, dur_frames: int, spk: Speaker):
    """A random phone sequence filling dur_frames STFT frames. Returns per-phone (kind, index, frames)."""
    out = []
    total = 0
    while total < dur_frames:
        # one "word": 2-6 phones, mostly CV, then maybe a pause
        for j in range(int(r.integers(2, 7))):
            if j % 2 == 1 or r.random() < 0.2:
                kind, idx, ms = "v", int(r.integers(len(VOWELS))), r.uniform(70, 220)
            else:
                c = r.random()
                if c < 0.4:
                    kind, idx, ms = "f", int(r.integers(len(FRICATIVES))), r.uniform(60, 150)
                elif c < 0.7:
                    kind, idx, ms = "p", 0, r.uniform(40, 90)
                else:
                    kind, idx, ms = "n", int(r.integers(len(NASALS))), r.uniform(50, 110)
            n = max(2, int(ms / spk.rate / (1000 * HOP / SAMPLE_RATE)))
            out.append((kind, idx, n))
            total += n
        if r.random() < 0.35:
            n = int(r.uniform(80, 400) / (1000 * HOP / SAMPLE_RATE))
            out.append(("s", 0, n))
            total += n
    return out


def synth_speech(spk: Speaker, r: np.random.Generator, n: int) -> np.ndarray:
    """n samples of float speech (roughly unit RMS while voiced) for speaker spk."""
    t_frames = n // HOP + NFFT // HOP + 3
    phones = _phones(r, t_frames, spk)
    freqs = np.fft.rfftfreq(NFFT, 1.0 / SAMPLE_RATE)  # (257,)
    # per-frame controls (T,)
    kinds, amp, fric = [], [], []
    centres, ctargets = [], []
    pos = 0
    for kind, idx, m in phones:
        if kind == "v":
            tgt = VOWELS[idx] * spk.vowel_offsets[idx] * spk.vtl
            v, a, fr = 1.0, 1.0, None
        elif kind == "n":
            tgt = NASALS[idx] * spk.vtl
            v, a, fr = 1.0, 0.35, None
        elif kind == "f":
            tgt = None
            c, bw, vv = FRICATIVES[idx]
            v, a, fr = 0.6 * vv, 0.5, (c * (0.85 + 0.3 * spk.vtl / 1.2), bw)
        elif kind == "p":
            tgt, v, a, fr = None, 0.0, 0.0, (2500.0, 6000.0)
        else:
            tgt, v, a, fr = None, 0.0, 0.0, None
        if tgt is not None:
            centres.append(pos + m / 2)
            ctargets.append(tgt)
        seg_a = np.full(m, a)
        seg_fr = np.zeros((m, 3))
        if fr is not None:
            seg_fr[:, 0], seg_fr[:, 1] = fr
            seg_fr[:, 2] = 0.35 if kind == "f" else 0.0
            if kind == "p":  # closure, then a ~15 ms burst
                seg_fr[: max(1, m - 2), 2] = 0.0
                seg_fr[max(1, m - 2) :, 2] = 0.3
        kinds.append(np.full(m, v))
        amp.append(seg_a)
        fric.append(seg_fr)
        pos += m
    voiced = np.concatenate(kinds)[:t_frames]
    amp = np.concatenate(amp)[:t_frames]
    fric = np.concatenate(fric)[:t_frames]
    tt = np.arange(t_frames)
    centres = np.asarray(centres) if centres else np.array([0.0])
    ctargets = np.asarray(ctargets) if ctargets else VOWELS[:1] * spk.vtl
    # coarticulation: formant tracks interpolate linearly between phone centres; (T, 3)
    f123 = np.stack([np.interp(tt, centres, ctargets[:, k]) for k in range(3)], axis=1)
    formants = np.concatenate([f123, np.tile(spk.f45, (t_frames, 1))], axis=1)  # (T, 5)
    bws = spk.bw_scale * np.array([80.0, 100.0, 140.0, 200.0, 260.0]) * (1 + formants / 4000.0)
    # smooth on/offsets over ~24 ms
    k = np.hanning(5) / np.hanning(5).sum()
    amp = np.convolve(amp, k, mode="same")
    voiced = np.convolve(voiced, k, mode="same")

    # glottal source: pitch contour = declination + smooth random intonation (semitones) + jitter
    knots = np.linspace(0, t_frames, max(3, t_frames // 40))
    inton = np.interp(tt, knots, r.normal(0, spk.f0_range, len(knots)))
    semis = inton - 2.0 * tt / t_frames
    f0_frames = spk.f0 * 2.0 ** (semis / 12.0)
    # jitter: a fresh random period perturbation every frame (8 ms, about one or two periods)
    f0_frames = f0_frames * (1 + spk.jitter * r.standard_normal(t_frames))
    f0 = np.interp(np.arange(n) / HOP, tt, f0_frames)
    phase = np.cumsum(f0) / SAMPLE_RATE
    frac = (phase - np.floor(phase)).astype(np.float32)
    oq = spk.open_quotient
    # Rosenberg pulses: opening 60 % / closing 40 % of the open phase; the abrupt closure gives the
    # -12 dB/octave source spectrum of real voices (-6 dB/octave after lip radiation)
    tp, tn = 0.6 * oq, 0.4 * oq
    glottal = np.where(
        frac < tp,
        0.5 * (1 - np.cos(np.pi * frac / tp)),
        np.where(frac < tp + tn, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0),
    )
    source = np.diff(glottal, prepend=0.0) * 10.0  # lip radiation: differentiate
    noise = r.standard_normal(n, dtype=np.float32)

    win = np.hanning(NFFT + 1)[:NFFT].astype(np.float32)
    s_src = _stft(source, win)[:t_frames]
    s_noise = _stft(noise, win)[:t_frames]
    t = min(len(s_src), t_frames)
    s_src, s_noise = s_src[:t], s_noise[:t]
    env = _envelope(freqs, formants[:t], bws[:t])  # (T, 257)
    nf, nbw, nd = spk.notch
    f32 = freqs.astype(np.float32)
    notch = (1.0 - nd * np.exp(-0.5 * ((f32 - nf) / nbw) ** 2)).astype(np.float32)  # (257,)
    # voiced gain per frame and bin: (T, 257) float32
    gain_v = env * notch[None, :] * (amp[:t] * voiced[:t]).astype(np.float32)[:, None]
    # frication: band-pass noise, only in the frames that have some; (T, 257)
    fr = fric[:t].astype(np.float32)
    noise_gain = gain_v * np.float32(spk.breath * 0.3)
    on = np.flatnonzero(fr[:, 2] > 0)
    if len(on):
        band = np.exp(-0.5 * ((f32[None, :] - fr[on, 0:1]) / (fr[on, 1:2] / 2 + 1)) ** 2)
        noise_gain[on] += np.float32(0.25) * fr[on, 2:3] * band
    spec = s_src * gain_v + s_noise * noise_gain
    return _istft(spec, win, n)


def make_channel(seed: int, spk_index: int, vid_index: int) -> dict:
    r = _rng(seed, 2, spk_index, vid_index)
    return {
        "eq": r.normal(0, 4.0, size=4),
        "eq_phase": r.uniform(0, 2 * np.pi, size=4),
        "cutoff": float(r.uniform(4500, 8000)),
        "rt60": float(np.exp(r.uniform(np.log(0.05), np.log(0.6)))),
        "drr": float(r.uniform(0.5, 3.0)),
        "snr": float(r.uniform(8, 30)),
        "noise_tilt": float(r.uniform(-1.5, 0.5)),
        "level": float(r.uniform(0.1, 0.5)),
        "ir_seed": int(r.integers(2**31)),
    }


def apply_channel(x: np.ndarray, ch: dict, r: np.random.Generator) -> np.ndarray:
    """Reverberation, EQ + band limit, additive coloured noise; float in, float out (same length)."""
    from scipy.fft import irfft, next_fast_len, rfft, rfftfreq
    from scipy.signal import fftconvolve

    n = len(x)
    nfft = next_fast_len(n, real=True)  # recordings have arbitrary lengths; a prime-sized FFT is 10x slower
    # room: direct path + exponentially decaying noise tail (fixed per video)
    ir_r = np.random.default_rng(ch["ir_seed"])
    m = int(ch["rt60"] * SAMPLE_RATE)
    tail = ir_r.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m)  # -60 dB at rt60
    ir = np.concatenate([[ch["drr"] * np.sqrt(np.sum(tail**2))], tail])
    y = fftconvolve(x, ir)[:n]
    # EQ and band limit: smooth gain curve over log frequency, applied on the whole recording
    spec = rfft(y, nfft)
    f = rfftfreq(nfft, 1.0 / SAMPLE_RATE)
    # the EQ curve (dB) on a 1,024-point grid, interpolated to the FFT bins: cheap and smooth anyway
    fg = np.linspace(0, SAMPLE_RATE / 2, 1024)
    lf = np.log2(np.maximum(fg, 50.0) / 50.0)  # octaves above 50 Hz, 0..7.3
    db = sum(
        g * np.cos(np.pi * (i + 1) * lf / 7.3 + p) for i, (g, p) in enumerate(zip(ch["eq"], ch["eq_phase"]))
    )
    gain = np.interp(f, fg, 10 ** (db / 20) / (1 + (fg / ch["cutoff"]) ** 8))
    y = irfft(spec * gain, nfft)[:n]
    # coloured noise at the video's SNR (relative to the speech's mean power)
    nspec = rfft(r.standard_normal(nfft, dtype=np.float32)) * np.maximum(f, 100.0) ** (ch["noise_tilt"] / 2)
    noise = irfft(nspec, nfft)[:n]
    p_sig = np.mean(y**2) + 1e-12
    noise *= np.sqrt(p_sig / (np.mean(noise**2) + 1e-12) / 10 ** (ch["snr"] / 10))
    return y + noise


def synth_utterance(
    seed: int, spk_index: int, vid_index: int, utt_index: int, min_dur: float = 4.0, max_dur: float = 10.0
) -> np.ndarray:
    """One recording, int16 (n,), deterministic in (seed, speaker, video, utterance)."""
    spk = make_speaker(seed, spk_index)
    ch = make_channel(seed, spk_index, vid_index)
    r = _rng(seed, 3, spk_index, vid_index, utt_index)
    n = int(r.uniform(min_dur, max_dur) * SAMPLE_RATE)
    x = synth_speech(spk, r, n)
    y = apply_channel(x, ch, r)
    y *= ch["level"] * 32767 / (np.max(np.abs(y)) + 1e-9)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def _video_id(r: np.random.Generator) -> str:
    return "".join(_VIDEO_CHARS[i] for i in r.integers(0, len(_VIDEO_CHARS), size=11))


def plan_corpus(seed: int, speakers: int, utterances: int, min_videos: int, max_videos: int):
    """[(speaker id, [(video id, n utterances)])], deterministic."""
    plan = []
    for s in range(speakers):
        r = _rng(seed, 0, s)
        nv = int(r.integers(min_videos, max_videos + 1))
        nv = max(1, min(nv, utterances))
        # every video gets >= 1 utterance, the rest spread at random
        counts = np.ones(nv, dtype=int) + np.bincount(r.integers(0, nv, utterances - nv), minlength=nv)
        vids = set()
        while len(vids) < nv:
            vids.add(_video_id(r))
        plan.append((f"id{FIRST_ID + s}", list(zip(sorted(vids), counts.tolist()))))
    return plan


def _job(args):
    seed, s, v, u, path, min_dur, max_dur = args
    write_wav(path, synth_utterance(seed, s, v, u, min_dur, max_dur))
    return path


def make_trials(seed: int, test_utts: dict[str, list[str]], n_trials: int) -> list[tuple[int, str, str]]:
    """Balanced trials over the test speakers' utterances: n_trials//2 target and as many non-target pairs,
    without repeats, sorted by enrolment path (like veri_test.txt)."""
    r = _rng(seed, 4)
    target = [(a, b) for utts in test_utts.values() for i, a in enumerate(utts) for b in utts[i + 1 :]]
    sizes = [len(u) for u in test_utts.values()]
    n_non = (sum(sizes) ** 2 - sum(k * k for k in sizes)) // 2
    half = min(n_trials // 2, len(target), n_non)
    pick = r.choice(len(target), size=half, replace=False)
    trials = {(1, *target[i]) for i in pick}
    spk = sorted(test_utts)
    if len(spk) < 2:
        raise ValueError("need at least 2 test speakers for non-target trials")
    non = set()
    while len(non) < half:
        a, b = r.choice(len(spk), size=2, replace=False)
        ua, ub = test_utts[spk[a]], test_utts[spk[b]]
        non.add((0, ua[r.integers(len(ua))], ub[r.integers(len(ub))]))
    return sorted(trials | non, key=lambda t: (t[1], t[2], -t[0]))


def check_corpus_args(speakers: int, utterances: int, test_speakers: int, min_dur: float, max_dur: float) -> None:
    """make_corpus' argument rules (ValueError), checkable before anything is written."""
    if speakers < 2 or utterances < 3:
        raise ValueError("need at least 2 speakers and 3 utterances per speaker")
    if not 2 <= test_speakers < speakers:
        raise ValueError(f"test_speakers must be in 2..{speakers - 1}, got {test_speakers}")
    if not 0 < min_dur <= max_dur:
        raise ValueError(f"durations need 0 < min_dur <= max_dur, got min_dur {min_dur:g} and max_dur {max_dur:g}")


def make_corpus(
    out,
    speakers: int = 40,
    utterances: int = 30,
    test_speakers: int = 10,
    seed: int = 0,
    min_videos: int = 4,
    max_videos: int = 6,
    min_dur: float = 4.0,
    max_dur: float = 10.0,
    trials: int = 2000,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write the corpus under `out` (see the module doc). Test speakers are the last `test_speakers` ids
    (Set = test in vox1_meta.csv). Identification split per speaker: its last video -> 3 (test), the one
    before -> 2 (validation), the others -> 1 (train) (videos are channels, so test is cross-channel).
    Returns a summary dict."""
    from tqdm import tqdm

    check_corpus_args(speakers, utterances, test_speakers, min_dur, max_dur)
    out = os.fspath(out)
    min_videos = max(3, min_videos)
    plan = plan_corpus(seed, speakers, utterances, min_videos, max(min_videos, max_videos))
    jobs, split_lines, test_utts = [], [], {}
    test_ids = {sid for sid, _ in plan[speakers - test_speakers :]}
    for s, (sid, videos) in enumerate(plan):
        for v, (vid, count) in enumerate(videos):
            split = 3 if v == len(videos) - 1 else 2 if v == len(videos) - 2 else 1
            for u in range(count):
                rel = f"{sid}/{vid}/{u + 1:05d}.wav"
                jobs.append((seed, s, v, u, os.path.join(out, "wav", rel), min_dur, max_dur))
                split_lines.append(f"{split} {rel}")
                if sid in test_ids:
                    test_utts.setdefault(sid, []).append(rel)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    os.makedirs(out, exist_ok=True)
    bar = tqdm(total=len(jobs), desc="synth", unit="utt", disable=not progress)
    if workers <= 1:
        for j in jobs:
            _job(j)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as ex:
            for _ in ex.map(_job, jobs, chunksize=8):
                bar.update()
    bar.close()
    with open(os.path.join(out, "iden_split.txt"), "w") as f:
        f.write("\n".join(split_lines) + "\n")
    tr = make_trials(seed, test_utts, trials)
    with open(os.path.join(out, "veri_test.txt"), "w") as f:
        f.write("".join(f"{lab} {a} {b}\n" for lab, a, b in tr))
    with open(os.path.join(out, "vox1_meta.csv"), "w") as f:
        f.write("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n")
        for s, (sid, _) in enumerate(plan):
            g = make_speaker(seed, s).gender
            f.write(
                f"{sid}\tSynth_Speaker_{s + 1:04d}\t{g}\tSynthland\t{'test' if sid in test_ids else 'dev'}\n"
            )
    return {
        "out": out,
        "speakers": speakers,
        "utterances": len(jobs),
        "test_speakers": sorted(test_ids),
        "trials": len(tr),
    }
