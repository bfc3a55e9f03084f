"""python -m caffe_torch.export: files written with the Caffe names, and every refusal or bad argument a single
line naming the layer, its type and file:line (or the argument) with exit status 1 or 2, before any file is
written."""

import re

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="export extras not installed (pip install -r requirements-export.txt)")
ort = pytest.importorskip("onnxruntime", reason="export extras not installed "
                          "(pip install -r requirements-export.txt)")

import caffe_torch  # noqa: E402
from caffe_torch.export.__main__ import main  # noqa: E402
from tests.test_export_layers import ours  # noqa: E402

NET = """name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


@pytest.fixture
def files(tmp_path):
    net = tmp_path / "small.prototxt"
    net.write_text(NET)
    caffe_torch.set_random_seed(2)
    weights = tmp_path / "small.caffemodel"
    caffe_torch.Net(str(net), caffe_torch.TEST).save(str(weights))
    return net, weights


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_writes_onnx_torchscript_and_deploy(files, tmp_path, capsys):
    net, weights = files
    out = tmp_path / "m.onnx"
    rc = main([str(net), str(weights), "-o", str(out), "--torchscript", str(tmp_path / "m.pt"), "--output", "fc",
               "--dynamic-batch", "--deploy-prototxt", str(tmp_path / "deploy.prototxt")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "left out (no output needs them): loss (SoftmaxWithLoss)" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"] and [o.name for o in session.get_outputs()] == ["fc"]
    ref = caffe_torch.Net(str(net), str(weights), caffe_torch.TEST)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ref.blobs["data"].reshape(3, 3, 8, 8)
    ref.blobs["label"].reshape(3)
    ref.reshape()
    ref.blobs["data"].data[...] = x
    ref.forward()
    want = ref.blobs["fc"].data
    np.testing.assert_allclose(session.run(["fc"], {"data": x})[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    script = torch.jit.load(str(tmp_path / "m.pt"))
    np.testing.assert_allclose(script(torch.from_numpy(x))[0].numpy(), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    deploy = (tmp_path / "deploy.prototxt").read_text()
    assert "SoftmaxWithLoss" not in deploy and 'name: "fc"' in deploy


def test_a_loss_on_the_way_to_the_outputs_is_refused(files, tmp_path, capsys):
    net, weights = files
    assert main([str(net), str(weights), "-o", str(tmp_path / "m.onnx")]) == 1
    line = one_error_line(capsys)
    assert re.fullmatch(rf"caffe_torch\.export: {re.escape(str(net))}:10: layer 'loss' \(type SoftmaxWithLoss\) is "
                        r"not exported: a training loss .* --output", line), line
    assert not (tmp_path / "m.onnx").exists()


def test_python_layer_and_unknown_type_are_refused(files, tmp_path, capsys, monkeypatch):
    _, weights = files
    (tmp_path / "times_two.py").write_text(
        "import caffe_torch as caffe\n"
        "class TimesTwo(caffe.Layer):\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = 2 * bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = tmp_path / "py.prototxt"
    net.write_text(NET.replace('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
                               'top: "loss" }', 'layer { name: "mine" type: "Python" bottom: "fc" top: "p" '
                               'python_param { module: "times_two" layer: "TimesTwo" } }'))
    assert main([str(net), str(weights), "-o", str(tmp_path / "m.onnx")]) == 1
    line = one_error_line(capsys)
    assert f"{net}:10: layer 'mine' (type Python) is not exported: a Python layer runs the user's own" in line
    net.write_text(NET.replace('type: "SoftmaxWithLoss"', 'type: "FancyLoss"'))
    assert main([str(net), str(weights), "-o", str(tmp_path / "m.onnx")]) == 1
    line = one_error_line(capsys)
    assert f"{net}:10: layer 'loss' (type FancyLoss) is not exported: caffe_torch does not implement" in line


def test_data_layer_needs_an_input_shape(tmp_path, capsys):
    net = tmp_path / "data.prototxt"
    net.write_text(NET.replace('layer { name: "data" type: "Input" top: "data" top: "label"\n'
                               '  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }',
                               'layer { name: "data" type: "Data" top: "data" top: "label"\n'
                               '  data_param { source: "no_db" backend: LMDB batch_size: 2 } }'))
    assert main([str(net), "w.caffemodel", "-o", str(tmp_path / "m.onnx")]) == 1
    line = one_error_line(capsys)
    assert f"{net}:2: layer 'data' (type Data): its top 'data' becomes a graph input; give its shape with " \
           "--input data=N,C,H,W" in line
    for bad in ("data=2,3,x", "data", "data=0,3,8,8"):
        assert main([str(net), "w.caffemodel", "-o", "m.onnx", "--input", bad]) == 1
        assert f"--input {bad!r}: expected NAME=N,C,H,W" in one_error_line(capsys)
    assert main([str(net), "w.caffemodel", "-o", "m.onnx", "--input", "image=2,3,8,8"]) == 1
    assert "--input names ['image'], which no data layer" in one_error_line(capsys)


def test_data_layer_with_input_shape_exports(files, tmp_path):
    net, weights = files
    data_net = tmp_path / "data.prototxt"
    data_net.write_text(net.read_text().replace(
        'layer { name: "data" type: "Input" top: "data" top: "label"\n'
        '  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }',
        'layer { name: "data" type: "Data" top: "data" top: "label"\n'
        '  data_param { source: "no_db" backend: LMDB batch_size: 2 } }'))
    assert main([str(data_net), str(weights), "-o", str(tmp_path / "m.onnx"), "--input", "data=1,3,8,8",
                 "--output", "fc"]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 8, 8]


def test_list_types(capsys):
    assert main(["--list-types"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = {line.split()[0]: line.split()[1] for line in lines}
    assert set(kinds) == ours()
    assert kinds["Convolution"] == "exported" and kinds["Python"] == "refused" and kinds["Data"] == "graph"
