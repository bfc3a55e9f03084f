"""RNN, LSTM and LSTMUnit against NumPy references of Caffe's RecurrentLayer semantics (the unrolled net's
equations, the hidden state carried between forwards, expose_hidden, static input), LSTMUnit's backward formula,
gradcheck (float64) where the backward is the derivative (binary cont), and a .caffemodel written by the real
Caffe build loading into caffe_torch (marked `caffe`; skipped without the build)."""

import os

import numpy as np
import pytest
import torch
from fp import U64, assert_within, gamma
from test_layers_common import make, rnd
from torch.func import functional_call

from caffe_torch.errors import LayerError

T, N, D, H, S = 3, 2, 4, 3, 5
# the largest |x| the tests feed (rnd(T, n, D, seed) for n <= N + 1 is a prefix of the (T, N + 1, D) draw)
X_MAX = max(float(rnd(T, N + 1, D, seed=k).abs().max()) for k in range(4))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def cont_of(*rows):
    return torch.tensor(rows, dtype=torch.float64)


CONT = cont_of([0, 0], [1, 0], [1, 1])          # T x N: stream 1 restarts at t = 1


def filled(type_name, text, shapes):
    full = text[:-1] + ' weight_filler { type: "gaussian" std: 0.7 } bias_filler { type: "gaussian" } }'
    states = {"RNN": 1, "LSTM": 2}[type_name] if "expose_hidden: true" in text else 0
    return make(type_name, full, shapes, n_top=1 + states)


def np_rnn(blobs, x, cont, h0, xs=None):
    """RNNLayer's unrolled net: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static xs]),
    o_t = tanh(W_ho h_t + b_o). Returns (o, h_T)."""
    w_xh, b_h, *rest = blobs
    w_s = rest.pop(0) if xs is not None else None
    w_hh, w_ho, b_o = rest
    h, outs = h0, []
    for t in range(x.shape[0]):
        a = (cont[t][:, None] * h) @ w_hh.T + x[t].reshape(x.shape[1], -1) @ w_xh.T + b_h
        if xs is not None:
            a = a + xs.reshape(xs.shape[0], -1) @ w_s.T
        h = np.tanh(a)
        outs.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(outs), h


def np_lstm_unit(c_prev, gates, cont):
    """LSTMUnitLayer::Forward_cpu on (N, H), (N, 4H), (N,)."""
    hd = c_prev.shape[1]
    i, o, g = sigmoid(gates[:, :hd]), sigmoid(gates[:, 2 * hd:3 * hd]), np.tanh(gates[:, 3 * hd:])
    f = np.where(cont[:, None] == 0, 0, cont[:, None] * sigmoid(gates[:, hd:2 * hd]))
    c = f * c_prev + i * g
    return c, o * np.tanh(c)


def np_lstm(blobs, x, cont, h0, c0, xs=None):
    """LSTMLayer's unrolled net; returns (h over time, h_T, c_T)."""
    w_xc, b_c, *rest = blobs
    w_s = rest.pop(0) if xs is not None else None
    (w_hc,) = rest
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        gates = (cont[t][:, None] * h) @ w_hc.T + x[t].reshape(x.shape[1], -1) @ w_xc.T + b_c
        if xs is not None:
            gates = gates + xs.reshape(xs.shape[0], -1) @ w_s.T
        c, h = np_lstm_unit(c, gates, cont[t])
        outs.append(h)
    return np.stack(outs), h, c


def blobs_np(layer):
    return [b.detach().numpy() for b in layer.blobs]


def sequence_bound(layer, x_max, steps, lstm, xs_max=0.0, u=U64):
    """How far the layer's float64 outputs may lie from np_rnn / np_lstm after `steps` time steps (the state
    carried through every forward of a test), max norm (tests/fp.py): each pre-activation is a K-term sum,
    within 2 gamma_K of M = |W_rec| h_max + |W_x| x_max + |b| (+ |W_s| xs_max), h_max = 1, plus the
    recurrent weights times the state's error so far; tanh is 1-Lipschitz, sigmoid 1/4, each adds 2 u.
    RNN: o_t = tanh(W_ho h_t + b_o) adds one more such sum. LSTM: c_t = f c_(t-1) + i g, |c_t| <= t."""
    blobs = [np.abs(b) for b in blobs_np(layer)]
    w_x, b_h = blobs[0], blobs[1]
    w_s = blobs[2] if xs_max else None
    w_rec = blobs[3] if xs_max else blobs[2]
    norm = lambda w: float(w.sum(axis=1).max())              # noqa: E731  (the max-norm of a matrix)
    k = w_x.shape[1] + w_rec.shape[1] + 1 + (w_s.shape[1] if xs_max else 0)
    m = norm(w_rec) + norm(w_x) * x_max + float(b_h.max()) + (norm(w_s) * xs_max if xs_max else 0.0)
    e_h = e_c = c_max = worst = 0.0
    for _ in range(steps):
        e_a = 2 * gamma(k, u) * m + norm(w_rec) * e_h
        if lstm:
            e_c += (c_max / 4 + 1 / 4 + 1) * e_a + 8 * u * (c_max + 1)
            c_max += 1
            e_h = e_a / 4 + e_c + 4 * u
            worst = max(worst, e_h, e_c)
        else:
            e_h = e_a + 2 * u
            w_ho, b_o = blobs[-2], blobs[-1]
            e_o = 2 * gamma(w_ho.shape[1] + 1, u) * (norm(w_ho) + float(b_o.max())) + norm(w_ho) * e_h + 2 * u
            worst = max(worst, e_h, e_o)
    return worst


# ----------------------------------------------------------------------------- blobs as Caffe lays them out
@pytest.mark.parametrize("type_name,static,shapes", [
    ("RNN", False, [(H, D), (H,), (H, H), (H, H), (H,)]),
    ("RNN", True, [(H, D), (H,), (H, S), (H, H), (H, H), (H,)]),
    ("LSTM", False, [(4 * H, D), (4 * H,), (4 * H, H)]),
    ("LSTM", True, [(4 * H, D), (4 * H,), (4 * H, S), (4 * H, H)]),
])
def test_blob_order_and_shapes_are_caffes(type_name, static, shapes):
    bottoms = [(T, N, D), (T, N)] + [(N, S)] * static
    layer = make(type_name, f"recurrent_param {{ num_output: {H} }}", bottoms)
    assert [tuple(b.shape) for b in layer.blobs] == shapes
    assert not any(b.detach().any() for b in layer.blobs)     # unset fillers: constant 0, as Caffe


def test_x_is_flattened_from_axis_2():
    layer = make("RNN", f"recurrent_param {{ num_output: {H} }}", [(T, N, 2, 3), (T, N)])
    assert tuple(layer.blobs[0].shape) == (H, 6)
    assert layer.top_shapes([(T, N, 2, 3), (T, N)]) == [(T, N, H)]


# ----------------------------------------------------------------------------- forward vs NumPy, with the carry
@pytest.mark.parametrize("static", [False, True])
def test_rnn_forward_and_hidden_state_carried_between_forwards(static):
    bottoms = [(T, N, D), (T, N)] + [(N, S)] * static
    layer = filled("RNN", f"recurrent_param {{ num_output: {H} }}", bottoms)
    xs = rnd(N, S, seed=3) if static else None
    h = np.zeros((N, H))
    for k, cont in enumerate([CONT, cont_of([1, 1], [1, 1], [0, 1]), cont_of([1, 0], [1, 1], [1, 1])]):
        x = rnd(T, N, D, seed=k)
        y = layer(x, cont, *([xs] if static else []))
        ref, h = np_rnn(blobs_np(layer), x.numpy(), cont.numpy(), h, None if xs is None else xs.numpy())
        assert tuple(y.shape) == (T, N, H)
        xs_max = float(xs.abs().max()) if static else 0.0
        assert_within(y.detach().numpy(), ref, sequence_bound(layer, X_MAX, T * (k + 1), False, xs_max))


@pytest.mark.parametrize("static", [False, True])
def test_lstm_forward_and_state_carried_between_forwards(static):
    bottoms = [(T, N, D), (T, N)] + [(N, S)] * static
    layer = filled("LSTM", f"recurrent_param {{ num_output: {H} }}", bottoms)
    xs = rnd(N, S, seed=3) if static else None
    h, c = np.zeros((N, H)), np.zeros((N, H))
    for k, cont in enumerate([CONT, cont_of([1, 1], [1, 1], [0, 1])]):
        x = rnd(T, N, D, seed=k)
        y = layer(x, cont, *([xs] if static else []))
        ref, h, c = np_lstm(blobs_np(layer), x.numpy(), cont.numpy(), h, c, None if xs is None else xs.numpy())
        xs_max = float(xs.abs().max()) if static else 0.0
        assert_within(y.detach().numpy(), ref, sequence_bound(layer, X_MAX, T * (k + 1), True, xs_max))


def test_carry_when_the_batch_size_changes():
    """More streams than held: start from zeros; fewer: the first ones carry on; back to more within what was
    held: the extra streams carry the state they last had (Caffe's blob memory rules; against the real build:
    test_batch_size_changes_match_real_caffe)."""
    layer = filled("RNN", f"recurrent_param {{ num_output: {H} }}", [(T, N, D), (T, N)])
    ones = torch.ones(T, N + 1, dtype=torch.float64)
    layer(rnd(T, N, D), ones[:, :N])
    x = rnd(T, N + 1, D, seed=1)
    ref, h = np_rnn(blobs_np(layer), x.numpy(), ones.numpy(), np.zeros((N + 1, H)))
    assert_within(layer(x, ones).detach().numpy(), ref, sequence_bound(layer, X_MAX, T, False))
    x = rnd(T, 1, D, seed=2)
    ref, h1 = np_rnn(blobs_np(layer), x.numpy(), ones.numpy()[:, :1], h[:1])
    assert_within(layer(x, ones[:, :1]).detach().numpy(), ref, sequence_bound(layer, X_MAX, 2 * T, False))
    x = rnd(T, N, D, seed=3)
    ref, _ = np_rnn(blobs_np(layer), x.numpy(), ones.numpy()[:, :N], np.concatenate([h1, h[1:N]]))
    assert_within(layer(x, ones[:, :N]).detach().numpy(), ref, sequence_bound(layer, X_MAX, 3 * T, False))


def test_expose_hidden_reads_h0_c0_and_gives_hT_cT():
    text = f"recurrent_param {{ num_output: {H} expose_hidden: true }}"
    rnn = filled("RNN", text, [(T, N, D), (T, N), (1, N, H)])
    x, h0 = rnd(T, N, D), rnd(1, N, H, seed=1)
    cont = cont_of([1, 0], [1, 1], [1, 1])
    for _ in range(2):                                  # no carry: the same result twice
        o, h_t = rnn(x, cont, h0)
        ref_o, ref_h = np_rnn(blobs_np(rnn), x.numpy(), cont.numpy(), h0.numpy()[0])
        bound = sequence_bound(rnn, max(X_MAX, float(h0.abs().max())), T, False)
        assert_within(o.detach().numpy(), ref_o, bound)
        assert_within(h_t.detach().numpy(), ref_h[None], bound)
    lstm = filled("LSTM", text, [(T, N, D), (T, N), (N, S), (1, N, H), (1, N, H)])
    xs, c0 = rnd(N, S, seed=2), rnd(1, N, H, seed=3)
    h, h_t, c_t = lstm(x, cont, xs, h0, c0)
    ref_h, ref_ht, ref_ct = np_lstm(blobs_np(lstm), x.numpy(), cont.numpy(), h0.numpy()[0], c0.numpy()[0],
                                    xs.numpy())
    bound = sequence_bound(lstm, max(X_MAX, float(h0.abs().max()), float(c0.abs().max())), T + 1, True,
                           float(xs.abs().max()))          # (c0 counts as one step more of |c|)
    for got, ref in ((h, ref_h), (h_t, ref_ht[None]), (c_t, ref_ct[None])):
        assert_within(got.detach().numpy(), ref, bound)


def test_shape_errors_name_the_rule():
    text = f"recurrent_param {{ num_output: {H} }}"
    with pytest.raises(LayerError, match="cont must be T x N"):
        make("RNN", text, [(T, N, D), (T, N + 1)])
    with pytest.raises(LayerError, match="num_output must be positive"):
        make("LSTM", "", [(T, N, D), (T, N)])
    with pytest.raises(LayerError, match="hidden state bottom 2 must be"):
        make("RNN", f"recurrent_param {{ num_output: {H} expose_hidden: true }}", [(T, N, D), (T, N), (1, N, 2)],
             n_top=2)
    layer = make("RNN", text, [(T, N, D), (T, N)])
    with pytest.raises(LayerError, match="T fixed at setup"):
        layer.top_shapes([(T + 1, N, D), (T + 1, N)])


# ----------------------------------------------------------------------------- backward
def check_gradients(layer, inputs, differentiable):
    """gradcheck w.r.t. the inputs marked differentiable and every blob; the others must get no gradient."""
    names = [f"blobs.{i}" for i in range(len(layer.blobs))]
    params = [b.detach().clone().requires_grad_(True) for b in layer.blobs]
    diff_in = [x.detach().clone().requires_grad_(True) for x, d in zip(inputs, differentiable) if d]

    def f(*args):
        it = iter(args[: len(diff_in)])
        xs = [next(it) if d else x for x, d in zip(inputs, differentiable)]
        layer._carry = None                     # the same (zero) initial state for every evaluation
        out = functional_call(layer, dict(zip(names, args[len(diff_in):])), tuple(xs))
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(f, tuple(diff_in + params), eps=1e-6, atol=1e-6, rtol=1e-5)
    others = [x.detach().clone().requires_grad_(True) for x in inputs]
    layer._carry = None
    outs = layer(*others)
    outs = outs if isinstance(outs, tuple) else (outs,)
    got = torch.autograd.grad(outs[0].sum(), others, allow_unused=True)
    for g, d in zip(got, differentiable):
        assert (g is not None) == d
    for extra in outs[1:]:                       # exposed h_T / c_T: no gradient goes back through them
        assert not extra.requires_grad


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
@pytest.mark.parametrize("variant", ["plain", "static", "expose_hidden"])
def test_gradcheck(type_name, variant):
    n_states = 2 if type_name == "LSTM" else 1
    text = f"recurrent_param {{ num_output: {H}{' expose_hidden: true' if variant == 'expose_hidden' else ''} }}"
    inputs = [rnd(T, N, D), CONT]
    if variant == "static":
        inputs.append(rnd(N, S, seed=1))
    if variant == "expose_hidden":
        inputs += [rnd(1, N, H, seed=2 + k) for k in range(n_states)]
    layer = filled(type_name, text, [tuple(x.shape) for x in inputs])
    # x and x_static get gradients; cont never (Caffe: AllowForceBackward false); h_0 / c_0 neither (Caffe shares
    # only their data with the unrolled net)
    static = variant == "static"
    differentiable = [True, False] + [True] * static + [False] * (len(inputs) - 2 - static)
    check_gradients(layer, inputs, differentiable)


def test_no_gradient_crosses_batches():
    layer = filled("RNN", f"recurrent_param {{ num_output: {H} }}", [(T, N, D), (T, N)])
    ones = torch.ones(T, N, dtype=torch.float64)
    x1 = rnd(T, N, D).requires_grad_(True)
    layer(x1, ones)
    y2 = layer(rnd(T, N, D, seed=1), ones)
    assert torch.autograd.grad(y2.sum(), x1, allow_unused=True)[0] is None
    assert not any(s.requires_grad for s in layer._carry)


# ----------------------------------------------------------------------------- LSTMUnit
def np_lstm_unit_backward(c_prev, gates, cont, dc, dh):
    """LSTMUnitLayer::Backward_cpu (the forget gate's gradient is f (1 - f) with f = cont * sigmoid)."""
    hd = c_prev.shape[1]
    i, o, g = sigmoid(gates[:, :hd]), sigmoid(gates[:, 2 * hd:3 * hd]), np.tanh(gates[:, 3 * hd:])
    f = np.where(cont[:, None] == 0, 0, cont[:, None] * sigmoid(gates[:, hd:2 * hd]))
    tanh_c = np.tanh(f * c_prev + i * g)
    c_term = dc + dh * o * (1 - tanh_c ** 2)
    d_gates = np.concatenate([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f),
                              dh * tanh_c * o * (1 - o), c_term * i * (1 - g ** 2)], axis=1)
    return c_term * f, d_gates


@pytest.mark.parametrize("cont", [[1.0, 0.0, 1.0, 0.0], [0.5, 2.0, 0.0, 1.0]], ids=["binary", "non-binary"])
def test_lstm_unit_forward_and_caffes_backward(cont):
    layer = make("LSTMUnit", "", [(1, 4, H), (1, 4, 4 * H), (1, 4)], n_top=2)
    c_prev, gates = rnd(1, 4, H), rnd(1, 4, 4 * H, seed=1)
    cont_t = torch.tensor([cont], dtype=torch.float64)
    cg, gg, kg = (t.clone().requires_grad_(True) for t in (c_prev, gates, cont_t))
    c, h = layer(cg, gg, kg)
    ref_c, ref_h = np_lstm_unit(c_prev.numpy()[0], gates.numpy()[0], cont_t.numpy()[0])
    # every output (forward and Caffe's backward) is a sum of at most 4 products of at most 5 factors, each
    # factor (inputs, cont, sigmoids, tanhs) within 2 u of its value and at most A in size: within 48 u A^5
    a = max(1.0, float(c_prev.abs().max()), 2.0, *(float(v.abs().max()) for v in (rnd(1, 4, H, seed=2),
                                                                                  rnd(1, 4, H, seed=3))))
    unit_bound = 48 * U64 * a ** 5
    assert_within(c.detach().numpy()[0], ref_c, unit_bound)
    assert_within(h.detach().numpy()[0], ref_h, unit_bound)
    dc, dh = rnd(1, 4, H, seed=2), rnd(1, 4, H, seed=3)
    d_c_prev, d_gates, d_cont = torch.autograd.grad((c, h), (cg, gg, kg), (dc, dh), allow_unused=True)
    ref_dc, ref_dg = np_lstm_unit_backward(c_prev.numpy()[0], gates.numpy()[0], cont_t.numpy()[0],
                                           dc.numpy()[0], dh.numpy()[0])
    assert_within(d_c_prev.numpy()[0], ref_dc, unit_bound)
    assert_within(d_gates.numpy()[0], ref_dg, unit_bound)
    assert d_cont is None
    if cont == [1.0, 0.0, 1.0, 0.0]:     # binary cont: Caffe's backward is the derivative
        assert torch.autograd.gradcheck(lambda a, b: layer(a, b, cont_t), (c_prev.clone().requires_grad_(True),
                                                                           gates.clone().requires_grad_(True)))
    else:
        # not the derivative where cont is not 0 or 1: d(cont sigmoid(a))/da = cont s (1 - s), Caffe f (1 - f)
        k, a = cont_t.numpy()[0][:, None], gates.numpy()[0][:, H:2 * H]
        s = sigmoid(a)
        i, g = sigmoid(gates.numpy()[0][:, :H]), np.tanh(gates.numpy()[0][:, 3 * H:])
        tanh_c = np.tanh(np.where(k == 0, 0, k * s) * c_prev.numpy()[0] + i * g)
        o = sigmoid(gates.numpy()[0][:, 2 * H:3 * H])
        c_term = dc.numpy()[0] + dh.numpy()[0] * o * (1 - tanh_c ** 2)
        exact = c_term * c_prev.numpy()[0] * k * s * (1 - s)
        got = d_gates.numpy()[0][:, H:2 * H]
        binary = (k[:, 0] == 0) | (k[:, 0] == 1)
        np.testing.assert_allclose(got[binary], exact[binary], rtol=1e-12, atol=1e-15)
        assert (np.abs(got[~binary] - exact[~binary]) > 1e-3 * np.abs(exact[~binary])).all()


def test_lstm_unit_shape_errors():
    with pytest.raises(LayerError, match="1 x N x 4H"):
        make("LSTMUnit", "", [(1, 4, H), (1, 4, 3 * H), (1, 4)], n_top=2)


# ----------------------------------------------------------------------------- weights from the real Caffe build
@pytest.mark.caffe
@pytest.mark.parametrize("type_name,extra", [("RNN", ""), ("LSTM", ""), ("LSTM", "static")])
def test_caffemodel_from_real_caffe_loads(tmp_path, type_name, extra):
    """Real Caffe fills the blobs (gaussian) and saves a .caffemodel; caffe_torch loads it and gives the same
    outputs for the same inputs (float32, relative 1e-5)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    from speaker.engine import try_import_pycaffe

    caffe, err = try_import_pycaffe(set())
    if caffe is None:
        pytest.skip(f"real pycaffe not built: {err}")
    import caffe_torch

    tops = 'top: "x" top: "cont"' + (' top: "xs"' if extra else "")
    shapes = f"shape {{ dim: {T} dim: {N} dim: {D} }} shape {{ dim: {T} dim: {N} }}" + \
        (f" shape {{ dim: {N} dim: {S} }}" if extra else "")
    bottoms = 'bottom: "x" bottom: "cont"' + (' bottom: "xs"' if extra else "")
    proto = tmp_path / "net.prototxt"
    proto.write_text(f'layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes} }} }}\n'
                     f'layer {{ name: "r" type: "{type_name}" {bottoms} top: "y" recurrent_param {{ num_output: {H} '
                     'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }\n')
    caffe.set_mode_cpu()
    theirs = caffe.Net(str(proto), caffe.TEST)
    weights = tmp_path / "net.caffemodel"
    theirs.save(str(weights))
    ours = caffe_torch.Net(str(proto), str(weights), caffe_torch.TEST)
    for a, b in zip(ours.params["r"], theirs.params["r"]):
        np.testing.assert_array_equal(a.data, b.data)
    rng = np.random.default_rng(0)
    for cont in (np.array([[0, 0], [1, 0], [1, 1]]), np.ones((T, N))):     # the second forward carries h, c
        inputs = {"x": rng.standard_normal((T, N, D)), "cont": cont}
        if extra:
            inputs["xs"] = rng.standard_normal((N, S))
        for net in (ours, theirs):
            for k, v in inputs.items():
                net.blobs[k].data[...] = v
            net.forward()
        ref = theirs.blobs["y"].data
        assert np.abs(ours.blobs["y"].data - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.caffe
@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_sgd_training_matches_real_caffe(tmp_path, type_name):
    """10 SGD steps (momentum, weight decay) of a recurrent layer under both engines' solvers: each step's
    forward starts from the previous step's carried hidden state; the loss and every param after every step
    agree (float32, relative 1e-5)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    from speaker.engine import try_import_pycaffe

    caffe, err = try_import_pycaffe(set())
    if caffe is None:
        pytest.skip(f"real pycaffe not built: {err}")
    import caffe_torch

    net = tmp_path / "net.prototxt"
    net.write_text(
        f'layer {{ name: "in" type: "Input" top: "x" top: "cont" top: "w" input_param {{ shape {{ dim: {T} '
        f'dim: {N} dim: {D} }} shape {{ dim: {T} dim: {N} }} shape {{ dim: {T} dim: {N} dim: {H} }} }} }}\n'
        f'layer {{ name: "r" type: "{type_name}" bottom: "x" bottom: "cont" top: "y" recurrent_param {{ '
        f'num_output: {H} weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" }} }} }}\n'
        'layer { name: "prod" type: "Eltwise" bottom: "y" bottom: "w" top: "yw" eltwise_param { operation: PROD } }\n'
        'layer { name: "loss" type: "Reduction" bottom: "yw" top: "loss" loss_weight: 1 }\n')
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}"\ntype: "SGD"\nbase_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.9\n'
                      f'weight_decay: 0.01\nmax_iter: 10\ndisplay: 0\nsnapshot_after_train: false\n'
                      f'snapshot_prefix: "{tmp_path / "s"}"\n')
    caffe.set_mode_cpu()
    caffe_torch.set_mode_cpu()
    ours, theirs = caffe_torch.get_solver(str(solver)), caffe.get_solver(str(solver))
    weights = tmp_path / "w.caffemodel"
    theirs.net.save(str(weights))
    ours.net.copy_from(str(weights))
    rng = np.random.default_rng(5)
    for step in range(10):
        batch = {"x": rng.standard_normal((T, N, D)), "cont": (rng.random((T, N)) < 0.7).astype(float),
                 "w": rng.standard_normal((T, N, H))}
        for s in (ours, theirs):
            for k, v in batch.items():
                s.net.blobs[k].data[...] = v
            s.step(1)
        ref = float(theirs.net.blobs["loss"].data)
        assert abs(float(ours.net.blobs["loss"].data) - ref) <= 1e-5 * max(abs(ref), 1.0), step
        for a, b in zip(ours.net.params["r"], theirs.net.params["r"]):
            assert np.abs(a.data - b.data).max() <= 1e-5 * np.abs(b.data).max(), step


@pytest.mark.caffe
def test_batch_size_changes_match_real_caffe(tmp_path):
    """net.reshape to N = 3, 2, 4, 3, 1, 4 streams in turn (all cont 1): the carried state follows Caffe's blob
    memory (zeros on growth past what was held, the first N streams on a shrink, older states on regrowth)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    from speaker.engine import try_import_pycaffe

    caffe, err = try_import_pycaffe(set())
    if caffe is None:
        pytest.skip(f"real pycaffe not built: {err}")
    import caffe_torch

    proto = tmp_path / "net.prototxt"
    proto.write_text(f'layer {{ name: "in" type: "Input" top: "x" top: "cont" input_param {{ shape {{ dim: {T} '
                     f'dim: 3 dim: {D} }} shape {{ dim: {T} dim: 3 }} }} }}\n'
                     f'layer {{ name: "r" type: "LSTM" bottom: "x" bottom: "cont" top: "y" recurrent_param {{ '
                     f'num_output: {H} weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }} }}\n')
    caffe.set_mode_cpu()
    theirs = caffe.Net(str(proto), caffe.TEST)
    weights = tmp_path / "net.caffemodel"
    theirs.save(str(weights))
    ours = caffe_torch.Net(str(proto), str(weights), caffe_torch.TEST)
    rng = np.random.default_rng(0)
    for n in (3, 2, 4, 3, 1, 4):
        x = rng.standard_normal((T, n, D))
        for net in (ours, theirs):
            net.blobs["x"].reshape(T, n, D)
            net.blobs["cont"].reshape(T, n)
            net.reshape()
            net.blobs["x"].data[...] = x
            net.blobs["cont"].data[...] = 1
            net.forward()
        ref = theirs.blobs["y"].data
        assert np.abs(ours.blobs["y"].data - ref).max() <= 1e-5 * np.abs(ref).max(), n
