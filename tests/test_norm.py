"""speaker.norm: S-Norm and AS-Norm against a direct per-trial NumPy implementation in float64.

Tolerances follow from the arithmetic. speaker.norm scores in float32: each cosine of two D-dimensional
L2-normalised vectors is off the exact one by at most EPS_COS = (D + 6) u (u = 2^-24: D for the float32 dot
product, sum |a_i b_i| <= |a||b| = 1; 3u per component for the float32 rounding and normalisation of each
vector). A cohort score's mean and standard deviation, over all scores or over the top N (the k-th largest
value moves by at most the largest perturbation), move by at most EPS_COS too, so a normalised side
z = (s - mu) / sigma moves by at most EPS_COS (1 + |z|) / sigma, and S-Norm by half the sum over both sides:
`direct` returns that bound with each score.
"""

import numpy as np
import pytest
from fp import U32, assert_within

from speaker.norm import cohort_matrix, cohort_stats, normalize_scores

DIM = 8                                     # embedding size of the fixture
EPS_COS = (DIM + 6) * U32


def unit(v):
    return v / np.linalg.norm(v)


def direct(pairs, emb, cohort_rows, top_n=None):
    """Per trial, per side: cosine against every cohort row, sort, take the top_n, mean/std; then S-Norm.
    Returns (scores, bound): the float64 reference and how far float32 arithmetic may put speaker.norm's
    result from it (module docstring)."""
    out, bound = [], []
    for a, b in pairs:
        s = unit(emb[a]) @ unit(emb[b])
        z, tol = [], 0.0
        for u in (a, b):
            c = np.array([unit(emb[u]) @ unit(r) for r in cohort_rows])
            if top_n is not None:
                c = np.sort(c)[::-1][:top_n]
            sigma = np.sqrt(((c - c.mean()) ** 2).mean())
            z.append((s - c.mean()) / sigma)
            tol += 0.5 * EPS_COS * (1 + abs(z[-1])) / sigma
        out.append(0.5 * (z[0] + z[1]))
        bound.append(tol)
    return np.array(out), np.array(bound)




@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    emb = {f"id{s}/v/{u}.wav": rng.normal(size=8) + 2 * (s % 3) for s in range(5) for u in range(4)}
    ids = sorted(emb)
    pairs = [(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids), 3)]
    raw = np.array([unit(emb[a]) @ unit(emb[b]) for a, b in pairs])
    cohort_emb = rng.normal(size=(30, 8))
    cohort_spk = [f"c{i % 7}" for i in range(30)]
    return emb, pairs, raw, cohort_emb, cohort_spk


def test_snorm_matches_direct(data):
    emb, pairs, raw, cohort_emb, _ = data
    cohort = cohort_matrix(cohort_emb, mode="utterance")
    got = normalize_scores(raw, pairs, emb, cohort, "snorm")
    assert_within(got, *direct(pairs, emb, list(cohort_emb)))


@pytest.mark.parametrize("top_n", [2, 5, 29, 30])
def test_asnorm_matches_direct(data, top_n):
    emb, pairs, raw, cohort_emb, _ = data
    cohort = cohort_matrix(cohort_emb, mode="utterance")
    got = normalize_scores(raw, pairs, emb, cohort, "asnorm", top_n=top_n)
    assert_within(got, *direct(pairs, emb, list(cohort_emb), top_n))
    if top_n == 30:  # the whole cohort: AS-Norm is S-Norm, the same float32 scores in the same order
        np.testing.assert_array_equal(got, normalize_scores(raw, pairs, emb, cohort, "snorm"))


def test_speaker_averaged_cohort(data):
    emb, pairs, raw, cohort_emb, cohort_spk = data
    cohort = cohort_matrix(cohort_emb, cohort_spk, mode="speaker")
    assert cohort.shape == (7, 8)
    for k, name in enumerate(sorted(set(cohort_spk))):
        rows = np.array([unit(cohort_emb[i]) for i, s in enumerate(cohort_spk) if s == name])
        total = rows.sum(axis=0)
        # each float32 normalised row within 3u per component (float32 cast, norm, division), the sum's float32
        # cast and the last division u each; the direction of `total` moves by at most |its error| / |total|
        # (twice that, for the second-order terms)
        bound = 2 * (3 * U32 * np.linalg.norm(np.abs(rows).sum(axis=0)) / np.linalg.norm(total) + 2 * U32)
        assert_within(cohort[k], unit(total), bound)
    got = normalize_scores(raw, pairs, emb, cohort, "asnorm", top_n=3)
    assert_within(got, *direct(pairs, emb, list(cohort), 3))


def test_chunking_and_none(data):
    emb, pairs, raw, cohort_emb, _ = data
    x = np.stack(list(emb.values()))
    m1, s1 = cohort_stats(x, cohort_emb, top_n=4, chunk=3)
    m2, s2 = cohort_stats(x, cohort_emb, top_n=4)
    # the same normalised float32 rows, multiplied in blocks of another shape: BLAS may pick another kernel
    # (summation order), each cosine within D u of the exact one, so the two within 2 D u (module docstring)
    np.testing.assert_allclose(m1, m2, rtol=0, atol=2 * DIM * U32)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=2 * DIM * U32)
    np.testing.assert_array_equal(normalize_scores(raw, pairs, emb, cohort_emb, "none"), raw)


def test_errors(data):
    emb, pairs, raw, cohort_emb, cohort_spk = data
    with pytest.raises(ValueError, match="top_n must be in"):
        normalize_scores(raw, pairs, emb, cohort_emb, "asnorm", top_n=31)
    with pytest.raises(ValueError, match="norm must be one of"):
        normalize_scores(raw, pairs, emb, cohort_emb, "znorm")
    with pytest.raises(KeyError, match="no embedding for 1"):
        normalize_scores(raw[:1], [(pairs[0][0], "idX/v/1.wav")], emb, cohort_emb, "snorm")
    with pytest.raises(ValueError, match="needs the speaker"):
        cohort_matrix(cohort_emb, mode="speaker")
    with pytest.raises(ValueError, match="zero spread"):
        cohort_stats(np.ones((2, 3)), np.ones((4, 3)))


def test_shared_stats_over_several_lists(data):
    """One NormStats over every utterance of several lists (what test_verification.py builds once) applied to
    each list gives each trial the reference's AS-Norm score: the statistics are looked up per utterance,
    whichever list and position the trial has."""
    from speaker.norm import NormStats

    emb, pairs, raw, cohort_emb, _ = data
    stats = NormStats(emb, list(emb), cohort_emb, "asnorm", top_n=7)  # every utterance, once
    half = len(pairs) // 2
    for sl in (slice(0, half), slice(half, None)):
        got = stats.apply(raw[sl], pairs[sl])
        assert_within(got, *direct(pairs[sl], emb, list(cohort_emb), 7))
        # reversed: each pair's own sides, not its position
        assert_within(stats.apply(raw[sl][::-1], pairs[sl][::-1]), *direct(pairs[sl][::-1], emb, list(cohort_emb), 7))
    with pytest.raises(KeyError, match="no cohort statistics for utterance 'x'"):
        stats.apply(raw[:1], [("x", pairs[0][1])])
