"""Score normalisation of cosine scores with a cohort: S-Norm and adaptive S-Norm (AS-Norm).

For a trial (e, t) with raw cosine score s, each side x in {e, t} is scored against every cohort embedding
(cosine, as the trials), giving a cohort score vector c_x (C,). With mu_x, sigma_x the mean and standard
deviation (population, ddof 0) of c_x, or, for AS-Norm, of its ``top_n`` largest entries only:

    s_norm = 0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)

(symmetric S-Norm, Kenny 2010; adaptive, Matejka et al. 2017, top-N chosen per side). The statistics are
computed once per distinct utterance, so 581,480 trials over 145,375 utterances cost one (145,375 x C)
product in chunks. The cohort is speaker-averaged (mean of the speaker's L2-normalised embeddings,
renormalised; the usual choice) or per utterance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from speaker.scoring import l2_normalize

__all__ = ["NORMS", "NormStats", "cohort_matrix", "cohort_stats", "normalize_scores"]

NORMS = ("none", "snorm", "asnorm")


def cohort_matrix(embeddings, speakers: Sequence[str] | None = None, mode: str = "speaker") -> np.ndarray:
    """The L2-normalised cohort (C, D) float32 from (N, D) embeddings.

    mode 'utterance': one row per embedding. mode 'speaker': one row per distinct entry of ``speakers``
    (N,), the renormalised mean of its utterances' normalised embeddings, in sorted speaker order.
    """
    x = l2_normalize(embeddings)
    if mode == "utterance":
        return x
    if mode != "speaker":
        raise ValueError(f"cohort mode must be 'speaker' or 'utterance', got {mode!r}")
    if speakers is None:
        raise ValueError("a speaker-averaged cohort needs the speaker of every cohort embedding")
    spk = np.asarray(speakers)
    if spk.shape != (x.shape[0],):
        raise ValueError(f"speakers must be ({x.shape[0]},) to match the cohort embeddings, got {spk.shape}")
    names, codes = np.unique(spk, return_inverse=True)
    sums = np.zeros((names.size, x.shape[1]), dtype=np.float64)  # (S, D)
    np.add.at(sums, codes.reshape(-1), x.astype(np.float64))
    return l2_normalize(sums)


def cohort_stats(x, cohort, top_n: int | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (N,) float64 of each row of ``x`` (N, D)'s cosine scores against the
    cohort (C, D): over all C scores, or over the ``top_n`` largest (AS-Norm).

    Both inputs are L2-normalised here. A zero standard deviation (a degenerate cohort) is an error.
    """
    x = l2_normalize(x)
    cohort = l2_normalize(cohort)
    c = cohort.shape[0]
    if top_n is not None and not 1 <= top_n <= c:
        raise ValueError(f"top_n must be in [1, {c}] (the cohort size), got {top_n}")
    if top_n is not None and top_n < 2:
        raise ValueError("top_n must be at least 2 (a standard deviation of one score is 0)")
    mean = np.empty(x.shape[0], dtype=np.float64)
    std = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], chunk):
        scores = (x[s : s + chunk] @ cohort.T).astype(np.float64)  # (n, C)
        if top_n is not None and top_n < c:
            # the top_n largest per row, unordered (np.partition: linear time)
            scores = np.partition(scores, c - top_n, axis=1)[:, c - top_n :]
        mean[s : s + chunk] = scores.mean(axis=1)
        std[s : s + chunk] = scores.std(axis=1)
    if (std <= 0).any():
        bad = int(np.flatnonzero(std <= 0)[0])
        raise ValueError(f"row {bad}: its cohort scores have zero spread; the cohort is degenerate")
    return mean, std


class NormStats:
    """Per-utterance cohort statistics of one normalisation: ``mean``/``std`` (U,) for the ids in ``row``."""

    def __init__(self, embeddings: Mapping[str, np.ndarray], utts: Sequence[str], cohort, norm: str,
                 top_n: int | None = None):
        if norm not in ("snorm", "asnorm"):
            raise ValueError(f"norm must be one of {NORMS[1:]}, got {norm!r}")
        if norm == "asnorm" and top_n is None:
            raise ValueError("asnorm needs top_n")
        utts = sorted(set(utts))
        missing = [u for u in utts if u not in embeddings]
        if missing:
            raise KeyError(f"no embedding for {len(missing)} trial utterances (first: {missing[0]})")
        self.row = {u: i for i, u in enumerate(utts)}
        x = np.stack([np.asarray(embeddings[u]).reshape(-1) for u in utts])  # (U, D)
        self.mean, self.std = cohort_stats(x, cohort, top_n if norm == "asnorm" else None)

    def apply(self, scores, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t) for each trial, float64 (T,)."""
        scores = np.asarray(scores, dtype=np.float64)
        if len(pairs) != scores.shape[0]:
            raise ValueError(f"{len(pairs)} pairs but {scores.shape[0]} scores")
        try:
            e = np.fromiter((self.row[a] for a, _ in pairs), dtype=np.int64, count=len(pairs))
            t = np.fromiter((self.row[b] for _, b in pairs), dtype=np.int64, count=len(pairs))
        except KeyError as k:
            raise KeyError(f"no cohort statistics for utterance {k.args[0]!r}") from None
        return 0.5 * ((scores - self.mean[e]) / self.std[e] + (scores - self.mean[t]) / self.std[t])


def normalize_scores(
    scores,
    pairs: Sequence[tuple[str, str]],
    embeddings: Mapping[str, np.ndarray],
    cohort,
    norm: str,
    top_n: int | None = None,
) -> np.ndarray:
    """S-Norm (``norm='snorm'``, all cohort scores) or AS-Norm (``'asnorm'``, the ``top_n`` best) of raw
    trial ``scores`` (T,) for ``pairs`` (T,) of utterance ids; returns float64 (T,). ``'none'`` returns
    the scores unchanged. ``embeddings`` maps every id of ``pairs`` to its (D,) embedding. (Several lists
    over shared utterances: build one NormStats over all of them and ``apply`` it to each.)"""
    if norm == "none":
        return np.asarray(scores, dtype=np.float64)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if len(pairs) != np.asarray(scores).shape[0]:
        raise ValueError(f"{len(pairs)} pairs but {np.asarray(scores).shape[0]} scores")
    stats = NormStats(embeddings, [u for pair in pairs for u in pair], cohort, norm, top_n)
    return stats.apply(scores, pairs)
