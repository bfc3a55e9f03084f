"""Training batches and evaluation crops, in worker processes, deterministic and resumable.

Training: batch k holds B utterances drawn uniformly at random with replacement (as the paper), each cut
with random_crop. Every random number of batch k comes from a generator seeded by (seed, k), so the stream
is the same for any number of workers and a run resumed at batch k sees exactly the batches an
uninterrupted run would. Batches are (crops int16 tensor (B, L), labels int64 tensor (B,)); the trainer
computes the spectrogram on its device (frontend.spectrogram_torch).

Evaluation: per utterance i, n random crops from a generator seeded by (seed, i).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .audio import AudioError, read_wav
from .crops import CropError, apply_crop, crop_params, random_crop
from .frontend import crop_length

log = logging.getLogger(__name__)

_TRAIN_STREAM, _EVAL_STREAM = 0, 1


def batch_rng(seed: int, k: int) -> np.random.Generator:
    """The generator of training batch k."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _TRAIN_STREAM, int(k)]))


def _reader(cache):
    if cache is None:
        return read_wav
    from .cache import WavCache

    return (cache if isinstance(cache, WavCache) else WavCache(cache)).get


class TrainBatches:
    """Map-style dataset whose item k is the whole training batch k (used with batch_size=None).

    paths: audio file paths (absolute, or as keyed in the cache); labels: int (n,).
    length: crop length in samples (or give frames: length = crop_length(frames)).
    on_error: 'raise' (AudioError / CropError naming the file) or 'skip' (count it, log it, draw another
    utterance from the same generator, so the stream stays deterministic).
    rows: None (item k is the whole batch), or (lo, hi): item k is rows lo..hi-1 of batch k, the only ones
    decoded; the draws of the other rows are made from `lengths` (samples per path, e.g. the pre-flight
    check's), so the rows equal the whole batch's. One process of a data-parallel launch reads only its
    rows. A recording that fails to read then is an error even with on_error='skip' (skipping it would
    change the draws of the rows after it in this process alone); one too short for a crop (known from its
    length) is skipped as usual.
    augmenter: a voxdata.augment.Augmenter (noise / reverberation) applied to each batch's crops; its
    randomness is drawn per example from (seed, k, row), apart from the batch generator, for every row of the
    batch in every process (only the rows this process owns are then read and augmented).
    """

    def __init__(
        self,
        paths,
        labels,
        batch_size: int = 50,
        length: int | None = None,
        frames: int | None = None,
        seed: int = 0,
        augment: bool = True,
        repeat_short: bool = False,
        cache=None,
        on_error: str = "raise",
        rows: tuple[int, int] | None = None,
        lengths=None,
        augmenter=None,
    ):
        if length is None:
            length = crop_length(frames if frames is not None else 300)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.paths = [os.fspath(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.paths) == 0 or len(self.paths) != len(self.labels):
            raise ValueError(f"need as many labels as paths (>0), got {len(self.paths)} and {len(self.labels)}")
        self.batch_size, self.length, self.seed = int(batch_size), int(length), int(seed)
        self.augment, self.repeat_short, self.on_error = augment, repeat_short, on_error
        self.cache, self.augmenter = cache, augmenter
        self.sliced = rows is not None
        self.rows = (0, int(batch_size)) if rows is None else (int(rows[0]), int(rows[1]))
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        if rows is not None and (self.lengths is None or len(self.lengths) != len(self.paths)):
            raise ValueError("rows needs the length of every recording (lengths, one per path)")
        self.skipped = 0  # draws skipped in this process (on_error='skip')
        self._bad: set[int] = set()
        self._read = None

    def __len__(self) -> int:  # nominal: the stream is infinite, the sampler decides
        return 2**62

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_read"] = None
        return state

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows lo..hi-1 (all by default) of batch k as NumPy: crops int16 (n, L), labels int64 (n,)."""
        if self._read is None:
            self._read = _reader(self.cache)
        rng = batch_rng(self.seed, k)
        lo, hi = self.rows
        crops = np.empty((hi - lo, self.length), dtype=np.int16)
        labels = np.empty(hi - lo, dtype=np.int64)
        for b in range(hi):
            for _attempt in range(100):
                i = int(rng.integers(0, len(self.paths)))
                try:
                    crop = self._crop(self.paths[i], None if self.lengths is None else self.lengths[i], rng, b >= lo)
                    break
                except (AudioError, CropError) as e:
                    if self.on_error == "raise" or (isinstance(e, AudioError) and self.sliced):
                        if isinstance(e, CropError):
                            raise CropError(f"{self.paths[i]}: {e}") from None
                        raise
                    self.skipped += 1
                    if i not in self._bad:  # log each bad file once per process, count every skip
                        self._bad.add(i)
                        log.warning(
                            "skipping %s (%d bad files seen in this process): %s", self.paths[i], len(self._bad), e
                        )
            else:
                raise AudioError(f"100 unusable files in a row while building batch {k}; last: {self.paths[i]}")
            if b >= lo:
                crops[b - lo], labels[b - lo] = crop, self.labels[i]
        if self.augmenter is not None:
            crops = self.augmenter(crops, self.seed, k, self.rows, self.batch_size)
        return crops, labels

    def _crop(self, path: str, n: int | None, rng: np.random.Generator, decode: bool) -> np.ndarray | None:
        """The crop of one draw: its parameters from rng (from the known length n, or the decoded signal's),
        the samples only when `decode`."""
        if n is None:
            return random_crop(self._read(path), self.length, rng, self.augment, self.repeat_short)
        params = crop_params(int(n), self.length, rng, self.augment, self.repeat_short)
        if not decode:
            return None
        signal = self._read(path)
        if len(signal) != n:
            raise AudioError(f"{path}: {len(signal)} samples, but {n} when it was checked (changed since?)")
        return apply_crop(signal, self.length, *params)

    def __getitem__(self, k: int):
        import torch

        crops, labels = self.batch(k)
        return torch.from_numpy(crops), torch.from_numpy(labels)


class _From:
    """Sampler: k = start, start + 1, ... forever."""

    def __init__(self, start: int):
        self.start = int(start)

    def __iter__(self):
        k = self.start
        while True:
            yield k
            k += 1


def _worker_init(_):
    import signal

    import torch

    torch.set_num_threads(1)  # the workers only slice and copy; keep the cores for the main process
    # Ctrl-C, `kill -- -PGID` or a batch scheduler (Grid Engine's -notify) signal the whole process group or
    # job. The main process turns those signals into "snapshot, then exit" and shuts the workers down itself;
    # a worker that died of the signal first would make the DataLoader raise instead. So the workers leave
    # the process group and ignore the warning signals. SIGTERM keeps its default action: multiprocessing
    # uses it to stop workers at exit. (A worker whose parent died exits by itself: DataLoader's watchdog.)
    os.setpgrp()
    for name in ("SIGINT", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def train_loader(
    paths,
    labels,
    batch_size: int = 50,
    length: int | None = None,
    frames: int | None = None,
    seed: int = 0,
    start_batch: int = 0,
    num_workers: int = 2,
    augment: bool = True,
    repeat_short: bool = False,
    cache=None,
    on_error: str = "raise",
    pin_memory: bool | None = None,
    prefetch_factor: int = 4,
    rows: tuple[int, int] | None = None,
    lengths=None,
    augmenter=None,
):
    """Infinite DataLoader of training batches k = start_batch, start_batch + 1, ...

    Yields (crops int16 tensor (B, L), labels int64 tensor (B,)), or only rows lo..hi-1 of each batch with
    rows=(lo, hi) and the recordings' lengths (see TrainBatches). cache: a cache folder or WavCache (paths
    must be its keys). pin_memory defaults to torch.cuda.is_available(). augmenter: see TrainBatches.
    """
    import torch
    from torch.utils.data import DataLoader

    ds = TrainBatches(paths, labels, batch_size, length, frames, seed, augment, repeat_short, cache, on_error, rows,
                      lengths, augmenter)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kw = {}
    if num_workers > 0:
        kw = {"prefetch_factor": prefetch_factor, "persistent_workers": True, "worker_init_fn": _worker_init}
    return DataLoader(
        ds, batch_size=None, sampler=_From(start_batch), num_workers=num_workers, pin_memory=pin_memory, **kw
    )


class EvalCrops:
    """Map-style dataset: item i = (crops int16 tensor (n_crops, L), i) for utterance i, from a generator
    seeded by (seed, i) -- the 50-crop test protocol (augment=True: repetition + reversal as in training)."""

    def __init__(
        self,
        paths,
        n_crops: int = 50,
        length: int | None = None,
        frames: int | None = None,
        seed: int = 0,
        augment: bool = True,
        repeat_short: bool = True,
        cache=None,
    ):
        self.paths = [os.fspath(p) for p in paths]
        self.n_crops = int(n_crops)
        self.length = int(length if length is not None else crop_length(frames if frames is not None else 300))
        self.seed, self.augment, self.repeat_short, self.cache = int(seed), augment, repeat_short, cache
        self._read = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_read"] = None
        return state

    def crops(self, i: int) -> np.ndarray:
        if self._read is None:
            self._read = _reader(self.cache)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _EVAL_STREAM, int(i)]))
        x = self._read(self.paths[i])
        try:
            return np.stack(
                [random_crop(x, self.length, rng, self.augment, self.repeat_short) for _ in range(self.n_crops)]
            )
        except CropError as e:
            raise CropError(f"{self.paths[i]}: {e}") from None

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.crops(i)), i


def eval_crops(
    paths,
    n_crops: int = 50,
    length: int | None = None,
    frames: int | None = None,
    seed: int = 0,
    augment: bool = True,
    num_workers: int = 0,
    cache=None,
):
    """Iterate over utterances in order, yielding (crops int16 tensor (n_crops, L), index)."""
    from torch.utils.data import DataLoader

    ds = EvalCrops(paths, n_crops, length, frames, seed, augment, cache=cache)
    kw = {"worker_init_fn": _worker_init, "prefetch_factor": 4} if num_workers > 0 else {}
    return DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers, **kw)
