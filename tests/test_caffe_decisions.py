"""Caffe's own decisions where a pycaffe script can observe them (issue 13, item 5): a TEST net runs backward
when Caffe's rules say so, `solver.iter` and `blob.data` are read-only properties, `snapshot()` returns None
and its files honour the umask."""

import os
import stat

import numpy as np
import pytest
import torch

import caffe_torch as caffe

NET = '''name: "d"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" {param}
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
'''


def make(tmp_path, phase, param="", head=""):
    path = tmp_path / f"net{phase}{len(param)}{len(head)}.prototxt"
    path.write_text(head + NET.replace("{param}", param))
    caffe.set_random_seed(4)
    net = caffe.Net(str(path), phase, dtype=torch.float64)
    rs = np.random.RandomState(0)
    net.blobs["data"].data[...] = rs.randn(4, 3)
    net.blobs["label"].data[...] = [0, 1, 2, 1]
    return net


def test_test_net_backward_follows_caffe_rules(tmp_path):
    train, test = make(tmp_path, caffe.TRAIN), make(tmp_path, caffe.TEST)
    for net in (train, test):
        net.forward()
    # evaluation pays nothing: a TEST net records no graph until a script calls its backward
    assert test.blobs["fc"].tensor.grad_fn is None
    for net in (train, test):
        net.backward()
    np.testing.assert_allclose(test.params["fc"][0].diff, train.params["fc"][0].diff, rtol=1e-12)
    assert test.params["fc"][0].diff.any()
    # from then on its forwards record, and backward accumulates as Caffe's
    test.forward()
    test.backward()
    np.testing.assert_allclose(test.params["fc"][0].diff, 2 * train.params["fc"][0].diff, rtol=1e-12)


def test_test_net_without_learning_params_backward_does_nothing(tmp_path):
    net = make(tmp_path, caffe.TEST, param="param { lr_mult: 0 } param { lr_mult: 0 }")
    net.forward()
    net.backward()                                  # Caffe: no layer needs backward; no error either
    assert not net.params["fc"][0].diff.any()


def test_force_backward_test_net_gives_input_diffs(tmp_path):
    net = make(tmp_path, caffe.TEST, head="force_backward: true\n")
    net.forward()
    diffs = net.backward()
    assert diffs["data"].any()


def test_iter_and_data_are_read_only(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET.replace("{param}", ""))
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                              f'snapshot_prefix: "{tmp_path}/snap/s"\n')
    s = caffe.SGDSolver(str(tmp_path / "solver.prototxt"), dtype=torch.float64)
    with pytest.raises(AttributeError):
        s.iter = 5
    with pytest.raises(AttributeError):
        s.net.blobs["data"].data = np.zeros((4, 3))
    with pytest.raises(AttributeError):
        s.net.params["fc"][0].diff = np.zeros((3, 3))
    s.net.blobs["data"].data[...] = 1.0              # writing into them is how pycaffe scripts do it
    s.net.blobs["label"].data[...] = 0.0
    s.step(1)
    assert s.iter == 1


def test_snapshot_returns_none_and_honours_the_umask(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET.replace("{param}", ""))
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                              f'snapshot_prefix: "{tmp_path}/snap/s"\n')
    s = caffe.SGDSolver(str(tmp_path / "solver.prototxt"), dtype=torch.float64)
    old = os.umask(0o022)
    try:
        assert s.snapshot() is None
    finally:
        os.umask(old)
    for ext in (".caffemodel", ".solverstate"):
        mode = stat.S_IMODE(os.stat(s.snapshot_filename(ext)).st_mode)
        assert mode == 0o644, (ext, oct(mode))
