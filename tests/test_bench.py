"""The benchmarks under bench/ still run: each at a tiny size, and the figures it prints are finite and
written to its JSON. (Speed itself is never asserted: figures are what benches output.)"""
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_engine_tiny(tmp_path, capsys):
    out = tmp_path / "engine.json"
    # returns 1 when the engine's loss and the hand-written network's disagree on the same weights
    rc = _bench("bench_engine").main(["--batch", "2", "--frames", "40", "--iters", "2", "--embedding", "16",
                                      "--classes", "7", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["batch"] == 2 and res["input"] == [1, 40, 257]
    for key in ("engine_examples_per_s", "engine_same_layers_examples_per_s", "torch_examples_per_s",
                "ratio_engine_over_torch", "ratio_engine_same_layers_over_torch", "engine_aten_ops_per_step",
                "engine_same_layers_aten_ops_per_step", "torch_aten_ops_per_step"):
        assert math.isfinite(res[key]) and res[key] > 0
    # the prototxt's two Accuracy layers cost ops; without them the engine runs the hand-written net's layers
    assert res["engine_same_layers_aten_ops_per_step"] < res["engine_aten_ops_per_step"]
    # the steps counted (after the first, displayed one) read nothing back; the hand-written one neither
    assert res["engine_syncs_per_step"] == res["engine_same_layers_syncs_per_step"] == res["torch_syncs_per_step"] == 0
    out = capsys.readouterr().out
    assert "vs hand-written" in out and "no Accuracy layers" in out and "host syncs/step" in out


def test_bench_all_sections_b_and_e(tmp_path, capsys):
    out = tmp_path / "all.json"
    assert _bench("bench_all").main(["--device", "cpu", "--sections", "be", "--seconds", "0.2",
                                     "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    sections = {r["section"] for r in rows}
    assert sections == {"b", "e"}
    assert all(r["value"] is not None and math.isfinite(r["value"]) and r["value"] > 0 for r in rows)
    assert any("all-pairs" in r["item"] for r in rows)
    assert "x 89 ex/s" in capsys.readouterr().out


def test_bench_frontend_tiny(tmp_path):
    out = tmp_path / "frontend.json"
    assert _bench("bench_frontend").main(["--batch", "4", "--frames", "50", "--seconds", "0.2", "--workers", "1",
                                          "--loader-batches", "2", "--files", "6", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["batch"] == 4 and data["frontend"] and data["loader"]
    for r in data["frontend"] + data["loader"]:
        assert math.isfinite(r["per_s"]) and r["per_s"] > 0, r


def test_bench_data_tiny(tmp_path, capsys):
    out = tmp_path / "data.json"
    assert _bench("bench_data").main(["--files", "3", "--seconds", "1", "--workers", "2", "--batch", "2",
                                      "--frames", "30", "--budget", "0.2", "--loader-workers", "1",
                                      "--step-net", str(ROOT / "prototxt" / "demo" / "ResNet-20_softmax.prototxt"),
                                      "--step-batch", "1", "--step-iters", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {(r["format"], r["workers"]) for r in res["decode"]} == {("wav", 2), ("m4a", 2)}
    for r in res["decode"]:
        assert r["files"] == 3 and r["files_per_s"] > 0 and r["audio_hours_per_s"] > 0
    assert len(res["loader"]) == 3 and res["cpu_step_examples_per_s"] > 0
    for r in res["loader"]:
        assert r["examples_per_s_one_core"] > 0 and r["examples_per_s_1_workers"] > 0
    assert "h of audio/s" in capsys.readouterr().out


def test_bench_all_section_f(tmp_path):
    out = tmp_path / "all.json"
    assert _bench("bench_all").main(["--device", "cpu", "--sections", "f", "--seconds", "0.2", "--wavs", "2",
                                     "--workers", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["section"] for r in rows} == {"f"} and len(rows) == 7
    assert all(r["value"] is not None and math.isfinite(r["value"]) and r["value"] > 0 for r in rows)
