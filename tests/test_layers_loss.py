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
