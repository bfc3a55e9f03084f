"""speaker.scoring: cosine trials, all pairs against brute force, score files."""

import numpy as np
import pytest
from fp import U32, assert_within, gamma

from speaker.scoring import (
    all_pairs_scores,
    cosine_score_trials,
    l2_normalize,
    read_score_file,
    write_scores,
)


def cosine_bound(dim: int) -> float:
    """|float32 cosine of L2-normalised rows - exact|: a dim-term dot product of unit vectors (gamma_dim), each
    vector rounded to float32 and normalised (3 u per component, twice), the result rounded (u): test_norm.py."""
    return gamma(dim, U32) + 7 * U32


def brute_cosine(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_cosine_score_trials_matches_brute_force():
    rng = np.random.default_rng(0)
    emb = {f"u{i}": rng.normal(size=16) * rng.uniform(0.1, 10) for i in range(30)}
    pairs = [(f"u{rng.integers(30)}", f"u{rng.integers(30)}") for _ in range(200)]
    got = cosine_score_trials(emb, pairs, batch=17)  # several batches, last one partial
    assert got.dtype == np.float32 and got.shape == (200,)
    ref = np.array([brute_cosine(emb[a], emb[b]) for a, b in pairs])
    assert_within(got, ref, cosine_bound(16))


def test_cosine_score_trials_missing_id_names_it():
    emb = {"a": np.ones(3), "b": np.arange(3.0)}
    with pytest.raises(KeyError, match="trial 1.*'c'"):
        cosine_score_trials(emb, [("a", "b"), ("a", "c")])


def test_l2_normalize_rejects_zero_and_nan_rows():
    with pytest.raises(ValueError, match="row 1 has zero norm"):
        l2_normalize(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="row 0 contains NaN"):
        l2_normalize(np.array([[np.nan, 0.0], [1.0, 0.0]]))
    x = l2_normalize(np.array([[3.0, 4.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8]], atol=1e-7)


@pytest.mark.parametrize("speaker_kind", ["str", "int"])
def test_all_pairs_matches_brute_force(speaker_kind):
    rng = np.random.default_rng(1)
    n = 23
    emb = rng.normal(size=(n, 8))
    spk_int = rng.integers(0, 5, size=n)
    spk = [f"id{s:05d}" for s in spk_int] if speaker_kind == "str" else spk_int
    scores, labels = all_pairs_scores(emb, spk)
    assert scores.dtype == np.float32 and labels.dtype == bool
    assert scores.shape == labels.shape == (n * (n - 1) // 2,)
    ref_s, ref_l = [], []
    for i in range(n):
        for j in range(i + 1, n):  # row-major upper triangle, the documented order
            ref_s.append(brute_cosine(emb[i], emb[j]))
            ref_l.append(spk_int[i] == spk_int[j])
    assert_within(scores, ref_s, cosine_bound(8))
    np.testing.assert_array_equal(labels, ref_l)


def test_all_pairs_errors():
    with pytest.raises(ValueError, match="at least 2"):
        all_pairs_scores(np.ones((1, 3)), ["a"])
    with pytest.raises(ValueError, match="speakers must be"):
        all_pairs_scores(np.ones((3, 3)), ["a", "b"])


def test_all_pairs_voxceleb_size_memory_is_bounded():
    # 4,874 test utterances -> 11.9 M pairs: float32 scores + bool labels, about 60 MB of output.
    import tracemalloc

    n, d = 4874, 64
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    spk = np.repeat(np.arange(40), -(-n // 40))[:n]
    tracemalloc.start()
    scores, labels = all_pairs_scores(emb, spk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert scores.shape == (11_875_501,)
    assert scores.nbytes + labels.nbytes == 11_875_501 * 5
    assert peak < 400e6, f"peak {peak / 1e6:.0f} MB"
    assert labels.sum() == sum(c * (c - 1) // 2 for c in np.bincount(spk))


def test_score_file_roundtrip(tmp_path):
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.5, -0.25, 1e-7, 123456.789], dtype=np.float64)
    p = write_scores(tmp_path / "s.txt", labels, scores)
    lab, sc = read_score_file(p)
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_allclose(sc, scores, rtol=1e-8)
    f32 = np.random.default_rng(3).normal(size=50).astype(np.float32)
    write_scores(tmp_path / "f.txt", np.arange(50) % 2, f32)
    np.testing.assert_array_equal(read_score_file(tmp_path / "f.txt")[1].astype(np.float32), f32)


def test_score_file_with_paths(tmp_path):
    p = write_scores(tmp_path / "s.txt", [1, 0], [0.9, 0.1], pairs=[("a/x/1.wav", "a/y/2.wav"), ("a", "b")])
    with open(p) as f:
        assert f.read().splitlines()[0] == "1 0.9 a/x/1.wav a/y/2.wav"
    lab, sc = read_score_file(p)
    assert lab.tolist() == [1, 0] and sc.tolist() == [0.9, 0.1]


def test_score_file_blank_lines_ignored(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("1 0.5\n\n0 0.25\n   \n")
    lab, sc = read_score_file(p)
    assert lab.tolist() == [1, 0] and sc.tolist() == [0.5, 0.25]


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("1 0.5\n0 abc\n", 2, "score is not a number"),
        ("1 0.5\n0 0.1\n2 0.3\n", 3, "label must be 0 or 1"),
        ("1 0.5\nyes 0.3\n", 2, "label must be 0 or 1"),
        ("1 0.5 a\n", 1, "got 3 fields"),
        ("1\n", 1, "got 1 fields"),
        ("1 0.5\n\n0 nan\n", 3, "finite"),
        ("1 inf\n", 1, "finite"),
    ],
)
def test_score_file_errors_name_file_and_line(tmp_path, text, line, match):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_score_file(p)
    assert f"{p}:{line}:" in str(e.value)


def test_empty_score_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n")
    with pytest.raises(ValueError, match="no trials"):
        read_score_file(p)


def test_write_scores_length_mismatch(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        write_scores(tmp_path / "s.txt", [1, 0], [0.1])
