"""The real-Caffe build (caffe_build/): our C++ fork layers against an independent NumPy reference.

Each test writes a tiny NetParameter prototxt, runs forward/backward through pycaffe (the build made by
`make caffe` / caffe_build/build.sh) and compares with a float64 NumPy implementation of
shared/reference/fork-layers.md written here (the margin functions through Chebyshev polynomials,
psi(c) = (-1)^k cos(m theta) - 2k, not the sign formulas the C++ uses). Skipped when `import caffe`
does not give a real pycaffe.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's net-construction log quiet

from speaker.engine import try_import_pycaffe  # noqa: E402

caffe, _IMPORT_ERROR = try_import_pycaffe()

pytestmark = [
    pytest.mark.caffe,
    pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}"),
]

RTOL = 1e-4  # float32 Caffe against float64 NumPy
ATOL = 1e-5


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def make_net(tmp_path, body, phase=None, weights=None, name="net.prototxt"):
    path = tmp_path / name
    path.write_text("force_backward: true\n" + textwrap.dedent(body))
    phase = caffe.TRAIN if phase is None else phase
    if weights is None:
        return caffe.Net(str(path), phase)
    return caffe.Net(str(path), str(weights), phase)


def input_layer(*shapes, tops=("x", "label")):
    tops_txt = " ".join(f'top: "{t}"' for t in tops)
    shape_txt = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes)
    return f'layer {{ name: "in" type: "Input" {tops_txt} input_param {{ {shape_txt} }} }}\n'


def run_fb(net, inputs, top, top_diff):
    """Forward with the given inputs, then backward from `top` with diff `top_diff`."""
    for k, v in inputs.items():
        net.blobs[k].data[...] = v
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0
    net.forward()
    out = {k: b.data.copy() for k, b in net.blobs.items()}
    net.blobs[top].diff[...] = top_diff
    net.backward()
    return out


# ------------------------------------------------------------------------------------ references
MARGIN_M = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3, "QUADRUPLE": 4}


def psi_and_derivative(c, m):
    """psi(c) = (-1)^k T_m(c) - 2k with k = floor(m * arccos(c) / pi), and d psi / d c."""
    t = np.polynomial.chebyshev.Chebyshev([0] * m + [1])
    k = np.floor(m * np.arccos(np.clip(c, -1, 1)) / np.pi)
    sign = (-1.0) ** k
    return sign * t(c) - 2 * k, sign * t.deriv()(c)


def mip_lambda(base, gamma, power, lambda_min, iteration, k):
    return max(base * (1 + gamma * (iteration + k)) ** (-power), lambda_min)


def mip_forward(x, w, label, margin, lam):
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    xn = np.linalg.norm(x, axis=1)
    f = x @ wn.T
    if margin != "SINGLE":
        rows = np.arange(len(x))
        xw = f[rows, label]
        psi, _ = psi_and_derivative(xw / xn, MARGIN_M[margin])
        f[rows, label] = (xn * psi + lam * xw) / (1 + lam)
    return f, wn


def mip_backward(x, wn, label, margin, lam, df):
    dw = df.T @ x
    if margin == "SINGLE":
        return df @ wn, dw
    dx = np.zeros_like(x)
    for i, y in enumerate(label):
        xn = np.linalg.norm(x[i])
        c = x[i] @ wn[y] / xn
        psi, dpsi = psi_and_derivative(c, MARGIN_M[margin])
        # exact derivative of ||x|| psi(c): dpsi * w + (psi - c dpsi) / ||x|| * x; the fork rescales the pair.
        cw, cx = dpsi, (psi - c * dpsi) / xn
        nrm = np.hypot(cw, cx)
        for j in range(wn.shape[0]):
            if j == y:
                dx[i] += df[i, j] / (1 + lam) * (cw / nrm * wn[j] + cx / nrm * x[i])
            else:
                dx[i] += df[i, j] / (1 + lam) * wn[j]
    dx += lam / (1 + lam) * df @ wn
    return dx, dw


def normalize_ref(x, kind, dy=None, dnorm=None):
    """x: N x C x S. Returns y, norm (N x 1 x S) and, with dy, dx (dnorm: bp_norm term)."""
    if kind == "L2":
        norm = np.sqrt((x**2).sum(axis=1, keepdims=True) + 1e-6)
    else:
        norm = np.abs(x).sum(axis=1, keepdims=True) + 1e-6
    y = x / norm
    if dy is None:
        return y, norm, None
    a = (y * dy).sum(axis=1, keepdims=True)
    direction = y if kind == "L2" else np.sign(x)
    dx = (dy - direction * a) / norm
    if dnorm is not None:
        dx = dx + dnorm * direction
    return y, norm, dx


# ------------------------------------------------------------------------------------ build facts
def test_this_is_the_project_build_with_our_layers():
    types = set(caffe.layer_type_list())
    ours = {"MarginInnerProduct", "Normalize", "LabelSpecificAdd", "InnerProduct", "AdditiveAngularMargin"}
    assert ours <= types
    # our happynear NormalizeParameter replaced the SSD one (norm_param, field 206)
    from caffe.proto import caffe_pb2

    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert "norm_param" not in fields
    assert fields["normalize_param"].number == 214


def test_proto_numbers_match_caffe_torch():
    """The fork messages are wire-compatible with caffe_torch's own caffe.proto (imported side by side)."""
    from caffe.proto import caffe_pb2 as real

    ours = pytest.importorskip("caffe_torch.proto.caffe_pb2")
    for field in ["margin_inner_product_param", "margin_inner_product_param_happynear", "normalize_param",
                  "label_specific_add_param", "additive_angular_margin_param", "inner_product_param"]:
        a = real.LayerParameter.DESCRIPTOR.fields_by_name[field]
        b = ours.LayerParameter.DESCRIPTOR.fields_by_name[field]
        assert a.number == b.number, field
    for msg in ["MarginInnerProductParameter", "NormalizeParameter", "LabelSpecificAddParameter",
                "AdditiveAngularMarginParameter", "InnerProductParameter"]:
        a = {f.name: (f.number, f.type, f.default_value) for f in getattr(real, msg).DESCRIPTOR.fields}
        b = {f.name: (f.number, f.type, f.default_value) for f in getattr(ours, msg).DESCRIPTOR.fields}
        assert a == b, msg
    # A message written by one parses identically in the other.
    lp = ours.LayerParameter(name="fc6", type="MarginInnerProduct")
    lp.margin_inner_product_param.num_output = 7
    lp.margin_inner_product_param.type = ours.MarginInnerProductParameter.QUADRUPLE
    lp.margin_inner_product_param.lambda_min = 5
    lp.label_specific_add_param.bias = -0.35
    lp.normalize_param.normalize_type = "L1"
    lp.inner_product_param.normalize = True
    back = real.LayerParameter.FromString(lp.SerializeToString())
    assert back.margin_inner_product_param.type == real.MarginInnerProductParameter.QUADRUPLE
    assert back.margin_inner_product_param.lambda_min == 5
    assert back.label_specific_add_param.bias == pytest.approx(-0.35)
    assert back.normalize_param.normalize_type == "L1"
    assert back.inner_product_param.normalize
    assert back.SerializeToString() == lp.SerializeToString()


# ------------------------------------------------------------------------------------ MarginInnerProduct
def mip_net(tmp_path, m, k, n, margin, base, gamma, power, lambda_min, iteration=0,
            field="margin_inner_product_param"):
    return make_net(tmp_path, input_layer((m, k), (m,)) + f"""
        layer {{ name: "fc" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "f" top: "lambda"
          {field} {{ num_output: {n} type: {margin} base: {base} gamma: {gamma} power: {power}
            lambda_min: {lambda_min} iteration: {iteration}
            weight_filler {{ type: "gaussian" std: 1 }} }} }}
        """)


def test_margin_lambda_sequence(tmp_path):
    rng = np.random.default_rng(0)
    net = mip_net(tmp_path, 3, 4, 5, "QUADRUPLE", 1000, 0.12, 1, 5)
    net.blobs["x"].data[...] = rng.normal(size=(3, 4))
    net.blobs["label"].data[...] = [0, 1, 2]
    seen = []
    for _ in range(5):
        net.forward()
        seen.append(float(net.blobs["lambda"].data[0]))
    np.testing.assert_allclose(seen, [892.857, 806.452, 735.294, 675.676, 625.000], atol=1e-3)
    # ... reaching lambda_min = 5 at the 1,659th forward
    assert mip_lambda(1000, 0.12, 1, 5, 0, 1658) > 5
    assert mip_lambda(1000, 0.12, 1, 5, 0, 1659) == 5


def test_margin_lambda_counter_starts_at_iteration(tmp_path):
    net = mip_net(tmp_path, 2, 3, 4, "QUADRUPLE", 1000, 0.12, 1, 5, iteration=100)
    net.blobs["x"].data[...] = np.ones((2, 3))
    net.blobs["label"].data[...] = [0, 3]
    net.forward()
    assert net.blobs["lambda"].data[0] == pytest.approx(mip_lambda(1000, 0.12, 1, 5, 100, 1), rel=1e-6)
    net.backward()  # a backward does not advance the counter; only forwards do
    net.forward()
    assert net.blobs["lambda"].data[0] == pytest.approx(mip_lambda(1000, 0.12, 1, 5, 100, 2), rel=1e-6)


@pytest.mark.parametrize("margin", ["SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"])
@pytest.mark.parametrize("schedule", [(0, 0, 1, 0), (1000, 0.12, 1, 5), (4, 0.5, 2, 0.5)],
                         ids=["lambda0", "sphereface", "other"])
def test_margin_inner_product_forward_backward(tmp_path, margin, schedule):
    rng = np.random.default_rng(MARGIN_M[margin])
    m, k, n = 6, 5, 4
    base, gamma, power, lambda_min = schedule
    net = mip_net(tmp_path, m, k, n, margin, base, gamma, power, lambda_min)
    x = rng.normal(size=(m, k)).astype(np.float32)
    label = rng.integers(0, n, size=m)
    w = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    net.params["fc"][0].data[...] = w
    for step in (1, 2):  # two forwards: the counter moves, W is already unit-norm the second time
        df = rng.normal(size=(m, n))
        w_before = net.params["fc"][0].data.astype(np.float64)
        out = run_fb(net, {"x": x, "label": label}, "f", df)
        lam = mip_lambda(base, gamma, power, lambda_min, 0, step)
        assert out["lambda"][0] == pytest.approx(lam, rel=1e-5)
        f_ref, wn = mip_forward(x.astype(np.float64), w_before, label, margin, lam)
        close(out["f"], f_ref)
        close(net.params["fc"][0].data, wn)  # renormalised in place
        dx_ref, dw_ref = mip_backward(x.astype(np.float64), wn, label, margin, lam, df)
        close(net.blobs["x"].diff, dx_ref, rtol=5e-4, atol=5e-5)
        close(net.params["fc"][0].diff, dw_ref)
        assert not np.any(net.blobs["label"].diff)  # the label gets no gradient


def test_margin_inner_product_happynear_field_and_test_phase(tmp_path):
    """Field 232 (happynear's copy of the message) configures the layer too; TEST applies the margin."""
    rng = np.random.default_rng(7)
    m, k, n = 4, 3, 5
    body = input_layer((m, k), (m,)) + f"""
        layer {{ name: "fc" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "f" top: "lambda"
          margin_inner_product_param_happynear {{ num_output: {n} type: QUADRUPLE base: 0 }} }}
        """
    net = make_net(tmp_path, body, phase=caffe.TEST)
    x = rng.normal(size=(m, k))
    label = rng.integers(0, n, size=m)
    w = rng.normal(size=(n, k))
    net.params["fc"][0].data[...] = w
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = label
    net.forward()
    f_ref, _ = mip_forward(x, w, label, "QUADRUPLE", 0.0)
    close(net.blobs["f"].data, f_ref)


def test_margin_inner_product_exact_gradient_is_refused(tmp_path):
    """exact_gradient (a caffe_torch extension) is not in the C++ build: refused, naming the layer."""
    proto = tmp_path / "exact.prototxt"
    proto.write_text(input_layer((2, 3), (2,)) + """
        layer { name: "fc_exact" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "f" top: "lambda"
          margin_inner_product_param { num_output: 4 type: QUADRUPLE exact_gradient: true } }
        """)
    code = f"import caffe; caffe.Net({str(proto)!r}, caffe.TRAIN)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=1800)      # a hang guard only
    assert res.returncode != 0
    assert "fc_exact" in res.stderr and "exact_gradient" in res.stderr


# ------------------------------------------------------------------------------------ Normalize
@pytest.mark.parametrize("kind", ["L2", "L1"])
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 2, 5)], ids=["NxC", "NxCxHxW"])
@pytest.mark.parametrize("norm_top,bp_norm", [(False, False), (True, False), (True, True)],
                         ids=["one-top", "norm-top", "bp_norm"])
def test_normalize(tmp_path, kind, shape, norm_top, bp_norm):
    rng = np.random.default_rng(3)
    tops = 'top: "y"' + (' top: "norm"' if norm_top else "")
    net = make_net(tmp_path, input_layer(shape, tops=("x",)) + f"""
        layer {{ name: "n" type: "Normalize" bottom: "x" {tops}
          normalize_param {{ normalize_type: "{kind}" bp_norm: {str(bp_norm).lower()} }} }}
        """)
    # like the fork, the tops are 4-D: (num, channels, height, width) and the norm (num, 1, height, width)
    legacy = tuple(shape) + (1,) * (4 - len(shape))
    assert net.blobs["y"].data.shape == legacy
    norm_shape = (legacy[0], 1) + legacy[2:]
    if norm_top:
        assert net.blobs["norm"].data.shape == norm_shape
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=legacy)
    dnorm = rng.normal(size=norm_shape) if norm_top else None
    net.blobs["x"].data[...] = x
    net.forward()
    net.blobs["y"].diff[...] = dy
    if norm_top:
        net.blobs["norm"].diff[...] = dnorm
    net.backward()
    flat = (shape[0], shape[1], -1)
    y, norm, dx = normalize_ref(x.astype(np.float64).reshape(flat), kind, dy.reshape(flat),
                                dnorm.reshape(shape[0], 1, -1) if bp_norm else None)
    close(net.blobs["y"].data, y.reshape(legacy))
    if norm_top:
        close(net.blobs["norm"].data, norm.reshape(norm_shape))
    close(net.blobs["x"].diff, dx.reshape(shape))


def test_normalize_epsilon_is_inside_the_root(tmp_path):
    net = make_net(tmp_path, input_layer((1, 2), tops=("x",)) + """
        layer { name: "n" type: "Normalize" bottom: "x" top: "y" top: "norm" }
        """)
    net.blobs["x"].data[...] = [[0.0, 1e-3]]
    net.forward()
    assert net.blobs["norm"].data.ravel()[0] == pytest.approx(np.sqrt(1e-6 + 1e-6), rel=1e-5)


@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_normalize_in_place(tmp_path, kind):
    rng = np.random.default_rng(4)
    net = make_net(tmp_path, input_layer((3, 5, 1, 1), tops=("x",)) + f"""
        layer {{ name: "n" type: "Normalize" bottom: "x" top: "x"
          normalize_param {{ normalize_type: "{kind}" }} }}
        """)
    x = rng.normal(size=(3, 5, 1, 1))
    dy = rng.normal(size=(3, 5, 1, 1))
    net.blobs["x"].data[...] = x
    net.forward()
    y, _, dx = normalize_ref(x.reshape(3, 5, 1), kind, dy.reshape(3, 5, 1))
    close(net.blobs["x"].data, y.reshape(x.shape))
    net.blobs["x"].diff[...] = dy
    net.backward()
    close(net.blobs["x"].diff, dx.reshape(x.shape))


# ------------------------------------------------------------------------------------ InnerProduct normalize
@pytest.mark.parametrize("bias_term", [True, False])
def test_inner_product_normalize(tmp_path, bias_term):
    rng = np.random.default_rng(5)
    m, k, n = 5, 4, 3
    net = make_net(tmp_path, input_layer((m, k), tops=("x",)) + f"""
        layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y"
          inner_product_param {{ num_output: {n} normalize: true bias_term: {str(bias_term).lower()}
            weight_filler {{ type: "gaussian" std: 1 }} }} }}
        """)
    x = rng.normal(size=(m, k))
    w = rng.normal(size=(n, k)) * 2
    net.params["ip"][0].data[...] = w
    if bias_term:
        b = rng.normal(size=n)
        net.params["ip"][1].data[...] = b
    dy = rng.normal(size=(m, n))
    out = run_fb(net, {"x": x}, "y", dy)
    w32 = w.astype(np.float32).astype(np.float64)
    wn = w32 / np.sqrt((w32**2).sum(axis=1, keepdims=True) + 1e-6)
    close(net.params["ip"][0].data, wn)  # in place
    close(out["y"], x @ wn.T + (b if bias_term else 0))
    close(net.params["ip"][0].diff, dy.T @ x)  # plain backward with the normalised W
    close(net.blobs["x"].diff, dy @ wn)
    if bias_term:
        close(net.params["ip"][1].diff, dy.sum(axis=0))


def test_inner_product_normalize_transpose_rescales_memory_runs(tmp_path):
    """As in the fork, with transpose: true the K x N blob is rescaled as num_output runs of K values."""
    rng = np.random.default_rng(8)
    m, k, n = 2, 3, 4
    net = make_net(tmp_path, input_layer((m, k), tops=("x",)) + f"""
        layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y"
          inner_product_param {{ num_output: {n} normalize: true transpose: true bias_term: false }} }}
        """)
    w = rng.normal(size=(k, n)) * 2  # the blob is K x N when transposed
    x = rng.normal(size=(m, k))
    net.params["ip"][0].data[...] = w
    net.blobs["x"].data[...] = x
    net.forward()
    runs = w.astype(np.float32).astype(np.float64).reshape(n, k)
    wn = (runs / np.sqrt((runs**2).sum(axis=1, keepdims=True) + 1e-6)).reshape(k, n)
    close(net.params["ip"][0].data, wn)
    close(net.blobs["y"].data, x @ wn)


def test_inner_product_without_normalize_is_bvlc(tmp_path):
    rng = np.random.default_rng(6)
    net = make_net(tmp_path, input_layer((3, 4), tops=("x",)) + """
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
        """)
    w = rng.normal(size=(2, 4)) * 2
    x = rng.normal(size=(3, 4))
    net.params["ip"][0].data[...] = w
    net.blobs["x"].data[...] = x
    net.forward()
    close(net.params["ip"][0].data, w)  # untouched
    close(net.blobs["y"].data, x @ w.T)


# ------------------------------------------------------------------------------------ LabelSpecificAdd
def lsa_net(tmp_path, param, phase=None, in_place=False, bias_top=False, n=4, d=3):
    top = "x" if in_place else "y"
    tops = f'top: "{top}"' + (' top: "bias"' if bias_top else "")
    return make_net(tmp_path, input_layer((n, d), (n,)) + f"""
        layer {{ name: "lsa" type: "LabelSpecificAdd" bottom: "x" bottom: "label" {tops}
          label_specific_add_param {{ {param} }} }}
        """, phase=phase), top


def lsa_ref(x, label, bias):
    y = x.copy()
    for i, t in enumerate(label):
        if y[i, t] > -bias:
            y[i, t] += bias
    return y


@pytest.mark.parametrize("in_place", [False, True])
def test_label_specific_add_train(tmp_path, in_place):
    net, top = lsa_net(tmp_path, "bias: -0.35", in_place=in_place)
    x = np.array([[0.9, 0.1, 0.2], [0.35, 0.5, 0.0], [0.2, 0.3, 0.36], [0.1, -0.2, 0.5]], np.float32)
    label = np.array([0, 0, 2, 1])
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = label
    net.forward()
    y = net.blobs[top].data.copy()
    # strictly greater: the target logit equal to 0.35 (row 1) is left alone
    np.testing.assert_array_equal(y, lsa_ref(x, label, np.float32(-0.35)))
    assert y[1, 0] == np.float32(0.35) and y[0, 0] == np.float32(0.9) - np.float32(0.35)
    dy = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    net.blobs[top].diff[...] = dy
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, dy)  # identity


def test_label_specific_add_test_phase_is_identity(tmp_path):
    net, top = lsa_net(tmp_path, "bias: -0.35 transform_test: true", phase=caffe.TEST)
    x = np.random.default_rng(2).uniform(0.4, 1.0, size=(4, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = [0, 1, 2, 0]
    net.forward()
    np.testing.assert_array_equal(net.blobs[top].data, x)


def test_label_specific_add_annealing(tmp_path):
    param = "bias_base: -0.5 bias_gamma: 0.1 bias_power: 1 bias_min: -0.45 bias_max: -0.2 iteration: 0"
    net, top = lsa_net(tmp_path, param, bias_top=True)
    x = np.full((4, 3), 0.9, np.float32)
    label = np.array([0, 1, 2, 0])
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = label
    seen = []
    for it in range(6):
        net.forward()
        expect = min(max(-0.5 + (1 + 0.1 * it) ** 1 - 1, -0.45), -0.2)
        seen.append(float(net.blobs["bias"].data[0]))
        close(net.blobs[top].data, lsa_ref(x.astype(np.float64), label, expect), atol=1e-6)
    np.testing.assert_allclose(seen, [-0.45, -0.4, -0.3, -0.2, -0.2, -0.2], atol=1e-6)


# ------------------------------------------------------------------------------------ AdditiveAngularMargin
def aam_ref(x, label, m, easy, dy):
    """Target column: cos(theta + m) where c > cos(pi - m) (easy: c > 0), else c - m sin m (easy: c)."""
    y, dx = x.copy(), dy.copy()
    for i, t in enumerate(label):
        c = x[i, t]
        if c > (0.0 if easy else np.cos(np.pi - m)):
            theta = np.arccos(c)
            y[i, t] = np.cos(theta + m)
            dx[i, t] = dy[i, t] * np.sin(theta + m) / np.sin(theta)  # d cos(theta + m) / dc
        else:
            y[i, t] = c if easy else c - m * np.sin(m)
    return y, dx


@pytest.mark.parametrize("easy", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_additive_angular_margin(tmp_path, easy, in_place):
    top = "x" if in_place else "y"
    n, d, m = 8, 5, 0.5
    net = make_net(tmp_path, input_layer((n, d), (n,)) + f"""
        layer {{ name: "aam" type: "AdditiveAngularMargin" bottom: "x" bottom: "label" top: "{top}"
          additive_angular_margin_param {{ margin: {m} easy_margin: {str(easy).lower()} }} }}
        """)
    rng = np.random.default_rng(9)
    x = rng.uniform(-0.99, 0.99, size=(n, d))
    label = np.arange(n) % d
    x[0, label[0]] = -0.95  # below cos(pi - m): the c - m sin m branch
    x[1, label[1]] = -0.3   # between: the branch that differs with easy_margin
    dy = rng.normal(size=(n, d))
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = label
    net.forward()
    y_ref, dx_ref = aam_ref(x.astype(np.float32).astype(np.float64), label, np.float32(m), easy, dy)
    close(net.blobs[top].data, y_ref)
    net.blobs[top].diff[...] = dy
    net.backward()
    close(net.blobs["x"].diff, dx_ref)


def test_additive_angular_margin_test_phase_is_identity(tmp_path):
    net = make_net(tmp_path, input_layer((3, 4), (3,)) + """
        layer { name: "aam" type: "AdditiveAngularMargin" bottom: "x" bottom: "label" top: "y" }
        """, phase=caffe.TEST)
    x = np.random.default_rng(1).uniform(-1, 1, size=(3, 4)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = [0, 1, 2]
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, x)


# ------------------------------------------------------------------------------------ .caffemodel
def test_caffemodel_readable_by_caffe_torch_proto(tmp_path):
    """A .caffemodel saved by this Caffe parses with caffe_torch's NetParameter and holds the same blobs."""
    ours = pytest.importorskip("caffe_torch.proto.caffe_pb2")
    net = mip_net(tmp_path, 2, 3, 4, "QUADRUPLE", 1000, 0.12, 1, 5)
    net.blobs["x"].data[...] = np.random.default_rng(0).normal(size=(2, 3))
    net.blobs["label"].data[...] = [1, 2]
    net.forward()
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    msg = ours.NetParameter.FromString(path.read_bytes())
    layer = next(lp for lp in msg.layer if lp.name == "fc")
    assert layer.type == "MarginInnerProduct"
    assert layer.margin_inner_product_param.type == ours.MarginInnerProductParameter.QUADRUPLE
    blob = layer.blobs[0]
    np.testing.assert_array_equal(np.array(blob.data, np.float32).reshape(tuple(blob.shape.dim)),
                                  net.params["fc"][0].data)
    # and back: the file loads into a fresh Caffe net with the same weights
    net2 = mip_net(tmp_path, 2, 3, 4, "QUADRUPLE", 1000, 0.12, 1, 5)
    net2.copy_from(str(path))
    np.testing.assert_array_equal(net2.params["fc"][0].data, net.params["fc"][0].data)
