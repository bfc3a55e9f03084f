"""Resumable embedding runs and the embeddings file.

An embedding run over the 145,375 utterances of VoxCeleb1-E/-H takes days at 50 crops on CPUs, so it
saves its work as it goes: ``<out>/embeddings.partial/`` holds ``manifest.json`` (the protocol and the
number and hash of the utterance ids) and ``part_NNNNN.npz`` files (ids, embeddings) written atomically
every ``chunk`` utterances. A stopped run, restarted with the same arguments, embeds only what is missing;
restarted with another protocol (weights, crops, seed, ...) it stops with a message saying what differs.
Results are the same as an uninterrupted run: the crops of an utterance depend only on (seed, its position
in the id list), never on which run embedded it.

The final ``embeddings.npz``: ``ids`` (N,) str, ``embeddings`` (N, D) float32, and ``protocol`` (a JSON
string: how they were made), and, for cohorts, ``speakers`` (N,) str.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["EmbedStore", "load_embeddings", "save_embeddings"]

log = logging.getLogger(__name__)


def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def save_embeddings(path: str, ids: Sequence[str], embeddings, protocol: dict | None = None,
                    speakers: Sequence[str] | None = None) -> str:
    """Write an embeddings .npz atomically (temporary file, then rename); returns ``path``."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids but embeddings of shape {emb.shape}")
    arrays = {"ids": np.asarray(list(ids), dtype=str), "embeddings": emb,
              "protocol": np.asarray(json.dumps(protocol or {}, sort_keys=True))}
    if speakers is not None:
        arrays["speakers"] = np.asarray(list(speakers), dtype=str)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_embeddings(path: str) -> tuple[list[str], np.ndarray, dict, list[str] | None]:
    """``(ids, (N, D) float32, protocol dict ({} if the file has none), speakers or None)``."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not an embeddings .npz ({e})") from None
    with z:
        if "ids" not in z or "embeddings" not in z:
            raise ValueError(f"{path}: needs arrays 'ids' and 'embeddings' (has {list(z.keys())})")
        ids = [str(u) for u in z["ids"]]
        emb = np.asarray(z["embeddings"], dtype=np.float32)
        protocol = json.loads(str(z["protocol"])) if "protocol" in z else {}
        speakers = [str(s) for s in z["speakers"]] if "speakers" in z else None
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"{path}: {len(ids)} ids but embeddings of shape {emb.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: utterance ids are not unique")
    return ids, emb, protocol, speakers


class EmbedStore:
    """The partial results of one embedding run over ``ids`` (in this order) with ``protocol``."""

    def __init__(self, folder: str, ids: Sequence[str], protocol: dict):
        self.folder = folder
        self.ids = list(ids)
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("utterance ids are not unique")
        self.protocol = json.loads(json.dumps(protocol, sort_keys=True))  # JSON-normalised for comparison
        manifest = {"protocol": self.protocol, "n_ids": len(self.ids), "ids_sha256": _ids_hash(self.ids)}
        path = os.path.join(folder, "manifest.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            diffs = [k for k in sorted(set(old.get("protocol", {})) | set(self.protocol))
                     if old.get("protocol", {}).get(k) != self.protocol.get(k)]
            if diffs or old.get("ids_sha256") != manifest["ids_sha256"]:
                what = ", ".join(f"{k}: {old.get('protocol', {}).get(k)!r} -> {self.protocol.get(k)!r}"
                                 for k in diffs) or "the utterance list"
                raise ValueError(f"{folder} holds a stopped embedding run with another protocol ({what}); "
                                 "remove that folder to start over, or rerun with its arguments")
        else:
            os.makedirs(folder, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
            os.replace(tmp, path)
        self._done: dict[str, np.ndarray] = {}
        for part in sorted(glob.glob(os.path.join(folder, "part_*.npz"))):
            with np.load(part, allow_pickle=False) as z:
                for u, e in zip(z["ids"], z["embeddings"]):
                    self._done[str(u)] = e

    def __len__(self) -> int:
        return len(self._done)

    def todo(self) -> list[str]:
        """The ids still to embed, in the run's order."""
        return [u for u in self.ids if u not in self._done]

    def add(self, ids: Sequence[str], embeddings) -> None:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {emb.shape[0]} embeddings")
        n = len(glob.glob(os.path.join(self.folder, "part_*.npz")))
        path = os.path.join(self.folder, f"part_{n:05d}.npz")
        tmp = os.path.join(self.folder, f"writing_{n:05d}.npz")  # not matched by part_*.npz if a stop cuts it
        np.savez(tmp, ids=np.asarray(list(ids), dtype=str), embeddings=emb)
        os.replace(tmp, path)
        self._done.update(zip(ids, emb))

    def run(self, embed_fn: Callable[[list[str]], np.ndarray], chunk: int = 1000,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Embed what is missing with ``embed_fn(ids) -> (n, D)``, ``chunk`` ids at a time, each chunk
        saved before the next starts; returns (N, D) float32 in ``self.ids`` order."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        todo = self.todo()
        if len(self._done):
            log.info("resuming: %d of %d utterances already embedded in %s", len(self._done), len(self.ids),
                     self.folder)
        try:
            for s in range(0, len(todo), chunk):
                part = todo[s : s + chunk]
                self.add(part, embed_fn(part))
                if progress is not None:
                    progress(len(self._done), len(self.ids))
        except KeyboardInterrupt:      # the saved chunks stay: say so, instead of a traceback (speaker.cli)
            raise KeyboardInterrupt(f"{len(self._done)} of {len(self.ids)} embeddings are kept in {self.folder}; "
                                    "the same command continues from there") from None
        return np.stack([self._done[u] for u in self.ids])

    def remove(self) -> None:
        """Delete the partial folder (after the final file is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
