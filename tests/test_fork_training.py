"""A tiny two-stage run with the fork layers, through the pycaffe API: a softmax net is trained, its weights
are copied (`copy_from`) into each margin net (A-Softmax, AM-Softmax, the paper's logistic-margin layout, our
additive angular margin), which trains for a few steps with decreasing loss; a snapshot + restore continues
the MarginInnerProduct lambda schedule (and LabelSpecificAdd's bias annealing) where it stopped."""

import numpy as np
import pytest
import torch

import caffe_torch as caffe
from caffe_torch.proto import caffe_pb2
from caffe_torch.weights import read_solverstate

N, DIM, CLASSES = 32, 10, 4

HEAD = f"""
name: "NET"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {N} dim: {DIM} }} shape {{ dim: {N} }} }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
        inner_product_param {{ num_output: 16 weight_filler {{ type: "xavier" }}
                               bias_filler {{ type: "constant" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }}
"""

SOFTMAX = HEAD + f"""
layer {{ name: "fc5" type: "InnerProduct" bottom: "fc1" top: "logits"
        inner_product_param {{ num_output: {CLASSES} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }}
"""

# SphereFace: A-Softmax, m = 4, the paper's lambda schedule
ASOFTMAX = HEAD + f"""
layer {{ name: "fc5_margin" type: "MarginInnerProduct" bottom: "fc1" bottom: "label"
        top: "logits" top: "lambda"
        margin_inner_product_param {{ num_output: {CLASSES} type: QUADRUPLE weight_filler {{ type: "xavier" }}
                                     base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 0 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }}
"""

_COSINE = HEAD + f"""
layer {{ name: "norm" type: "Normalize" bottom: "fc1" top: "emb_norm" }}
layer {{ name: "fc5_cos" type: "InnerProduct" bottom: "emb_norm" top: "cos"
        inner_product_param {{ num_output: {CLASSES} bias_term: false normalize: true
                               weight_filler {{ type: "xavier" }} }} }}
"""

# AM-Softmax (happynear): cos - m, then a fixed scale of 30
AMSOFTMAX = _COSINE + """
layer { name: "cos_m" type: "LabelSpecificAdd" bottom: "cos" bottom: "label" top: "cos_m"
        label_specific_add_param { bias: -0.35 } }
layer { name: "s" type: "Scale" bottom: "cos_m" top: "logits" param { lr_mult: 0 decay_mult: 0 }
        scale_param { filler { type: "constant" value: 30 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }
"""

# the paper's logistic-margin layout: a learned per-class scale with bias, then the (annealed) margin
LOGISTIC = _COSINE + """
layer { name: "s" type: "Scale" bottom: "cos" top: "scaled"
        scale_param { filler { type: "constant" value: 10 } bias_term: true
                      bias_filler { type: "constant" } } }
layer { name: "margin" type: "LabelSpecificAdd" bottom: "scaled" bottom: "label" top: "scaled" top: "bias"
        label_specific_add_param { bias_base: 0 bias_gamma: -0.01 bias_power: 1 bias_min: -2 bias_max: 0 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "scaled" bottom: "label" top: "loss" }
"""

# our extension: additive angular margin
AAM = _COSINE + """
layer { name: "aam" type: "AdditiveAngularMargin" bottom: "cos" bottom: "label" top: "cos_m"
        additive_angular_margin_param { margin: 0.2 } }
layer { name: "s" type: "Scale" bottom: "cos_m" top: "logits" param { lr_mult: 0 decay_mult: 0 }
        scale_param { filler { type: "constant" value: 30 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }
"""


def data(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM)) * 2.0
    label = np.arange(N) % CLASSES
    x = centres[label] + rng.normal(size=(N, DIM))
    return x.astype(np.float32), label.astype(np.float32)


def write_solver(tmp_path, name, net_text, base_lr=0.05, test=False):
    (tmp_path / f"{name}.prototxt").write_text(net_text.replace('"NET"', f'"{name}"'))
    lines = [f'net: "{name}.prototxt"', f"base_lr: {base_lr}", 'lr_policy: "fixed"', "momentum: 0.9",
             "weight_decay: 0.0005", "max_iter: 1000", "display: 0", "random_seed: 7",
             f'snapshot_prefix: "{tmp_path / name}"']
    if test:
        lines += ["test_iter: 1", "test_interval: 3", "test_initialization: false"]
    path = tmp_path / f"{name}_solver.prototxt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def feed(net, x, label):
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = label


def losses(solver, steps):
    out = []
    for _ in range(steps):
        solver.step(1)
        out.append(float(solver.net.blobs["loss"].data))
    return out


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage1")
    x, label = data()
    solver = caffe.SGDSolver(write_solver(tmp, "softmax", SOFTMAX))
    feed(solver.net, x, label)
    ls = losses(solver, 30)
    assert np.mean(ls[-5:]) < 0.5 * np.mean(ls[:5])
    model = str(tmp / "softmax.caffemodel")
    solver.net.save(model)
    return model, solver.net.params["fc1"][0].data.copy()


@pytest.mark.parametrize("name,text", [
    ("asoftmax", ASOFTMAX),
    ("asoftmax_late", ASOFTMAX.replace("iteration: 0", "iteration: 20000")),   # lambda = lambda_min = 5
    ("amsoftmax", AMSOFTMAX), ("logistic", LOGISTIC), ("aam", AAM)])
def test_stage2_margin_net_trains_from_softmax_weights(tmp_path, stage1, name, text):
    model, fc1 = stage1
    x, label = data()
    solver = caffe.SGDSolver(write_solver(tmp_path, name, text))
    solver.net.copy_from(model)
    np.testing.assert_array_equal(solver.net.params["fc1"][0].data, fc1)
    feed(solver.net, x, label)
    ls = losses(solver, 15)
    assert np.all(np.isfinite(ls))
    assert np.mean(ls[-3:]) < 0.8 * np.mean(ls[:3]), ls
    if name == "asoftmax":
        assert solver.net.layer_states() == {"fc5_margin": 15}
        assert solver.net.blobs["lambda"].data[0] == pytest.approx(1000 / (1 + 0.12 * 15), rel=1e-5)
        w = solver.net.params["fc5_margin"][0].data.copy()
        # after an update the stored W is no longer unit-norm; the next forward renormalises it in place
        assert np.abs(np.linalg.norm(w, axis=1) - 1).max() > 1e-4
        solver.net.forward()
        w_after = solver.net.params["fc5_margin"][0].data
        np.testing.assert_allclose(np.linalg.norm(w_after, axis=1), 1, rtol=1e-6)
        np.testing.assert_allclose(w_after, w / np.linalg.norm(w, axis=1, keepdims=True), rtol=1e-5)
    if name == "logistic":
        assert solver.net.layer_states() == {"margin": 15}
        assert float(solver.net.blobs["bias"].data[0]) == pytest.approx(-0.01 * 14, rel=1e-5)


@pytest.mark.parametrize("iter_size", [1, 2])
def test_snapshot_restore_continues_lambda_schedule(tmp_path, stage1, iter_size):
    model, _ = stage1
    x, label = data()
    path = write_solver(tmp_path, "asoftmax", ASOFTMAX, test=True)
    if iter_size > 1:
        with open(path, "a") as f:
            f.write(f"iter_size: {iter_size}\n")
    a = caffe.SGDSolver(path)
    a.net.copy_from(model)
    feed(a.net, x, label)
    feed(a.test_nets[0], x, label)
    a.step(5)                                      # tests ran at iter 3: one TEST forward
    assert a.net.layer_states() == {"fc5_margin": 5 * iter_size}
    assert a.test_nets[0].layer_states() == {"fc5_margin": 1}
    a.snapshot()
    state_file = a.snapshot_filename(".solverstate")
    state = read_solverstate(state_file)
    saved = {(s.net, s.layer): s.counter for s in state.layer_state}
    assert saved == {("train", "fc5_margin"): 5 * iter_size, ("test0", "fc5_margin"): 1}
    a.step(4)
    lam_a = float(a.net.blobs["lambda"].data[0])
    w_a = a.net.params["fc5_margin"][0].data.copy()

    b = caffe.SGDSolver(path)
    feed(b.net, x, label)
    feed(b.test_nets[0], x, label)
    b.restore(state_file)
    assert b.iter == 5
    assert b.net.layer_states() == {"fc5_margin": 5 * iter_size}
    assert b.test_nets[0].layer_states() == {"fc5_margin": 1}
    b.step(4)
    assert b.net.layer_states() == a.net.layer_states() == {"fc5_margin": 9 * iter_size}
    assert b.test_nets[0].layer_states() == a.test_nets[0].layer_states() == {"fc5_margin": 2}  # iters 3, 6
    assert float(b.net.blobs["lambda"].data[0]) == lam_a == pytest.approx(1000 / (1 + 0.12 * 9 * iter_size),
                                                                         rel=1e-5)
    np.testing.assert_allclose(b.net.params["fc5_margin"][0].data, w_a, rtol=1e-5, atol=1e-6)


def test_snapshot_restore_label_specific_add_counter(tmp_path, stage1):
    model, _ = stage1
    x, label = data()
    path = write_solver(tmp_path, "logistic", LOGISTIC)
    a = caffe.SGDSolver(path)
    a.net.copy_from(model)
    feed(a.net, x, label)
    a.step(6)
    a.snapshot()
    state_file = a.snapshot_filename(".solverstate")
    b = caffe.SGDSolver(path)
    feed(b.net, x, label)
    b.restore(state_file)
    assert b.net.layer_states() == {"margin": 6}
    b.step(1)
    assert float(b.net.blobs["bias"].data[0]) == pytest.approx(-0.06, rel=1e-5)


def test_counters_unchanged_by_net_construction_and_reshape(tmp_path):
    net = caffe.Net(write_solver(tmp_path, "m", ASOFTMAX).replace("_solver", ""), caffe.TRAIN)
    assert net.layer_states() == {"fc5_margin": 0}
    net.blobs["data"].reshape(8, DIM)
    net.blobs["label"].reshape(8)
    net.reshape()
    assert net.layer_states() == {"fc5_margin": 0}
    assert caffe_pb2.TRAIN == caffe.TRAIN and torch.is_grad_enabled()
