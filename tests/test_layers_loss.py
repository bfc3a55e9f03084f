"""SoftmaxWithLoss (normalization modes, ignore_label, FLT_MIN clamp, Caffe's gradient) and Accuracy (top_k,
ignore_label, Caffe 1.0's tie rule, per-class top) against loop-by-loop NumPy references."""

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe_torch.layers import BuildContext, layer_class
from caffe_torch.proto import caffe_pb2

FLT_MIN = float(np.finfo(np.float32).tiny)


def make(type_name, text, bottom_shapes, n_top=1):
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    lp.name, lp.type = "l", type_name
    lp.bottom.extend([f"b{i}" for i in range(len(bottom_shapes))])
    lp.top.extend([f"t{i}" for i in range(n_top)])
    ctx = BuildContext(torch.float64, torch.device("cpu"), caffe_pb2.TRAIN, torch.Generator().manual_seed(0))
    return layer_class(type_name)(lp, [tuple(s) for s in bottom_shapes], ctx)


def np_softmax_loss(x, label, axis, mode, ignore):
    """Caffe's SoftmaxWithLossLayer Forward_cpu / Backward_cpu: (loss, d loss / d x)."""
    shape = x.shape
    outer, classes, inner = int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))
    xs = x.reshape(outer, classes, inner)
    lab = label.reshape(outer, inner).astype(int)
    prob = np.exp(xs - xs.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    grad = prob.copy()
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            if ignore is not None and lab[i, j] == ignore:
                grad[i, :, j] = 0
                continue
            loss -= np.log(max(prob[i, lab[i, j], j], FLT_MIN))
            grad[i, lab[i, j], j] -= 1
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(1.0, norm)
    return loss / norm, (grad / norm).reshape(shape)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_loss_modes(mode, ignore):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 5, 2, 3)) * 3
    label = rng.integers(0, 5, size=(3, 1, 2, 3)).astype(np.float64)
    label[0, 0, 0, :2] = 2
    text = f"loss_param {{ normalization: {mode} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    layer = make("SoftmaxWithLoss", text, [x.shape, label.shape])
    xt = torch.tensor(x, requires_grad=True)
    loss = layer(xt, torch.tensor(label))
    ref_loss, ref_grad = np_softmax_loss(x, label, 1, mode, ignore)
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    (loss * 0.7).backward()               # a loss weight scales Caffe's gradient
    np.testing.assert_allclose(xt.grad.numpy(), 0.7 * ref_grad, rtol=1e-10, atol=1e-14)


def test_softmax_loss_axis_legacy_normalize_and_prob_top():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 3, 6))
    label = rng.integers(0, 6, size=(4, 3)).astype(np.float64)
    layer = make("SoftmaxWithLoss", "softmax_param { axis: 2 } loss_param { normalize: false }",
                 [x.shape, label.shape], n_top=2)
    loss, prob = layer(torch.tensor(x), torch.tensor(label))
    np.testing.assert_allclose(loss.item(), np_softmax_loss(x, label, 2, "BATCH_SIZE", None)[0], rtol=1e-12)
    e = np.exp(x - x.max(axis=2, keepdims=True))
    np.testing.assert_allclose(prob.numpy(), e / e.sum(axis=2, keepdims=True))
    default = make("SoftmaxWithLoss", "", [(4, 6), (4,)])
    x2, l2 = rng.normal(size=(4, 6)), rng.integers(0, 6, size=4).astype(np.float64)
    np.testing.assert_allclose(default(torch.tensor(x2), torch.tensor(l2)).item(),
                               np_softmax_loss(x2, l2, 1, "VALID", None)[0], rtol=1e-12)


def test_softmax_loss_flt_min_clamp_keeps_caffe_gradient():
    x = np.array([[0.0, 200.0]])
    label = np.array([0.0])
    layer = make("SoftmaxWithLoss", "", [x.shape, label.shape])
    xt = torch.tensor(x, requires_grad=True)
    loss = layer(xt, torch.tensor(label))
    np.testing.assert_allclose(loss.item(), -np.log(FLT_MIN), rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(xt.grad.numpy(), [[-1.0, 1.0]], atol=1e-12)


def test_softmax_loss_gradcheck_and_errors():
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([[0, 3], [1, 1], [2, 0]], dtype=torch.float64)
    layer = make("SoftmaxWithLoss", "loss_param { ignore_label: 1 }", [x.shape, label.shape])
    assert torch.autograd.gradcheck(lambda t: layer(t, label), (x,))
    with pytest.raises(Exception, match="out of range"):
        layer(x, torch.full((3, 2), 4.0, dtype=torch.float64))
    with pytest.raises(Exception, match="label"):
        make("SoftmaxWithLoss", "", [(3, 4), (2,)])


def np_accuracy(x, label, top_k, ignore, axis=1):
    """Caffe 1.0's AccuracyLayer: partial sort of (score, class) pairs with std::greater."""
    shape = x.shape
    outer, classes, inner = int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))
    xs = x.reshape(outer, classes, inner)
    lab = label.reshape(outer, inner).astype(int)
    correct, count = 0, 0
    per_n, per_c = np.zeros(classes), np.zeros(classes)
    for i in range(outer):
        for j in range(inner):
            if ignore is not None and lab[i, j] == ignore:
                continue
            per_n[lab[i, j]] += 1
            pairs = sorted(((xs[i, k, j], k) for k in range(classes)), reverse=True)
            if lab[i, j] in [k for _, k in pairs[:top_k]]:
                correct += 1
                per_c[lab[i, j]] += 1
            count += 1
    per_class = np.where(per_n == 0, 0.0, per_c / np.maximum(per_n, 1))
    return (correct / count if count else float("nan")), per_class


@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("ignore", [None, 1])
def test_accuracy_with_ties(top_k, ignore):
    rng = np.random.default_rng(top_k)
    x = rng.integers(0, 3, size=(40, 5, 2)).astype(np.float64)       # many ties
    label = rng.integers(0, 5, size=(40, 2)).astype(np.float64)
    text = f"accuracy_param {{ top_k: {top_k} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    layer = make("Accuracy", text, [x.shape, label.shape], n_top=2)
    acc, per_class = layer(torch.tensor(x), torch.tensor(label))
    ref, ref_per_class = np_accuracy(x, label, top_k, ignore)
    np.testing.assert_allclose(acc.item(), ref, rtol=1e-12)
    np.testing.assert_allclose(per_class.numpy(), ref_per_class, rtol=1e-12)


def test_accuracy_tie_goes_to_higher_class():
    layer = make("Accuracy", "", [(2, 3), (2,)])
    x = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    assert layer(x, torch.tensor([1.0, 1.0])).item() == 1.0       # class 1 outranks class 0 at equal score
    assert layer(x, torch.tensor([0.0, 0.0])).item() == 0.0


def test_accuracy_all_ignored_is_nan_and_top_k_check():
    layer = make("Accuracy", "accuracy_param { ignore_label: 0 }", [(2, 3), (2,)])
    assert np.isnan(layer(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2)).item())    # Caffe: 0 / 0
    with pytest.raises(Exception, match="top_k"):
        make("Accuracy", "accuracy_param { top_k: 4 }", [(2, 3), (2,)])


ACCURACY_NET = """name: "acc"
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 40 dim: 5 } shape { dim: 40 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }
layer { name: "top1" type: "Accuracy" bottom: "data" bottom: "label" top: "top1" }
layer { name: "top3" type: "Accuracy" bottom: "data" bottom: "label" top: "top3" accuracy_param { top_k: 3 } }
layer { name: "top2i" type: "Accuracy" bottom: "data" bottom: "label" top: "top2i"
  accuracy_param { top_k: 2 ignore_label: 1 } }
"""


def accuracy_net(tmp_path, text=ACCURACY_NET, training_loop=False):
    """The net as pycaffe builds it, or as a training loop's solver does (no per-layer records for a ranged
    backward, labels checked by the loader)."""
    import caffe_torch

    path = tmp_path / "acc.prototxt"
    path.write_text(text)
    net = caffe_torch.Net(str(path), caffe_torch.TRAIN, record_layer_inputs=not training_loop)
    for layer in net._layers:
        layer.check_labels = not training_loop
    return net


@pytest.mark.parametrize("training_loop", [False, True])
def test_accuracy_layers_of_one_net_share_their_work_and_follow_the_blobs(tmp_path, training_loop):
    """In a net, SoftmaxWithLoss and the Accuracy layers reading one label blob convert it to int64 once, and
    Accuracy layers of the same bottoms share the label's rank (the net's forward memo): each forward still gives
    Caffe's values, also after new labels and scores written through kept host views (no version bump: the memo
    lives for one forward)."""
    net = accuracy_net(tmp_path, training_loop=training_loop)
    data, label = net.blobs["data"].data, net.blobs["label"].data      # kept views
    for seed in range(3):
        rng = np.random.default_rng(seed)
        data[...] = rng.integers(0, 3, size=(40, 5))                  # many ties
        label[...] = rng.integers(0, 5, size=40)
        out = net.forward()
        for name, top_k, ignore in (("top1", 1, None), ("top3", 3, None), ("top2i", 2, 1)):
            ref, _ = np_accuracy(data.astype(np.float64), label, top_k, ignore)
            np.testing.assert_allclose(float(out[name]), ref, rtol=1e-6)


def test_a_second_accuracy_layer_costs_three_ops(tmp_path):
    """In a training loop's net, the forward of an Accuracy layer whose bottoms another one ranked already:
    rank < k, its count and the division (alone, with its label's conversion and the ranking: ~16 aten ops)."""
    from caffe_torch.opcount import OpCounter

    net = accuracy_net(tmp_path, training_loop=True)
    ops = {}
    for name in ("top1", "top3"):
        layer = net._layers[net._layer_names.index(name)]

        def counted(*bottoms, name=name, forward=layer.forward):
            with OpCounter() as count:
                out = forward(*bottoms)
            ops[name] = count.ops
            return out

        layer.forward = counted
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((40, 5))
    net.blobs["label"].data[...] = np.arange(40) % 5
    net.forward()
    assert ops["top3"] <= 3 < ops["top1"], ops
