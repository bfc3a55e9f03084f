"""An unmodified pycaffe script (tests/data/pycaffe_scripts/train_netspec_python.py: NetSpec, a Python layer
with a learnable blob, SGDSolver with momentum, weight decay and a step policy, a solver callback,
net.save) run under `python -m caffe_torch`, and under the real pycaffe build with the same numbers.

Both runs are subprocesses, as a user would start them; the script writes result.json (loss and learned
scale per iteration) and trained.caffemodel. Same numbers: every loss and scale within RTOL relative, and
every trained blob within RTOL of its largest magnitude (float32 in both engines, 30 SGD steps).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_torch.proto import caffe_pb2
from caffe_torch.weights import blob_to_array, read_caffemodel
from speaker.engine import try_import_pycaffe

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "data" / "pycaffe_scripts" / "train_netspec_python.py"
ITERS = 30
RTOL = 1e-4


def _run(tmp_path, name: str, engine_args: list[str]) -> tuple[dict, dict[str, list[np.ndarray]], Path]:
    out = tmp_path / name
    env = dict(os.environ, GLOG_minloglevel="2", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    res = subprocess.run([sys.executable, *engine_args, str(SCRIPT), str(out), "--iters", str(ITERS)],
                         cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1800)      # a hang guard only
    assert res.returncode == 0, f"{name}: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    result = json.loads((out / "result.json").read_text())
    model = read_caffemodel(str(out / "trained.caffemodel"))
    weights = {lp.name: [blob_to_array(b) for b in lp.blobs] for lp in model.layer if len(lp.blobs)}
    return result, weights, out


def test_script_runs_unchanged_under_caffe_torch(tmp_path):
    result, weights, out = _run(tmp_path, "caffe_torch", ["-m", "caffe_torch"])
    assert result["engine"] == "caffe_torch"
    assert result["iter"] == ITERS and result["gradient_calls"] == list(range(ITERS))
    losses = result["losses"]
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses          # it learns
    assert sorted(weights) == ["ip1", "ip2", "scaled"]
    assert weights["scaled"][0].shape == (1,) and weights["scaled"][0][0] == pytest.approx(result["scales"][-1])
    assert result["scales"][-1] != 0.5                                        # the Python layer's blob trained
    # the written net is what NetSpec should give: the Python layer's fields went to python_param
    net = text_format.Parse((out / "net.prototxt").read_text(), caffe_pb2.NetParameter())
    python = [lp for lp in net.layer if lp.type == "Python"]
    assert [(lp.name, lp.python_param.module, lp.python_param.layer) for lp in python] == \
        [("scaled", "scale_layer", "LearnedScale")]


@pytest.mark.caffe
def test_same_numbers_as_real_pycaffe(tmp_path):
    caffe, why = try_import_pycaffe(["Python"])
    if caffe is None:
        pytest.skip(f"real pycaffe with Python layers not built: {why}")
    ours, our_weights, _ = _run(tmp_path, "caffe_torch", ["-m", "caffe_torch"])
    theirs, their_weights, _ = _run(tmp_path, "caffe", [])
    assert theirs["engine"] == "caffe" and ours["iter"] == theirs["iter"] == ITERS
    assert ours["gradient_calls"] == theirs["gradient_calls"]
    np.testing.assert_allclose(ours["losses"], theirs["losses"], rtol=RTOL)
    np.testing.assert_allclose(ours["scales"], theirs["scales"], rtol=RTOL)
    assert sorted(our_weights) == sorted(their_weights)
    for layer, blobs in their_weights.items():
        for a, b in zip(our_weights[layer], blobs):
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= RTOL * np.abs(b).max(), layer
