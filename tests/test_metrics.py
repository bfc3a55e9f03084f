"""speaker.metrics against references built here from sklearn's roc_curve and brute force."""

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from speaker.metrics import (
    compute_eer,
    compute_min_dcf,
    eer_original,
    topk_accuracy,
    verification_summary,
)

TOL = 1e-4


def ref_eer(labels, scores):
    """The widely used recipe: root of 1 - x - TPR(x) with TPR linearly interpolated in FPR."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def ref_eer_original(labels, scores):
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    return fpr[np.nanargmin(np.abs(fnr - fpr))]


def ref_min_dcf(labels, scores, p):
    """Brute force over every threshold (each distinct score, and +inf = reject all)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    tar, non = scores[labels == 1], scores[labels == 0]
    best = np.inf
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        p_miss = np.mean(tar < t)
        p_fa = np.mean(non >= t)
        best = min(best, p_miss * p + p_fa * (1 - p))
    return best / min(p, 1 - p)


def ref_min_dcf_roc(labels, scores, p):
    fpr, tpr, _ = roc_curve(labels, scores)
    return np.min((1 - tpr) * p + fpr * (1 - p)) / min(p, 1 - p)


def gaussian_trials(n_tar, n_non, seed, sep=2.0, decimals=None):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(sep, 1, n_tar), rng.normal(0, 1, n_non)])
    if decimals is not None:
        scores = np.round(scores, decimals)  # many tied scores across classes
    labels = np.concatenate([np.ones(n_tar, int), np.zeros(n_non, int)])
    perm = rng.permutation(labels.size)
    return labels[perm], scores[perm]


CASES = {
    "balanced": gaussian_trials(500, 500, 0),
    "ties": gaussian_trials(400, 600, 1, decimals=1),
    "heavy_ties": gaussian_trials(300, 300, 2, sep=0.5, decimals=0),
    "imbalance_1_100": gaussian_trials(50, 5000, 3),
    "imbalance_100_1": gaussian_trials(5000, 50, 4),
    "overlap": gaussian_trials(700, 300, 5, sep=0.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_eer_matches_reference(case):
    labels, scores = CASES[case]
    eer, thr = compute_eer(labels, scores)
    assert eer == pytest.approx(ref_eer(labels, scores), abs=TOL)
    # The threshold lies between the scores where the rates cross: its own rates bracket the EER.
    fpr_at = np.mean(scores[labels == 0] >= thr)
    fnr_at = np.mean(scores[labels == 1] < thr)
    lo, hi = sorted((fpr_at, fnr_at))
    step = 1.0 / min((labels == 1).sum(), (labels == 0).sum())
    assert lo - step - TOL <= eer <= hi + step + TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_eer_original_matches_reference(case):
    labels, scores = CASES[case]
    eer, _ = eer_original(labels, scores)
    assert eer == pytest.approx(ref_eer_original(labels, scores), abs=TOL)
    if np.unique(scores).size == scores.size:
        # Without ties both conventions agree within about one trial step (with ties the ROC points are
        # further apart and the original's nearest point can be far from the crossing).
        step = 1.0 / min((labels == 1).sum(), (labels == 0).sum())
        assert abs(eer - compute_eer(labels, scores)[0]) <= step + TOL


@pytest.mark.parametrize("p", [0.5, 0.05, 0.01, 0.001])
@pytest.mark.parametrize("case", sorted(CASES))
def test_min_dcf_matches_references(case, p):
    labels, scores = CASES[case]
    dcf, thr = compute_min_dcf(labels, scores, p)
    assert dcf == pytest.approx(ref_min_dcf(labels, scores, p), abs=TOL)
    assert dcf == pytest.approx(ref_min_dcf_roc(labels, scores, p), abs=TOL)
    # The returned threshold achieves the minimum.
    tar, non = scores[labels == 1], scores[labels == 0]
    cost = (np.mean(tar < thr) * p + np.mean(non >= thr) * (1 - p)) / min(p, 1 - p)
    assert cost == pytest.approx(dcf, abs=TOL)
    assert 0.0 <= dcf <= 1.0 + TOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_drop_intermediate_matches_sklearn(case):
    from speaker.metrics import roc

    labels, scores = CASES[case]
    fpr, tpr, thr = roc_curve(labels, scores)  # sklearn's default: drop_intermediate=True
    got = roc(labels, scores, drop_intermediate=True)
    np.testing.assert_array_equal(got[0], fpr)
    np.testing.assert_allclose(got[1], 1 - tpr, atol=1e-15)
    np.testing.assert_array_equal(got[2], thr)


def test_min_dcf_costs():
    labels, scores = CASES["balanced"]
    p, c_miss, c_fa = 0.1, 10.0, 1.0
    dcf, _ = compute_min_dcf(labels, scores, p, c_miss=c_miss, c_fa=c_fa)
    fpr, tpr, _ = roc_curve(labels, scores)
    ref = np.min(c_miss * (1 - tpr) * p + c_fa * fpr * (1 - p)) / min(c_miss * p, c_fa * (1 - p))
    assert dcf == pytest.approx(ref, abs=TOL)


def test_perfect_separation():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    eer, thr = compute_eer(labels, scores)
    assert eer == pytest.approx(0.0, abs=1e-12)
    assert 0.3 < thr <= 0.7
    assert eer_original(labels, scores)[0] == 0.0
    assert compute_min_dcf(labels, scores, 0.01)[0] == pytest.approx(0.0, abs=1e-12)


def test_reversed_separation_is_total_error():
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    assert compute_eer(labels, scores)[0] == pytest.approx(1.0, abs=TOL)
    # The trivial system (reject everything) costs 1 after normalisation.
    assert compute_min_dcf(labels, scores, 0.01)[0] == pytest.approx(1.0, abs=1e-12)


def test_all_scores_tied_gives_half():
    labels = np.array([0, 1] * 50)
    scores = np.zeros(100)
    assert compute_eer(labels, scores)[0] == pytest.approx(0.5, abs=TOL)


def test_hand_computed_interpolation():
    # Targets 0.4, 0.8; non-targets 0.2, 0.6. ROC points (fpr, fnr): (0,1) (0,.5) (.5,.5) (.5,0) (1,0):
    # the crossing is the ROC point (.5, .5) itself, at threshold 0.6.
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.4, 0.8, 0.2, 0.6])
    assert compute_eer(labels, scores) == pytest.approx((0.5, 0.6))
    # Three targets 0.9, 0.5, 0.1 and one non-target 0.7: points (0,1) (0,2/3) (1,2/3) (1,1/3) (1,0);
    # the horizontal segment fnr = 2/3 crosses fpr == fnr at 2/3, 2/3 of the way from 0.9 to 0.7.
    labels = np.array([1, 1, 1, 0])
    scores = np.array([0.9, 0.5, 0.1, 0.7])
    eer, thr = compute_eer(labels, scores)
    assert eer == pytest.approx(2 / 3)
    assert thr == pytest.approx(0.9 + (2 / 3) * (0.7 - 0.9))


def test_inputs_as_lists_and_bools():
    labels, scores = CASES["ties"]
    a = compute_eer(labels.astype(bool).tolist(), scores.tolist())
    b = compute_eer(labels, scores)
    assert a == pytest.approx(b)


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "all 3 trials are target"),
        ([0, 0], [0.1, 0.2], "non-target"),
        ([0, 1], [0.1, np.nan], "NaN/inf.*index 1"),
        ([0, 1], [np.inf, 0.2], "NaN/inf.*index 0"),
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "0 .*or 1.*index 1"),
        ([0, -1], [0.1, 0.2], "index 1"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
@pytest.mark.parametrize("fn", [compute_eer, eer_original, lambda l, s: compute_min_dcf(l, s, 0.01)])
def test_errors(fn, labels, scores, match):
    with pytest.raises(ValueError, match=match):
        fn(labels, scores)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 2.0])
def test_min_dcf_bad_p_target(p):
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0, 1], [0.1, 0.2], p)


def test_verification_summary_consistent():
    labels, scores = CASES["imbalance_1_100"]
    s = verification_summary(labels, scores, p_targets=(0.01, 0.001))
    assert s["n"] == 5050 and s["n_target"] == 50 and s["n_nontarget"] == 5000
    assert s["eer"] == pytest.approx(ref_eer(labels, scores), abs=TOL)
    assert s["eer_original"] == pytest.approx(ref_eer_original(labels, scores), abs=TOL)
    assert set(s["min_dcf"]) == {"0.01", "0.001"}
    for key, p in (("0.01", 0.01), ("0.001", 0.001)):
        assert s["min_dcf"][key] == pytest.approx(ref_min_dcf(labels, scores, p), abs=TOL)


# ---- top-k accuracy, Caffe 1.0 rule ----


def ref_topk_caffe(scores, labels, k):
    """Caffe 1.0: sort (score, class) pairs descending (pair order: higher class wins a tie)."""
    hits = 0
    for row, lab in zip(scores, labels):
        ranked = sorted(((s, c) for c, s in enumerate(row)), reverse=True)
        hits += lab in [c for _, c in ranked[:k]]
    return hits / len(labels)


def test_topk_ties_go_to_higher_index():
    scores = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    # Row 0: label 0 ties with class 1, which ranks first -> miss at top-1, hit at top-2.
    # Row 1: label 1 wins the tie -> hit. Row 2: all tied; label 2 ranks first -> hit at top-1.
    labels = np.array([0, 1, 2])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1.0)
    assert topk_accuracy(scores, np.array([0, 0, 0]), 2) == pytest.approx(2 / 3)


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_topk_matches_sorted_reference(k):
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(300, 20)).astype(np.float32)  # heavy ties
    labels = rng.integers(0, 20, size=300)
    assert topk_accuracy(scores, labels, k) == pytest.approx(ref_topk_caffe(scores, labels, k), abs=1e-12)
    if k == 20:
        assert topk_accuracy(scores, labels, k) == 1.0


def test_topk_no_ties_matches_argsort():
    rng = np.random.default_rng(8)
    scores = rng.normal(size=(500, 50))
    labels = rng.integers(0, 50, size=500)
    top5 = np.argsort(-scores, axis=1)[:, :5]
    assert topk_accuracy(scores, labels, 5) == pytest.approx(np.mean((top5 == labels[:, None]).any(axis=1)))
    assert topk_accuracy(scores, labels, 1) == pytest.approx(np.mean(scores.argmax(axis=1) == labels))


@pytest.mark.parametrize(
    "scores, labels, k, match",
    [
        (np.zeros(3), np.zeros(3, int), 1, r"\(N, C\)"),
        (np.zeros((3, 4)), np.zeros(2, int), 1, "labels must be"),
        (np.zeros((3, 4)), np.array([0, 4, 1]), 1, r"\[0, 4\)"),
        (np.zeros((3, 4)), np.zeros(3, int), 0, "k must be"),
        (np.zeros((3, 4)), np.zeros(3), 1, "integer"),
        (np.full((1, 2), np.nan), np.zeros(1, int), 1, "NaN"),
    ],
)
def test_topk_errors(scores, labels, k, match):
    with pytest.raises(ValueError, match=match):
        topk_accuracy(scores, labels, k)
