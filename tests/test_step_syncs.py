"""A training step reads nothing back from the device except at display iterations (issue 21): host syncs
(`aten._local_scalar_dense`, plus the reads `host_values` reports) counted on the CPU with a dispatch mode, for
the solver's step on the demo and paper nets and for the training script's whole loop."""

import math

import numpy as np
import pytest
import torch
from test_e2e import LM_HEAD, train_args, write_solver

import trainAug
from caffe_torch.blob import Blob, _Memory
from caffe_torch.opcount import OpCounter
from caffe_torch.prototxt import read_net, read_solver
from caffe_torch.solver import _SOLVERS

HEADS = ("softmax", "asoftmax", "amsoftmax", "lm", "aam")


def small_solver(folder: str, head: str, display: int, fast=None):
    """The prototxt's solver and net, batch 2, spectrograms 9 bins wide instead of 257; the paper net with 1/16
    of its convolutions' channels: the same layers and ops per step, far less arithmetic."""
    param = read_solver(f"{folder}/solver_{head}.prototxt")
    net, _ = read_net(f"{folder}/ResNet-20_{head}.prototxt")
    shapes = net.layer[0].input_param.shape
    shapes[0].dim[0] = shapes[1].dim[0] = 2
    shapes[0].dim[3] = 9
    if folder == "prototxt":
        for lp in net.layer:
            if lp.type == "Convolution":
                lp.convolution_param.num_output //= 16
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.display, param.average_loss, param.snapshot, param.base_lr = display, display, 0, 1e-4
    param.ClearField("test_iter")
    param.ClearField("test_interval")
    solver = _SOLVERS[param.type](solver_param=param, blob_diffs=False, label_checks=False, fast=fast)
    solver.net.blobs["data"].tensor = torch.randn(solver.net.blobs["data"].shape)
    solver.net.blobs["label"].tensor = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    return solver


@pytest.fixture
def host_copies(monkeypatch):
    """Blobs on the host-copy path (a GPU's), counting the host views handed out (each a download there)."""
    monkeypatch.setattr(Blob, "zero_copy_devices", ())
    views = []
    real_view = _Memory.view

    def view(self):
        views.append(self)
        return real_view(self)

    monkeypatch.setattr(_Memory, "view", view)
    return views


@pytest.mark.parametrize("folder", ["prototxt/demo", "prototxt"])
@pytest.mark.parametrize("head", HEADS)
def test_solver_steps_sync_once_per_display(folder, head, host_copies):
    display, steps = 2, 4
    solver = small_solver(folder, head, display)
    solver.step(1)                              # first-call set-up out of the count
    with OpCounter() as count:
        solver.step(steps)                      # iterations 1..4: display at 2 and 4
    assert count.syncs == steps // display, count.by_name
    assert host_copies == []
    assert math.isfinite(solver.displayed_loss)


def test_layers_check_labels_in_pycaffe_calls_and_not_in_the_training_loop():
    solver = small_solver("prototxt/demo", "lm", 4)
    with OpCounter() as count:
        solver.net.forward_range(0, len(solver.net._layers) - 1)     # no check, no read
    assert count.syncs == 0
    assert not any(layer.check_labels for layer in solver.net.modules)
    checked = _SOLVERS["SGD"](solver_param=solver.param)              # the default: Caffe's checks
    checked.net.blobs["data"].tensor = torch.randn(checked.net.blobs["data"].shape)
    checked.net.blobs["label"].tensor = torch.tensor([0.0, 99.0]).view(2, 1, 1, 1)
    with pytest.raises(Exception, match="label 99 out of range"):
        checked.net.forward()


def test_the_feeder_checks_labels_on_the_host_before_uploading_and_reads_nothing_back():
    """The training loop's feeder (Solver(label_checks=False)'s other half): a batch with a label out of range
    is refused naming it before anything reaches the net; a good batch is fed with no host sync."""
    from types import SimpleNamespace

    import caffe_torch
    from speaker.errors import TrainingError
    from speaker.train import _input_feeder
    from voxdata import crop_length

    net = SimpleNamespace(blobs={"data": SimpleNamespace(tensor=None), "label": SimpleNamespace(tensor=None)})
    feed = _input_feeder(caffe_torch, torch.device("cpu"), classes=4)
    crops = torch.from_numpy(np.random.default_rng(0).integers(-3000, 3000, (3, crop_length(20)), dtype=np.int16))
    for bad in (4, -1):
        with pytest.raises(TrainingError, match=rf"label {bad} out of range \[0, 4\) in a training batch"):
            feed(net, crops, torch.tensor([0, bad, 3]))
        assert net.blobs["data"].tensor is None and net.blobs["label"].tensor is None
    with OpCounter() as count:
        feed(net, crops, torch.tensor([0, 2, 3]))
    assert count.syncs == 0
    assert net.blobs["data"].tensor.shape == (3, 1, 20, 257)
    assert net.blobs["label"].tensor.flatten().tolist() == [0.0, 2.0, 3.0]


def test_training_loop_syncs_once_per_display(corpus, tmp_path, monkeypatch):
    """trainAug's loop on a margin net (LabelSpecificAdd): 8 iterations, display 2, no validation or snapshot
    inside the loop: 4 reads, one per display line."""
    import speaker.train as train

    counts = {}
    real_loop = train.loop

    def counted_loop(run, solver, data, stop):
        start = solver.iter
        with OpCounter() as count:
            status = real_loop(run, solver, data, stop)
        counts.update(syncs=count.syncs, iterations=solver.iter - start, by_name=count.by_name)
        return status

    monkeypatch.setattr(train, "loop", counted_loop)
    solver = write_solver(tmp_path, LM_HEAD, "lm", max_iter=8, snapshot=0)
    assert trainAug.main(train_args(solver, corpus, tmp_path / "run", "--test-interval", "0")) == 0
    assert counts["iterations"] == 8
    # besides: one read when the loop makes its batch iterator (torch's DataLoader draws its base seed from
    # the CPU generator, `random_().item()`: once per loop, not per step)
    assert counts["by_name"]["random_.default"] == 1
    assert counts["syncs"] - 1 == 8 // 2, counts["by_name"]
    curve = (tmp_path / "run" / "training_curve.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in curve[1:] if row.split(",")[1]] == ["0", "2", "4", "6"]


def test_data_parallel_all_reduce_reads_nothing_and_the_stop_flag_once_when_asked(monkeypatch):
    """DDP's gradient hook (one all-reduce of the diffs, the loss and the stop flag, on a one-process gloo
    group here) reads nothing back: the steps sync at display only; the stop flag is read when the loop asks
    (stop_requested: every display on a GPU), one read."""
    import torch.distributed as dist

    from speaker.data_parallel import DataParallel

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = DataParallel()
        solver = small_solver("prototxt/demo", "lm", 2)
        solver.gradient_hook = ddp.gradient_hook
        solver.step(1)
        with OpCounter() as count:
            solver.step(4)                      # iterations 1..4: display at 2 and 4
        assert count.syncs == 2, count.by_name
        assert count.by_name["allreduce_.default"] == 4
        with OpCounter() as count:
            assert not ddp.stop_requested()
        assert count.syncs == 1
        ddp.local_stop = lambda: True           # a signal reached this process: the next all-reduce carries it
        solver.step(1)
        assert ddp.stop_requested()
    finally:
        dist.destroy_process_group()


def test_training_net_records_nothing_per_layer_and_refuses_a_ranged_backward():
    """Solver(blob_diffs=False) builds its train net without pycaffe's per-layer records (forward hooks, ~12 %
    of the demo net's aten ops per step); a ranged backward, which needs them, is refused saying so."""
    solver = small_solver("prototxt/demo", "lm", 4)
    assert not any(m._forward_hooks for m in solver.net.modules)
    solver.net.forward()
    with pytest.raises(ValueError, match="record_layer_inputs=False"):
        solver.net.backward(start="fc6")
    pycaffe = _SOLVERS["SGD"](solver_param=solver.param)            # the default: pycaffe's nets
    assert all(m._forward_hooks for m in pycaffe.net.modules)


def test_curve_has_the_solvers_lr_and_weighted_loss_and_multistep_is_logged_once_per_change(corpus, tmp_path):
    """training_curve.csv: the rate the solver used (multistep included) and the solver's smoothed loss, which
    counts loss_weight; train.log: Caffe's "MultiStep Status" once per step change."""
    solver = write_solver(tmp_path, LM_HEAD.replace('top: "loss" }', 'top: "loss" loss_weight: 2 }'), "ms",
                          max_iter=8, snapshot=0)
    text = solver.read_text().replace('lr_policy: "step" gamma: 0.5 stepsize: 4',
                                      'lr_policy: "multistep" gamma: 0.5 stepvalue: 3 stepvalue: 5')
    solver.write_text(text)
    run = tmp_path / "run"
    assert trainAug.main(train_args(solver, corpus, run, "--test-interval", "0")) == 0
    log = (run / "train.log").read_text()
    assert log.count("MultiStep Status") == 2
    assert "MultiStep Status: Iteration 3, step = 1" in log and "MultiStep Status: Iteration 5, step = 2" in log
    rows = [r.split(",") for r in (run / "training_curve.csv").read_text().splitlines()[1:] if r.split(",")[1]]
    lrs = {int(r[0]): float(r[2]) for r in rows}
    assert lrs == pytest.approx({0: 0.05, 2: 0.05, 4: 0.025, 6: 0.0125})
    # the curve's loss is the display line's: "Iteration N, loss = X" (loss_weight 2 included)
    shown = {int(line.split("Iteration ")[1].split(",")[0]): float(line.rsplit("= ", 1)[1])
             for line in log.splitlines() if ", loss = " in line}
    for r in rows:
        assert float(r[1]) == pytest.approx(shown[int(r[0])], rel=1e-5)
    assert "(* 2 = " in log
