"""Decode a dataset once into one memory-mapped int16 file so that loader workers only slice.

Layout of a cache folder: `samples.int16` (all recordings back to back, raw little-endian int16) and
`index.json` ({"paths": [...], "offsets": [...], "lengths": [...], "skipped": [...]}). VoxCeleb1 is about
40 GB this way. Keys are the path strings given to build_cache (use the same strings in the loader).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from .audio import AudioError, read_wav, wav_info

log = logging.getLogger(__name__)

SAMPLES = "samples.int16"
INDEX = "index.json"


def build_cache(paths, cache_dir, on_error: str = "raise", progress: bool = True) -> WavCache:
    """Decode every file in `paths` into cache_dir. on_error 'raise' (AudioError naming the file) or 'skip'
    (bad files are left out, counted, logged and listed under "skipped" in index.json).
    Written to temporary names and renamed at the end, so an interrupted build never looks complete."""
    from tqdm import tqdm

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    paths = [os.fspath(p) for p in paths]
    os.makedirs(cache_dir, exist_ok=True)
    # pass 1: headers only, to size the file
    good, lengths, skipped = [], [], []
    for p in tqdm(paths, desc="cache: headers", unit="file", disable=not progress):
        try:
            lengths.append(wav_info(p))
            good.append(p)
        except AudioError as e:
            if on_error == "raise":
                raise
            skipped.append(str(e))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    tmp = os.path.join(cache_dir, SAMPLES + ".tmp")
    mm = np.memmap(tmp, dtype="<i2", mode="w+", shape=(max(int(offsets[-1]), 1),))
    # pass 2: decode
    for i, p in enumerate(tqdm(good, desc="cache: decode", unit="file", disable=not progress)):
        x = read_wav(p)
        if len(x) != lengths[i]:
            raise AudioError(f"{p}: header says {lengths[i]} samples, decoded {len(x)}")
        mm[offsets[i] : offsets[i + 1]] = x
    mm.flush()
    del mm
    os.replace(tmp, os.path.join(cache_dir, SAMPLES))
    with open(os.path.join(cache_dir, INDEX + ".tmp"), "w") as f:
        json.dump(
            {"paths": good, "offsets": offsets[:-1].tolist(), "lengths": lengths, "skipped": skipped}, f
        )
    os.replace(os.path.join(cache_dir, INDEX + ".tmp"), os.path.join(cache_dir, INDEX))
    if skipped:
        log.warning(
            "cache: skipped %d unusable files (listed in %s); first: %s",
            len(skipped),
            os.path.join(cache_dir, INDEX),
            skipped[0],
        )
    return WavCache(cache_dir)


class WavCache:
    """Read side of a cache. get(path) -> int16 (n,) view into the memory map (opened lazily, so the object
    pickles small into worker processes)."""

    def __init__(self, cache_dir):
        self.cache_dir = os.fspath(cache_dir)
        index = os.path.join(self.cache_dir, INDEX)
        if not os.path.exists(index):
            raise FileNotFoundError(f"{index}: no cache index (build it with build_cache)")
        with open(index) as f:
            d = json.load(f)
        self.skipped = d.get("skipped", [])
        self._where = {p: (o, n) for p, o, n in zip(d["paths"], d["offsets"], d["lengths"])}
        self._mm = None

    def __contains__(self, path) -> bool:
        return os.fspath(path) in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mm"] = None  # never pickle the mapped data itself
        return state

    def get(self, path) -> np.ndarray:
        try:
            off, n = self._where[os.fspath(path)]
        except KeyError:
            raise AudioError(f"{path}: not in the cache {self.cache_dir}") from None
        if self._mm is None:
            self._mm = np.memmap(os.path.join(self.cache_dir, SAMPLES), dtype="<i2", mode="r")
        return self._mm[off : off + n]
