"""End to end on a tiny synthetic corpus and tiny prototxt: stage 1, stage 2 from the stage-1 weights, both test
scripts, resume after SIGTERM, and the CLI errors a user meets first."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import test_identification
import test_verification
import trainAug
import trainNoAug
from caffe_torch.weights import blob_to_array, read_caffemodel

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 20          # crop = 160 * 19 + 401 = 3441 samples

TRUNK = """
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 6 dim: 1 dim: {frames} dim: 257 }} shape {{ dim: 6 dim: 1 dim: 1 dim: 1 }} }} }}
layer {{ name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1_1" type: "PReLU" bottom: "conv1_1" top: "conv1_1" }}
layer {{ name: "res4_3p" type: "Pooling" bottom: "conv1_1" top: "res4_3p"
  pooling_param {{ pool: AVE kernel_h: {pooled} kernel_w: 1 stride: 1 }} }}
layer {{ name: "fc5" type: "InnerProduct" bottom: "res4_3p" top: "fc5"
  inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }} }} }}
"""
SOFTMAX_HEAD = """
layer {{ name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }}
layer {{ name: "top1Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "top1Accuracy" }}
"""
LM_HEAD = """
layer {{ name: "fc5_norm" type: "Normalize" bottom: "fc5" top: "fc5_norm" }}
layer {{ name: "fc6" type: "InnerProduct" bottom: "fc5_norm" top: "fc6"
  inner_product_param {{ num_output: {classes} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "fc6_scale" type: "Scale" bottom: "fc6" top: "fc6_scale"
  scale_param {{ filler {{ type: "constant" value: 10 }} bias_term: true }} }}
layer {{ name: "fc6_margin" type: "LabelSpecificAdd" bottom: "fc6_scale" bottom: "label" top: "fc6_margin"
  label_specific_add_param {{ bias: -3 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc6_margin" bottom: "label" top: "loss" }}
layer {{ name: "top1Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "top1Accuracy" }}
"""
SOLVER = """net: "{net}"
base_lr: {lr} lr_policy: "step" gamma: 0.5 stepsize: 4 momentum: 0.9 weight_decay: 0.0005
max_iter: {max_iter} display: 2 average_loss: 2 snapshot: {snapshot} snapshot_prefix: "result/{prefix}"
"""
SPEAKERS, TEST_SPEAKERS = 6, 2


def write_solver(folder: Path, head: str, prefix: str, max_iter=8, snapshot=4, lr=0.05, name="s") -> Path:
    classes = SPEAKERS - TEST_SPEAKERS             # verification mode: the non-test speakers
    net = folder / f"{name}_net.prototxt"
    net.write_text(TRUNK.format(frames=FRAMES, pooled=FRAMES // 2) + head.format(classes=classes))
    solver = folder / f"{name}_solver.prototxt"
    solver.write_text(SOLVER.format(net=net.name, lr=lr, max_iter=max_iter, snapshot=snapshot, prefix=prefix))
    return solver


def train_args(solver, corpus, out, *extra, workers=0):
    return ["--solver", str(solver), "--data-root", str(corpus), "--mode", "verification", "--out", str(out),
            "--gpu", "-1", "--workers", str(workers), "--test-interval", "4", "--no-progress", *extra]


def params_of(model: Path) -> dict[str, list[np.ndarray]]:
    net = read_caffemodel(model)
    return {lp.name: [blob_to_array(b) for b in lp.blobs] for lp in net.layer if len(lp.blobs)}


def test_two_stages_then_both_tests(corpus, tmp_path):
    s1 = write_solver(tmp_path, SOFTMAX_HEAD, "stage1", name="s1")
    run1 = tmp_path / "run1"
    assert trainAug.main(train_args(s1, corpus, run1)) == 0
    for name in ("final.caffemodel", "args.json", "labels.json", "net.prototxt", "solver.prototxt", "train.log",
                 "training_curve.csv", "training_curve.png", "snapshots/stage1_iter_4.solverstate",
                 "snapshots/stage1_iter_8.caffemodel"):
        assert (run1 / name).exists(), name
    log = (run1 / "train.log").read_text()
    assert "Iteration 0, loss = " in log and "Iteration 2, lr = " in log
    assert "Test net output #0: top1Accuracy = " in log
    rows = (run1 / "training_curve.csv").read_text().splitlines()
    assert rows[0] == "iteration,loss,lr,val_top1,val_top5" and len(rows) > 3

    # stage 2 starts from stage 1: the trunk and fc6 (same name and shape) are copied; then it trains
    s2 = write_solver(tmp_path, LM_HEAD, "stage2", lr=0.01, name="s2")
    run2 = tmp_path / "run2"
    # another seed than stage 1: its fillers differ from the ones stage 1 started from (see below)
    assert trainNoAug.main(train_args(s2, corpus, run2, "--weights", str(run1 / "final.caffemodel"),
                                      "--seed", "2")) == 0
    stage1 = params_of(run1 / "final.caffemodel")
    stage2 = params_of(run2 / "final.caffemodel")
    assert set(stage2) >= {"conv1_1", "fc5", "fc6", "fc6_scale"}
    assert not np.allclose(stage1["fc5"][0], stage2["fc5"][0])          # it trained...
    # ...from the stage-1 weights: after its 8 steps it is still much closer to them than to the filler
    # values it would have started from without --weights (the same net and seed, built fresh)
    import caffe_torch as caffe

    caffe.set_random_seed(2)
    fresh = caffe.Net(str(tmp_path / "s2_net.prototxt"), caffe.TRAIN)
    for layer in ("conv1_1", "fc5"):
        from_stage1 = np.linalg.norm(stage2[layer][0] - stage1[layer][0])
        assert from_stage1 < 0.5 * np.linalg.norm(stage2[layer][0] - fresh.params[layer][0].data), layer

    out = tmp_path / "tests"
    assert test_identification.main(["--weights", str(run2 / "final.caffemodel"), "--data-root", str(corpus),
                                     "--crops", "3", "--gpu", "-1", "--out", str(out), "--no-progress"]) == 0
    import json

    iden = json.loads((out / "identification.json").read_text())
    assert 0 <= iden["top1"] <= iden["top5"] <= 1 and iden["n"] > 0
    assert test_verification.main(["--weights", str(run2 / "final.caffemodel"), "--data-root", str(corpus),
                                   "--crops", "3", "--gpu", "-1", "--out", str(out), "--no-progress"]) == 0
    veri = json.loads((out / "verification.json").read_text())
    assert 0 <= veri["trials"]["eer"] <= 1
    for png in ("score_hist.png", "roc.png", "det.png"):
        assert (out / png).stat().st_size > 1000


def test_sigterm_snapshot_and_resume_equals_uninterrupted(corpus, tmp_path, one_thread):
    # bit for bit means one thread count for all three runs (float32 sums in the kernels are ordered by it):
    # here 1, in this process (one_thread) and in the interrupted child (OMP_NUM_THREADS)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "sig", max_iter=40, snapshot=2)
    full = tmp_path / "full"
    assert trainAug.main(train_args(solver, corpus, full, "--seed", "5")) == 0

    cut = tmp_path / "cut"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # with loader worker processes, and the signal sent to the whole process group (as `kill -- -PGID`, a
    # terminal's Ctrl-C or a scheduler would): the workers must neither die of it nor keep the run alive.
    # The run sends it itself right after its snapshot of iteration 2 (an event, not a delay: on any machine
    # the run is then still at iteration 2 of 40)
    args = train_args(solver, corpus, cut, "--seed", "5", workers=2)
    stop_after_snapshot_2 = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import caffe_torch.solver as cs
        step = cs.Solver.step
        def step_then_stop(self, n=1):
            step(self, n)                  # writes the periodic snapshot when iteration 2 ends
            if self.iter == 2:
                os.killpg(0, signal.SIGTERM)
        cs.Solver.step = step_then_stop
        import trainAug
        sys.exit(trainAug.main({args!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", stop_after_snapshot_2], cwd=tmp_path, env=env,
                          capture_output=True, text=True, start_new_session=True,
                          timeout=1800)          # (a hang guard only)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 99, output
    assert "SIGTERM received" in output and "stopped by SIGTERM at iteration 2" in output
    states = sorted((cut / "snapshots").glob("*.solverstate"))
    assert [p.name for p in states] == ["sig_iter_2.solverstate"] and not (cut / "final.caffemodel").exists()

    assert trainAug.main(train_args(solver, corpus, cut, "--seed", "5", "--resume", "auto", workers=2)) == 0
    a, b = params_of(full / "final.caffemodel"), params_of(cut / "final.caffemodel")
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_cli_errors(corpus, tmp_path, capsys):
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "e")
    # missing data root
    assert trainAug.main(train_args(solver, tmp_path / "nowhere", tmp_path / "r1")) == 1
    assert "nowhere" in capsys.readouterr().err
    # a list naming no existing file
    bad_list = tmp_path / "iden_split.txt"
    bad_list.write_text("1 id99999/abcdefghijk/00001.wav\n2 id99999/abcdefghijk/00002.wav\n")
    assert trainAug.main(train_args(solver, corpus, tmp_path / "r2", "--iden-split", str(bad_list),
                                    "--mode", "identification")) == 1
    assert "no training utterance" in capsys.readouterr().err
    # a solver whose net file is missing
    orphan = tmp_path / "orphan_solver.prototxt"
    orphan.write_text(SOLVER.format(net="missing_net.prototxt", lr=0.1, max_iter=2, snapshot=0, prefix="x"))
    assert trainAug.main(train_args(orphan, corpus, tmp_path / "r3")) == 1
    assert "missing_net.prototxt" in capsys.readouterr().err
    # weights that don't fit the net: a same-named layer (fc5) with another shape
    import caffe_torch as caffe

    other = tmp_path / "other_net.prototxt"
    other.write_text(TRUNK.format(frames=FRAMES, pooled=FRAMES // 2).replace("num_output: 8", "num_output: 5")
                     + SOFTMAX_HEAD.format(classes=SPEAKERS - TEST_SPEAKERS))
    caffe.Net(str(other), caffe.TRAIN).save(str(tmp_path / "w.caffemodel"))
    assert trainAug.main(train_args(solver, corpus, tmp_path / "r4", "--weights", str(tmp_path / "w.caffemodel"))) == 1
    err = capsys.readouterr().err
    assert "fc5" in err and "shape mismatch" in err
    # a classifier whose width does not match the speakers of the list
    wrong = write_solver(tmp_path, SOFTMAX_HEAD.replace("{classes}", "9"), "w", name="wrong")
    assert trainAug.main(train_args(wrong, corpus, tmp_path / "r5")) == 1
    assert "num_output 9" in capsys.readouterr().err


def test_speed_options_reach_the_training_and_validation_nets(corpus, tmp_path, monkeypatch):
    """trainAug --channels-last: the solver's net and the validation net are built with it (caffe_torch.fast is
    chosen when a net is built), the validation net without what only training uses; the run finishes. (That
    channels-last gives the plain numbers is tests/test_fast.py's.)"""
    from caffe_torch import fast

    built = []
    prepare = fast.prepare

    def spy(net, options):
        built.append((net.phase, options))
        prepare(net, options)
    monkeypatch.setattr(fast, "prepare", spy)
    solver = write_solver(tmp_path, SOFTMAX_HEAD, "cl", max_iter=4)
    run = tmp_path / "cl"
    assert trainAug.main(train_args(solver, corpus, run, "--channels-last")) == 0
    assert "speed options: channels_last" in (run / "train.log").read_text()
    import caffe_torch
    train_nets = [o for phase, o in built if phase == caffe_torch.TRAIN]
    test_nets = [o for phase, o in built if phase == caffe_torch.TEST]
    assert train_nets and all(o.channels_last for o in train_nets)
    assert test_nets and all(o.channels_last and not o.compile for o in test_nets)
