"""caffe.Net semantics: inputs, phase/stage/level filtering, in-place layers, fan-out diffs, loss weights,
shared params, lr_mult 0, force_backward, forward(start/end/kwargs), reshape, copy_from/save, outputs,
writing into .data (also through the GPU host-copy path, simulated on the CPU), and the .tensor path."""

import numpy as np
import pytest
import torch

import caffe_torch as caffe
from caffe_torch.blob import Blob
from caffe_torch.layers.base import _REGISTRY, Layer


def net_from(tmp_path, text, phase=caffe.TRAIN, name="net.prototxt", **kw):
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), phase, dtype=torch.float64, **kw)


IP = 'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" }} ' \
     'bias_filler {{ type: "gaussian" }} }}'


def ip(name, bottom, top, n, extra=""):
    return f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra} ' \
           f'{IP.format(n=n)} }}\n'


# ----------------------------------------------------------------------------- inputs

def test_legacy_input_dim_input_shape_and_input_layer(tmp_path):
    a = net_from(tmp_path, 'input: "data" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5 '
                 'input: "label" input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1\n', name="a.prototxt")
    assert a.inputs == ["data", "label"]
    assert a.blobs["data"].shape == (2, 3, 4, 5) and a.blobs["label"].shape == (2, 1, 1, 1)
    assert a._layer_names == ["input"]
    b = net_from(tmp_path, 'input: "data" input_shape { dim: 7 dim: 3 }\n', name="b.prototxt")
    assert b.blobs["data"].shape == (7, 3)
    c = net_from(tmp_path, 'layer { name: "in" type: "Input" top: "x" top: "y" '
                 'input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n', name="c.prototxt")
    assert c.inputs == ["x", "y"] and c.blobs["y"].shape == (2,)
    with pytest.raises(caffe.PrototxtError, match="input_dim"):
        net_from(tmp_path, 'input: "data" input_dim: 2 input_dim: 3\n', name="d.prototxt")


# ----------------------------------------------------------------------------- filtering

FILTER_NET = '''
input: "data" input_shape { dim: 2 dim: 3 }
layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "data" top: "b" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "data" top: "c" exclude { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "data" top: "d" include { stage: "deploy" } }
layer { name: "not_staged" type: "ReLU" bottom: "data" top: "e" exclude { stage: "deploy" } }
layer { name: "leveled" type: "ReLU" bottom: "data" top: "f" include { min_level: 1 } }
layer { name: "either" type: "ReLU" bottom: "data" top: "g" include { phase: TEST } include { stage: "x" } }
'''


def test_include_exclude_phase_stage_level(tmp_path):
    def names(**kw):
        phase = kw.pop("phase")
        # [input, data's Split (Caffe's InsertSplits: data has several readers), the kept layers]
        names = net_from(tmp_path, FILTER_NET, phase, **kw)._layer_names
        assert names[1] == "data_input_0_split"
        return names[2:]

    assert names(phase=caffe.TRAIN) == ["train_only", "not_test", "not_staged"]
    assert names(phase=caffe.TEST) == ["test_only", "not_staged", "either"]
    assert names(phase=caffe.TRAIN, stages=["deploy"]) == ["train_only", "not_test", "staged"]
    assert names(phase=caffe.TRAIN, level=2, stages=["x"]) == ["train_only", "not_test", "not_staged",
                                                               "leveled", "either"]
    with pytest.raises(caffe.PrototxtError, match="either include or exclude"):
        net_from(tmp_path, 'input: "d" input_shape { dim: 1 }\nlayer { name: "r" type: "ReLU" bottom: "d" '
                 'top: "r" include { phase: TRAIN } exclude { phase: TEST } }', name="bad.prototxt")


# ----------------------------------------------------------------------------- in place, fan-out, loss

def test_in_place_and_fan_out_diffs_and_loss_weight(tmp_path):
    text = ('input: "data" input_shape { dim: 3 dim: 4 }\nforce_backward: true\n'
            + ip("ip1", "data", "ip1", 2)
            + 'layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }\n'
            + ip("ip2", "data", "ip2", 5, 'loss_weight: 0.5')
            + 'layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip1" top: "s" loss_weight: 2 }\n')
    net = net_from(tmp_path, text)
    x = np.random.default_rng(0).normal(size=(3, 4))
    net.blobs["data"].data[...] = x
    out = net.forward()
    w1, b1 = (p.data for p in net.params["ip1"])
    w2, b2 = (p.data for p in net.params["ip2"])
    pre = x @ w1.T + b1
    relu = np.maximum(pre, 0)
    np.testing.assert_allclose(net.blobs["ip1"].data, relu)                    # in place: overwritten
    assert sorted(out) == ["ip2", "s"] == net.outputs
    loss = 0.5 * (x @ w2.T + b2).sum() + 2 * (2 * relu).sum()
    np.testing.assert_allclose(net.loss_value(), loss)
    diffs = net.backward()
    # fan-out: data's diff is the sum of what ip1 and ip2 send back
    g_pre = 4.0 * (pre > 0)                      # d loss / d pre-ReLU: 2 (weight) * 2 (two Eltwise bottoms)
    ref = g_pre @ w1 + 0.5 * np.ones((3, 5)) @ w2
    np.testing.assert_allclose(diffs["data"], ref)
    np.testing.assert_allclose(net.blobs["data"].diff, ref)
    np.testing.assert_allclose(net.blobs["ip1"].diff, g_pre)                  # in-place blob: bottom's diff
    np.testing.assert_allclose(net.blobs["ip2"].diff, np.full((3, 5), 0.5))    # a loss top's diff = weight
    np.testing.assert_allclose(net.params["ip1"][0].diff, g_pre.T @ x)
    np.testing.assert_allclose(net.params["ip2"][1].diff, np.full(5, 0.5 * 3))


LOSS_NET = '''
input: "data" input_shape { dim: 4 dim: 3 }
input: "label" input_shape { dim: 4 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }
'''


def test_default_loss_weights_and_no_input_diff_without_force_backward(tmp_path):
    net = net_from(tmp_path, LOSS_NET)
    assert net._loss_weights == {"loss": 1.0}
    rng = np.random.default_rng(1)
    out = net.forward(data=rng.normal(size=(4, 3)), label=np.array([0, 1, 4, 2]))
    assert set(out) == {"acc", "loss"}
    np.testing.assert_allclose(net.loss_value(), out["loss"])
    diffs = net.backward()
    assert not diffs["data"].any()                          # inputs get no diff without force_backward
    assert net.params["fc"][0].diff.any()
    np.testing.assert_allclose(net.blobs["loss"].diff, 1.0)


def test_forward_kwargs_checks_and_tensor_inputs(tmp_path):
    net = net_from(tmp_path, LOSS_NET)
    with pytest.raises(ValueError, match="do not match"):
        net.forward(data=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="batch sized"):
        net.forward(data=np.zeros((3, 3)), label=np.zeros(3))
    t = torch.randn(4, 3, dtype=torch.float64)
    net.forward(data=t, label=torch.tensor([0.0, 1, 2, 3], dtype=torch.float64))
    assert net.blobs["data"].tensor is t                    # zero copy


def test_custom_loss_type_gets_default_weight(tmp_path):
    @caffe.register("TestOnlyL1Loss")
    class L1Loss(caffe.layers.base.Layer):     # not flagged is_loss: the type name decides, as in Caffe
        num_bottoms = (1, 1)

        def top_shapes(self, bottom_shapes):
            return [()]

        def forward(self, x):
            return x.abs().sum()

    try:
        net = net_from(tmp_path, 'input: "d" input_shape { dim: 2 }\n'
                       'layer { name: "l" type: "TestOnlyL1Loss" '
                       'bottom: "d" top: "l" }\n')
        assert net._loss_weights == {"l": 1.0}
    finally:
        from caffe_torch.layers import base
        base._REGISTRY.pop("TestOnlyL1Loss")


# ----------------------------------------------------------------------------- params

def test_shared_params_sum_grads_and_lr_mult_zero(tmp_path):
    text = ('input: "data" input_shape { dim: 3 dim: 4 }\n'
            + ip("a", "data", "a", 2, 'param { name: "w" } param { lr_mult: 0 } loss_weight: 1')
            + ip("b", "data", "b", 2, 'param { name: "w" } param { name: "bb" } loss_weight: 3'))
    net = net_from(tmp_path, text)
    la, lb = net.layer_dict["a"].module, net.layer_dict["b"].module
    assert la.blobs[0] is lb.blobs[0]                       # one Parameter
    assert len(net.learnable_params()) == 3                 # w, a's bias, b's bias
    lrs = {name: lr for _, lr, _, name in net.learnable_params()}
    assert lrs == {"a[0]": 1.0, "a[1]": 0.0, "b[1]": 1.0}
    x = np.random.default_rng(2).normal(size=(3, 4))
    net.forward(data=x)
    net.backward()
    np.testing.assert_allclose(net.params["a"][0].diff, (1 + 3) * np.ones((2, 3)) @ x)      # summed
    np.testing.assert_allclose(net.params["b"][0].diff, net.params["a"][0].diff)
    assert not net.params["a"][1].diff.any()                # lr_mult 0: no diff
    np.testing.assert_allclose(net.params["b"][1].diff, np.full(2, 3 * 3.0))
    net.params["a"][0].data[...] = 7
    assert (net.params["b"][0].data == 7).all()
    with pytest.raises(caffe.LayerError, match="shared param 'w'"):
        net_from(tmp_path, 'input: "data" input_shape { dim: 3 dim: 4 }\n'
                 + ip("a", "data", "a", 2, 'param { name: "w" }')
                 + ip("b", "data", "b", 3, 'param { name: "w" }'),
                 name="bad.prototxt")
    with pytest.raises(caffe.LayerError, match="mismatched lr_mult"):
        net_from(tmp_path, 'input: "data" input_shape { dim: 3 dim: 4 }\n'
                 + ip("a", "data", "a", 2, 'param { name: "w" lr_mult: 1 }')
                 + ip("b", "data", "b", 2, 'param { name: "w" lr_mult: 2 }'), name="bad2.prototxt")


BN_NET = '''
input: "data" input_shape { dim: 4 dim: 3 dim: 2 dim: 2 }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }
layer { name: "sc" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }
'''


def test_batchnorm_statistics_are_never_updated_by_a_solver(tmp_path):
    net = net_from(tmp_path, BN_NET)
    lrs = [(name, lr) for _, lr, _, name in net.learnable_params()]
    assert lrs == [("bn[0]", 0.0), ("bn[1]", 0.0), ("bn[2]", 0.0), ("sc[0]", 1.0), ("sc[1]", 1.0)]
    with pytest.raises(caffe.LayerError, match="lr_mult must be 0"):
        net_from(tmp_path, BN_NET.replace('top: "data" }', 'top: "data" param { lr_mult: 1 } }', 1),
                 name="bad.prototxt")


def test_in_place_on_an_input_and_force_backward(tmp_path):
    net = net_from(tmp_path, 'force_backward: true\n' + BN_NET)
    x = np.random.default_rng(3).normal(size=(4, 3, 2, 2))
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["data"].diff[...] = 0      # harmless: diffs are recomputed by backward
    net.backward(data=np.ones((4, 3, 2, 2)))
    assert net.blobs["data"].diff.shape == (4, 3, 2, 2)


# ----------------------------------------------------------------------------- forward range, reshape

def test_forward_start_end(tmp_path):
    text = ('input: "data" input_shape { dim: 2 dim: 3 }\n' + ip("a", "data", "a", 4)
            + 'layer { name: "r" type: "ReLU" bottom: "a" top: "r" }\n' + ip("b", "r", "b", 2))
    net = net_from(tmp_path, text)
    net.blobs["data"].data[...] = 1
    out = net.forward(end="r")
    assert list(out) == ["r"]
    assert not net.blobs["b"].data.any()                    # b not run yet
    net.blobs["r"].data[...] = 1.0
    out = net.forward(start="b")
    w, b = (p.data for p in net.params["b"])
    np.testing.assert_allclose(out["b"], np.ones((2, 4)) @ w.T + b)
    out = net.forward(blobs=["a"])
    assert set(out) == {"a", "b"}
    with pytest.raises(ValueError, match="no layer named"):
        net.forward(start="nope")


def test_blob_reshape_and_net_reshape(tmp_path):
    text = ('input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 '
            'kernel_size: 3 stride: 2 } }\n'
            'layer { name: "p" type: "Pooling" bottom: "c" top: "p" '
            'pooling_param { kernel_size: 2 stride: 2 } }\n')
    net = net_from(tmp_path, text)
    assert net.blobs["p"].shape == (2, 2, 2, 2)
    net.blobs["data"].reshape(5, 3, 12, 10)
    net.reshape()
    assert net.blobs["data"].shape == (5, 3, 12, 10)          # Input layers keep the user's shape
    assert net.blobs["c"].shape == (5, 2, 5, 4) and net.blobs["p"].shape == (5, 2, 3, 2)
    net.blobs["data"].data[...] = 1
    assert net.forward()["p"].shape == (5, 2, 3, 2)
    net.blobs["data"].reshape(5, 4, 12, 10)
    with pytest.raises(caffe.LayerError, match="incompatible"):
        net.reshape()


# ----------------------------------------------------------------------------- shapes changing at run time
# Caffe's Layer::Forward runs the layer's Reshape before its Forward_cpu at every forward: when a Filter drops items
# or a script reshapes an input, each later layer re-derives its tops' shapes there or aborts on its CHECKs

SELECT_NET = ('layer { name: "in" type: "Input" top: "x" top: "sel" top: "y" input_param { shape { dim: 3 dim: 2 } '
              'shape { dim: 3 } shape { dim: 3 dim: 2 } } }\n'
              'layer { name: "filt" type: "Filter" bottom: "x" bottom: "sel" top: "fx" }\n'
              'layer { name: "tanh" type: "TanH" bottom: "fx" top: "t" }\n'
              'layer { name: "cat" type: "Concat" bottom: "t" bottom: "y" top: "c" concat_param { axis: AXIS } }\n')


def test_layers_below_a_filter_follow_its_batch(tmp_path):
    net = net_from(tmp_path, SELECT_NET.replace("AXIS", "0"), caffe.TEST)
    x = np.arange(6.0).reshape(3, 2)
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = -x
    net.blobs["sel"].data[...] = [1, 0, 1]
    np.testing.assert_allclose(net.forward()["c"], np.concatenate([np.tanh(x[[0, 2]]), -x]))


def test_a_filter_batch_a_later_layer_refuses_is_its_error(tmp_path):
    """ConcatLayer::Reshape CHECKs that the bottoms agree off the concat axis: Caffe aborts at the Concat once the
    Filter drops an item (before, torch's own shape error came out of torch.cat)."""
    net = net_from(tmp_path, SELECT_NET.replace("AXIS", "1"), caffe.TEST)
    net.blobs["sel"].data[...] = [1, 1, 1]
    assert net.forward()["c"].shape == (3, 4)
    net.blobs["sel"].data[...] = [1, 0, 1]
    with pytest.raises(caffe.LayerError, match=r"layer 'cat' \(type Concat\): bottoms must agree") as exc:
        net.forward()
    assert "\n" not in str(exc.value)
    net.blobs["sel"].data[...] = [1, 1, 1]           # the full batch again: checked anew, accepted
    assert net.forward()["c"].shape == (3, 4)


def test_an_input_reshaped_without_net_reshape_is_checked_by_the_forward(tmp_path):
    net = net_from(tmp_path, 'input: "x" input_shape { dim: 2 dim: 6 }\n'
                   'layer { name: "rs" type: "Reshape" bottom: "x" top: "r" reshape_param { shape { dim: 0 dim: 3 '
                   'dim: 2 } } }\n' + ip("fc", "r", "y", 2), caffe.TEST)
    net.blobs["x"].reshape(5, 6)                     # another batch: every layer follows
    assert net.forward()["y"].shape == (5, 2)
    net.blobs["x"].reshape(5, 4)                     # ReshapeLayer::Reshape: CHECK_EQ(count)
    with pytest.raises(caffe.LayerError, match="layer 'rs' .*changes the count"):
        net.forward()
    net.blobs["x"].tensor = torch.zeros(2, 6, dtype=torch.float64)      # the .tensor path too
    assert net.forward()["y"].shape == (2, 2)
    net = net_from(tmp_path, 'input: "x" input_shape { dim: 2 dim: 6 }\n' + ip("fc", "x", "y", 2), caffe.TEST)
    net.blobs["x"].tensor = torch.zeros(2, 4, dtype=torch.float64)      # InnerProductLayer: CHECK_EQ(K_, new_K)
    with pytest.raises(caffe.LayerError, match="layer 'fc' .*incompatible"):
        net.forward()


def test_unchanged_shapes_are_not_checked_again(tmp_path, monkeypatch):
    """The training loop's forwards (same shapes every step) check no shapes; below a Filter only a new batch is."""
    calls = []
    for cls in {Layer, *(c for c in _REGISTRY.values() if "top_shapes" in vars(c))}:
        real = vars(cls)["top_shapes"]
        monkeypatch.setattr(cls, "top_shapes", lambda self, shapes, real=real: calls.append(self.name) or
                            real(self, shapes))
    net = net_from(tmp_path, LOSS_NET)
    calls.clear()
    for _ in range(3):
        net.blobs["data"].tensor = torch.ones(4, 3, dtype=torch.float64)
        net.forward()
    assert calls == []
    net = net_from(tmp_path, SELECT_NET.replace("AXIS", "0"), caffe.TEST)
    calls.clear()
    for sel in ([1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 1, 1]):
        net.blobs["sel"].data[...] = sel
        net.forward()
    # the Filter checks its bottoms itself every time; TanH and Concat only for a batch they were not checked at
    assert calls == ["filt", "filt", "filt", "tanh", "cat", "filt"]


# ----------------------------------------------------------------------------- weights files

def test_copy_from_and_save_round_trip(tmp_path):
    a = net_from(tmp_path, LOSS_NET)
    path = tmp_path / "w.caffemodel"
    a.save(str(path))
    b = caffe.Net(str(tmp_path / "net.prototxt"), str(path), caffe.TEST, dtype=torch.float64)
    np.testing.assert_allclose(b.params["fc"][0].data, a.params["fc"][0].data.astype(np.float32))
    c = net_from(tmp_path, LOSS_NET.replace("num_output: 5", "num_output: 6"), name="c.prototxt")
    with pytest.raises(caffe.WeightsError, match="layer 'fc'.*shape mismatch"):
        c.copy_from(str(path))
    d = net_from(tmp_path, LOSS_NET.replace("num_output: 5", "num_output: 5 bias_term: false"),
                 name="d.prototxt")
    with pytest.raises(caffe.WeightsError, match="number of blobs for layer 'fc'"):
        d.copy_from(str(path))


# ----------------------------------------------------------------------------- errors

def test_top_produced_by_two_layers_is_an_error(tmp_path):
    with pytest.raises(caffe.LayerError, match="multiple sources") as exc:
        net_from(tmp_path, 'input: "d" input_shape { dim: 2 }\n'
                 'layer { name: "r1" type: "ReLU" bottom: "d" top: "x" }\n'
                 'layer { name: "r2" type: "ReLU" bottom: "d" top: "x" }\n')
    assert "net.prototxt:3" in str(exc.value) and "r2" in str(exc.value)


# ----------------------------------------------------------------------------- .data and .tensor

def test_writing_data_reaches_next_forward_and_tensor_path(tmp_path):
    net = net_from(tmp_path, LOSS_NET)
    data = net.blobs["data"].data
    data[...] = 1.0
    net.blobs["label"].data[...] = 0
    net.forward()
    first = net.blobs["fc"].data.copy()
    data[...] = 2.0                                    # the same array, written again
    net.forward()
    np.testing.assert_allclose(net.blobs["fc"].data - net.params["fc"][1].data,
                               2 * (first - net.params["fc"][1].data))
    t = torch.full((4, 3), 3.0, dtype=torch.float64)
    net.blobs["data"].tensor = t
    assert net.blobs["data"].tensor.data_ptr() == t.data_ptr()
    net.forward()
    np.testing.assert_allclose(net.blobs["fc"].data - net.params["fc"][1].data,
                               3 * (first - net.params["fc"][1].data))


@pytest.fixture
def host_copies(monkeypatch):
    """Run the GPU path of blob.py on the CPU: .data/.diff become host copies uploaded at the next op."""
    monkeypatch.setattr(Blob, "zero_copy_devices", ())


def test_host_copy_path(tmp_path, host_copies):
    # without the Accuracy layer: with force_backward Caffe runs its backward, which is NOT_IMPLEMENTED
    net = net_from(tmp_path, "force_backward: true\n" + LOSS_NET.split('layer { name: "acc"')[0])
    d = net.blobs["data"].data
    assert not np.shares_memory(d, net.blobs["data"].tensor.numpy())
    d[...] = 1.0
    assert np.shares_memory(net.blobs["data"].data, d)  # the same host memory (a new view of it)
    net.blobs["label"].data[...] = [0, 1, 2, 3]
    net.forward()
    assert (net.blobs["data"].tensor == 1).all()      # uploaded
    w = net.params["fc"][0].data
    np.testing.assert_allclose(net.blobs["fc"].data, np.ones((4, 3)) @ w.T + net.params["fc"][1].data)
    net.backward()
    g = net.blobs["data"].diff
    assert g.any()
    # writing into the input of a force_backward net (a leaf that requires grad) uploads too
    net.blobs["data"].data[...] = 2.0
    net.forward()
    assert (net.blobs["data"].tensor == 2).all()
    # a host copy handed out before `.tensor = t` must not be uploaded over t
    stale = net.blobs["data"].data
    stale[...] = 9.0
    t = torch.full((4, 3), 5.0, dtype=torch.float64)
    net.blobs["data"].tensor = t
    net.forward()
    assert (t == 5).all() and (net.blobs["data"].tensor == 5).all()
    # nor after a reshape
    stale = net.blobs["data"].data
    net.blobs["data"].reshape(2, 3)
    net.blobs["label"].reshape(2)
    net.reshape()
    net.blobs["label"].data[...] = 0
    net.forward()
    assert net.blobs["fc"].shape == (2, 5)
    # param writes through host copies reach the next forward as well
    net.params["fc"][0].data[...] = 0
    net.params["fc"][1].data[...] = 0
    net.forward()
    np.testing.assert_allclose(net.blobs["fc"].data, 0)
    assert stale.shape == (4, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_data_write_reaches_forward(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(LOSS_NET)
    net = caffe.Net(str(path), caffe.TRAIN, device="cuda")
    net.blobs["data"].data[...] = 1.0
    net.blobs["label"].data[...] = 0
    net.forward()
    assert (net.blobs["data"].tensor == 1).all()
