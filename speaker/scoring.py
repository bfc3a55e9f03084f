"""Cosine scoring of verification trials, all-pairs scoring, and ``label score`` files.

Embeddings are L2-normalised once, so every cosine score is a dot product; trial lists are scored in
batches of gathered rows and all pairs with one matrix product.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "all_pairs_scores",
    "cosine_score_trials",
    "l2_normalize",
    "read_score_file",
    "speaker_of",
    "write_scores",
]


def speaker_of(utt: str) -> str:
    """The speaker of a VoxCeleb utterance path: its first component (an id, or a name in the 2017 layout)."""
    return utt.replace("\\", "/").split("/", 1)[0]


def l2_normalize(x, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (N, D) divided by their L2 norm, as float32 (N, D).

    A zero row would give NaN cosines downstream, so it is an error here, naming the row.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"embedding row {bad} contains NaN or inf")
    # (N,) accumulated in float64 so tiny rows don't underflow; einsum casts in buffers, so no (N, D) float64 copy
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if (norms <= eps).any():
        bad = int(np.flatnonzero(norms <= eps)[0])
        raise ValueError(f"embedding row {bad} has zero norm; cosine similarity is undefined")
    return (x / norms[:, None]).astype(np.float32)


def cosine_score_trials(
    embeddings: Mapping[str, np.ndarray],
    pairs: Iterable[tuple[str, str]],
    batch: int = 65536,
) -> np.ndarray:
    """Cosine similarity of each ``(id1, id2)`` pair; returns float32 (T,) in the order of ``pairs``.

    ``embeddings`` maps utterance id -> (D,) vector. Every id of every pair must be present: a missing one
    is a KeyError naming it and the trial index (dropping trials silently would change the EER).
    """
    ids = list(embeddings)
    if not ids:
        raise ValueError("no embeddings to score")
    index = {u: i for i, u in enumerate(ids)}
    matrix = l2_normalize(np.stack([np.asarray(embeddings[u]).reshape(-1) for u in ids]))  # (N, D)
    first: list[int] = []
    second: list[int] = []
    for t, pair in enumerate(pairs):
        try:
            a, b = pair
        except (TypeError, ValueError):
            raise ValueError(f"trial {t}: expected a pair (id1, id2), got {pair!r}") from None
        for u in (a, b):
            if u not in index:
                raise KeyError(f"trial {t}: no embedding for utterance {u!r}")
        first.append(index[a])
        second.append(index[b])
    i1 = np.asarray(first, dtype=np.int64)  # (T,)
    i2 = np.asarray(second, dtype=np.int64)
    out = np.empty(i1.shape[0], dtype=np.float32)
    for s in range(0, i1.shape[0], batch):
        # (b, D) * (b, D) summed over D: one batched dot product per chunk keeps memory at b*D floats.
        out[s : s + batch] = np.einsum("ij,ij->i", matrix[i1[s : s + batch]], matrix[i2[s : s + batch]])
    return out


def all_pairs_scores(embeddings, speakers: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Score every unordered pair i < j of the rows of ``embeddings`` (N, D) with one matrix product.

    Returns ``(scores float32 (P,), labels bool (P,))`` with P = N (N - 1) / 2, in row-major upper-triangle
    order (pair (0,1), (0,2), ..., (1,2), ...); label True when both utterances have the same speaker id.
    Memory is one (N, N) float32 Gram matrix, one (N, N) bool mask and the outputs: for the 4,874 VoxCeleb1
    test utterances that is about 95 MB + 24 MB + 48 MB + 12 MB; no list of pairs is ever built.
    """
    x = l2_normalize(embeddings)
    n = x.shape[0]
    spk = np.asarray(speakers)
    if spk.shape != (n,):
        raise ValueError(f"speakers must be ({n},) to match embeddings {x.shape}, got shape {spk.shape}")
    if n < 2:
        raise ValueError(f"all-pairs scoring needs at least 2 embeddings, got {n}")
    _, spk_codes = np.unique(spk, return_inverse=True)  # (N,) ints: compare codes, not strings
    spk_codes = spk_codes.reshape(-1)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)  # (N, N) mask of pairs i < j
    gram = x @ x.T  # (N, N) float32 cosine similarities
    scores = gram[upper]
    del gram
    labels = (spk_codes[:, None] == spk_codes[None, :])[upper]
    return scores, labels


def read_score_file(path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``label score`` lines (optionally ``label score path1 path2``).

    Returns ``(labels int64 (T,), scores float64 (T,))``. Blank lines are ignored; anything else that is
    not a 0/1 label followed by a finite score is a ValueError naming the file and the 1-based line.
    """
    path = os.fspath(path)
    labels: list[int] = []
    scores: list[float] = []
    from voxdata.lists import decoded_lines  # (a not-UTF-8 line names the file and the line)

    with open(path, "rb") as f:
        for lineno, line in decoded_lines(f, path):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in (2, 4):
                raise ValueError(
                    f"{path}:{lineno}: expected 'label score' or 'label score path1 path2', "
                    f"got {len(fields)} fields: {line.rstrip()!r}"
                )
            if fields[0] not in ("0", "1"):
                raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {fields[0]!r}")
            try:
                score = float(fields[1])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score is not a number: {fields[1]!r}") from None
            if not math.isfinite(score):
                raise ValueError(f"{path}:{lineno}: score must be finite, got {fields[1]!r}")
            labels.append(int(fields[0]))
            scores.append(score)
    if not labels:
        raise ValueError(f"{path}: no trials (file is empty)")
    return np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def write_scores(path, labels, scores, pairs: Sequence[tuple[str, str]] | None = None) -> str:
    """Write ``label score`` lines (``label score path1 path2`` when ``pairs`` is given); returns the path.

    Scores are written with 9 significant digits, enough to read float32 scores back exactly.
    """
    path = os.fspath(path)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.shape[0]} and {scores.shape[0]}")
    if pairs is not None and len(pairs) != labels.shape[0]:
        raise ValueError(f"pairs has {len(pairs)} entries, labels {labels.shape[0]}")
    with open(path, "w", encoding="utf-8") as f:
        if pairs is None:
            # savetxt formats row by row in C-level loops; fine for millions of lines.
            np.savetxt(f, np.column_stack([labels, scores]), fmt=["%d", "%.9g"], delimiter=" ")
        else:
            for lab, sc, (a, b) in zip(labels, scores, pairs):
                f.write(f"{lab} {sc:.9g} {a} {b}\n")
    return path
