"""Data-parallel training: `torchrun --nproc_per_node=2 trainAug.py ...` (gloo on the CPU) gives the weights of
one process training on the same global batches, up to float summation order. The single-process run reads
its audio through --cache (built on first use), so the cache is checked against plain wav reading too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trainAug
from caffe_torch.weights import blob_to_array, read_caffemodel

ROOT = Path(__file__).resolve().parent.parent
FRAMES, SPEAKERS, TEST_SPEAKERS, BATCH = 20, 6, 2, 6

NET = f"""name: "tiny_ddp"
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {BATCH} dim: 1 dim: {FRAMES} dim: 257 }}
                shape {{ dim: {BATCH} dim: 1 dim: 1 dim: 1 }} }} }}
layer {{ name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1_1" type: "PReLU" bottom: "conv1_1" top: "conv1_1" }}
layer {{ name: "res4_3p" type: "Pooling" bottom: "conv1_1" top: "res4_3p"
  pooling_param {{ pool: AVE kernel_h: {FRAMES // 2} kernel_w: 1 stride: 1 }} }}
layer {{ name: "fc5" type: "InnerProduct" bottom: "res4_3p" top: "fc5"
  inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"
  inner_product_param {{ num_output: {SPEAKERS - TEST_SPEAKERS} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }}
layer {{ name: "top1Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "top1Accuracy" }}
"""
SOLVER = """net: "net.prototxt"
base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 3 momentum: 0.9 weight_decay: 0.0005
max_iter: 6 display: 2 average_loss: 2 snapshot: 3 snapshot_prefix: "result/ddp"
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from voxdata import make_corpus

    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, speakers=SPEAKERS, utterances=6, test_speakers=TEST_SPEAKERS, seed=4, min_videos=3,
                max_videos=3, min_dur=1.0, max_dur=1.5, trials=10, workers=1, progress=False)
    return root


def params_of(model: Path) -> dict[str, list[np.ndarray]]:
    net = read_caffemodel(model)
    return {lp.name: [blob_to_array(b) for b in lp.blobs] for lp in net.layer if len(lp.blobs)}


def args_for(solver, corpus, out, *extra):
    return ["--solver", str(solver), "--data-root", str(corpus), "--mode", "verification", "--out", str(out),
            "--gpu", "-1", "--workers", "0", "--test-interval", "0", "--no-progress", "--seed", "7", *extra]


def test_two_gloo_processes_equal_one_process(corpus, tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER)

    single = tmp_path / "single"
    cache = tmp_path / "cache"
    assert trainAug.main(args_for(solver, corpus, single, "--cache", str(cache))) == 0
    assert (cache / "index.json").exists() and len(json.loads((cache / "index.json").read_text())["paths"]) > 0

    ddp = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           str(ROOT / "trainAug.py"), *args_for(solver, corpus, ddp)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)      # a hang guard only
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log = (ddp / "train.log").read_text()
    assert "data parallel: 2 processes (gloo), 3 examples per process" in log
    assert "Optimization Done" in log
    a, b = params_of(single / "final.caffemodel"), params_of(ddp / "final.caffemodel")
    assert a.keys() == b.keys()
    moved = params_of(ddp / "snapshots" / "ddp_iter_3.caffemodel")
    assert not np.allclose(moved["fc5"][0], b["fc5"][0])          # it trained between the snapshots
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7, err_msg=name)
    # the logged losses are the global batch's (averaged over the processes): same curve as one process
    rows = lambda p: [r.split(",")[:2] for r in (p / "training_curve.csv").read_text().splitlines()[1:]]  # noqa: E731
    for (i1, l1), (i2, l2) in zip(rows(single), rows(ddp)):
        assert i1 == i2 and (l1 == l2 == "" or abs(float(l1) - float(l2)) < 1e-5 * max(1, abs(float(l1))))


def test_batch_must_divide(corpus, tmp_path, monkeypatch, capsys):
    """The world-size check runs before any process group is needed (WORLD_SIZE=4 faked, no torchrun)."""
    (tmp_path / "net.prototxt").write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER)
    import speaker.train as train

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(train.DataParallel, "init", lambda self, gpu: None)
    monkeypatch.setattr(train.DataParallel, "barrier", lambda self: None)
    monkeypatch.setattr(train.DataParallel, "close", lambda self: None)
    assert trainAug.main(args_for(solver, corpus, tmp_path / "r")) == 1
    assert "not divisible by the 4 processes" in capsys.readouterr().err
