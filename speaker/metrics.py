"""Verification and identification metrics: the one implementation every script uses.

Conventions (the paper, arXiv 1807.08312, and its public scripts):

- Scores are similarities: a trial is accepted when ``score >= threshold``.
- ``compute_eer`` is the equal error rate where the miss rate (FNR = 1 - TPR) and the false-alarm rate
  (FPR) cross, linearly interpolated between neighbouring ROC points. It is the headline figure.
- ``eer_original`` is the original 2018 scripts' convention, kept for comparison with their numbers: the
  FPR at the ROC point where |FPR - FNR| is smallest, without interpolation. On 37,720 trials the two differ
  by at most about one trial step.
- ``compute_min_dcf`` is the NIST detection cost minimised over ROC points and normalised by the cost of
  the best trivial system, ``min(c_miss * p_target, c_fa * (1 - p_target))``. The original minimised over
  sklearn's default (``drop_intermediate=True``) ROC points; the points it drops are collinear with their
  neighbours, where a linear cost cannot be smaller, so both give the same minimum.
- ``topk_accuracy`` follows Caffe 1.0's Accuracy layer, ties included.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

__all__ = [
    "check_trials",
    "compute_eer",
    "compute_min_dcf",
    "det_curve",
    "eer_original",
    "roc",
    "topk_accuracy",
    "verification_summary",
]


def check_trials(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate a trial list and return ``(labels int64 (T,), scores float64 (T,))``.

    Raises ValueError for: different lengths, empty or non-1-D input, labels other than 0/1, only one
    class present (EER and DCF are undefined), and NaN or infinite scores. The message says how many
    entries are bad and where the first one is, since silently dropping trials would change the figures.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"labels and scores differ in length: {labels.shape[0]} labels, {scores.shape[0]} scores"
        )
    if labels.shape[0] == 0:
        raise ValueError("empty trial list: no labels and no scores")
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"labels must be numeric 0/1, got dtype {labels.dtype}")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"labels must be 0 (non-target) or 1 (target): {int(bad.sum())} other values, "
            f"first at index {i}: {labels[i]!r}"
        )
    labels = labels.astype(np.int64)
    n_target = int(labels.sum())
    if n_target == 0 or n_target == labels.shape[0]:
        kind = "target (1)" if n_target else "non-target (0)"
        raise ValueError(
            f"all {labels.shape[0]} trials are {kind}: EER and minDCF need both target and non-target trials"
        )
    if not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"scores must be finite: {int(bad.sum())} NaN/inf values, first at index {i}: {scores[i]!r}"
        )
    return labels, scores


def roc(labels, scores, drop_intermediate: bool = False):
    """Validated ROC: ``(fpr, fnr, thresholds)``, each (P,), thresholds decreasing.

    ``thresholds[0]`` is +inf (accept nothing: fpr 0, fnr 1). With ``drop_intermediate=False`` every
    distinct score is a point, so the returned thresholds are exact operating points; with True, the points
    sklearn's default drops (collinear with their neighbours: same curve, far fewer points) are left out.
    """
    labels, scores = check_trials(labels, scores)
    return _roc(labels, scores, drop_intermediate)


def _roc(labels, scores, drop_intermediate: bool = False):
    # labels/scores already validated by check_trials
    fpr, tpr, thr = roc_curve(labels, scores, pos_label=1, drop_intermediate=False)
    fnr = 1.0 - tpr
    if drop_intermediate:
        n_target = int(labels.sum())
        fpr, fnr, thr = _drop_intermediate(fpr, fnr, thr, n_target, labels.shape[0] - n_target)
    return fpr, fnr, thr


def _drop_intermediate(fpr, fnr, thr, n_target: int, n_nontarget: int):
    """sklearn's ``drop_intermediate=True`` applied to a full ROC (so one sort serves both conventions).

    sklearn keeps a point of the cumulative (false, true) positive counts when either count's second
    difference is non-zero, plus the first and last; the +inf point it prepends is always kept. The counts
    are recovered exactly from the rates (they are integers far below 2**53).
    """
    fps = np.rint(fpr[1:] * n_nontarget)  # (P-1,) counts at each finite threshold
    tps = np.rint((1.0 - fnr[1:]) * n_target)
    keep = np.r_[True, True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]  # +inf, first, ..., last
    if fps.size < 2:  # a single distinct score: nothing in between to drop
        keep = np.ones(fpr.size, dtype=bool)
    return fpr[keep], fnr[keep], thr[keep]


def compute_eer(labels, scores) -> tuple[float, float]:
    """Equal error rate and its threshold.

    The ROC points (fpr_i, fnr_i) are joined by straight lines and the EER is where that polyline meets
    fpr == fnr. ``fnr - fpr`` decreases from +1 (threshold +inf) to -1 (threshold below every score), so
    the crossing is in the first segment where it turns <= 0. The threshold is interpolated between the two
    ROC points' thresholds with the same weight (the +inf of the first point is replaced by the next one).
    """
    return _eer_from_roc(*roc(labels, scores))


def _eer_from_roc(fpr, fnr, thr) -> tuple[float, float]:
    diff = fnr - fpr  # (P,), non-increasing
    i = int(np.argmax(diff <= 0))  # first point on or past the crossing; exists since diff[-1] == -1
    if diff[i] == 0 or i == 0:
        return float(fpr[i]), float(thr[i])
    # Crossing inside the segment (i-1, i): fraction t along it where diff is 0.
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    lo = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    threshold = lo + t * (thr[i] - lo)
    return float(eer), float(threshold)


def eer_original(labels, scores, drop_intermediate: bool = True) -> tuple[float, float]:
    """The original scripts' EER: FPR at the ROC point with the smallest |FPR - FNR| (no interpolation).

    ``drop_intermediate=True`` is sklearn's default, which the original used; it can only matter when the
    nearest point is one of the collinear points sklearn drops. Returns ``(eer, threshold)``.
    """
    return _eer_nearest(*roc(labels, scores, drop_intermediate=drop_intermediate))


def _eer_nearest(fpr, fnr, thr) -> tuple[float, float]:
    i = int(np.argmin(np.abs(fpr - fnr)))
    return float(fpr[i]), float(thr[i])


def compute_min_dcf(
    labels, scores, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Minimum normalised detection cost and the threshold that reaches it.

    cost(t) = c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target), minimised over the ROC
    points and divided by ``min(c_miss * p_target, c_fa * (1 - p_target))`` so that a system that accepts
    or rejects everything scores 1. The threshold is +inf when rejecting every trial is optimal.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    return _min_dcf_from_roc(*roc(labels, scores), p_target, c_miss, c_fa)


def _min_dcf_from_roc(fpr, fnr, thr, p_target, c_miss=1.0, c_fa=1.0) -> tuple[float, float]:
    cost = c_miss * fnr * p_target + c_fa * fpr * (1.0 - p_target)  # (P,)
    i = int(np.argmin(cost))
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(cost[i] / norm), float(thr[i])


def det_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, fnr)`` over all ROC points, for DET plots (the plotting side applies the probit)."""
    fpr, fnr, _ = roc(labels, scores)
    return fpr, fnr


def topk_accuracy(scores, labels, k: int) -> float:
    """Fraction of rows whose label is among the top ``k`` classes, ranked as Caffe 1.0's Accuracy layer.

    Caffe 1.0 sorts the (score, class index) pairs in descending order, so among equal scores the HIGHER
    class index ranks first. The true class c is therefore in the top k iff
    #{j : s_j > s_c} + #{j > c : s_j == s_c} < k.

    scores: (N, C) float; labels: (N,) int in [0, C).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {scores.shape}")
    n, c = scores.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match scores {scores.shape}, got shape {labels.shape}")
    if n == 0:
        raise ValueError("topk_accuracy of zero samples is undefined")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must be in [0, {c}), got range [{labels.min()}, {labels.max()}]")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    rows = np.arange(n)
    true = scores[rows, labels][:, None]  # (N, 1)
    higher_index = np.arange(c)[None, :] > labels[:, None]  # (N, C)
    ahead = (scores > true) | ((scores == true) & higher_index)  # classes ranked before the label
    return float(np.mean(ahead.sum(axis=1) < k))


def verification_summary(labels, scores, p_targets=(0.01, 0.001), c_miss: float = 1.0, c_fa: float = 1.0) -> dict:
    """Every verification figure of one score list, JSON-ready.

    Returns ``{"n", "n_target", "n_nontarget", "eer", "eer_threshold", "eer_original",
    "min_dcf": {str(p): value}, "min_dcf_threshold": {str(p): threshold}}`` (rates as fractions; minDCF
    with costs ``c_miss``, ``c_fa``, normalised as in ``compute_min_dcf``).
    """
    for p in p_targets:
        if not 0.0 < p < 1.0:
            raise ValueError(f"p_target must be in (0, 1), got {p}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    labels, scores = check_trials(labels, scores)
    n_target = int(labels.sum())
    # One full ROC shared by every figure (sorting 11.9 M all-pairs scores is the costly part).
    fpr, fnr, thr = _roc(labels, scores)
    eer, eer_thr = _eer_from_roc(fpr, fnr, thr)
    eer_orig, _ = _eer_nearest(*_drop_intermediate(fpr, fnr, thr, n_target, labels.shape[0] - n_target))
    dcf, dcf_thr = {}, {}
    for p in p_targets:
        dcf[f"{p:g}"], dcf_thr[f"{p:g}"] = _min_dcf_from_roc(fpr, fnr, thr, p, c_miss, c_fa)
    return {
        "n": int(labels.shape[0]),
        "n_target": n_target,
        "n_nontarget": int(labels.shape[0] - n_target),
        "eer": eer,
        "eer_threshold": eer_thr,
        "eer_original": eer_orig,
        "min_dcf": dcf,
        # +inf (reject everything) is not valid JSON; None says "no finite threshold".
        "min_dcf_threshold": {k: (v if np.isfinite(v) else None) for k, v in dcf_thr.items()},
    }
