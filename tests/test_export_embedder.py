"""export_embedder.py: the ONNX embedder (waveform -> L2-normalised embedding) equals the embeddings of
`test_verification.py --crops full` (L2-normalised as its cosine scoring does) within 1e-4 on every
coordinate, for a demo ResNet-20 with seeded random weights and recordings of awkward lengths (shorter than one
crop, a frame count that leaves samples over, exact). Measured difference: ~4e-7 (float32 rounding of the front
end and the convolutions; 1e-4 is the issue's bound). Also: float and int16 inputs, batches, and the example
script (examples/embed_onnx.py), which must import neither torch nor this project."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="export extras not installed (pip install -r requirements-export.txt)")
ort = pytest.importorskip("onnxruntime", reason="export extras not installed "
                          "(pip install -r requirements-export.txt)")

import caffe_torch  # noqa: E402
from speaker.embed_store import load_embeddings  # noqa: E402
from speaker.scoring import l2_normalize  # noqa: E402
from voxdata import read_wav, write_wav  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NET = ROOT / "prototxt" / "demo" / "ResNet-20_lm.prototxt"
# one crop of the demo net is 16,241 samples; 9,000 is repeated up to it; 30,000 leaves 159 samples after its
# last frame; 36,241 is an exact frame count; 51,234 is long enough for 18 time steps at res4_3
LENGTHS = (9000, 16241, 30000, 36241, 51234)
TOL = 1e-4


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory (net.prototxt, final.caffemodel), recordings, and test_verification's embeddings."""
    root = tmp_path_factory.mktemp("embedder")
    run_dir = root / "run"
    run_dir.mkdir()
    shutil.copy(NET, run_dir / "net.prototxt")
    caffe_torch.set_random_seed(5)
    caffe_torch.Net(str(NET), caffe_torch.TEST).save(str(run_dir / "final.caffemodel"))
    rng = np.random.default_rng(0)
    utts = []
    for i, n in enumerate(LENGTHS):
        rel = f"id1000{i % 2 + 1}/v{i}/0000{i + 1}.wav"
        t = np.arange(n)
        x = 3000 * np.sin(2 * np.pi * (120 + 40 * i) * t / 16000) + rng.normal(0, 600, n) + 50 * (i - 2)
        write_wav(root / "wav" / rel, x.astype(np.int16))
        utts.append(rel)
    trials = "".join(f"{int(a[:7] == b[:7])} {a} {b}\n" for k, a in enumerate(utts) for b in utts[k + 1:])
    (root / "veri_test.txt").write_text(trials)
    out = root / "verification"
    rc = _load("test_verification").main(["--weights", str(run_dir / "final.caffemodel"), "--data-root",
                                          str(root), "--crops", "full", "--gpu", "-1", "--no-progress",
                                          "--out", str(out)])
    assert rc == 0
    ids, emb, protocol, _ = load_embeddings(str(out / "embeddings.npz"))
    assert protocol["mode"] == "full"
    return {"root": root, "run": run_dir, "ref": dict(zip(ids, l2_normalize(emb)))}


@pytest.fixture(scope="module")
def embedders(run):
    files = {}
    for kind, extra in (("float", []), ("int16", ["--int16"])):
        files[kind] = run["root"] / f"embedder_{kind}.onnx"
        assert _load("export_embedder").main(["--run-dir", str(run["run"]), "-o", str(files[kind])] + extra) == 0
    return files


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_equals_test_verification_full_utterance(run, embedders):
    float_s, int16_s = _session(embedders["float"]), _session(embedders["int16"])
    for utt, want in run["ref"].items():
        x = read_wav(run["root"] / "wav" / utt)
        for session, wave in ((float_s, x.astype(np.float32)), (float_s, x / np.float32(32768)), (int16_s, x)):
            got = session.run(["embedding"], {"waveform": wave[None]})[0][0]
            assert got.shape == want.shape
            err = float(np.abs(got - want).max())
            assert err <= TOL, f"{utt} ({x.size} samples, input {wave.dtype}): differs by {err:.3g}"


def test_batch_of_equal_lengths(run, embedders):
    session = _session(embedders["float"])
    utt = next(u for u in run["ref"] if read_wav(run["root"] / "wav" / u).size == 30000)
    x = read_wav(run["root"] / "wav" / utt).astype(np.float32)
    batch = np.stack([x, x[::-1], 0.5 * x])
    got = session.run(["embedding"], {"waveform": batch})[0]
    single = [session.run(["embedding"], {"waveform": row[None]})[0][0] for row in batch]
    np.testing.assert_allclose(got, np.stack(single), atol=1e-6)
    np.testing.assert_allclose(got[0], run["ref"][utt], atol=TOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_example_script_needs_only_onnxruntime_numpy_soundfile(run, embedders):
    a, b = list(run["ref"])[:2]
    wavs = [str(run["root"] / "wav" / u) for u in (a, b)]
    probe = ("import sys, importlib.util as u; sys.argv = sys.argv[1:]; "
             "s = u.spec_from_file_location('ex', sys.argv[0]); m = u.module_from_spec(s);"
             " s.loader.exec_module(m); rc = m.main(sys.argv[1:]);"
             " bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'caffe_torch', 'speaker', "
             "'voxdata', 'scipy')); print('imported', bad); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", probe, str(ROOT / "examples" / "embed_onnx.py"),
                           str(embedders["float"]), *wavs], capture_output=True, text=True, env=env,
                          cwd=run["root"])
    assert done.returncode == 0, done.stderr
    assert "imported []" in done.stdout
    score = float(done.stdout.split("cosine score ")[1].split()[0])
    assert score == pytest.approx(float(run["ref"][a] @ run["ref"][b]), abs=1e-4)


def test_bad_arguments_are_one_line_errors(run, tmp_path, capsys):
    module = _load("export_embedder")
    assert module.main(["-o", str(tmp_path / "e.onnx")]) == 2
    assert module.main(["--run-dir", str(tmp_path), "-o", str(tmp_path / "e.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("export_embedder.py: ") for line in err)
    assert "--run-dir" in err[0] and "test.prototxt" in err[1]


@pytest.mark.slow
def test_bench_export_runs(tmp_path, capsys):
    """bench/bench_export.py at a tiny size: both figures finite, the two engines' embeddings equal."""
    import json
    import math

    spec = importlib.util.spec_from_file_location("bench_export", ROOT / "bench" / "bench_export.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--net", str(NET), "--seconds-audio", "1.5", "--rounds", "1", "--threads", "1",
                       "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["ms_per_utterance"]) == {"onnxruntime", "caffe_torch"}
    assert all(math.isfinite(v) and v > 0 for v in res["ms_per_utterance"].values())
    assert res["max_abs_difference"] <= TOL
    assert "ms per utterance" in capsys.readouterr().out
