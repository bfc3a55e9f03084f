"""EuclideanLoss, ContrastiveLoss (and legacy_version), HingeLoss (L1, L2), MultinomialLogisticLoss,
InfogainLoss (H from a bottom or a binaryproto source) and SigmoidCrossEntropyLoss (Caffe 1.0's normalization
and ignore_label) against loop-by-loop NumPy references of Caffe's Forward_cpu / Backward_cpu; gradcheck where
Caffe's backward is the derivative, Caffe's own formula where it is not."""

import numpy as np
import pytest
import torch
from test_layers_loss import make

from caffe_torch.weights import array_to_blob

LOG_THRESHOLD = 1e-20


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def loss_and_grads(layer, *inputs, weight=1.0):
    """Run the layer, back-propagate `weight` (the loss weight = the top diff) and return the loss and the
    gradients of the inputs that require one (None for the others)."""
    loss = layer(*inputs)
    assert loss.dim() == 0
    if loss.requires_grad:
        loss.backward(torch.tensor(weight, dtype=loss.dtype))
    return float(loss.detach()), [x.grad.numpy().copy() if x.grad is not None else None for x in inputs]


# ----------------------------------------------------------------------------- EuclideanLoss

def test_euclidean_loss_forward_backward_and_gradcheck():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 6))        # same count per sample
    layer = make("EuclideanLoss", "", [a.shape, b.shape])
    loss, (ga, gb) = loss_and_grads(layer, t64(a, True), t64(b, True), weight=3.0)
    diff = a - b.reshape(a.shape)
    np.testing.assert_allclose(loss, (diff ** 2).sum() / 4 / 2, rtol=1e-12)
    np.testing.assert_allclose(ga, 3.0 * diff / 4, rtol=1e-12)
    np.testing.assert_allclose(gb, -3.0 * diff.reshape(b.shape) / 4, rtol=1e-12)
    assert torch.autograd.gradcheck(layer, (t64(a, True), t64(b, True)))
    with pytest.raises(Exception, match="same dimension"):
        make("EuclideanLoss", "", [(4, 3), (4, 4)])
    with pytest.raises(Exception, match="first dimension"):
        make("EuclideanLoss", "", [(4, 3), (3, 4)])


# ----------------------------------------------------------------------------- ContrastiveLoss

def np_contrastive(a, b, y, margin, legacy, top_diff=1.0):
    """ContrastiveLossLayer Forward_cpu and Backward_cpu (its 1e-4 in the non-legacy dissimilar gradient)."""
    n = a.shape[0]
    diff = (a - b).reshape(n, -1)
    loss = 0.0
    ga = np.zeros_like(diff)
    for i in range(n):
        d2 = diff[i] @ diff[i]
        if int(y[i]):
            loss += d2
            ga[i] = top_diff / n * diff[i]
        elif legacy:
            loss += max(margin - d2, 0.0)
            if margin - d2 > 0:
                ga[i] = -top_diff / n * diff[i]
        else:
            d = np.sqrt(d2)
            loss += max(margin - d, 0.0) ** 2
            if margin - d > 0:
                ga[i] = -top_diff / n * (margin - d) / (d + 1e-4) * diff[i]
    return loss / n / 2, ga.reshape(a.shape), -ga.reshape(b.shape)


def contrastive_inputs(seed=1, n=10):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 3, 1, 1)) * 0.7
    b = rng.standard_normal((n, 3, 1, 1)) * 0.7
    y = rng.integers(0, 2, size=(n, 1, 1, 1)).astype(np.float64)
    y[0], y[1] = 0.7, -1.5          # int() truncates: 0 (dissimilar) and -1 (similar)
    y[2], y[3] = 0, 0               # dissimilar pairs well inside and well outside any margin used here
    a[2], a[3] = b[2] + 0.01, b[3] + 3.0
    return a, b, y


@pytest.mark.parametrize("margin", [1.0, 2.0])
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_matches_caffe(margin, legacy):
    a, b, y = contrastive_inputs()
    text = f"contrastive_loss_param {{ margin: {margin} legacy_version: {str(legacy).lower()} }}"
    layer = make("ContrastiveLoss", text, [a.shape, b.shape, y.shape])
    loss, (ga, gb, gy) = loss_and_grads(layer, t64(a, True), t64(b, True), t64(y, True), weight=2.5)
    ref, ref_ga, ref_gb = np_contrastive(a, b, y.reshape(-1), margin, legacy, top_diff=2.5)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(ga, ref_ga, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gb, ref_gb, rtol=1e-10, atol=1e-14)
    assert gy is None                                     # no gradient to the pair label
    # both branches and both sides of the margin occur
    d = np.sqrt(((a - b).reshape(10, -1) ** 2).sum(axis=1))
    dissimilar = y.reshape(-1).astype(int) == 0
    gap = margin - (d ** 2 if legacy else d)
    assert (dissimilar & (gap > 0)).any() and (dissimilar & (gap <= 0)).any() and (~dissimilar).any()


def test_contrastive_loss_legacy_gradient_is_the_derivative_and_the_new_one_is_not():
    a, b, y = contrastive_inputs(seed=2, n=6)
    y[:] = 0                                              # all dissimilar: the branch that differs
    legacy = make("ContrastiveLoss", "contrastive_loss_param { margin: 3 legacy_version: true }",
                  [a.shape, b.shape, y.shape])
    assert torch.autograd.gradcheck(lambda p, q: legacy(p, q, t64(y)), (t64(a, True), t64(b, True)))
    new = make("ContrastiveLoss", "contrastive_loss_param { margin: 3 }", [a.shape, b.shape, y.shape])
    xa, xb = t64(a, True), t64(b, True)
    new(xa, xb, t64(y)).backward()
    # the derivative of max(m - d, 0)^2 / 2N is -(m - d) / d (a - b) / N; Caffe divides by d + 1e-4
    n, diff = a.shape[0], (a - b).reshape(a.shape[0], -1)
    d = np.sqrt((diff ** 2).sum(axis=1, keepdims=True))
    exact = (-np.maximum(3 - d, 0) / d * diff / n).reshape(a.shape)
    assert not np.allclose(xa.grad.numpy(), exact, rtol=1e-6, atol=0)
    np.testing.assert_allclose(xa.grad.numpy(), exact * (d / (d + 1e-4)).reshape(n, 1, 1, 1), rtol=1e-10)


def test_contrastive_loss_shape_errors():
    with pytest.raises(Exception, match="same shape"):
        make("ContrastiveLoss", "", [(4, 3, 1, 1), (4, 2, 1, 1), (4, 1, 1, 1)])
    with pytest.raises(Exception, match="channels, height and width 1"):
        make("ContrastiveLoss", "", [(4, 3), (4, 3), (4, 2)])      # CHECK_EQ(bottom[2]->channels(), 1)
    with pytest.raises(Exception, match="one value per pair"):
        make("ContrastiveLoss", "", [(4, 3), (4, 3), (3,)])        # Caffe would read past its end
    # Caffe reads the first N labels only (a Filter below may shrink the pairs' batch, not the labels'): fuzz
    # seed 905754
    layer = make("ContrastiveLoss", "", [(2, 3), (2, 3), (4, 1, 1, 1)])
    a, b = torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64).reshape(4, 1, 1, 1)
    assert float(layer(a, b, y)) == pytest.approx((3 + 3) / (2 * 2))   # both pairs similar: sum d^2 / 2N


# ----------------------------------------------------------------------------- HingeLoss

def np_hinge(x, label, norm, top_diff=1.0):
    """HingeLossLayer: t = max(0, 1 + s x), s = -1 at the label; L1 sum t / N, L2 sum t^2 / N; backward
    sign(t) s / N (L1) or 2 t s / N (L2), times the top diff."""
    n = x.shape[0]
    xs = x.reshape(n, -1)
    s = np.ones_like(xs)
    for i in range(n):
        s[i, int(label[i])] = -1
    t = np.maximum(0, 1 + s * xs)
    if norm == "L1":
        return t.sum() / n, (np.sign(t) * s * top_diff / n).reshape(x.shape)
    return (t ** 2).sum() / n, (2 * t * s * top_diff / n).reshape(x.shape)


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("shape", [(6, 5), (6, 2, 2, 1)])
def test_hinge_loss_matches_caffe_and_gradcheck(norm, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) * 1.5
    classes = int(np.prod(shape[1:]))
    label = rng.integers(0, classes, size=(shape[0],)).astype(np.float64)
    layer = make("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}", [shape, label.shape])
    loss, (gx, _) = loss_and_grads(layer, t64(x, True), t64(label), weight=0.5)
    ref, ref_g = np_hinge(x, label, norm, top_diff=0.5)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(gx, ref_g, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda v: layer(v, t64(label)), (t64(x, True),))


def test_hinge_loss_default_is_l1_and_label_range_is_checked():
    x = np.zeros((2, 3))
    layer = make("HingeLoss", "", [x.shape, (2,)])
    assert float(layer(t64(x), t64([0, 2]))) == pytest.approx(3.0)        # every t = 1: 6 / 2
    with pytest.raises(Exception, match="out of range"):
        layer(t64(x), t64([0, 3]))


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_nan_score_gives_zero_margin(norm):
    """Caffe's t = std::max(Dtype(0), 1 + s x) is 0 for a NaN score (hinge_loss_layer.cpp; std::max returns its first
    argument when the comparison is false), and so is its gradient: fuzz seed 805961 (a Log of a negative input under
    a HingeLoss). relu would give NaN."""
    x = t64([[np.nan, 0.5, -0.5], [0.25, np.nan, np.nan]], True)
    layer = make("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}", [(2, 3), (2,)])
    loss = layer(x, t64([1, 0]))
    t = np.array([[0.0, 0.5, 0.5], [0.75, 0.0, 0.0]])            # 1 + s x: s = -1 at the label
    assert float(loss.detach()) == pytest.approx((t if norm == "L1" else t * t).sum() / 2)
    loss.backward()
    assert not torch.isnan(x.grad).any() and x.grad[0, 0] == 0 and x.grad[1, 1] == 0


# ----------------------------------------------------------------------------- MultinomialLogisticLoss

def probabilities(shape, seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 1.0, size=shape)
    return p / p.reshape(shape[0], -1).sum(axis=1).reshape((-1,) + (1,) * (len(shape) - 1))


def test_multinomial_logistic_loss_matches_caffe():
    p = probabilities((6, 5), 4)
    label = np.array([0, 4, 2, 2, 1, 3], dtype=np.float64)
    p[1, 4] = 0.0                                      # clamped to 1e-20: loss 46.05, gradient -1 / 1e-20 / N
    layer = make("MultinomialLogisticLoss", "", [p.shape, label.shape])
    loss, (gp, _) = loss_and_grads(layer, t64(p, True), t64(label), weight=2.0)
    picked = np.maximum(p[np.arange(6), label.astype(int)], LOG_THRESHOLD)
    np.testing.assert_allclose(loss, -np.log(picked).sum() / 6, rtol=1e-12)
    want = np.zeros_like(p)
    want[np.arange(6), label.astype(int)] = -2.0 / 6 / picked
    np.testing.assert_allclose(gp, want, rtol=1e-12)
    p[1, 4] = 0.3                                      # away from the clamp the backward is the derivative
    assert torch.autograd.gradcheck(lambda v: layer(v, t64(label)), (t64(p, True),))


# ----------------------------------------------------------------------------- InfogainLoss

def np_infogain(p, label, h, top_diff=1.0):
    n = p.shape[0]
    ps = np.maximum(p.reshape(n, -1), LOG_THRESHOLD)
    rows = h.reshape(ps.shape[1], ps.shape[1])[label.astype(int)]
    return -(rows * np.log(ps)).sum() / n, (-top_diff / n * rows / ps).reshape(p.shape)


def test_infogain_loss_with_h_bottom():
    p = probabilities((6, 4), 5)
    p[0, 1] = 0.0
    label = np.array([0, 3, 1, 1, 2, 0], dtype=np.float64)
    h = np.random.default_rng(6).uniform(0, 1, size=(1, 1, 4, 4))
    layer = make("InfogainLoss", "", [p.shape, label.shape, h.shape])
    loss, (gp, _, gh) = loss_and_grads(layer, t64(p, True), t64(label), t64(h, True), weight=1.5)
    ref, ref_g = np_infogain(p, label, h, top_diff=1.5)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(gp, ref_g, rtol=1e-12)
    assert gh is None                                   # Caffe: no gradient to the infogain matrix
    # H = identity: the multinomial logistic loss
    eye = make("InfogainLoss", "", [p.shape, label.shape, (1, 1, 4, 4)])
    mlr = make("MultinomialLogisticLoss", "", [p.shape, label.shape])
    torch.testing.assert_close(eye(t64(p), t64(label), t64(np.eye(4))), mlr(t64(p), t64(label)))


def test_infogain_loss_with_source_file(tmp_path):
    h = np.random.default_rng(7).uniform(0, 1, size=(1, 1, 3, 3)).astype(np.float32)
    source = tmp_path / "H.binaryproto"
    source.write_bytes(array_to_blob(h).SerializeToString())
    p = probabilities((5, 3), 8)
    label = np.array([2, 0, 1, 1, 0], dtype=np.float64)
    layer = make("InfogainLoss", f'infogain_loss_param {{ source: "{source}" }}', [p.shape, label.shape])
    loss, (gp, _) = loss_and_grads(layer, t64(p, True), t64(label))
    ref, ref_g = np_infogain(p, label, h.astype(np.float64))
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(gp, ref_g, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda v: layer(v, t64(label)), (t64(p, True),))


def test_infogain_loss_errors(tmp_path):
    with pytest.raises(Exception, match="source or a third bottom"):
        make("InfogainLoss", "", [(2, 3), (2,)])
    with pytest.raises(Exception, match="cannot read the infogain matrix"):
        make("InfogainLoss", f'infogain_loss_param {{ source: "{tmp_path / "missing"}" }}', [(2, 3), (2,)])
    bad = tmp_path / "bad.binaryproto"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(Exception, match="not a binary BlobProto"):
        make("InfogainLoss", f'infogain_loss_param {{ source: "{bad}" }}', [(2, 3), (2,)])
    with pytest.raises(Exception, match="3 x 3"):
        make("InfogainLoss", "", [(2, 3), (2,), (1, 1, 2, 2)])


# ----------------------------------------------------------------------------- SigmoidCrossEntropyLoss

def np_sigmoid_ce(x, t, mode, ignore, top_diff=1.0):
    """Caffe 1.0's SigmoidCrossEntropyLossLayer: the stable per-element loss summed over non-ignored positions,
    divided by the normaliser; gradient (sigmoid(x) - t) / normaliser, 0 where ignored."""
    loss, valid = 0.0, 0
    grad = np.zeros_like(x)
    xf, tf, gf = x.reshape(-1), t.reshape(-1), grad.reshape(-1)
    for i in range(xf.size):
        if ignore is not None and int(tf[i]) == ignore:
            continue
        pos = float(xf[i] >= 0)
        loss -= xf[i] * (tf[i] - pos) - np.log(1 + np.exp(xf[i] - 2 * xf[i] * pos))
        gf[i] = 1 / (1 + np.exp(-xf[i])) - tf[i]
        valid += 1
    norm = {"FULL": x.size, "VALID": valid, "BATCH_SIZE": x.shape[0], "NONE": 1}[mode]
    norm = max(1, norm)
    return loss / norm, grad * top_diff / norm


SCE_CASES = [
    ("", "BATCH_SIZE", None),                                           # Caffe 1.0's default
    ("loss_param { normalization: FULL }", "FULL", None),
    ("loss_param { normalization: VALID }", "VALID", None),             # no ignore: = FULL
    ("loss_param { normalization: NONE }", "NONE", None),
    ("loss_param { ignore_label: -1 }", "BATCH_SIZE", -1),
    ("loss_param { ignore_label: -1 normalization: VALID }", "VALID", -1),
    ("loss_param { ignore_label: -1 normalize: true }", "VALID", -1),   # the deprecated bool
    ("loss_param { ignore_label: -1 normalize: false }", "BATCH_SIZE", -1),
]


@pytest.mark.parametrize("text,mode,ignore", SCE_CASES)
def test_sigmoid_cross_entropy_loss_matches_caffe(text, mode, ignore):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 2)) * 4                  # large |x| too: the stable form matters
    t = rng.uniform(0, 1, size=(4, 6))                       # same count, another shape
    t.reshape(-1)[::4] = -1 if ignore is not None else 0.0
    layer = make("SigmoidCrossEntropyLoss", text, [x.shape, t.shape])
    loss, (gx, gt) = loss_and_grads(layer, t64(x, True), t64(t, True), weight=0.7)
    ref, ref_g = np_sigmoid_ce(x, t, mode, ignore, top_diff=0.7)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(gx, ref_g, rtol=1e-12, atol=1e-15)
    assert gt is None                                        # no gradient to the target
    assert torch.autograd.gradcheck(lambda v: layer(v, t64(t)), (t64(x, True),))


def test_sigmoid_cross_entropy_all_ignored_and_extreme_inputs():
    layer = make("SigmoidCrossEntropyLoss", "loss_param { ignore_label: 5 normalization: VALID }", [(2, 2), (2, 2)])
    assert float(layer(t64([[1.0, 2.0], [3.0, 4.0]]), t64([[5, 5], [5, 5]]))) == 0.0     # 0 / max(1, 0)
    layer = make("SigmoidCrossEntropyLoss", "", [(1, 2), (1, 2)])
    value = float(layer(t64([[800.0, -800.0]]), t64([[0.0, 1.0]])))
    assert value == pytest.approx(1600.0)                    # no overflow to inf
    with pytest.raises(Exception, match="same count"):
        make("SigmoidCrossEntropyLoss", "", [(2, 3), (2, 2)])
