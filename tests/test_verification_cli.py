"""test_verification.py end to end in-process (--scores, --embeddings, net mode on a fake engine), and
test_identification.py on the same fake engine."""

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from speaker.metrics import compute_eer, compute_min_dcf

ROOT = Path(__file__).resolve().parents[1]


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tv():
    return load(ROOT / "test_verification.py", "test_verification_script")


@pytest.fixture(scope="module")
def ti():
    return load(ROOT / "test_identification.py", "test_identification_script")


@pytest.fixture(scope="module")
def fake():
    return load(Path(__file__).with_name("test_evaluate.py"), "fake_net_module")


def gaussian_score_file(path, n_tar=300, n_non=3000, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], [n_tar, n_non])
    scores = np.concatenate([rng.normal(1.5, 1, n_tar), rng.normal(0, 1, n_non)])
    path.write_text("".join(f"{l} {s:.9g}\n" for l, s in zip(labels, scores)))
    return labels, np.array([float(f"{s:.9g}") for s in scores])


def test_scores_mode_end_to_end(tv, tmp_path, capsys):
    labels, scores = gaussian_score_file(tmp_path / "scores.txt")
    out = tmp_path / "out"
    assert tv.main(["--scores", str(tmp_path / "scores.txt"), "--out", str(out), "--bins", "50"]) == 0
    printed = capsys.readouterr().out
    for name in ("EER", "minDCF(0.01)", "minDCF(0.001)"):
        assert name in printed
    res = json.loads((out / "verification.json").read_text())["trials"]
    # Independent references from sklearn's ROC.
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert res["eer"] == pytest.approx(compute_eer(labels, scores)[0], abs=1e-12)
    assert abs(res["eer"] - fpr[i]) < 2 / 300
    assert res["eer_original"] == pytest.approx(fpr[i], abs=1e-4)
    for p in (0.01, 0.001):
        ref = np.min(fnr * p + fpr * (1 - p)) / p
        assert res["min_dcf"][f"{p:g}"] == pytest.approx(ref, abs=1e-4)
    assert res["n"] == 3300 and res["n_target"] == 300
    assert f"{100 * res['eer']:.3f} %" in printed
    for png in ("score_hist.png", "roc.png", "det.png"):
        assert (out / png).stat().st_size > 1000
    assert "EER" in (out / "test_verification.log").read_text()


def test_scores_mode_custom_p_target_and_default_out(tv, tmp_path, capsys):
    labels, scores = gaussian_score_file(tmp_path / "s.txt", 50, 500, seed=1)
    assert tv.main(["--scores", str(tmp_path / "s.txt"), "--p-target", "0.05"]) == 0
    assert "minDCF(0.05)" in capsys.readouterr().out
    res = json.loads((tmp_path / "verification.json").read_text())["trials"]
    assert res["min_dcf"] == {"0.05": pytest.approx(compute_min_dcf(labels, scores, 0.05)[0])}


@pytest.mark.parametrize(
    "text, match",
    [
        ("1 0.5\n1 0.6\n1 0.7\n", "all 3 trials are target"),
        ("1 0.5\n0 0.6\n1 nan\n", r"s.txt:3: score must be finite"),
        ("1 0.5\n0 x\n", r"s.txt:2: score is not a number"),
        ("", "no trials"),
    ],
)
def test_scores_mode_errors(tv, tmp_path, capsys, text, match):
    (tmp_path / "s.txt").write_text(text)
    assert tv.main(["--scores", str(tmp_path / "s.txt"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "test_verification.py: error:" in err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "o" / "verification.json").exists()


def test_argument_errors(tv, tmp_path, capsys):
    assert tv.main(["--out", str(tmp_path)]) == 1
    assert "give one of" in capsys.readouterr().err
    (tmp_path / "s.txt").write_text("1 0.5\n0 0.1\n")
    assert tv.main(["--scores", str(tmp_path / "s.txt"), "--all-pairs"]) == 1
    assert "--all-pairs needs embeddings" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: mutually exclusive sources
        tv.main(["--scores", "a", "--embeddings", "b"])


def test_default_list_rule(tv, ti, tmp_path):
    from speaker.evaluate import default_list

    for mod, name in ((tv, "veri_test.txt"), (types.SimpleNamespace(default_list=default_list), "iden_split.txt")):
        assert mod.default_list(str(tmp_path), name) == str(ROOT / "lists" / name)
        (tmp_path / name).write_text("")
        assert mod.default_list(str(tmp_path), name) == str(tmp_path / name)
        assert mod.default_list(None, name) == str(ROOT / "lists" / name)


# ---- a tiny corpus in VoxCeleb1's current layout, and a fake engine ----

SPEAKERS = [f"id1{i:04d}" for i in range(1, 9)]  # 8 speakers = the fake net's 8 classes


def make_corpus(root):
    from voxdata import write_wav

    rng = np.random.default_rng(0)
    utts = []
    for s, spk in enumerate(SPEAKERS):
        for u in range(3):
            rel = f"{spk}/vid{u % 2}/{u + 1:05d}.wav"
            t = np.arange(8000)
            x = 4000 * np.sin(2 * np.pi * (150 + 40 * s) * t / 16000) + rng.normal(0, 800, t.size)
            write_wav(root / "wav" / rel, x.astype(np.int16))
            utts.append(rel)
    return utts


def fake_engine(fake, calls):
    def load_engine(name, gpu):
        calls.append((name, gpu))
        return types.SimpleNamespace(TEST=1, Net=lambda proto, weights, phase: fake.FakeNet(batch=5))

    return load_engine


def fake_load_test_net(caffe, net_path, weights):
    """speaker.preflight.load_test_net without its weights-coverage check (the fake net has no params)."""
    return caffe.Net(net_path, weights, caffe.TEST)


def test_verification_net_mode_with_fake_engine(tv, fake, tmp_path, monkeypatch, capsys):
    from speaker.evaluate import embed, voxdata_crops_provider

    utts = make_corpus(tmp_path)
    trials = []
    for i, a in enumerate(utts):
        for b in utts[i + 1 :: 5]:
            trials.append(f"{int(a[:7] == b[:7])} {a} {b}\n")
    (tmp_path / "veri_test.txt").write_text("".join(trials))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "test.prototxt").write_text("# fake\n")
    (tmp_path / "run" / "w.caffemodel").write_bytes(b"fake weights")  # hashed into the protocol
    calls = []
    monkeypatch.setattr(tv, "load_engine", fake_engine(fake, calls))
    monkeypatch.setattr("speaker.preflight.load_test_net", fake_load_test_net)
    out = tmp_path / "out"
    args = ["--weights", str(tmp_path / "run" / "w.caffemodel"), "--data-root", str(tmp_path),
            "--out", str(out), "--crops", "3", "--batch", "2", "--seed", "4", "--all-pairs", "--gpu", "-1",
            "--no-progress"]
    assert tv.main(args) == 0
    assert calls == [("torch", -1)]
    printed = capsys.readouterr().out
    assert "all pairs" in printed and "minDCF(0.001)" in printed

    z = np.load(out / "embeddings.npz")
    ids = [str(u) for u in z["ids"]]
    assert ids == sorted(utts)
    provider = voxdata_crops_provider(ids, str(tmp_path / "wav"), 3, fake.FRAMES, 4)
    _, ref = embed(fake.FakeNet(batch=5), ids, provider, batch=2, progress=False)
    np.testing.assert_allclose(z["embeddings"], ref, rtol=1e-6)

    # Trial scores = cosine of the saved embeddings; metrics = compute_eer on them.
    emb = {u: e / np.linalg.norm(e) for u, e in zip(ids, ref.astype(np.float64))}
    lines = (out / "scores.txt").read_text().splitlines()
    assert len(lines) == len(trials)
    labels, scores = [], []
    for line, trial in zip(lines, trials):
        lab, sc, a, b = line.split()
        assert trial.split() == [lab, a, b]
        assert float(sc) == pytest.approx(emb[a] @ emb[b], abs=1e-5)
        labels.append(int(lab))
        scores.append(float(sc))
    res = json.loads((out / "verification.json").read_text())
    assert res["trials"]["eer"] == pytest.approx(compute_eer(labels, scores)[0], abs=1e-6)
    n = len(utts)
    assert res["all_pairs"]["n"] == n * (n - 1) // 2
    assert res["all_pairs"]["n_target"] == len(SPEAKERS) * 3  # 3 utterances per speaker -> 3 pairs each
    for png in ("roc.png", "det.png", "score_hist.png", "all_pairs_roc.png", "all_pairs_det.png"):
        assert (out / png).exists()

    # The saved embeddings rescore without any engine, to the same figures.
    calls.clear()
    assert tv.main(["--embeddings", str(out / "embeddings.npz"), "--data-root", str(tmp_path),
                    "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "verification.json").read_text())
    assert calls == []
    assert again["trials"]["eer"] == pytest.approx(res["trials"]["eer"], abs=1e-9)


def test_identification_with_fake_engine(ti, fake, tmp_path, monkeypatch, capsys):
    from speaker.evaluate import identify, voxdata_crops_provider
    from voxdata import read_iden_split

    utts = make_corpus(tmp_path)
    split = "".join(f"{3 if rel.endswith('00003.wav') else 1} {rel}\n" for rel in utts)
    (tmp_path / "iden_split.txt").write_text(split)
    run = tmp_path / "run"
    run.mkdir()
    (run / "deploy.prototxt").write_text("# fake\n")
    # Classifier order deliberately NOT sorted: labels must come from the JSON.
    order = SPEAKERS[::-1]
    (run / "labels.json").write_text(json.dumps({"mode": "identification", "layout": "current",
                                                 "speakers": order, "test_speakers": order}))
    monkeypatch.setattr("speaker.identification.engine_for", fake_engine(fake, []))
    monkeypatch.setattr("speaker.identification.load_test_net", fake_load_test_net)
    (run / "w.caffemodel").write_bytes(b"")
    args = ["--weights", str(run / "w.caffemodel"), "--data-root", str(tmp_path), "--crops", "2",
            "--batch", "3", "--seed", "9", "--no-progress", "--score-blob", "fc6"]
    assert ti.main(args) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed
    res = json.loads((run / "identification.json").read_text())
    assert res["n"] == 8 and res["mode"] == "identification" and res["subset"] == "test"

    splits = read_iden_split(tmp_path / "iden_split.txt", data_root=tmp_path)
    paths = splits.test.paths
    labels = [order.index(splits.speakers[i]) for i in splits.test.labels]
    provider = voxdata_crops_provider(paths, splits.wav_dir, 2, fake.FRAMES, 9)
    ref = identify(fake.FakeNet(batch=5), paths, labels, provider, batch=3, progress=False)
    assert res["top1"] == pytest.approx(ref["top1"]) and res["top5"] == pytest.approx(ref["top5"])

    # A labels JSON from a verification-mode run is refused with identification mode.
    (run / "labels.json").write_text(json.dumps({"mode": "verification", "speakers": order,
                                                 "test_speakers": []}))
    assert ti.main(args + ["--mode", "identification"]) == 1
    assert "trained in 'verification' mode" in capsys.readouterr().err
