"""pycaffe's Python surface on caffe_torch: NetSpec (caffe.layers / params / to_proto), Python layers
(caffe.Layer), the Net additions (ids and names, blob_loss_weights, Caffe's backward with start/end,
forward_all, forward_backward_all, clear_param_diffs, HDF5 weights, layers[i].reshape), solver callbacks,
caffe.draw, the error for an unimplemented layer type, and `python -m caffe_torch script.py`.

References are written here independently: NumPy for the maths, hand-written prototxt for NetSpec."""

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fp import assert_within, matmul_bound
from google.protobuf import text_format

import caffe_torch as caffe
from caffe_torch import draw
from caffe_torch import layers as L
from caffe_torch import params as P
from caffe_torch.blob import Blob
from caffe_torch.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------- NetSpec
def test_netspec_names_in_place_ntop_and_params_by_name():
    n = caffe.NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[2, 3]), dict(dim=[2])], ntop=2)
    n.ip = L.InnerProduct(n.data, num_output=4, weight_filler=dict(type="xavier"),
                          param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)], loss_weight=0)
    n.relu = L.ReLU(n.ip, in_place=True)
    n.pool = L.Pooling(L.Reshape(n.relu, shape=dict(dim=[2, 1, 2, 2])), pool=P.Pooling.AVE, kernel_size=2)
    n.loss = L.SoftmaxWithLoss(L.Flatten(n.pool), n.label)
    n.silence = L.Silence(n.label, ntop=0)
    expected = """
    layer { name: "data" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" loss_weight: 0
            param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
            inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
    layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
    layer { name: "Reshape1" type: "Reshape" bottom: "ip" top: "Reshape1"
            reshape_param { shape { dim: 2 dim: 1 dim: 2 dim: 2 } } }
    layer { name: "pool" type: "Pooling" bottom: "Reshape1" top: "pool" pooling_param { pool: AVE kernel_size: 2 } }
    layer { name: "Flatten1" type: "Flatten" bottom: "pool" top: "Flatten1" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "Flatten1" bottom: "label" top: "loss" }
    layer { name: "silence" type: "Silence" bottom: "label" }
    """
    proto = n.to_proto()
    assert proto == text_format.Parse(expected, caffe_pb2.NetParameter())
    # the printed text parses back to the same message, and builds
    assert text_format.Parse(str(proto), caffe_pb2.NetParameter()) == proto
    net = caffe.Net(None, caffe.TRAIN, net_param=proto)
    # with the Split Caffe inserts for label (read by loss and silence)
    assert list(net._layer_names) == ["data", "label_data_1_split", "ip", "relu", "Reshape1", "pool", "Flatten1",
                                      "loss", "silence"]


def test_anonymous_tops_count_per_type_in_visit_order():
    data = L.Input(shape=dict(dim=[1, 2]))
    a = L.InnerProduct(data, num_output=2)
    b = L.InnerProduct(a, num_output=2)
    proto = L.Eltwise(a, b).to_proto()        # Top.to_proto: every layer it needs
    assert [(lp.name, list(lp.bottom), list(lp.top)) for lp in proto.layer] == [
        ("Input1", [], ["Input1"]), ("InnerProduct1", ["Input1"], ["InnerProduct1"]),
        ("InnerProduct2", ["InnerProduct1"], ["InnerProduct2"]),
        ("Eltwise1", ["InnerProduct1", "InnerProduct2"], ["Eltwise1"])]
    assert caffe.to_proto(b) == caffe.to_proto(b)       # a fresh naming per call


def test_netspec_errors_and_constants():
    tops = L.Input(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(tops, ntop=0)
    L.Silence(*tops, ntop=0)
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Eltwise.PROD == caffe_pb2.EltwiseParameter.PROD
    with pytest.raises(AttributeError):
        L.InnerProduct(L.Input(shape=dict(dim=[1])), no_such_field=1).to_proto()
    n = caffe.NetSpec()
    with pytest.raises(AttributeError):
        n.missing        # noqa: B018  (reading an unassigned name)


def test_layers_package_still_holds_the_layer_implementations():
    # caffe_torch.layers is both the package of layer classes and pycaffe's caffe.layers
    assert issubclass(caffe.layers.base.Layer, torch.nn.Module)
    assert "Python" in caffe.layer_type_list() and caffe.__version__ == "1.0.0"


# ------------------------------------------------------------------------------------------- Python layers
PY_LAYERS = '''
import numpy as np
import caffe_torch as caffe


class Cube(caffe.Layer):
    """y = k * x**3 with k from param_str; one learnable blob b added: y = k*x**3 + b."""

    def setup(self, bottom, top):
        self.k = float(self.param_str)
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0.5
        self.calls = []

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls.append("forward")
        top[0].data[...] = self.k * bottom[0].data ** 3 + self.blobs[0].data[0]

    def backward(self, top, propagate_down, bottom):
        self.calls.append(("backward", list(propagate_down)))
        self.blobs[0].diff[0] += top[0].diff.sum()
        if propagate_down[0]:
            bottom[0].diff[...] = 3 * self.k * bottom[0].data ** 2 * top[0].diff


class Phase(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = self.phase


class Fails(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("my own setup error")
'''

PY_NET = '''name: "pynet" force_backward: true
input: "x" input_shape { dim: 2 dim: 3 }
layer { type: "Python" name: "cube" bottom: "x" top: "y"
        python_param { module: "pyl_mod" layer: "Cube" param_str: "2.0" } }
layer { type: "Python" name: "phase" top: "phase" python_param { module: "pyl_mod" layer: "Phase" } }
'''


@pytest.fixture
def pymod(tmp_path, monkeypatch):
    (tmp_path / "pyl_mod.py").write_text(PY_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("pyl_mod", None)
    yield tmp_path
    sys.modules.pop("pyl_mod", None)


def _net(tmp_path, text, phase=caffe.TRAIN, **kw):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase, **kw)


@pytest.mark.parametrize("host_copies", [False, True], ids=["zero-copy", "host-copy"])
def test_python_layer_forward_backward_params_phase(pymod, host_copies, monkeypatch):
    if host_copies:      # the GPU path (blobs and params as host copies written back), run on the CPU
        monkeypatch.setattr(Blob, "zero_copy_devices", ())
    net = _net(pymod, PY_NET, dtype=torch.float64)
    x = np.random.default_rng(0).normal(size=(2, 3))
    out = net.forward(x=x)
    np.testing.assert_allclose(out["y"], 2 * x ** 3 + 0.5)
    assert out["phase"] == caffe.TRAIN
    dy = np.random.default_rng(1).normal(size=(2, 3))
    net.blobs["y"].diff[...] = dy                 # Caffe: an output's diff is what flows back
    diffs = net.backward()
    np.testing.assert_allclose(diffs["x"], 6 * x ** 2 * dy)
    layer = net.layer_dict["cube"]
    assert layer.type == "Python" and layer.calls[-1] == ("backward", [True])
    np.testing.assert_allclose(layer.blobs[0].diff, [dy.sum()])
    np.testing.assert_allclose(net.params["cube"][0].diff, [dy.sum()])
    assert _net(pymod, PY_NET, caffe.TEST).forward()["phase"] == caffe.TEST


def test_python_layer_gradient_matches_finite_differences(pymod):
    net = _net(pymod, PY_NET, dtype=torch.float64)
    cube = net.modules[1]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cube(t), (x,))


def test_python_layer_errors(pymod):
    with pytest.raises(RuntimeError, match="my own setup error") as info:
        _net(pymod, 'input: "x" input_shape { dim: 1 }\nlayer { type: "Python" name: "bad" bottom: "x" '
             'top: "y" python_param { module: "pyl_mod" layer: "Fails" } }\n')
    assert any("Python layer 'bad'" in note for note in info.value.__notes__)
    with pytest.raises(caffe.LayerError, match=r"net.prototxt:2.*'nope'"):
        _net(pymod, 'input: "x" input_shape { dim: 1 }\nlayer { type: "Python" name: "bad" bottom: "x" '
             'top: "y" python_param { module: "pyl_mod" layer: "nope" } }\n')


def test_python_layer_params_are_saved_and_trained(pymod):
    net = _net(pymod, PY_NET)
    path = pymod / "w.caffemodel"
    net.params["cube"][0].data[...] = 3.0
    net.save(str(path))
    net2 = _net(pymod, PY_NET, weights=str(path))
    assert net2.layers[1].blobs[0].data[0] == 3.0


# ------------------------------------------------------------------------------------------- unimplemented types
def test_unimplemented_type_names_type_layer_line_and_engine(tmp_path):
    with pytest.raises(caffe.PrototxtError) as info:
        _net(tmp_path, 'input: "x" input_shape { dim: 1 }\n\nlayer { name: "w" type: "WindowData" '
             'top: "y" }\n')
    msg = str(info.value)
    assert "net.prototxt:3" in msg and "'w'" in msg and "'WindowData'" in msg and "--engine caffe" in msg


# ------------------------------------------------------------------------------------------- Net surface
NET = '''name: "t" force_backward: true
input: "data" input_shape { dim: 4 dim: 3 }
input: "label" input_shape { dim: 4 }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip" top: "ip2"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" loss_weight: 2 }
'''


def test_names_ids_and_loss_weights(tmp_path):
    net = _net(tmp_path, NET)
    assert net._blob_names == ["data", "label", "ip", "ip2", "loss"]
    assert net._inputs == [0, 1] and net._outputs == [4]
    assert net._bottom_ids(4) == [3, 1] and net._top_ids(2) == [2] and net._bottom_ids(2) == [2]
    assert net.blob_loss_weights == {"data": 0, "label": 0, "ip": 0, "ip2": 0, "loss": 2.0}
    assert net._blob_loss_weights == [0, 0, 0, 0, 2.0]
    assert [b.shape for b in net._blobs] == [(4, 3), (4,), (4, 5), (4, 2), ()]
    assert list(net.layer_dict) == list(net._layer_names)
    assert [layer.type for layer in net.layers] == ["Input", "InnerProduct", "ReLU", "InnerProduct",
                                                   "SoftmaxWithLoss"]


def _numpy_net(net, x):
    w1, b1 = (p.data.astype(np.float64) for p in net.params["ip"])
    w2, b2 = (p.data.astype(np.float64) for p in net.params["ip2"])
    h = np.maximum(x @ w1.T + b1, 0)
    return h, w1, w2, h @ w2.T + b2


@pytest.mark.parametrize("host_copies", [False, True], ids=["zero-copy", "host-copy"])
def test_backward_with_start_and_end_is_caffes_layer_range(tmp_path, host_copies, monkeypatch):
    if host_copies:
        monkeypatch.setattr(Blob, "zero_copy_devices", ())
    net = _net(tmp_path, NET, dtype=torch.float64)
    x = np.random.default_rng(0).normal(size=(4, 3))
    net.forward(data=x, label=np.array([0, 1, 1, 0]))
    h, w1, w2, _ = _numpy_net(net, x)
    net.clear_param_diffs()
    g = np.random.default_rng(1).normal(size=(4, 2))
    net.blobs["ip2"].diff[...] = g
    out = net.backward(start="ip2", end="ip2")          # only ip2: dh = g W2, dW2 = g^T h
    np.testing.assert_allclose(out["ip"], g @ w2)
    np.testing.assert_allclose(net.params["ip2"][0].diff, g.T @ h)
    assert not net.params["ip"][0].diff.any()           # ip did not run backward
    net.backward(start="relu", end="ip")                # continues from ip's diff, through the in-place ReLU
    np.testing.assert_allclose(net.params["ip"][0].diff, ((g @ w2) * (h > 0)).T @ x)
    # Caffe reads a layer's bottoms when its backward runs: data written into a blob after the forward counts
    h_new = np.random.default_rng(6).normal(size=(4, 5))
    net.blobs["ip"].data[...] = h_new
    net.clear_param_diffs()
    net.backward(start="ip2", end="ip2")
    np.testing.assert_allclose(net.params["ip2"][0].diff, g.T @ h_new)


@pytest.mark.parametrize("host_copies", [False, True], ids=["zero-copy", "host-copy"])
def test_whole_backward_seeds_loss_weight_and_clear_param_diffs(tmp_path, host_copies, monkeypatch):
    if host_copies:
        monkeypatch.setattr(Blob, "zero_copy_devices", ())
    net = _net(tmp_path, NET, dtype=torch.float64)
    x = np.random.default_rng(2).normal(size=(4, 3))
    label = np.array([1, 0, 1, 1])
    net.forward(data=x, label=label)
    h, w1, w2, z = _numpy_net(net, x)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = 2 * (p - np.eye(2)[label]) / 4                  # loss weight 2, normalised by the batch
    diffs = net.backward()
    np.testing.assert_allclose(net.params["ip2"][0].diff, dz.T @ h)
    np.testing.assert_allclose(diffs["data"], ((dz @ w2) * (h > 0)) @ w1)
    diffs = net.backward()                               # again: Caffe accumulates the param diffs
    np.testing.assert_allclose(net.params["ip2"][0].diff, 2 * dz.T @ h)
    np.testing.assert_allclose(diffs["data"], ((dz @ w2) * (h > 0)) @ w1)
    # a fresh net, never run forward: Caffe's backward runs anyway, from the blobs' current contents
    net2 = _net(tmp_path, NET, dtype=torch.float64)
    for name in ("ip", "ip2"):
        for mine, theirs in zip(net2.params[name], net.params[name]):
            mine.data[...] = theirs.data
    net2.blobs["data"].data[...] = x
    net2.blobs["label"].data[...] = label
    net2.blobs["ip"].data[...] = h
    net2.blobs["ip2"].data[...] = z
    net2.backward()
    np.testing.assert_allclose(net2.params["ip2"][0].diff, dz.T @ h)
    net.clear_param_diffs()
    assert all(not p.diff.any() for ps in net.params.values() for p in ps)


def test_forward_all_and_forward_backward_all_pad_the_last_batch(tmp_path):
    text = NET.split("layer { name: \"loss\"")[0]
    net = _net(tmp_path, text.replace('input: "label" input_shape { dim: 4 }\n', ''), dtype=torch.float64)
    x = np.random.default_rng(3).normal(size=(10, 3))
    out = net.forward_all(data=x)
    _, w1, w2, z = _numpy_net(net, x)
    assert set(out) == {"ip2"} and out["ip2"].shape == (10, 2)
    np.testing.assert_allclose(out["ip2"], z)
    g = np.random.default_rng(4).normal(size=(10, 2))
    outs, diffs = net.forward_backward_all(data=x, ip2=g)
    np.testing.assert_allclose(outs["ip2"], z)
    h = np.maximum(x @ w1.T + net.params["ip"][1].data, 0)
    np.testing.assert_allclose(diffs["data"], ((g @ w2) * (h > 0)) @ w1)


def test_hdf5_weights_layout_and_round_trip(tmp_path):
    net = _net(tmp_path, NET)
    path = tmp_path / "w.h5"
    net.save_hdf5(str(path))
    with h5py.File(path) as f:
        assert sorted(f["data"]) == sorted(net._layer_names)
        assert sorted(f["data/ip"]) == ["0", "1"] and not len(f["data/relu"])
        np.testing.assert_array_equal(f["data/ip2/0"], net.params["ip2"][0].data)
    net2 = _net(tmp_path, NET)
    net2.load_hdf5(str(path))
    for name in net.params:
        for a, b in zip(net.params[name], net2.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    bad = _net(tmp_path, NET.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(ValueError, match="layer 'ip' blob 0 has shape"):
        bad.load_hdf5(str(path))
    no_bias = _net(tmp_path, NET.replace("num_output: 5", "num_output: 5 bias_term: false"))
    with pytest.raises(ValueError, match="layer 'ip' has 2 blobs in the file, the net's has 1"):
        no_bias.load_hdf5(str(path))


def test_set_input_arrays_needs_a_memory_data_first_layer(tmp_path):
    net = _net(tmp_path, NET)
    with pytest.raises(RuntimeError, match="first layer is a MemoryDataLayer"):
        net.set_input_arrays(np.zeros((4, 3, 1, 1), np.float32), np.zeros(4, np.float32))


def test_layer_reshape_sets_top_shapes(tmp_path):
    net = _net(tmp_path, NET)
    net.blobs["data"].reshape(7, 3)
    layer = net.layers[1]
    layer.reshape([net.blobs["data"]], [net.blobs["ip"]])
    assert net.blobs["ip"].shape == (7, 5)


# ------------------------------------------------------------------------------------------- solver
def test_solver_callbacks_run_in_caffes_order(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                              'max_iter: 3 snapshot_after_train: false')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.net.blobs["data"].data[...] = np.random.default_rng(5).normal(size=(4, 3))
    solver.net.blobs["label"].data[...] = [0, 1, 1, 0]
    events = []
    solver.add_callback(lambda: events.append(("start", solver.iter)),
                        lambda: events.append(("gradients", solver.iter,
                                               bool(solver.net.params["ip2"][0].diff.any()))))
    solver.step(2)
    assert events == [("start", 0), ("gradients", 0, True), ("start", 1), ("gradients", 1, True)]
    with pytest.raises(TypeError):
        solver.add_callback(1, 2)


# ------------------------------------------------------------------------------------------- draw
def test_draw_dot_text_and_missing_graphviz(tmp_path, monkeypatch):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=3, kernel_size=3, stride=2, param=[dict(lr_mult=0)])
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, include=dict(phase=caffe.TEST))
    proto = n.to_proto()
    text = draw.draw_net(proto, "LR", "dot").decode()
    assert r'"conv\n(Convolution)\nkernel size: 3\nstride: 2\npad: 0"' in text
    assert r'"pool\n(Pooling MAX)\nkernel size: 2\nstride: 1\npad: 0"' in text
    assert 'label=3' in text                                          # num_output on the conv's top edge
    assert "#90EE90" in text                                         # the in-place ReLU
    assert "Pooling" not in draw.draw_net(proto, "TB", "dot", phase=caffe.TRAIN).decode()
    assert draw.get_layer_lr_mult(proto.layer[1]) == (0.0, 1.0)
    assert "lr mult: 0.0, 1.0" in draw.get_layer_label(proto.layer[1], "TB", display_lrm=True)
    monkeypatch.setenv("PATH", str(tmp_path))                         # no `dot` anywhere
    target = tmp_path / "net.png"
    with pytest.raises(RuntimeError, match="Graphviz's `dot`"):
        draw.draw_net_to_file(proto, str(target))
    assert not target.exists()


# ------------------------------------------------------------------------------------------- python -m caffe_torch
def test_run_unmodified_pycaffe_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent('''
        import sys
        import caffe
        from caffe import layers as L, params as P
        from caffe.proto import caffe_pb2
        import caffe.draw
        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[2, 3]))
        n.out = L.InnerProduct(n.data, num_output=int(sys.argv[1]))
        msg = caffe_pb2.NetParameter()
        msg.CopyFrom(n.to_proto())
        with open("net.prototxt", "w") as f:
            f.write(str(msg))
        net = caffe.Net("net.prototxt", caffe.TEST)
        print(caffe.__name__, caffe.draw.__name__, net.blobs["out"].shape, sys.argv[1:], P.Pooling.MAX)
    '''))
    env_path = str(ROOT)
    res = subprocess.run([sys.executable, "-m", "caffe_torch", str(script), "4", "--flag"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
                         timeout=1800)      # a hang guard only
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "caffe_torch caffe_torch.draw (2, 4) ['4', '--flag'] 0"
    res = subprocess.run([sys.executable, "-m", "caffe_torch", str(tmp_path / "missing.py")], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": env_path}, timeout=1800)
    assert res.returncode == 2 and "no such script" in res.stderr


# ------------------------------------------------------------------------------------------- coord_map
def test_coord_map_through_conv_pool_deconv_and_crop():
    from caffe_torch.coord_map import coord_map_from_to, crop

    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 40, 40]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=5, stride=2, pad=1)   # out = (in + 2 - 5)/2 + 1
    n.relu = L.ReLU(n.conv)
    n.up = L.Deconvolution(n.relu, num_output=2, kernel_size=2, stride=2)          # out = 2 * in
    # conv maps x to (x + pad - (5 - 1)/2) / 2 = (x - 1)/2, the deconv y to 2y + (2 - 1)/2 - 0 = 2y + 0.5:
    # data x sits at up x - 0.5, and up y at data y + 0.5
    ax, a, b = coord_map_from_to(n.data, n.up)
    assert ax == 1 and a == pytest.approx(1.0) and b == pytest.approx(-1 + 0.5)
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert ax == 1 and a == pytest.approx(1.0) and b == pytest.approx(0.5)
    with pytest.raises(AssertionError, match="negative offset"):
        crop(n.up, n.data)
    n.ip = L.InnerProduct(n.up, num_output=3)
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(n.ip, n.data)
    n2 = caffe.NetSpec()
    n2.data = L.Input(shape=dict(dim=[1, 1, 40, 40]))
    n2.conv = L.Convolution(n2.data, num_output=2, kernel_size=3, pad=4)         # 46 x 46, shifted by 3
    n2.crop = crop(n2.conv, n2.data)
    layer = n2.to_proto().layer[-1]
    assert layer.type == "Crop" and layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [3]


@pytest.mark.parametrize("force_backward", [False, True])
def test_ranged_backward_gives_inputs_a_diff_only_with_force_backward(tmp_path, force_backward):
    """The layer-by-layer backward (start=/end=) follows Caffe's need_backward: a net input gets a diff only
    with force_backward (then d(x) = g @ W for y = x @ W.T + b, in NumPy); the layer's param diff either way
    (y is a loss, so the layer's backward runs; the diff written into y is what it reads)."""
    path = tmp_path / "ip.prototxt"
    path.write_text(("force_backward: true\n" if force_backward else "") +
                    'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                    'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" loss_weight: 1 '
                    'inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }\n')
    net = caffe.Net(str(path), caffe.TRAIN, dtype=torch.float64)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3))
    net.forward(x=x)
    g = rng.standard_normal((2, 4))
    net.blobs["y"].diff[...] = g
    out = net.backward(start="ip", end="ip")
    w = net.params["ip"][0].data
    assert_within(out["x"], g @ w if force_backward else np.zeros((2, 3)), matmul_bound(g, w))
    assert_within(net.params["ip"][0].diff, g.T @ x, matmul_bound(g.T, x))
