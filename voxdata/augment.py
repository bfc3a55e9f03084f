"""Today's augmentation beside the paper's: reverberation by simulated room impulse responses and additive noise
from MUSAN, on the int16 training crops, on the loader side (voxceleb_trainer's recipe; WeSpeaker and
SpeechBrain do the same).

Per example, with its own probability each:
- reverberation: an RIR drawn from the RIR folder (every .wav below it, e.g. RIRS_NOISES/simulated_rirs),
  energy-normalised (h / ||h||_2), convolved with the crop; the output keeps the crop's first L samples of the
  full convolution (the causal alignment voxceleb_trainer uses). Applied before the noise.
- additive noise from a MUSAN-layout folder (`noise/`, `music/`, `speech/` below it, any depth): a category
  drawn uniformly; noise: 1 file at 0-15 dB SNR, music: 1 file at 5-15 dB, babble: 3-7 speech files, each at
  its own 13-20 dB. Each noise file contributes a crop of the crop's length (a random start, the file repeated
  when shorter, as voxdata.crops does without augmentation), scaled so that
  10 log10(P_speech / P_noise_crop_scaled) = its SNR, where P is the mean square over the crop and P_speech is
  the (reverberated) crop's. A silent noise crop adds nothing.
Defaults: reverberation 0.2, noise 0.6 (a third each for noise, music, babble), so each of the four
augmentations has voxceleb_trainer's probability 0.2 (there the five cases none / reverb / noise / music /
babble are exclusive and equally likely; here reverberation and noise may combine, and 32 % stay clean).

Randomness: example b of training batch k draws everything from its own generator seeded by (seed, k, b), in a
fixed order (reverb coin, RIR; noise coin, category, file count, files, and per file its start and SNR), so
an example is augmented the same way whichever process builds it, with however many workers, and a resumed
run sees the augmentation an uninterrupted one would. Every process draws the plans of every row of the batch
and reads and augments only its own rows. The arithmetic: an FFT convolution per reverberated row (float32,
scipy.fft, of a size fixed by the RIR bank, so no row depends on the others), the noise crops of the batch
stacked and summed per example, one rounding to int16 (clipped to its range).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .audio import read_wav
from .crops import apply_crop, crop_params

log = logging.getLogger(__name__)

_AUG_STREAM = 2                       # voxdata.loader uses 0 (training batches) and 1 (evaluation crops)
CATEGORIES = ("noise", "music", "speech")     # MUSAN's folder names; "speech" is the babble category


@dataclass(frozen=True)
class AugmentConfig:
    """The run's augmentation settings (recorded with the run's arguments). A folder left None is off."""

    noise_dir: str | None = None
    rir_dir: str | None = None
    noise_prob: float = 0.6
    rir_prob: float = 0.2
    snr_noise: tuple[float, float] = (0.0, 15.0)
    snr_music: tuple[float, float] = (5.0, 15.0)
    snr_babble: tuple[float, float] = (13.0, 20.0)
    babble_files: tuple[int, int] = (3, 7)

    @property
    def enabled(self) -> bool:
        return self.noise_dir is not None or self.rir_dir is not None

    def snr(self, category: str) -> tuple[float, float]:
        return {"noise": self.snr_noise, "music": self.snr_music, "speech": self.snr_babble}[category]

    def check(self) -> None:
        """ValueError naming the setting that is out of range."""
        for name in ("noise_prob", "rir_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be in [0, 1]")
        for name in ("snr_noise", "snr_music", "snr_babble", "babble_files"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"--{name.replace('_', '-')} {lo} {hi}: the first must not exceed the second")
        if self.babble_files[0] < 1:
            raise ValueError(f"--babble-files {self.babble_files[0]} ...: at least 1 file")

    @classmethod
    def from_args(cls, args) -> AugmentConfig:
        return cls(args.noise, args.rir, args.noise_prob, args.rir_prob, tuple(args.snr_noise),
                   tuple(args.snr_music), tuple(args.snr_babble), tuple(args.babble_files))

    def describe(self) -> str:
        parts = []
        if self.rir_dir:
            parts.append(f"reverberation p={self.rir_prob} from {self.rir_dir}")
        if self.noise_dir:
            parts.append(f"noise p={self.noise_prob} from {self.noise_dir} (noise {self.snr_noise} dB, music "
                         f"{self.snr_music} dB, babble of {self.babble_files} files at {self.snr_babble} dB)")
        return "; ".join(parts) or "none"


def add_arguments(parser) -> None:
    """The augmentation flags (argparse group) of the training scripts; AugmentConfig.from_args reads them."""
    d = AugmentConfig()
    g = parser.add_argument_group("noise and reverberation augmentation (beside the paper's; off by default)")
    g.add_argument("--noise", metavar="DIR", help="MUSAN-layout folder (noise/, music/, speech/ below it): additive "
                   "noise, music or babble on training crops")
    g.add_argument("--rir", metavar="DIR", help="folder of room impulse responses (every .wav below it): "
                   "reverberation of training crops, before the noise")
    g.add_argument("--noise-prob", type=float, default=d.noise_prob, help="probability of additive noise per "
                   "example; default %(default)s")
    g.add_argument("--rir-prob", type=float, default=d.rir_prob, help="probability of reverberation per example; "
                   "default %(default)s")
    for name, value, what in (("snr-noise", d.snr_noise, "noise"), ("snr-music", d.snr_music, "music"),
                              ("snr-babble", d.snr_babble, "each babble file")):
        g.add_argument(f"--{name}", type=float, nargs=2, metavar=("LO", "HI"), default=list(value),
                       help=f"SNR range (dB) of {what}; default %(default)s")
    g.add_argument("--babble-files", type=int, nargs=2, metavar=("LO", "HI"), default=list(d.babble_files),
                   help="number of speech files in a babble (inclusive range); default %(default)s")


def _wavs_below(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".wav"))
    return out


@dataclass
class Bank:
    """The usable files of the noise categories and the RIR folder with their lengths (samples)."""

    noise: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    rirs: list[tuple[str, int]] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


def list_bank(config: AugmentConfig) -> dict[str, list[str]]:
    """The noise files per category ("noise", "music", "speech") and the RIR files ("rir") of the configured
    folders, without opening them. A missing folder or an empty category is a ValueError naming it."""
    groups: dict[str, list[str]] = {}
    if config.noise_dir is not None:
        if not os.path.isdir(config.noise_dir):
            raise ValueError(f"--noise {config.noise_dir}: no such directory")
        for cat in CATEGORIES:
            groups[cat] = _wavs_below(os.path.join(config.noise_dir, cat))
            if not groups[cat]:
                raise ValueError(f"--noise {config.noise_dir}: no .wav files under {cat}/ (MUSAN's layout: "
                                 "noise/, music/ and speech/ folders)")
        if len(groups["speech"]) < config.babble_files[0]:
            raise ValueError(f"--noise {config.noise_dir}: babble needs {config.babble_files[0]} different speech "
                             f"files, speech/ has {len(groups['speech'])}")
    if config.rir_dir is not None:
        if not os.path.isdir(config.rir_dir):
            raise ValueError(f"--rir {config.rir_dir}: no such directory")
        groups["rir"] = _wavs_below(config.rir_dir)
        if not groups["rir"]:
            raise ValueError(f"--rir {config.rir_dir}: no .wav files below it")
    return groups


def scan_bank(config: AugmentConfig, cache_file=None, progress: bool = False) -> Bank:
    """List (list_bank) and check (voxdata.scan_audio: header, rate, mono, truncation; cached) the noise and RIR
    files. Unusable files are in Bank.bad (the caller refuses them or, with --skip-bad-audio, leaves them out)."""
    from .scan import scan_audio

    bank = Bank()
    groups = list_bank(config)
    for name, paths in groups.items():
        result = scan_audio(paths, cache_file=cache_file, progress=progress)
        bank.bad += result.bad
        files = [(p, result.samples[p]) for p in result.good]
        if not files:
            raise ValueError(f"no usable {name} file (first problem: {result.bad[0]})")
        if name == "rir":
            bank.rirs = files
        else:
            bank.noise[name] = files
    lo = config.babble_files[0]
    if config.noise_dir is not None and len(bank.noise["speech"]) < lo:
        raise ValueError(f"--noise {config.noise_dir}: babble needs {lo} different speech files, "
                         f"{len(bank.noise['speech'])} usable")
    return bank


@dataclass
class Plan:
    """What happens to one example: the RIR (index into Bank.rirs or None); the noise category (or None) and
    per noise file (index into the category's files, crop start, wraps, SNR in dB)."""

    rir: int | None = None
    category: str | None = None
    files: list[tuple[int, int, bool, float]] = field(default_factory=list)


def example_rng(seed: int, k: int, row: int) -> np.random.Generator:
    """The generator of example `row` of training batch k."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _AUG_STREAM, int(k), int(row)]))


class Augmenter:
    """Callable (crops int16 (n, L), seed, k, rows=None, batch_size=None) -> augmented int16 (n, L). With
    rows=(lo, hi) the crops are rows lo..hi-1 of batch k of batch_size rows (one process's slice of the global
    batch): the draws of every row of the batch are made, the files read and the arithmetic done for these."""

    def __init__(self, config: AugmentConfig, bank: Bank):
        config.check()
        self.config, self.bank = config, bank

    def record(self) -> dict:
        """The settings and file counts (for the run's log and args)."""
        d = asdict(self.config)
        d["files"] = {**{c: len(f) for c, f in self.bank.noise.items()}, "rir": len(self.bank.rirs)}
        return d

    def plan(self, length: int, rng: np.random.Generator) -> Plan:
        """One example's draws, in their fixed order (see the module docstring)."""
        c, plan = self.config, Plan()
        if c.rir_dir is not None and rng.random() < c.rir_prob:
            plan.rir = int(rng.integers(len(self.bank.rirs)))
        if c.noise_dir is not None and rng.random() < c.noise_prob:
            plan.category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            files = self.bank.noise[plan.category]
            lo, hi = c.babble_files if plan.category == "speech" else (1, 1)
            count = int(rng.integers(lo, hi + 1))
            lo_db, hi_db = c.snr(plan.category)
            for i in rng.choice(len(files), size=min(count, len(files)), replace=False):
                start, _, wraps = crop_params(files[i][1], length, rng, augment=False, repeat_short=True)
                plan.files.append((int(i), start, wraps, float(rng.uniform(lo_db, hi_db))))
        return plan

    def plans(self, n: int, length: int, seed: int, k: int) -> list[Plan]:
        """The plans of examples 0..n-1 of batch k."""
        return [self.plan(length, example_rng(seed, k, b)) for b in range(n)]

    def noise_crop(self, category: str, index: int, start: int, wraps: bool, length: int) -> np.ndarray:
        path, n = self.bank.noise[category][index]
        if wraps:
            return apply_crop(read_wav(path), length, start, False, True)
        return read_wav(path, start=start, stop=start + length)

    def __call__(self, crops: np.ndarray, seed: int, k: int, rows: tuple[int, int] | None = None,
                 batch_size: int | None = None) -> np.ndarray:
        crops = np.asarray(crops)
        lo, hi = (0, len(crops)) if rows is None else rows
        n = len(crops) if batch_size is None else int(batch_size)
        if hi - lo != len(crops) or not 0 <= lo <= hi <= n:
            raise ValueError(f"rows {lo}..{hi - 1} of a batch of {n} do not match {len(crops)} crops")
        plans = self.plans(n, crops.shape[1], seed, k)
        return self.apply(crops, plans[lo:hi])

    def apply(self, crops: np.ndarray, plans: list[Plan]) -> np.ndarray:
        """The augmented int16 crops (B, L) for the given plans (one per row)."""
        if not any(p.rir is not None or p.category is not None for p in plans):
            return crops
        x = crops.astype(np.float32)
        rows = [b for b, p in enumerate(plans) if p.rir is not None]
        if rows:
            rirs = [read_wav(self.bank.rirs[plans[b].rir][0]) for b in rows]
            x[rows] = reverberate(x[rows], rirs, taps=max(n for _, n in self.bank.rirs))
        noisy = [b for b, p in enumerate(plans) if p.files]
        if noisy:
            length = x.shape[1]
            owner = [b for b in noisy for _ in plans[b].files]                         # (J,) example of item j
            noise = np.stack([self.noise_crop(plans[b].category, i, s, w, length).astype(np.float32)
                              for b in noisy for i, s, w, _ in plans[b].files])        # (J, L)
            snr = np.array([f[3] for b in noisy for f in plans[b].files])               # (J,)
            gain = noise_gains(x[owner], noise, snr).astype(np.float32)                # (J,)
            for j, b in enumerate(owner):      # J row additions (a few per example): cheaper than a reduceat
                x[b] += gain[j] * noise[j]
        return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def reverberate(x: np.ndarray, rirs: list[np.ndarray], taps: int | None = None) -> np.ndarray:
    """x float32 (R, L) convolved row by row with the energy-normalised rirs[r] (any lengths up to `taps`,
    default the longest given), the first L samples of each full convolution: (R, L) float32. A real FFT of the
    smallest fast size for L + taps - 1, one row at a time: with a fixed `taps` (the longest RIR of the bank) a
    row's result does not depend on the other rows of the call (nor on how an FFT library groups rows), so a
    process computing some rows of a batch gets those rows of the whole batch bit for bit."""
    import scipy.fft

    length = x.shape[1]
    taps = max(len(r) for r in rirs) if taps is None else int(taps)
    n = scipy.fft.next_fast_len(length + taps - 1, real=True)
    y = np.empty_like(x, dtype=np.float32)
    for r, rir in enumerate(rirs):
        rir = np.asarray(rir, dtype=np.float64)
        h = (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)
        y[r] = scipy.fft.irfft(scipy.fft.rfft(x[r], n) * scipy.fft.rfft(h, n), n)[:length]
    return y


def noise_gains(speech: np.ndarray, noise: np.ndarray, snr_db: np.ndarray) -> np.ndarray:
    """Per row j the factor g_j with 10 log10(mean(speech_j^2) / mean((g_j noise_j)^2)) = snr_db[j];
    speech, noise (J, L); powers in float64; 0 where the noise row is silent. -> (J,) float64."""
    p_speech = np.einsum("ij,ij->i", speech, speech, dtype=np.float64) / speech.shape[1]
    p_noise = np.einsum("ij,ij->i", noise, noise, dtype=np.float64) / noise.shape[1]
    ok = p_noise > 0
    gain = np.zeros(len(noise))
    gain[ok] = np.sqrt(p_speech[ok] / (p_noise[ok] * 10.0 ** (np.asarray(snr_db)[ok] / 10.0)))
    return gain


def load_augmenter(config: AugmentConfig, cache_file=None, skip_bad: bool = False,
                   progress: bool = False) -> tuple[Augmenter | None, list[str]]:
    """(Augmenter or None when off, the unusable noise/RIR files). Bad files are a ValueError naming the first
    unless skip_bad (then they are left out and returned, for the caller to count)."""
    if not config.enabled:
        return None, []
    config.check()
    bank = scan_bank(config, cache_file, progress)
    if bank.bad and not skip_bad:
        raise ValueError(f"{len(bank.bad)} noise/RIR files are unusable (first: {bank.bad[0]}): fix or remove them, "
                         "or pass --skip-bad-audio to leave them out")
    return Augmenter(config, bank), bank.bad
