"""The fork layers (caffe_torch/layers/margin.py) against independent NumPy implementations of the formulas in
fork-layers.md: MarginInnerProduct (A-Softmax), Normalize, InnerProduct normalize, LabelSpecificAdd, and our
AdditiveAngularMargin extension. Forward and backward, both dtypes, and the counters."""

import math

import numpy as np
import pytest
import torch
from fp import U64, assert_within, matmul_bound
from google.protobuf import text_format

import caffe_torch as caffe
from caffe_torch.layers.base import BuildContext
from caffe_torch.layers.margin import (
    AdditiveAngularMargin,
    LabelSpecificAdd,
    MarginInnerProduct,
    Normalize,
    normalize_rows_,
)
from caffe_torch.proto import caffe_pb2

TYPES = ["SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"]
M_OF = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3, "QUADRUPLE": 4}
# target cosines covering every interval of every psi: |c| above/below 0.5 (TRIPLE), above/below cos(pi/4)
# (QUADRUPLE), both signs (all)
TARGET_COS = np.array([0.95, 0.8, 0.6, 0.4, 0.1, -0.1, -0.4, -0.6, -0.8, -0.95])


def layer_param(text: str) -> "caffe_pb2.LayerParameter":
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def build(cls, text, bottom_shapes, phase=caffe_pb2.TRAIN, dtype=torch.float64, seed=0):
    ctx = BuildContext(dtype, torch.device("cpu"), phase, torch.Generator().manual_seed(seed))
    lp = layer_param(text)
    lp.phase = phase
    return cls(lp, [tuple(s) for s in bottom_shapes], ctx)


def t(a, dtype=torch.float64, grad=False):
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=grad)


# ------------------------------------------------------------------------------ NumPy references

def ref_lambda(base, gamma, power, lambda_min, iteration, k):
    """lambda of the k-th forward (1-based)."""
    return max(base * (1.0 + gamma * (iteration + k)) ** (-power), lambda_min)


def ref_psi_angle(c, m):
    """psi via the angle: (-1)^k cos(m theta) - 2k, k = floor(m theta / pi) (the SphereFace definition)."""
    theta = np.arccos(np.clip(c, -1, 1))
    k = np.floor(m * theta / np.pi)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def ref_psi_signs(c, mtype):
    """psi as the fork writes it, with signs (fork-layers.md)."""
    s0 = np.sign(c)
    if mtype == "DOUBLE":
        return 2 * s0 * c ** 2 - 1
    if mtype == "TRIPLE":
        s1 = np.sign(np.abs(c) - 0.5)
        s2 = s0 * (1 + s1) - 2
        return s1 * (4 * c ** 3 - 3 * c) + s2
    s3 = s0 * np.sign(2 * c ** 2 - 1)
    s4 = 2 * s0 + s3 - 3
    return s3 * (8 * c ** 4 - 8 * c ** 2 + 1) + s4


def ref_psi_derivs(c, mtype, xnorm):
    """(cw, cx): the fork's coefficient pair before rescaling (fork-layers.md, per margin type)."""
    s0 = np.sign(c)
    if mtype == "DOUBLE":
        return 4 * s0 * c, -(1 / xnorm) * (2 * s0 * c ** 2 + 1)
    if mtype == "TRIPLE":
        s1 = np.sign(np.abs(c) - 0.5)
        s2 = s0 * (1 + s1) - 2
        return s1 * (12 * c ** 2 - 3), -(1 / xnorm) * (8 * s1 * c ** 3 - s2)
    s3 = s0 * np.sign(2 * c ** 2 - 1)
    s4 = 2 * s0 + s3 - 3
    return s3 * (32 * c ** 3 - 16 * c), -(1 / xnorm) * (s3 * (24 * c ** 4 - 8 * c ** 2 - 1) - s4)


def ref_mip_forward(x, w, label, lam, mtype):
    wn = w / np.sqrt((w * w).sum(1, keepdims=True))
    f = x @ wn.T
    if mtype == "SINGLE":
        return f, wn
    out = f.copy()
    for i, y in enumerate(label):
        xn = np.linalg.norm(x[i])
        c = x[i] @ wn[y] / xn
        out[i, y] = (xn * ref_psi_angle(c, M_OF[mtype]) + lam * x[i] @ wn[y]) / (1 + lam)
    return out, wn


def ref_mip_backward(d, x, wn, label, lam, mtype):
    """The fork's backward, written as the loops of fork-layers.md."""
    dw = d.T @ x
    if mtype == "SINGLE":
        return d @ wn, dw
    dx = np.zeros_like(x)
    for i, y in enumerate(label):
        xn = np.linalg.norm(x[i])
        c = x[i] @ wn[y] / xn
        cw, cx = ref_psi_derivs(c, mtype, xn)
        nrm = math.sqrt(cw * cw + cx * cx)
        cw, cx = cw / nrm, cx / nrm
        for j in range(wn.shape[0]):
            if j != y:
                dx[i] += d[i, j] / (1 + lam) * wn[j]
            else:
                dx[i] += d[i, j] / (1 + lam) * (cw * wn[y] + cx * x[i])
            dx[i] += lam / (1 + lam) * d[i, j] * wn[j]
    return dx, dw


def margin_inputs(n_classes=5, dim=7, seed=1, cosines=TARGET_COS):
    """W (unnormalised), labels, and x whose cosine with its target's normalised weight is given."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_classes, dim)) * rng.uniform(0.5, 3.0, size=(n_classes, 1))
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    label = np.arange(len(cosines)) % n_classes
    x = np.zeros((len(cosines), dim))
    for i, (c, y) in enumerate(zip(cosines, label)):
        u = rng.normal(size=dim)
        u -= (u @ wn[y]) * wn[y]
        u /= np.linalg.norm(u)
        x[i] = rng.uniform(0.5, 4.0) * (c * wn[y] + math.sqrt(1 - c * c) * u)
    return x, w, label


def mip_text(mtype, n, extra=""):
    return (f'name: "mip" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "f" top: "lambda" '
            f'margin_inner_product_param {{ num_output: {n} type: {mtype} base: 1000 gamma: 0.12 power: 1 '
            f'lambda_min: 5 weight_filler {{ type: "gaussian" std: 1 }} {extra} }}')


# ------------------------------------------------------------------------------ MarginInnerProduct

@pytest.mark.parametrize("mtype", TYPES)
def test_psi_sign_form_equals_angle_form(mtype):
    if mtype == "SINGLE":
        return
    c = np.linspace(-0.999, 0.999, 2001)
    np.testing.assert_allclose(ref_psi_signs(c, mtype), ref_psi_angle(c, M_OF[mtype]), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mtype", TYPES)
def test_margin_inner_product_forward_backward(mtype, dtype):
    x, w, label = margin_inputs()
    layer = build(MarginInnerProduct, mip_text(mtype, 5), [x.shape, label.shape], dtype=dtype)
    with torch.no_grad():
        layer.blobs[0].copy_(t(w, dtype))
    xt = t(x, dtype, grad=True)
    f, lam_top = layer(xt, t(label, dtype))
    lam = ref_lambda(1000, 0.12, 1, 5, 0, 1)
    ref_f, wn = ref_mip_forward(x, w, label, lam, mtype)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(f.detach().numpy(), ref_f, **tol)
    np.testing.assert_allclose(lam_top.detach().numpy(), [lam], rtol=1e-6)
    # the stored weights were normalised in place
    np.testing.assert_allclose(layer.blobs[0].detach().numpy(), wn, **tol)
    d = np.random.default_rng(2).normal(size=ref_f.shape)
    f.backward(t(d, dtype))
    ref_dx, ref_dw = ref_mip_backward(d, x, wn, label, lam, mtype)
    np.testing.assert_allclose(xt.grad.numpy(), ref_dx, **tol)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), ref_dw, **tol)


def test_margin_inner_product_target_cosines_cover_every_interval():
    # the inputs really are where the tests claim
    x, w, label = margin_inputs()
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = np.array([x[i] @ wn[y] / np.linalg.norm(x[i]) for i, y in enumerate(label)])
    np.testing.assert_allclose(c, TARGET_COS, atol=1e-12)
    k4 = np.floor(4 * np.arccos(c) / np.pi)
    k3 = np.floor(3 * np.arccos(c) / np.pi)
    assert set(k4) == {0, 1, 2, 3} and set(k3) == {0, 1, 2}


def test_margin_inner_product_fork_gradient_is_not_exact():
    """The fork's dx for QUADRUPLE differs from the true derivative (the rescaled pair), dW too."""
    x, w, label = margin_inputs()
    # late in the schedule (lambda = lambda_min = 5) the margin term weighs 1/6
    layer = build(MarginInnerProduct, mip_text("QUADRUPLE", 5, "iteration: 100000"), [x.shape, label.shape])
    with torch.no_grad():
        layer.blobs[0].copy_(t(w))
    xt = t(x, grad=True)
    f, lam = layer(xt, t(label))
    assert float(lam) == 5.0
    d = np.random.default_rng(3).normal(size=f.shape)
    f.backward(t(d))
    ex_dx, ex_dw = exact_reference_grads(x, w, label, 5.0, "QUADRUPLE", d)
    assert np.abs(xt.grad.numpy() - ex_dx).max() > 1e-2
    assert np.abs(layer.blobs[0].grad.numpy() - ex_dw).max() > 1e-2


def exact_reference_grads(x, w, label, lam, mtype, d):
    """autograd of an independent torch formulation (psi via the angle, W through w/||w||), at the stored W,
    which the forward has renormalised in place before the gradient is taken."""
    xt = t(x, grad=True)
    wt = t(w / np.linalg.norm(w, axis=1, keepdims=True), grad=True)
    wn = wt / wt.norm(dim=1, keepdim=True)
    f = xt @ wn.t()
    if mtype != "SINGLE":
        m = M_OF[mtype]
        rows = []
        for i, y in enumerate(label):
            xn = xt[i].norm()
            c = (xt[i] @ wn[y]) / xn
            theta = torch.acos(c)
            k = math.floor(m * float(theta.detach()) / math.pi)
            psi = (-1) ** k * torch.cos(m * theta) - 2 * k
            row = f[i].clone()
            row[y] = (xn * psi + lam * (xt[i] @ wn[y])) / (1 + lam)
            rows.append(row)
        f = torch.stack(rows)
    f.backward(t(d))
    return xt.grad.numpy(), wt.grad.numpy()


@pytest.mark.parametrize("mtype", TYPES)
def test_margin_inner_product_exact_gradient_option(mtype):
    x, w, label = margin_inputs()
    lam = ref_lambda(1000, 0.12, 1, 5, 0, 1)
    d = np.random.default_rng(4).normal(size=(len(label), 5))
    grads = {}
    for exact in (False, True):
        extra = "exact_gradient: true" if exact else ""
        layer = build(MarginInnerProduct, mip_text(mtype, 5, extra), [x.shape, label.shape])
        with torch.no_grad():
            layer.blobs[0].copy_(t(w))
        xt = t(x, grad=True)
        f, _ = layer(xt, t(label))
        ref_f = ref_mip_forward(x, w, label, lam, mtype)[0]
        np.testing.assert_allclose(f.detach().numpy(), ref_f, atol=1e-10)
        f.backward(t(d))
        grads[exact] = xt.grad.numpy(), layer.blobs[0].grad.numpy()
    ex_dx, ex_dw = exact_reference_grads(x, w, label, lam, mtype, d)
    np.testing.assert_allclose(grads[True][0], ex_dx, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(grads[True][1], ex_dw, rtol=1e-8, atol=1e-9)
    # the fork's W gradient ignores the renormalisation (and the margin): it differs for every type
    assert np.abs(grads[False][1] - grads[True][1]).max() > 1e-3
    if mtype != "SINGLE":
        assert np.abs(grads[False][0] - grads[True][0]).max() > 1e-3


def test_margin_inner_product_exact_gradient_gradcheck():
    x, w, label = margin_inputs(cosines=TARGET_COS[:6])
    # gamma 0: a constant lambda (2), so that the repeated forwards of gradcheck see the same function
    text = mip_text("QUADRUPLE", 5, "exact_gradient: true")
    text = text.replace("base: 1000 gamma: 0.12", "base: 2 gamma: 0")
    layer = build(MarginInnerProduct, text, [x.shape, label.shape])
    lab = t(label)
    with torch.no_grad():
        layer.blobs[0].copy_(t(w))

    def fn(xx):
        return layer(xx, lab)[0]

    assert torch.autograd.gradcheck(fn, (t(x, grad=True),), eps=1e-6, atol=1e-6)


def test_lambda_schedule_first_forwards_and_lambda_min():
    x, w, label = margin_inputs(cosines=[0.5, -0.5])
    layer = build(MarginInnerProduct, mip_text("QUADRUPLE", 5), [x.shape, label.shape], dtype=torch.float32)
    xt, lt = t(x, torch.float32), t(label, torch.float32)
    lams = []
    for _ in range(1660):
        with torch.no_grad():
            lams.append(float(layer(xt, lt)[1]))
    np.testing.assert_allclose(lams[:5], [892.857, 806.452, 735.294, 675.676, 625.000], atol=1e-3)
    # 1000 / (1 + 0.12 k) <= 5  <=>  k >= 1658.33: the 1659th forward is the first at lambda_min
    first = next(k for k, v in enumerate(lams, start=1) if v == 5.0)
    assert first == 1659
    assert lams[1657] > 5.0 and lams[1658] == 5.0 and lams[1659] == 5.0
    assert layer.get_state() == 1660


def test_lambda_schedule_iteration_field_and_state():
    x, w, label = margin_inputs(cosines=[0.5])
    layer = build(MarginInnerProduct, mip_text("DOUBLE", 5, "iteration: 1657"), [x.shape, label.shape])
    assert layer.get_state() == 1657
    out = [float(layer(t(x), t(label))[1]) for _ in range(2)]
    assert out[0] == pytest.approx(1000 / (1 + 0.12 * 1658), rel=1e-6) and out[0] > 5
    assert out[1] == 5.0
    layer.set_state(2)
    assert float(layer(t(x), t(label))[1]) == pytest.approx(1000 / (1 + 0.12 * 3), rel=1e-6)


def test_margin_inner_product_reads_field_232_and_text_147():
    mp = text_format.Parse("num_output: 3 type: DOUBLE base: 7 iteration: 4",
                           caffe_pb2.MarginInnerProductParameter())
    lp = caffe_pb2.LayerParameter(name="m", type="MarginInnerProduct", bottom=["x", "label"], top=["f", "l"])
    lp.margin_inner_product_param_happynear.CopyFrom(mp)
    wire = lp.SerializeToString()
    # field 232 on the wire (tag (232 << 3) | 2, varint-encoded) is how the AM-Softmax fork stores it
    assert bytes([0xC2, 0x0E]) in wire
    back = caffe_pb2.LayerParameter.FromString(wire)
    ctx = BuildContext(torch.float64, torch.device("cpu"), caffe_pb2.TRAIN, torch.Generator().manual_seed(0))
    layer = MarginInnerProduct(back, [(2, 4), (2,)], ctx)
    assert (layer.num_output, layer.mtype, layer.base, layer.get_state()) == (3, 1, 7.0, 4)
    # a SphereFace prototxt (text) lands at 147
    lp2 = layer_param('name: "m" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "f" '
                      'margin_inner_product_param { num_output: 6 type: QUADRUPLE }')
    assert lp2.HasField("margin_inner_product_param")
    assert MarginInnerProduct(lp2, [(2, 4), (2,)], ctx).num_output == 6


def net_from_text(text, phase=caffe.TRAIN, dtype=torch.float64):
    return caffe.Net(net_param=text_format.Parse(text, caffe_pb2.NetParameter()), phase=phase, dtype=dtype)


MIP_NET = """
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 10 dim: 7 } shape { dim: 10 } } }
layer { name: "mip" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "f" top: "lambda"
  margin_inner_product_param { num_output: 5 type: QUADRUPLE base: 1000 gamma: 0.12 power: 1 lambda_min: 5
                               weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "f" bottom: "label" top: "loss" }
"""


def test_margin_inner_product_in_net_renormalises_params_and_counts_forwards():
    net = net_from_text(MIP_NET)
    layer = net.layer_dict["mip"].module
    assert layer.get_state() == 0                 # building (shape inference) did not count
    net.reshape()
    assert layer.get_state() == 0
    x, w, label = margin_inputs()
    net.params["mip"][0].data[...] = w
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = label
    net.forward()
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(net.params["mip"][0].data, wn, atol=1e-12)
    assert net.layer_states() == {"mip": 1}
    net.backward()
    net.forward()
    net.forward()
    assert net.layer_states() == {"mip": 3}
    assert net.blobs["lambda"].data[0] == pytest.approx(1000 / (1 + 0.12 * 3))
    # a TEST net counts its forwards too (its own counter), and applies the margin
    test_net = net_from_text(MIP_NET, phase=caffe.TEST)
    test_net.share_with(net)
    test_net.blobs["x"].data[...] = x
    test_net.blobs["label"].data[...] = label
    test_net.forward()
    assert test_net.layer_states() == {"mip": 1}
    ref = ref_mip_forward(x, wn, label, ref_lambda(1000, 0.12, 1, 5, 0, 1), "QUADRUPLE")[0]
    np.testing.assert_allclose(test_net.blobs["f"].data, ref, atol=1e-10)


def test_margin_inner_product_label_errors():
    x, w, label = margin_inputs()
    layer = build(MarginInnerProduct, mip_text("QUADRUPLE", 5), [x.shape, label.shape])
    with pytest.raises(caffe.LayerError, match="out of range"):
        layer(t(x), t(np.full(len(label), 5.0)))
    layer(t(x), t(label.reshape(-1, 1, 1, 1)))          # (N, 1, 1, 1) labels are accepted


# ------------------------------------------------------------------------------ Normalize

def ref_normalize(x4, kind):
    if kind == "L2":
        norm = np.sqrt((x4 ** 2).sum(1, keepdims=True) + 1e-6)
    else:
        norm = np.abs(x4).sum(1, keepdims=True) + 1e-6
    return x4 / norm, norm


def ref_normalize_backward(x4, dy, dnorm, kind, bp_norm):
    y, norm = ref_normalize(x4, kind)
    a = (y * dy).sum(1, keepdims=True)
    g = y if kind == "L2" else np.sign(x4)
    dx = (dy - g * a) / norm
    if bp_norm:
        dx = dx + dnorm * g
    return dx


@pytest.mark.parametrize("kind", ["L2", "L1"])
@pytest.mark.parametrize("bp_norm", [False, True])
@pytest.mark.parametrize("shape", [(5, 6), (3, 4, 2, 3)])
def test_normalize(kind, bp_norm, shape):
    rng = np.random.default_rng(5)
    x = rng.normal(size=shape)
    x.reshape(shape[0], -1)[0, 0] = 0.0                    # sign(0) = 0 in the L1 backward
    text = (f'name: "n" type: "Normalize" bottom: "x" top: "y" top: "norm" '
            f'normalize_param {{ normalize_type: "{kind}" bp_norm: {str(bp_norm).lower()} }}')
    layer = build(Normalize, text, [shape])
    x4 = x.reshape(shape + (1,) * (4 - len(shape)))
    assert layer.top_shapes([shape]) == [x4.shape, (x4.shape[0], 1) + x4.shape[2:]]
    xt = t(x, grad=True)
    y, norm = layer(xt)
    ref_y, ref_n = ref_normalize(x4, kind)
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-12)
    np.testing.assert_allclose(norm.detach().numpy(), ref_n, rtol=1e-12)
    dy = rng.normal(size=ref_y.shape)
    dn = rng.normal(size=ref_n.shape)
    torch.autograd.backward([y, norm] if norm.requires_grad else [y], [t(dy), t(dn)] if norm.requires_grad
                            else [t(dy)])
    ref_dx = ref_normalize_backward(x4, dy, dn, kind, bp_norm).reshape(shape)
    np.testing.assert_allclose(xt.grad.numpy(), ref_dx, rtol=1e-9, atol=1e-12)
    assert norm.requires_grad == bp_norm


@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_normalize_gradcheck(kind):
    layer = build(Normalize, f'name: "n" type: "Normalize" bottom: "x" top: "y" top: "n" '
                             f'normalize_param {{ normalize_type: "{kind}" bp_norm: true }}', [(3, 4, 2, 1)])
    x = t(np.random.default_rng(6).normal(size=(3, 4, 2, 1)), grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(v), (x,))


def test_normalize_float32_and_one_top():
    layer = build(Normalize, 'name: "n" type: "Normalize" bottom: "x" top: "y"', [(4, 3)],
                  dtype=torch.float32)
    x = np.random.default_rng(7).normal(size=(4, 3))
    y = layer(t(x, torch.float32))
    assert y.shape == (4, 3, 1, 1) and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), ref_normalize(x.reshape(4, 3, 1, 1), "L2")[0], rtol=1e-6)
    with pytest.raises(caffe.LayerError, match="normalize_type"):
        build(Normalize, 'name: "n" type: "Normalize" bottom: "x" top: "y" '
                         'normalize_param { normalize_type: "L3" }', [(4, 3)])


# ------------------------------------------------------------------------------ InnerProduct normalize

# |the net's normalised row - NumPy's| in units of u |row|: each is within 7/2 + 1 + 1 of the exact one (a
# 6-term sum of squares, halved by the square root, the square root and the division)
NORM_ULPS = 11

IP_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 3 normalize: true TRANSPOSE weight_filler { type: "gaussian" std: 2 }
                        bias_filler { type: "constant" value: 0.5 } } }
"""


def test_inner_product_normalize_forward_backward():
    net = net_from_text("force_backward: true\n" + IP_NET.replace("TRANSPOSE", ""))
    rng = np.random.default_rng(8)
    w = rng.normal(size=(3, 6)) * 3
    x = rng.normal(size=(4, 6))
    net.params["ip"][0].data[...] = w
    net.blobs["x"].data[...] = x
    net.forward()
    wn = w / np.sqrt((w ** 2).sum(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(net.params["ip"][0].data, wn, rtol=1e-12)       # in place, eps 1e-6
    # the net's normalised rows differ from wn by at most NORM_ULPS u relative: that, times |x| @ |wn|.T,
    # plus the two matmuls' own rounding
    w_err = NORM_ULPS * U64 * np.abs(wn)
    assert_within(net.blobs["y"].data, x @ wn.T + 0.5,
                  matmul_bound(x, wn.T, extra_terms=0.5) + np.abs(x) @ w_err.T)
    dy = rng.normal(size=(4, 3))
    net.backward(y=dy)
    assert_within(net.params["ip"][0].diff, dy.T @ x, matmul_bound(dy.T, x))   # no projection
    assert_within(net.params["ip"][1].diff, dy.sum(0), matmul_bound(np.ones((1, 4)), dy)[0])
    assert_within(net.blobs["x"].diff, dy @ wn, matmul_bound(dy, wn) + np.abs(dy) @ w_err)


def test_inner_product_normalize_transpose_normalises_contiguous_runs():
    # the fork normalises num_output runs of K contiguous values of the K x N blob (not its columns)
    net = net_from_text(IP_NET.replace("TRANSPOSE", "transpose: true"))
    w = np.random.default_rng(9).normal(size=(6, 3))
    net.params["ip"][0].data[...] = w
    x = np.random.default_rng(10).normal(size=(4, 6))
    net.blobs["x"].data[...] = x
    net.forward()
    runs = w.reshape(3, 6)
    expect = (runs / np.sqrt((runs ** 2).sum(1, keepdims=True) + 1e-6)).reshape(6, 3)
    np.testing.assert_allclose(net.params["ip"][0].data, expect, rtol=1e-12)
    assert_within(net.blobs["y"].data, x @ expect + 0.5,
                  matmul_bound(x, expect, extra_terms=0.5) + np.abs(x) @ (NORM_ULPS * U64 * np.abs(expect)))


def test_normalize_rows_helper():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    out = normalize_rows_(w)
    assert out is w and not w.grad
    np.testing.assert_allclose(w.detach().numpy(), [[0.6, 0.8], [0.0, 1.0]])
    normalize_rows_(w, 1e-6)
    np.testing.assert_allclose(w.detach().numpy(), np.array([[0.6, 0.8], [0, 1.0]]) / math.sqrt(1 + 1e-6))


# ------------------------------------------------------------------------------ LabelSpecificAdd

def ref_label_specific_add(x, label, bias):
    out = x.copy()
    for i, y in enumerate(label):
        if out[i, y] > -bias:
            out[i, y] += bias
    return out


LSA = 'name: "lsa" type: "LabelSpecificAdd" bottom: "x" bottom: "label" top: "x" top: "b" ' \
      'label_specific_add_param {{ {} }}'


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_label_specific_add_threshold_train_and_test(dtype):
    bias = np.float32(-0.35)            # as stored in the proto (float)
    x = np.array([[0.9, 0.1, 0.2], [0.1, 0.3, 0.2], [0.5, 0.5, 0.36], [0.0, 0.0, 0.0], [0.2, 0.8, 0.1]])
    label = np.array([0, 1, 2, 0, 1])
    x[4, 1] = -float(bias)               # exactly at the threshold: strictly greater is required
    if dtype == torch.float32:
        x = x.astype(np.float32)
    layer = build(LabelSpecificAdd, LSA.format("bias: -0.35"), [x.shape, label.shape], dtype=dtype)
    out, b = layer(t(x, dtype), t(label, dtype))
    ref = ref_label_specific_add(x.astype(np.float64), label, float(bias))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)
    changed = ~np.isclose(out.numpy(), x)
    assert changed.tolist() == [[True, False, False], [False, False, False], [False, False, True],
                                [False, False, False], [False, False, False]]
    assert float(b) == pytest.approx(-0.35)
    test_layer = build(LabelSpecificAdd, LSA.format("bias: -0.35 transform_test: true"),
                       [x.shape, label.shape], phase=caffe_pb2.TEST, dtype=dtype)
    out, b = test_layer(t(x, dtype), t(label, dtype))
    np.testing.assert_array_equal(out.numpy(), x)
    assert float(b) == 0.0


def test_label_specific_add_backward_identity():
    layer = build(LabelSpecificAdd, LSA.format("bias: -0.35"), [(4, 3), (4,)])
    label = t([0, 1, 2, 0])
    x = t(np.random.default_rng(11).uniform(-1, 1, size=(4, 3)), grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(v, label)[0], (x,))
    out, _ = layer(x, label)
    dy = np.random.default_rng(12).normal(size=(4, 3))
    x.grad = None
    out.backward(t(dy))
    np.testing.assert_array_equal(x.grad.numpy(), dy)


def test_label_specific_add_annealing_counter():
    params = "bias_base: 0 bias_gamma: -0.01 bias_power: 2 bias_min: -0.3 bias_max: 0 iteration: 3"
    layer = build(LabelSpecificAdd, LSA.format(params), [(2, 3), (2,)])
    assert layer.get_state() == 3
    x, label = t(np.full((2, 3), 0.9)), t([0, 2])
    biases = []
    for _ in range(4):
        out, b = layer(x, label)
        biases.append(float(b))
    f32 = float(np.float32(-0.01))
    expect = [min(max(0 + (1 + f32 * it) ** 2 - 1, -0.3), 0) for it in range(3, 7)]
    np.testing.assert_allclose(biases, expect, rtol=1e-9)
    np.testing.assert_allclose(out.numpy()[[0, 1], [0, 2]], 0.9 + expect[-1])
    assert layer.get_state() == 7
    # clamping: far along the schedule the bias stops at bias_min
    layer.set_state(40)
    assert float(layer(x, label)[1]) == pytest.approx(-0.3)
    # TEST forwards do not advance the counter
    test_layer = build(LabelSpecificAdd, LSA.format(params), [(2, 3), (2,)], phase=caffe_pb2.TEST)
    test_layer(x, label)
    assert test_layer.get_state() == 3
    # without bias_base there is no state
    assert build(LabelSpecificAdd, LSA.format("bias: -0.2"), [(2, 3), (2,)]).get_state() is None


def test_label_specific_add_in_place_in_net():
    net = net_from_text("""
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } } }
layer { name: "lsa" type: "LabelSpecificAdd" bottom: "x" bottom: "label" top: "x"
        label_specific_add_param { bias: -0.35 } }
""")
    x = np.array([[0.5, 0.1, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.99]])
    net.blobs["label"].data[...] = [0, 1, 3]
    out = net.forward(x=x, label=np.array([0, 1, 3]))
    np.testing.assert_allclose(out["x"], ref_label_specific_add(x, [0, 1, 3], float(np.float32(-0.35))))


# ------------------------------------------------------------------------------ AdditiveAngularMargin

def ref_aam(x, label, m, easy):
    out = x.copy()
    for i, y in enumerate(label):
        c = x[i, y]
        theta = math.acos(c)
        if easy:
            out[i, y] = math.cos(theta + m) if c > 0 else c
        else:
            out[i, y] = math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
    return out


@pytest.mark.parametrize("easy", [False, True])
def test_additive_angular_margin(easy):
    m = float(np.float32(0.5))
    cosines = np.array([0.9, 0.3, -0.2, -0.8, -0.95])        # -0.95 is past theta + m = pi for m = 0.5
    rng = np.random.default_rng(13)
    x = rng.uniform(-0.9, 0.9, size=(5, 4))
    label = np.array([0, 1, 2, 3, 1])
    x[np.arange(5), label] = cosines
    text = ('name: "aam" type: "AdditiveAngularMargin" bottom: "c" bottom: "label" top: "c2" '
            f'additive_angular_margin_param {{ margin: 0.5 easy_margin: {str(easy).lower()} }}')
    layer = build(AdditiveAngularMargin, text, [x.shape, label.shape])
    out = layer(t(x), t(label))
    np.testing.assert_allclose(out.numpy(), ref_aam(x, label, m, easy), rtol=1e-6, atol=1e-9)
    xt = t(x, grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(v, t(label)), (xt,))
    test_layer = build(AdditiveAngularMargin, text, [x.shape, label.shape], phase=caffe_pb2.TEST)
    np.testing.assert_array_equal(test_layer(t(x), t(label)).numpy(), x)


def test_additive_angular_margin_default_and_float32():
    layer = build(AdditiveAngularMargin,
                  'name: "a" type: "AdditiveAngularMargin" bottom: "c" bottom: "l" top: "o"',
                  [(2, 3), (2,)], dtype=torch.float32)
    assert layer.margin == pytest.approx(0.2)
    x = np.array([[0.7, 0.1, 0.2], [0.1, 1.0, 0.2]], dtype=np.float32)
    out = layer(t(x, torch.float32, grad=True), t([0, 1], torch.float32))
    ref = ref_aam(x.astype(np.float64), [0, 1], float(np.float32(0.2)), False)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5)
    xt = t(x, torch.float32, grad=True)
    layer(xt, t([0, 1], torch.float32)).sum().backward()        # c = 1 exactly: finite gradient
    assert torch.isfinite(xt.grad).all()


# ------------------------------------------------------------------------------ device

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mtype", TYPES)
def test_margin_inner_product_on_cuda_matches_cpu(mtype):
    x, w, label = margin_inputs()
    results = []
    for dev in ("cpu", "cuda"):
        gen = torch.Generator().manual_seed(0)
        ctx = BuildContext(torch.float64, torch.device(dev), caffe_pb2.TRAIN, gen)
        layer = MarginInnerProduct(layer_param(mip_text(mtype, 5)), [x.shape, label.shape], ctx)
        with torch.no_grad():
            layer.blobs[0].copy_(t(w))
        xt = t(x).to(dev).requires_grad_(True)
        f, lam = layer(xt, t(label).to(dev))
        f.backward(torch.ones_like(f))
        results.append([v.detach().cpu().numpy() for v in (f, lam, xt.grad, layer.blobs[0].grad)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
