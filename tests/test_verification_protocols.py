"""test_verification.py beyond the paper: several lists and normalisations from one embeddings file, the
protocol in every result, cohorts, full-utterance embeddings, resumable embedding runs, --compare and the
projection pictures. Net runs use a tiny caffe_torch net on a tiny corpus in VoxCeleb1's layout."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from fp import U32, assert_within

from speaker.embed_store import load_embeddings, save_embeddings
from speaker.metrics import compute_eer, compute_min_dcf

ROOT = Path(__file__).resolve().parents[1]


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tv():
    return load(ROOT / "test_verification.py", "test_verification_script2")


def unit(v):
    return v / np.linalg.norm(v)


def synthetic_embeddings(tmp_path, n_spk=6, per=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_spk, dim))
    ids, emb = [], []
    for s in range(n_spk):
        for u in range(per):
            ids.append(f"id1{s:04d}/v{u % 2}/{u:05d}.wav")
            emb.append(centres[s] + 0.9 * rng.normal(size=dim) + 0.5)  # a shared offset: what S-Norm removes
    path = save_embeddings(str(tmp_path / "emb.npz"), ids, np.array(emb), {"mode": "crops", "crops": 3})
    return ids, np.array(emb), path


def trial_file(path, ids, step, offset=0):
    lines = []
    for i in range(offset, len(ids)):
        for j in range(i + 1, len(ids), step):
            lines.append(f"{int(ids[i][:7] == ids[j][:7])} {ids[i]} {ids[j]}\n")
    path.write_text("".join(lines))
    return [ln.split() for ln in lines]


def direct_asnorm(trials, emb_of, cohort, top_n):
    """AS-Norm of each trial in float64, and how far test_verification.py's float32 cosines may put its score
    from it: each cosine of two D-dimensional vectors within (D + 6) u, so each side's z within
    (D + 6) u (1 + |z|) / sigma (tests/test_norm.py's derivation)."""
    out, bound = [], []
    for _, a, b in trials:
        s = unit(emb_of[a]) @ unit(emb_of[b])
        z, tol = 0.0, 0.0
        for u in (a, b):
            c = np.sort([unit(emb_of[u]) @ unit(r) for r in cohort])[::-1][:top_n]
            z_side = (s - c.mean()) / c.std()
            z += z_side
            tol += (len(emb_of[u]) + 6) * U32 * (1 + abs(z_side)) / c.std()
        out.append(z / 2)
        bound.append(tol / 2)
    return np.array(out), np.array(bound)


def test_lists_and_norms_from_one_embeddings_file(tv, tmp_path, capsys):
    ids, emb, emb_path = synthetic_embeddings(tmp_path)
    emb_of = dict(zip(ids, emb))
    t_o = trial_file(tmp_path / "list_o.txt", ids, 4)
    t_e = trial_file(tmp_path / "list_e.txt", ids, 3, offset=2)
    rng = np.random.default_rng(5)
    cohort = rng.normal(size=(24, 16)) + 0.5
    cohort_spk = [f"id2{i % 8:04d}" for i in range(24)]
    save_embeddings(str(tmp_path / "cohort.npz"), [f"{s}/c/{i:05d}.wav" for i, s in enumerate(cohort_spk)],
                    cohort, {"mode": "crops", "crops": 3}, speakers=cohort_spk)
    out = tmp_path / "out"
    rc = tv.main(["--embeddings", emb_path, "--trials", str(tmp_path / "list_o.txt"), "--trials",
                  str(tmp_path / "list_e.txt"), "--norm", "none", "asnorm", "--cohort", str(tmp_path / "cohort.npz"),
                  "--cohort-mode", "utterance", "--top-n", "6", "--p-target", "0.01", "--p-target", "0.05",
                  "--c-fa", "2", "--out", str(out), "--bins", "20"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "verification.json").read_text())
    assert [(r["trial_list"]["file"], r["norm"]) for r in res["results"]] == [
        ("list_o.txt", "none"), ("list_o.txt", "asnorm"), ("list_e.txt", "none"), ("list_e.txt", "asnorm")]
    assert res["trials"] == res["results"][0]
    for r, trials, path in ((res["results"][1], t_o, "list_o.txt"), (res["results"][3], t_e, "list_e.txt")):
        sha = hashlib.sha256((tmp_path / path).read_bytes()).hexdigest()
        info = r["trial_list"]
        assert info["sha256"] == sha and info["sha256_prefix"] == sha[:12] and info["n_trials"] == len(trials)
        assert info["name"] == "custom"
        assert r["cost"] == {"p_targets": [0.01, 0.05], "c_miss": 1.0, "c_fa": 2.0,
                             "min_dcf_normalised_by": r["cost"]["min_dcf_normalised_by"]}
        assert "NIST" in r["cost"]["min_dcf_normalised_by"]
        assert f"{path:<22} custom" in printed and sha[:12] in printed
        labels = np.array([int(t[0]) for t in trials])
        ref, bound = direct_asnorm(trials, emb_of, cohort, 6)
        written = np.loadtxt(r["scores_file"], usecols=1)      # printed with 9 significant digits
        assert_within(written, ref, bound + 5e-9 * np.abs(ref))
        # the metrics of those scores (a metric is not continuous in the scores: compared on the same ones; no
        # two scores lie within the printing's rounding, so the printed ones rank as the script's own)
        gaps = np.diff(np.sort(written))
        assert (gaps[gaps > 0] > 1e-8 * np.abs(written).max()).all()
        assert r["eer"] == pytest.approx(compute_eer(labels, written)[0], abs=1e-6)
        assert r["min_dcf"]["0.05"] == pytest.approx(compute_min_dcf(labels, written, 0.05, c_fa=2.0)[0], abs=1e-6)
    assert "P_target 0.01, 0.05; C_miss 1, C_fa 2; normalised by min(" in printed
    assert res["protocol"]["cohort"]["top_n"] == 6 and res["protocol"]["cohort"]["rows"] == 24
    assert res["protocol"]["embedding"] == {"mode": "crops", "crops": 3}
    for png in ("score_hist_lists.png", "det_lists.png", "list_o_none_det.png", "list_e_asnorm_score_hist.png"):
        assert (out / png).stat().st_size > 1000

    # a cohort embedded with another protocol is refused, naming the difference
    save_embeddings(str(tmp_path / "c2.npz"), [f"x{i}/c/1.wav" for i in range(24)], cohort,
                    {"mode": "full", "crops": None})
    rc = tv.main(["--embeddings", emb_path, "--trials", str(tmp_path / "list_o.txt"), "--norm", "snorm",
                  "--cohort", str(tmp_path / "c2.npz"), "--out", str(tmp_path / "o2")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "another protocol" in err and "mode: trials 'crops', cohort 'full'" in err
    assert tv.main(["--embeddings", emb_path, "--norm", "asnorm", "--trials", str(tmp_path / "list_o.txt")]) == 1
    assert "needs --cohort" in capsys.readouterr().err

    # --compare: both runs' rows on one DET plot
    single = tmp_path / "single"
    assert tv.main(["--embeddings", emb_path, "--trials", str(tmp_path / "list_o.txt"), "--out", str(single)]) == 0
    assert (single / "scores.txt").exists()  # one list, one norm: unprefixed names as before
    cmp_dir = tmp_path / "cmp"
    assert tv.main(["--compare", str(out), str(single), "--out", str(cmp_dir)]) == 0
    assert (cmp_dir / "det_compare.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert printed.count("compare ") == 5 and "list_e.txt asnorm" in printed
    # after a run: the earlier runs and this one
    both = tmp_path / "both"
    assert tv.main(["--embeddings", emb_path, "--trials", str(tmp_path / "list_e.txt"), "--out", str(both),
                    "--compare", str(single)]) == 0
    res = json.loads((both / "verification.json").read_text())
    assert [r["name"] for r in res["compare"]["rows"]] == ["single: list_o.txt", "both: list_e.txt"]
    assert (both / "det_compare.png").stat().st_size > 1000


# ---- net mode on a tiny real net (caffe_torch) ----

def tiny_net(run, frames=20):
    import caffe_torch as caffe

    tiny = load(Path(__file__).with_name("test_full_utterance.py"), "tiny_net_module")
    net_text, trunk_h = tiny.net_text, tiny.trunk_h

    run.mkdir(parents=True, exist_ok=True)
    (run / "test.prototxt").write_text(net_text(frames, trunk_h(frames)))
    net = caffe.Net(str(run / "test.prototxt"), caffe.TEST)
    net.save(str(run / "w.caffemodel"))
    return run / "w.caffemodel"


def corpus(root, speakers=6, per=4):
    from voxdata import write_wav

    rng = np.random.default_rng(0)
    utts = []
    for s in range(speakers):
        for u in range(per):
            rel = f"id1{s + 1:04d}/vid{u % 2}/{u + 1:05d}.wav"
            t = np.arange(6000 + 900 * u)
            x = 4000 * np.sin(2 * np.pi * (150 + 60 * s) * t / 16000) + rng.normal(0, 800, t.size)
            write_wav(root / "wav" / rel, x.astype(np.int16))
            utts.append(rel)
    lines = [f"{int(a[:7] == b[:7])} {a} {b}\n" for i, a in enumerate(utts) for b in utts[i + 1 :: 3]]
    (root / "veri_test.txt").write_text("".join(lines))
    (root / "iden_split.txt").write_text("".join(f"{1 + (k % 4 == 1)} {u}\n" for k, u in enumerate(utts)))
    meta = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n" + "".join(
        f"id1{s + 1:04d}\tN{s}\tm\tX\t{'test' if s >= 3 else 'dev'}\n" for s in range(speakers))
    (root / "vox1_meta.csv").write_text(meta)
    return utts


def test_full_utterance_net_mode_with_cohort_and_projection(tv, tmp_path, capsys):
    corpus(tmp_path)
    weights = tiny_net(tmp_path / "run")
    cohort = tmp_path / "cohort.npz"
    common = ["--weights", str(weights), "--data-root", str(tmp_path), "--gpu", "-1", "--no-progress", "--crops",
              "full", "--max-frames", "40"]
    (tmp_path / "run" / "final.caffemodel").write_bytes(weights.read_bytes())
    assert tv.main(["--run-dir", str(tmp_path / "run")] + common[2:] + ["--make-cohort", str(cohort),
                                                                         "--cohort-per-speaker", "3"]) == 0
    c_ids, c_emb, c_prot, c_spk = load_embeddings(str(cohort))
    assert sorted(set(c_spk)) == ["id10001", "id10002", "id10003"]  # the dev speakers of vox1_meta.csv
    assert len(c_ids) == 9 and c_prot["mode"] == "full" and c_prot["max_frames"] == 40
    assert not Path(str(cohort) + ".partial").exists()

    out = tmp_path / "out"
    assert tv.main(common + ["--out", str(out), "--norm", "none", "snorm", "--cohort", str(cohort),
                             "--projection"]) == 0
    res = json.loads((out / "verification.json").read_text())
    ids, emb, prot, _ = load_embeddings(str(out / "embeddings.npz"))
    assert {k: v for k, v in prot.items() if k != "weights"} == {k: v for k, v in c_prot.items() if k != "weights"}
    assert prot["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    # the CLI's embeddings are embed_full's
    import caffe_torch as caffe
    from speaker.evaluate import embed_full, voxdata_audio_provider

    net = caffe.Net(str(tmp_path / "run" / "test.prototxt"), str(weights), caffe.TEST)
    _, ref = embed_full(net, ids, voxdata_audio_provider(str(tmp_path / "wav")), max_frames=40, progress=False)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    assert [r["norm"] for r in res["results"]] == ["none", "snorm"]
    assert res["protocol"]["cohort"]["rows"] == 3  # speaker-averaged
    for png in ("projection_pca.png", "projection_tsne.png"):
        assert (out / png).stat().st_size > 1000
    assert "embeddings: " in capsys.readouterr().out


def test_embedding_run_resumes_where_it_stopped(tv, tmp_path, monkeypatch, capsys):
    import speaker.evaluate as ev

    corpus(tmp_path)
    weights = tiny_net(tmp_path / "run")
    args = ["--weights", str(weights), "--data-root", str(tmp_path), "--gpu", "-1", "--no-progress", "--crops", "2",
            "--seed", "3", "--save-every", "5"]
    ref_out = tmp_path / "ref"
    assert tv.main(args + ["--out", str(ref_out)]) == 0
    ref = load_embeddings(str(ref_out / "embeddings.npz"))

    real_embed, calls = ev.embed, []

    def stopping_embed(net, utts, *a, **k):
        calls.append(len(utts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if stopped during the third chunk
        return real_embed(net, utts, *a, **k)

    monkeypatch.setattr(ev, "embed", stopping_embed)
    out = tmp_path / "out"
    capsys.readouterr()
    assert tv.main(args + ["--out", str(out)]) == 130         # Ctrl-C: one line, no traceback
    assert capsys.readouterr().err == ("test_verification.py: interrupted (Ctrl-C): 10 of 24 embeddings are kept in "
                                       f"{out / 'embeddings.npz.partial'}; the same command continues from there\n")
    partial = out / "embeddings.npz.partial"
    assert len(list(partial.glob("part_*.npz"))) == 2 and not (out / "embeddings.npz").exists()
    # another protocol does not mix with the stopped run
    assert tv.main(args[:-4] + ["--seed", "4", "--save-every", "5", "--out", str(out)]) == 1
    assert "seed: 3 -> 4" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(ev, "embed", lambda net, utts, *a, **k: (calls.append(len(utts)), real_embed(
        net, utts, *a, **k))[1])
    assert tv.main(args + ["--out", str(out)]) == 0
    assert sum(calls) == 24 - 10  # only what was missing
    got = load_embeddings(str(out / "embeddings.npz"))
    assert got[0] == ref[0]
    np.testing.assert_array_equal(got[1], ref[1])
    assert not partial.exists()


def test_missing_files_are_counted_in_the_protocol(tv, tmp_path, capsys):
    utts = corpus(tmp_path)
    weights = tiny_net(tmp_path / "run")
    gone = utts[5]
    (tmp_path / "wav" / gone).unlink()
    n_file = len((tmp_path / "veri_test.txt").read_text().splitlines())
    n_left = sum(gone not in line.split() for line in (tmp_path / "veri_test.txt").read_text().splitlines())
    out = tmp_path / "out"
    assert tv.main(["--weights", str(weights), "--data-root", str(tmp_path), "--gpu", "-1", "--no-progress",
                    "--crops", "2", "--out", str(out)]) == 0
    res = json.loads((out / "verification.json").read_text())
    info = res["trials"]["trial_list"]
    assert info["n_trials"] == n_file and info["n_scored"] == n_left == res["trials"]["n"] < n_file
    assert (out / "missing_files_veri_test.txt").read_text().split() == [gone]
    assert f"{n_file:,} trials, {n_left:,} scored" in capsys.readouterr().out
