"""caffe_torch's solvers against an independent NumPy implementation of Caffe's documented update rules.

The tiny net is data -> InnerProduct -> TanH -> InnerProduct -> SoftmaxWithLoss, its forward and backward
written out by hand in NumPy below. Data come from a test-only source layer (`_SolverTestData`) whose forward
returns the k-th batch of a fixed sequence, k being its own forward counter: every inner forward of an
iter_size step sees a different batch, and the counter (saved through the SolverState's layer_state
extension) lets a restored run see the same batches as the uninterrupted one.
"""

import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_torch as caffe
from caffe_torch import PrototxtError, WeightsError
from caffe_torch.layers.base import Layer, known_types, register
from caffe_torch.proto import caffe_pb2
from caffe_torch.solver import learning_rate

# ---------------------------------------------------------------------------------------------- data layer

N, D, H, C = 4, 3, 5, 3          # batch, input dim, hidden units, classes


def make_batch(k: int, n: int = N, d: int = D, c: int = C, test: bool = False):
    rs = np.random.RandomState(1000 + k + (50_000 if test else 0))
    return rs.randn(n, d) * 1.5, rs.randint(0, c, size=n)


if "_SolverTestData" not in known_types():
    @register("_SolverTestData")
    class _SolverTestData(Layer):
        """Source layer for these tests: tops (data (n, d), label (n,)); input_param gives shape {n d} and
        shape {c} (classes). Forward k returns make_batch(k) (TEST nets: a separate stream)."""

        num_bottoms = (0, 0)
        num_tops = (2, 2)

        def __init__(self, param, bottom_shapes, ctx):
            super().__init__(param, bottom_shapes, ctx)
            shp = param.input_param.shape
            self.n, self.d = int(shp[0].dim[0]), int(shp[0].dim[1])
            self.c = int(shp[1].dim[0])
            self.count = 0

        def top_shapes(self, bottom_shapes):
            return [(self.n, self.d), (self.n,)]

        def forward(self):
            x, y = make_batch(self.count, self.n, self.d, self.c, test=self.phase == caffe.TEST)
            self.count += 1
            return (torch.tensor(x, dtype=self._ctx_dtype, device=self._ctx_device),
                    torch.tensor(y, dtype=self._ctx_dtype, device=self._ctx_device))

        def get_state(self):
            return self.count

        def set_state(self, value):
            self.count = int(value)


NET = f"""
name: "tiny"
layer {{ name: "data" type: "_SolverTestData" top: "data" top: "label"
  input_param {{ shape {{ dim: {N} dim: {D} }} shape {{ dim: {C} }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: {H} weight_filler {{ type: "gaussian" std: 0.6 }}
    bias_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "act" type: "TanH" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param {{ lr_mult: 0.5 decay_mult: 2 }} param {{ lr_mult: 0 decay_mult: 1 }}
  inner_product_param {{ num_output: {C} weight_filler {{ type: "gaussian" std: 0.6 }}
    bias_filler {{ type: "gaussian" std: 0.2 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}
"""

# the same with a BatchNorm (three never-learned blobs) before the TanH
BN_NET = NET.replace('layer { name: "act"',
                     'layer { name: "bn" type: "BatchNorm" bottom: "ip1" top: "ip1" }\nlayer { name: "act"')

LR_MULT = [1.0, 2.0, 0.5, 0.0]      # W1, b1, W2, b2 (as in NET)
DECAY_MULT = [1.0, 0.0, 2.0, 1.0]


def f32(x: float) -> float:
    """A float field of the .proto as the solver sees it."""
    return float(np.float32(x))


def solver_text(fields: dict) -> str:
    out = []
    for k, v in fields.items():
        for item in (v if isinstance(v, list) else [v]):
            if isinstance(item, bool):
                out.append(f"{k}: {'true' if item else 'false'}")
            elif k in ("snapshot_format", "solver_mode", "solver_type"):               # enum fields
                out.append(f"{k}: {item}")
            elif isinstance(item, str):
                out.append(f'{k}: "{item}"')
            else:
                out.append(f"{k}: {item}")
    return "\n".join(out) + "\n"


def write_solver(d: Path, net_text: str = NET, name: str = "solver.prototxt", **fields) -> str:
    d.mkdir(parents=True, exist_ok=True)
    (d / "net.prototxt").write_text(net_text)
    fields = {"net": str(d / "net.prototxt"), "base_lr": 0.1, "lr_policy": "fixed", "max_iter": 100} | fields
    path = d / name
    path.write_text(solver_text(fields))
    return str(path)


# ---------------------------------------------------------------------------------------------- NumPy model

def np_forward_backward(ws, x, y):
    """Loss and gradients of the tiny net (Caffe's SoftmaxWithLoss, VALID normalisation)."""
    W1, b1, W2, b2 = ws
    a = np.tanh(x @ W1.T + b1)
    z = a @ W2.T + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    da = dz @ W2
    dh = da * (1 - a ** 2)
    return loss, [dh.T @ x, dh.sum(0), dz.T @ a, dz.sum(0)], p


def np_eval(ws, batches):
    """Mean loss and accuracy over `batches` (test net outputs)."""
    losses, accs = [], []
    for x, y in batches:
        loss, _, p = np_forward_backward(ws, x, y)
        losses.append(loss)
        accs.append(np.mean(p.argmax(1) == y))
    return float(np.mean(losses)), float(np.mean(accs))


def np_rule(kind: str, cfg: dict):
    """The per-blob update of each solver type, as Caffe's documentation writes it: (state, g, local_rate,
    it) -> update, `state` a dict of this blob's histories."""
    m = f32(cfg.get("momentum", 0.0))
    delta = f32(cfg.get("delta", 1e-8))

    def sgd(s, g, lr, it):
        s["h"] = m * s["h"] + lr * g
        return s["h"]

    def nesterov(s, g, lr, it):
        old = s["h"]
        s["h"] = m * old + lr * g
        return (1 + m) * s["h"] - m * old

    def adagrad(s, g, lr, it):
        s["h"] = s["h"] + g * g
        return lr * g / (np.sqrt(s["h"]) + delta)

    def rmsprop(s, g, lr, it):
        d = f32(cfg.get("rms_decay", 0.99))
        s["h"] = d * s["h"] + (1 - d) * g * g
        return lr * g / (np.sqrt(s["h"]) + delta)

    def adadelta(s, g, lr, it):
        s["h"] = m * s["h"] + (1 - m) * g * g
        u = g * np.sqrt((s["h2"] + delta) / (s["h"] + delta))
        s["h2"] = m * s["h2"] + (1 - m) * u * u
        return lr * u

    def adam(s, g, lr, it):
        b1, b2 = m, f32(cfg.get("momentum2", 0.999))
        s["h"] = b1 * s["h"] + (1 - b1) * g
        s["h2"] = b2 * s["h2"] + (1 - b2) * g * g
        t = it + 1
        return lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * s["h"] / (np.sqrt(s["h2"]) + delta)

    return {"SGD": sgd, "Nesterov": nesterov, "AdaGrad": adagrad, "RMSProp": rmsprop, "AdaDelta": adadelta,
            "Adam": adam}[kind]


def np_rate(cfg: dict, it: int) -> float:
    """Learning rate at iteration `it` by the documented formulas (no multistep here)."""
    base, policy = f32(cfg["base_lr"]), cfg["lr_policy"]
    gamma, power = f32(cfg.get("gamma", 0.0)), f32(cfg.get("power", 0.0))
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (it // cfg["stepsize"])
    if policy == "exp":
        return base * gamma ** it
    if policy == "inv":
        return base * (1 + gamma * it) ** (-power)
    raise AssertionError(policy)


def np_train(ws0, cfg: dict, steps: int, kind: str = "SGD"):
    """Caffe's Step()/ApplyUpdate() in NumPy: returns the weights after each step, the per-step losses and
    which steps were clipped."""
    ws = [w.copy() for w in ws0]
    states = [{"h": np.zeros_like(w), "h2": np.zeros_like(w)} for w in ws]
    rule = np_rule(kind, cfg)
    iter_size = cfg.get("iter_size", 1)
    clip = f32(cfg.get("clip_gradients", -1))
    wd = f32(cfg.get("weight_decay", 0.0))
    l1 = cfg.get("regularization_type", "L2") == "L1"
    traj, losses, clipped = [], [], []
    for it in range(steps):
        grads = [np.zeros_like(w) for w in ws]
        loss = 0.0
        for j in range(iter_size):
            x, y = make_batch(it * iter_size + j)
            lo, g, _ = np_forward_backward(ws, x, y)
            loss += lo
            grads = [a + b for a, b in zip(grads, g)]
        # Caffe computes no diff for a blob with lr_mult 0 (param_propagate_down false): it stays 0, also in
        # the clipping norm
        grads = [g * 0 if lr == 0 else g for g, lr in zip(grads, LR_MULT)]
        losses.append(loss / iter_size)
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        clipped.append(clip >= 0 and norm > clip)
        if clipped[-1]:
            grads = [g * (clip / norm) for g in grads]
        rate = np_rate(cfg, it)
        for i, (w, g) in enumerate(zip(ws, grads)):
            g = g / iter_size
            g = g + wd * DECAY_MULT[i] * (np.sign(w) if l1 else w)
            w -= rule(states[i], g, rate * LR_MULT[i], it)
        traj.append([w.copy() for w in ws])
    return traj, losses, clipped


def weights(solver) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().astype(np.float64).copy() for p, *_ in solver.net.learnable_params()]


# ---------------------------------------------------------------------------------------------- trajectories

MAIN = dict(type="SGD", base_lr=0.3, lr_policy="step", gamma=0.5, stepsize=12, momentum=0.9,
            weight_decay=0.02, iter_size=2, clip_gradients=0.9, max_iter=100)


def test_sgd_trajectory_matches_numpy_across_step_change_iter_size_and_clipping(tmp_path):
    cfg = dict(MAIN)
    caffe.set_random_seed(1)        # initial weights of this seed clip some steps, not all (checked below)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    names = [n for *_, n in s.net.learnable_params()]
    assert names == ["ip1[0]", "ip1[1]", "ip2[0]", "ip2[1]"]
    assert [lr for _, lr, _, _ in s.net.learnable_params()] == LR_MULT
    assert [dm for _, _, dm, _ in s.net.learnable_params()] == DECAY_MULT
    ws0 = weights(s)
    steps = 30
    traj, losses, clipped = np_train(ws0, cfg, steps)
    # the comparison is only meaningful if the interesting cases happen
    assert any(clipped) and not all(clipped)
    assert steps > 2 * cfg["stepsize"]                        # two rate changes
    for it in range(steps):
        s.step(1)
        assert s.iter == it + 1
        assert s.last_lr == pytest.approx(np_rate(cfg, it), rel=1e-12)
        assert s.smoothed_loss == pytest.approx(losses[it], rel=1e-9)
        for got, want in zip(weights(s), traj[it]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # lr_mult 0: never moves, whatever the weight decay
    np.testing.assert_array_equal(weights(s)[3], ws0[3])
    # the data layer ran once per inner forward
    assert s.net.layer_states() == {"data": steps * cfg["iter_size"]}


def test_param_diff_after_step_is_the_update(tmp_path):
    cfg = dict(type="SGD", base_lr=0.1, lr_policy="fixed", momentum=0.5)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    before = weights(s)
    s.step(1)
    after = weights(s)
    for (name, i), b, a in zip([("ip1", 0), ("ip1", 1), ("ip2", 0), ("ip2", 1)], before, after):
        np.testing.assert_allclose(s.net.params[name][i].diff, b - a, atol=1e-15)


def test_update_leaves_an_output_diff_and_the_scripts_array_alone(tmp_path):
    """A seed of the backward (an output's diff, the script's array given to backward) reaches a Scale's bias as
    a view of itself when the shapes match; the param's diff must not share its memory (fuzz seed 909240): the
    update rewrites the param's diff, and the output's diff and the script's array keep their values."""
    net = ('force_backward: true\ninput: "x" input_shape { dim: 1 dim: 2 dim: 1 dim: 1 }\n'
           'input: "s" input_shape { dim: 2 }\n'
           'layer { name: "scale" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { bias_term: true } }\n')
    s = caffe.get_solver(write_solver(tmp_path, net, type="RMSProp", weight_decay=0.1))
    n = s.net
    n.blobs["x"].data[...] = [[[[1.0]], [[2.0]]]]
    n.blobs["s"].data[...] = [0.5, -1.0]
    n.params["scale"][0].data[...] = [1.0, -1.0]
    n.forward()
    seed = np.array([[[[0.25]], [[-0.5]]]], np.float32)
    n.backward(y=seed)
    kept = n.blobs["y"].diff
    np.testing.assert_array_equal(kept, seed)
    s.step(1)                  # seeds the backward with y's diff (Caffe leaves an output's diff for the next one)
    np.testing.assert_array_equal(seed, [[[[0.25]], [[-0.5]]]])
    np.testing.assert_array_equal(n.blobs["y"].diff, seed)
    np.testing.assert_array_equal(kept, seed)
    assert not np.allclose(n.params["scale"][0].diff.ravel(), seed.ravel())


@pytest.mark.parametrize("kind, extra", [
    ("SGD", dict(regularization_type="L1", momentum=0.8, weight_decay=0.05)),
    ("Nesterov", dict(momentum=0.9, weight_decay=0.01)),
    ("Adam", dict(momentum=0.9, momentum2=0.99, delta=1e-6, weight_decay=0.01, base_lr=0.05)),
    ("AdaGrad", dict(weight_decay=0.01, delta=1e-6)),
    ("RMSProp", dict(rms_decay=0.9, weight_decay=0.01, base_lr=0.02)),
    ("AdaDelta", dict(momentum=0.95, delta=1e-6, base_lr=1.0, weight_decay=0.01)),
])
def test_other_solvers_match_numpy(tmp_path, kind, extra):
    cfg = dict(type=kind, base_lr=0.1, lr_policy="inv", gamma=0.1, power=0.75, iter_size=1, max_iter=100)
    cfg |= extra
    s = caffe.get_solver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    assert type(s).__name__ == f"{kind}Solver"
    ws0 = weights(s)
    steps = 10
    traj, _, _ = np_train(ws0, cfg, steps, kind)
    s.step(steps)
    for got, want in zip(weights(s), traj[-1]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not np.allclose(weights(s)[0], ws0[0])
    n_hist = 2 if kind in ("Adam", "AdaDelta") else 1
    assert len(s.history) == 4 * n_hist


def test_float32_net_follows_the_same_trajectory(tmp_path):
    cfg = dict(MAIN)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg))
    ws0 = weights(s)
    traj, _, _ = np_train(ws0, cfg, 15)
    s.step(15)
    for got, want in zip(weights(s), traj[-1]):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_batchnorm_statistics_are_neither_learned_nor_decayed(tmp_path):
    # Caffe forces lr_mult 0 on BatchNorm's three blobs: weight decay must not shrink the running sums.
    net = BN_NET
    s = caffe.SGDSolver(write_solver(tmp_path, net_text=net, base_lr=1.0, weight_decay=0.5, momentum=0.9),
                        dtype=torch.float64)
    assert len(s.history) == 7                         # 4 + BatchNorm's 3 (all learnable_params count)
    w1, b1 = (p.detach().numpy().copy() for p, *_ in s.net.learnable_params()[:2])
    s.step(1)
    x, _ = make_batch(0)
    h = x @ w1.T + b1
    bn = s.net.params["bn"]
    np.testing.assert_allclose(bn[0].data, h.mean(0), atol=1e-12)
    np.testing.assert_allclose(bn[1].data, h.var(0, ddof=1), atol=1e-12)
    np.testing.assert_allclose(bn[2].data, [1.0], atol=0)


# ---------------------------------------------------------------------------------------------- lr policies

def _param(**kw):
    p = caffe_pb2.SolverParameter(**kw)
    return p


@pytest.mark.parametrize("policy, kw, formula", [
    ("fixed", {}, lambda b, it: b),
    ("step", dict(gamma=0.5, stepsize=3), lambda b, it: b * f32(0.5) ** (it // 3)),
    ("exp", dict(gamma=0.9), lambda b, it: b * f32(0.9) ** it),
    ("inv", dict(gamma=0.1, power=0.75), lambda b, it: b * (1 + f32(0.1) * it) ** -f32(0.75)),
    ("poly", dict(power=2.0, max_iter=20), lambda b, it: b * (1 - it / 20) ** 2),
    ("sigmoid", dict(gamma=-0.5, stepsize=7), lambda b, it: b / (1 + math.exp(f32(0.5) * (it - 7)))),
])
def test_lr_policy_formulas(policy, kw, formula):
    p = _param(base_lr=0.2, lr_policy=policy, **kw)
    b = f32(0.2)
    for it in range(20):
        rate, _ = learning_rate(p, it, 0)
        assert rate == pytest.approx(formula(b, it), rel=1e-12), (policy, it)


def test_step_policy_sets_current_step():
    p = _param(base_lr=1.0, lr_policy="step", gamma=0.1, stepsize=4)
    assert learning_rate(p, 9, 0)[1] == 2
    with pytest.raises(PrototxtError, match="stepsize"):
        learning_rate(_param(base_lr=1.0, lr_policy="step"), 1, 0)
    with pytest.raises(PrototxtError, match="unknown lr_policy"):
        learning_rate(_param(base_lr=1.0, lr_policy="cosine"), 1, 0)


def test_multistep_advances_at_most_once_per_call():
    p = _param(base_lr=1.0, lr_policy="multistep", gamma=0.1, stepvalue=[2, 4, 5])
    rates, step = [], 0
    for it in range(8):
        r, step = learning_rate(p, it, step)
        rates.append(r)
    g = f32(0.1)
    assert rates == pytest.approx([1, 1, g, g, g ** 2, g ** 3, g ** 3, g ** 3], rel=1e-12)
    # jumping straight to a late iteration advances one stepvalue per call
    r1, s1 = learning_rate(p, 10, 0)
    r2, s2 = learning_rate(p, 10, s1)
    assert (s1, s2) == (1, 2) and r1 == pytest.approx(g) and r2 == pytest.approx(g ** 2)


def test_rate_of_a_step_uses_iter_before_increment(tmp_path, caplog):
    cfg = dict(base_lr=0.5, lr_policy="step", gamma=0.1, stepsize=1, display=1)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    ws0 = weights(s)
    _, g, _ = np_forward_backward(ws0, *make_batch(0))
    with caplog.at_level(logging.INFO, logger="caffe_torch.solver"):
        s.step(1)
    assert s.last_lr == f32(0.5)                                      # iteration 0: base_lr itself
    np.testing.assert_allclose(weights(s)[0], ws0[0] - f32(0.5) * g[0], atol=1e-12)
    s.step(1)
    assert s.last_lr == pytest.approx(f32(0.5) * f32(0.1), rel=1e-12)
    assert "Iteration 0, lr = 0.5" in caplog.text


def test_multistep_through_the_solver_and_restore(tmp_path):
    cfg = dict(base_lr=0.5, lr_policy="multistep", gamma=0.5, stepvalue=[2, 3], snapshot=3,
               snapshot_prefix=str(tmp_path / "snap" / "ms"))
    (tmp_path / "snap").mkdir()          # a solver with `snapshot` needs its folder (Caffe checks at construction)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    lrs = []
    for _ in range(5):
        s.step(1)
        lrs.append(s.last_lr)
    h = f32(0.5)
    assert lrs == pytest.approx([h, h, h * h, h ** 3, h ** 3])
    state = caffe_pb2.SolverState.FromString((tmp_path / "snap" / "ms_iter_3.solverstate").read_bytes())
    assert state.current_step == 1           # as of the last rate computed (iteration 2)
    s2 = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    s2.restore(str(tmp_path / "snap" / "ms_iter_3.solverstate"))
    assert (s2.iter, s2.current_step) == (3, 1)
    s2.step(1)
    assert s2.last_lr == pytest.approx(h ** 3)


# ---------------------------------------------------------------------------------------------- loss & logs

def _logged(caplog, pattern):
    return [(int(m.group(1)), float(m.group(2))) for r in caplog.records
            if (m := re.fullmatch(pattern, r.getMessage()))]


def test_average_loss_smoothing_display_and_window_reset(tmp_path, caplog):
    cfg = dict(base_lr=0.2, lr_policy="fixed", momentum=0.5, average_loss=3, display=2, iter_size=2)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    _, losses, _ = np_train(weights(s), cfg | {"momentum": 0.5}, 9)
    with caplog.at_level(logging.INFO, logger="caffe_torch.solver"):
        s.step(8)
    shown = _logged(caplog, r"Iteration (\d+), loss = (\S+)")
    assert [it for it, _ in shown] == [0, 2, 4, 6]
    for it, v in shown:
        window = losses[max(0, it - 2):it + 1]
        assert v == pytest.approx(np.mean(window), rel=1e-5)
    lrs = _logged(caplog, r"Iteration (\d+), lr = (\S+)")
    assert lrs == [(0, pytest.approx(0.2)), (2, pytest.approx(0.2)), (4, pytest.approx(0.2)),
                   (6, pytest.approx(0.2))]
    outputs = [r.getMessage() for r in caplog.records if "Train net output" in r.getMessage()]
    assert len(outputs) == 4 and outputs[0].startswith("    Train net output #0: loss = ")
    assert s.smoothed_loss == pytest.approx(np.mean(losses[5:8]), rel=1e-9)
    # a new step() call starts a new window: the smoothed loss is the new iteration's loss alone
    s.step(1)
    assert s.smoothed_loss == pytest.approx(losses[8], rel=1e-9)


def test_test_nets_interval_initialization_and_output_lines(tmp_path, caplog):
    cfg = dict(base_lr=0.2, lr_policy="fixed", momentum=0.9, test_iter=2, test_interval=3, display=0)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    assert len(s.test_nets) == 1
    tn = s.test_nets[0]
    ws = [weights(s)]
    with caplog.at_level(logging.INFO, logger="caffe_torch.solver"):
        for _ in range(4):
            s.step(1)
            ws.append(weights(s))
    # since its first test the test net shares the train net's weights (Caffe's ShareTrainedLayersWith: the
    # data; each net keeps its own diffs)
    for layer in ("ip1", "ip2"):
        for p, q in zip(s.net.params[layer], tn.params[layer]):
            assert p.tensor.data_ptr() == q.tensor.data_ptr()
            assert q.diff.shape == p.diff.shape and not np.shares_memory(q.diff, p.diff)
    # tested before the updates of iterations 0 and 3, test_iter forwards each
    assert tn.layer_states() == {"data": 4}
    tested = [int(m.group(1)) for r in caplog.records
              if (m := re.fullmatch(r"Iteration (\d+), Testing net \(#0\)", r.getMessage()))]
    assert tested == [0, 3]
    acc = _logged(caplog, r"    Test net output #(0): accuracy = (\S+)")
    loss_lines = [r.getMessage() for r in caplog.records if "Test net output #1" in r.getMessage()]
    for k, it in enumerate(tested):
        batches = [make_batch(2 * k + j, test=True) for j in range(2)]
        want_loss, want_acc = np_eval(ws[it], batches)
        assert acc[k][1] == pytest.approx(want_acc, abs=1e-6)
        m = re.fullmatch(r"    Test net output #1: loss = (\S+) \(\* 1 = (\S+) loss\)", loss_lines[k])
        assert m, loss_lines[k]
        assert float(m.group(1)) == pytest.approx(want_loss, rel=1e-5)
        assert float(m.group(2)) == pytest.approx(want_loss, rel=1e-5)
    # returned values too
    res = s.test_all()
    want_loss, want_acc = np_eval(ws[-1], [make_batch(4 + j, test=True) for j in range(2)])
    assert res[0]["loss"][0] == pytest.approx(want_loss, rel=1e-12)
    assert res[0]["accuracy"][0] == pytest.approx(want_acc)


def test_no_test_at_iteration_zero_without_test_initialization(tmp_path, caplog):
    cfg = dict(test_iter=1, test_interval=2, test_initialization=False, test_compute_loss=True)
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger="caffe_torch.solver"):
        s.step(5)
    assert "Iteration 0, Testing" not in caplog.text
    assert "Iteration 2, Testing" in caplog.text and "Iteration 4, Testing" in caplog.text
    assert s.test_nets[0].layer_states() == {"data": 2}
    assert len(re.findall(r"Test loss: \S+", caplog.text)) == 2


def test_solve_snapshots_after_train_and_runs_final_display_and_test(tmp_path, caplog):
    cfg = dict(test_iter=1, test_interval=3, max_iter=6, display=3, snapshot=4,
               snapshot_prefix=str(tmp_path / "out" / "run"))
    (tmp_path / "out").mkdir()
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger="caffe_torch.solver"):
        s.solve()
    assert s.iter == 6
    assert sorted(os.listdir(tmp_path / "out")) == ["run_iter_4.caffemodel", "run_iter_4.solverstate",
                                                   "run_iter_6.caffemodel", "run_iter_6.solverstate"]
    # one more train forward (no update) for the display, and a final test at iteration 6
    assert s.net.layer_states() == {"data": 7}
    shown = _logged(caplog, r"Iteration (\d+), loss = (\S+)")
    assert [it for it, _ in shown] == [0, 3, 6]
    assert "Iteration 6, Testing net (#0)" in caplog.text
    assert caplog.records[-1].getMessage() == "Optimization Done."


def test_solve_stopped_early_still_snapshots(tmp_path):
    cfg = dict(max_iter=10, snapshot_prefix=str(tmp_path / "early"))
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg), dtype=torch.float64)
    s.action_callback = lambda solver: "stop" if solver.iter == 3 else None
    s.solve()
    assert s.iter == 3 and s.requested_early_exit
    assert (tmp_path / "early_iter_3.solverstate").exists()


def test_nan_loss_is_logged_and_training_goes_on_as_caffe(tmp_path, caplog):
    s = caffe.SGDSolver(write_solver(tmp_path, display=1), dtype=torch.float64)
    s.step(3)
    s.net.params["ip2"][0].data[0, 0] = np.nan
    with caplog.at_level(logging.INFO, logger="caffe_torch.solver"):
        s.step(2)                                   # Caffe neither raises nor stops
    assert s.iter == 5
    assert "Iteration 3, loss = nan" in caplog.text


# ---------------------------------------------------------------------------------------------- snapshots

RESUME = dict(base_lr=0.3, lr_policy="step", gamma=0.5, stepsize=4, momentum=0.9, weight_decay=0.02,
              iter_size=2, clip_gradients=0.9, max_iter=12, snapshot=5, test_iter=1, test_interval=4,
              random_seed=3)


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "Adam", "AdaDelta", "RMSProp", "AdaGrad"])
def test_snapshot_restore_continue_is_bitwise_equal(tmp_path, kind):
    cfg = dict(RESUME, type=kind)
    if kind in ("AdaGrad", "RMSProp"):
        cfg["momentum"] = 0.0
    # uninterrupted run (float32, CPU)
    full = caffe.get_solver(write_solver(tmp_path / "a", snapshot_prefix=str(tmp_path / "a" / "s"), **cfg))
    full.step(12)
    # interrupted at 5: a fresh solver (other random init) restores and continues
    part = caffe.get_solver(write_solver(tmp_path / "b", snapshot_prefix=str(tmp_path / "b" / "s"), **cfg))
    part.step(5)
    part.step(2)                                       # wander off; restore must undo all of it
    resumed = caffe.get_solver(write_solver(tmp_path / "c", snapshot_prefix=str(tmp_path / "c" / "s"),
                                            **cfg | {"random_seed": 7}))
    resumed.restore(str(tmp_path / "b" / "s_iter_5.solverstate"))
    assert resumed.iter == 5
    resumed.step(7)
    for a, b in zip(weights(full), weights(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(full.history, resumed.history):
        assert torch.equal(a, b)
    assert resumed.net.layer_states() == full.net.layer_states() == {"data": 24}
    assert resumed.test_nets[0].layer_states() == full.test_nets[0].layer_states()


def test_solve_with_resume_file_equals_uninterrupted_solve(tmp_path):
    cfg = dict(RESUME)
    full = caffe.SGDSolver(write_solver(tmp_path / "a", snapshot_prefix=str(tmp_path / "a" / "s"), **cfg))
    full.solve()
    res = caffe.SGDSolver(write_solver(tmp_path / "b", snapshot_prefix=str(tmp_path / "b" / "s"), **cfg))
    res.solve(str(tmp_path / "a" / "s_iter_10.solverstate"))
    assert res.iter == 12
    for a, b in zip(weights(full), weights(res)):
        np.testing.assert_array_equal(a, b)
    # both wrote the final snapshot (12 is not a multiple of snapshot: 5)
    assert (tmp_path / "b" / "s_iter_12.caffemodel").read_bytes() == \
        (tmp_path / "a" / "s_iter_12.caffemodel").read_bytes()


@pytest.mark.parametrize("kind, n_hist", [("SGD", 1), ("Adam", 2), ("AdaDelta", 2)])
def test_solverstate_fields(tmp_path, kind, n_hist):
    net = BN_NET
    prefix = tmp_path / "snaps" / "tiny"
    cfg = dict(RESUME, type=kind, snapshot_prefix=str(prefix), snapshot=0)
    s = caffe.get_solver(write_solver(tmp_path, net_text=net, **cfg), dtype=torch.float64)
    s.step(6)
    assert s.snapshot() is None                                 # as pycaffe's
    model, state_path = s.snapshot_filename(".caffemodel"), s.snapshot_filename(".solverstate")
    assert (model, state_path) == (f"{prefix}_iter_6.caffemodel", f"{prefix}_iter_6.solverstate")
    state = caffe_pb2.SolverState.FromString(Path(state_path).read_bytes())
    assert state.iter == 6
    assert state.learned_net == model
    assert state.current_step == 5 // 4                     # from the rate of the last step (iteration 5)
    n_blobs = 4 + 3                                       # incl. lr_mult 0 (ip2 bias) and BatchNorm's blobs
    assert len(state.history) == n_blobs * n_hist
    for h, bp in zip(s.history, state.history):
        assert tuple(bp.shape.dim) == tuple(h.shape)
        np.testing.assert_array_equal(np.asarray(bp.double_data), h.numpy().ravel())   # float64: exact
    got = {(ls.net, ls.layer): ls.counter for ls in state.layer_state}
    assert got == {("train", "data"): 12, ("test0", "data"): 2}
    # the model file is a binary NetParameter with the net's blobs
    netp = caffe_pb2.NetParameter.FromString(Path(model).read_bytes())
    ip1 = next(lp for lp in netp.layer if lp.name == "ip1")
    np.testing.assert_allclose(np.asarray(ip1.blobs[0].data).reshape(H, D), s.net.params["ip1"][0].data,
                               rtol=1e-6)
    # no temporary files left behind
    assert sorted(os.listdir(prefix.parent)) == ["tiny_iter_6.caffemodel", "tiny_iter_6.solverstate"]


def test_restore_finds_moved_snapshot_and_layer_state_round_trip(tmp_path):
    cfg = dict(RESUME, snapshot_prefix=str(tmp_path / "orig" / "x"))
    (tmp_path / "orig").mkdir()
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg))
    s.step(5)
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in (tmp_path / "orig").iterdir():
        f.rename(moved / f.name)
    r = caffe.SGDSolver(write_solver(tmp_path / "r", **cfg))
    r.restore(moved / "x_iter_5.solverstate")
    for a, b in zip(weights(s), weights(r)):
        np.testing.assert_array_equal(a, b)
    assert r.net.layer_states() == {"data": 10}
    assert r.test_nets[0].layer_states() == {"data": 2}


def test_atomic_snapshot_leaves_previous_file_intact(tmp_path, monkeypatch):
    cfg = dict(snapshot_prefix=str(tmp_path / "snap" / "a"))
    s = caffe.SGDSolver(write_solver(tmp_path, **cfg))
    s.step(2)
    s.snapshot()
    model, state = s.snapshot_filename(".caffemodel"), s.snapshot_filename(".solverstate")
    before = (Path(model).read_bytes(), Path(state).read_bytes())
    s.net.params["ip1"][0].data[...] += 1.0
    s.history[0] += 1.0

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        s.snapshot()
    monkeypatch.undo()
    assert (Path(model).read_bytes(), Path(state).read_bytes()) == before
    assert sorted(os.listdir(tmp_path / "snap")) == ["a_iter_2.caffemodel", "a_iter_2.solverstate"]


def test_restore_errors(tmp_path):
    cfg = dict(snapshot_prefix=str(tmp_path / "s" / "x"))
    sgd = caffe.SGDSolver(write_solver(tmp_path, **cfg))
    sgd.step(1)
    sgd.snapshot()
    state = sgd.snapshot_filename(".solverstate")
    adam = caffe.AdamSolver(write_solver(tmp_path / "adam", type="Adam", **cfg))
    before = weights(adam)
    with pytest.raises(WeightsError, match="history blobs"):
        adam.restore(state)
    assert adam.iter == 0
    for a, b in zip(before, weights(adam)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightsError, match="no such"):
        sgd.restore(tmp_path / "missing.solverstate")
    bad = tmp_path / "corrupt.solverstate"
    bad.write_bytes(b"\xff\xff\xff\xff\x0f garbage")
    with pytest.raises(WeightsError, match="corrupt"):
        sgd.restore(bad)
    truncated = tmp_path / "trunc.solverstate"
    truncated.write_bytes(Path(state).read_bytes()[:-7])
    with pytest.raises(WeightsError):
        sgd.restore(truncated)
    # a history blob of the wrong size (another net), or state for a layer the net lacks
    st = caffe_pb2.SolverState.FromString(Path(state).read_bytes())
    st.history[0].shape.dim[:] = [2]
    del st.history[0].data[2:]
    wrong = tmp_path / "wrong.solverstate"
    wrong.write_bytes(st.SerializeToString())
    with pytest.raises(WeightsError, match="history blob 0"):
        sgd.restore(wrong)
    st = caffe_pb2.SolverState.FromString(Path(state).read_bytes())
    st.layer_state.add(layer="nope", net="train", counter=1)
    wrong.write_bytes(st.SerializeToString())
    with pytest.raises(WeightsError, match="nope"):
        sgd.restore(wrong)
    assert sgd.iter == 1


# ---------------------------------------------------------------------------------------------- construction

@pytest.mark.parametrize("field, value, cls", [
    ("type", "SGD", "SGDSolver"), ("type", "Nesterov", "NesterovSolver"), ("type", "Adam", "AdamSolver"),
    ("type", "AdaGrad", "AdaGradSolver"), ("type", "RMSProp", "RMSPropSolver"),
    ("type", "AdaDelta", "AdaDeltaSolver"),
    ("solver_type", "NESTEROV", "NesterovSolver"), ("solver_type", "ADAM", "AdamSolver"),
    ("solver_type", "ADADELTA", "AdaDeltaSolver"), ("solver_type", "ADAGRAD", "AdaGradSolver"),
    ("solver_type", "RMSPROP", "RMSPropSolver"), ("solver_type", "SGD", "SGDSolver"),
])
def test_get_solver_by_type_and_legacy_solver_type(tmp_path, field, value, cls):
    path = write_solver(tmp_path)
    line = f"{field}: {value}\n" if field == "solver_type" else f'{field}: "{value}"\n'
    text = Path(path).read_text() + line
    Path(path).write_text(text)
    s = caffe.get_solver(path)
    assert type(s).__name__ == cls
    assert s.param.type == cls[:-len("Solver")]


def test_get_solver_errors(tmp_path):
    path = write_solver(tmp_path, type="Adam")
    Path(path).write_text(Path(path).read_text() + "solver_type: ADAM\n")
    with pytest.raises(PrototxtError, match="both"):
        caffe.get_solver(path)
    with pytest.raises(PrototxtError, match="unknown solver type 'Foo'"):
        caffe.get_solver(write_solver(tmp_path, type="Foo"))
    with pytest.raises(PrototxtError, match="momentum cannot be used with AdaGrad"):
        caffe.get_solver(write_solver(tmp_path, type="AdaGrad", momentum=0.9))
    with pytest.raises(PrototxtError, match="momentum cannot be used with RMSProp"):
        caffe.get_solver(write_solver(tmp_path, type="RMSProp", momentum=0.9))


def test_net_sources_and_relative_paths(tmp_path, monkeypatch):
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "net.prototxt").write_text(NET)
    # relative to the solver file's directory (the CWD is elsewhere)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (d / "s1.prototxt").write_text(solver_text(dict(net="net.prototxt", base_lr=0.1, lr_policy="fixed")))
    s = caffe.SGDSolver(str(d / "s1.prototxt"))
    assert s.net.name == "tiny"
    # relative to the CWD first
    (elsewhere / "net.prototxt").write_text(NET.replace('name: "tiny"', 'name: "from_cwd"'))
    assert caffe.SGDSolver(str(d / "s1.prototxt")).net.name == "from_cwd"
    # train_net + test_net given separately
    (d / "test.prototxt").write_text(NET.replace('name: "tiny"', 'name: "the_test"'))
    (d / "s2.prototxt").write_text(solver_text(dict(train_net=str(d / "net.prototxt"),
                                                    test_net="test.prototxt", test_iter=3, test_interval=5,
                                                    base_lr=0.1, lr_policy="fixed")))
    s2 = caffe.SGDSolver(str(d / "s2.prototxt"))
    assert [tn.name for tn in s2.test_nets] == ["the_test"]
    s2.test_all()                        # shares the trained weights, as Caffe's Solver::Test
    assert s2.test_nets[0].params["ip1"][0].tensor.data_ptr() == s2.net.params["ip1"][0].tensor.data_ptr()
    # inline net_param / train_net_param
    body = NET.strip()
    for field in ("net_param", "train_net_param"):
        (d / "s3.prototxt").write_text(f"{field} {{ {body} }}\nbase_lr: 0.1\nlr_policy: \"fixed\"\n")
        s3 = caffe.SGDSolver(str(d / "s3.prototxt"))
        assert s3.net.name == "tiny" and s3.net.phase == caffe.TRAIN
    # caffe_torch extensions: a parsed SolverParameter, and base_dir= for relative net paths
    param = caffe_pb2.SolverParameter(net="net.prototxt", base_lr=0.1, lr_policy="fixed", solver_type=1)
    s5 = caffe.NesterovSolver(solver_param=param, base_dir=d)
    assert s5.net.name == "from_cwd"                     # the CWD still comes first
    (elsewhere / "net.prototxt").unlink()
    s5 = caffe.NesterovSolver(solver_param=param, base_dir=d)
    assert s5.net.name == "tiny" and s5.param.type == "Nesterov"
    assert param.HasField("solver_type")                 # the caller's message is left alone
    # generic net: more test_iter values than specific test nets give generic test instances
    (d / "s4.prototxt").write_text(solver_text(dict(net=str(d / "net.prototxt"), test_net="test.prototxt",
                                                    test_iter=[1, 2], test_interval=5, base_lr=0.1,
                                                    lr_policy="fixed")))
    assert [tn.name for tn in caffe.SGDSolver(str(d / "s4.prototxt")).test_nets] == ["the_test", "tiny"]


@pytest.mark.parametrize("fields, match", [
    (dict(net=None), "give exactly one"),
    (dict(train_net="net.prototxt"), "give exactly one"),
    (dict(net="missing.prototxt"), "not found"),
    (dict(test_iter=2), "test_interval"),
    (dict(test_net="net.prototxt", test_iter=[1, 2], test_interval=1, net=None,
          train_net="net.prototxt"), "test_iter must be specified"),
    (dict(iter_size=0), "iter_size"),
    (dict(average_loss=0), "average_loss"),
    (dict(lr_policy=None), "lr_policy"),
    (dict(snapshot=10), "snapshot_prefix"),
    (dict(regularization_type="L3", weight_decay=0.1), "regularization_type"),
    (dict(snapshot_format="HDF5"), "HDF5"),
    (dict(snapshot_diff=True), "snapshot_diff"),
])
def test_bad_solver_prototxt(tmp_path, fields, match):
    path = Path(write_solver(tmp_path))
    base = dict(net=str(tmp_path / "net.prototxt"), base_lr=0.1, lr_policy="fixed")
    for k, v in fields.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = str(tmp_path / v) if k in ("train_net",) else v
    path.write_text(solver_text(base))
    with pytest.raises(PrototxtError, match=match):
        caffe.SGDSolver(str(path))


def test_clip_gradients_zero_clips_everything(tmp_path):
    # Caffe returns from ClipGradients only when clip_gradients < 0: 0 scales every diff to zero
    s = caffe.SGDSolver(write_solver(tmp_path, clip_gradients=0.0, base_lr=1.0), dtype=torch.float64)
    before = weights(s)
    s.step(2)
    for a, b in zip(before, weights(s)):
        np.testing.assert_array_equal(a, b)


def test_snapshot_without_prefix_follows_caffe(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    s = caffe.SGDSolver(write_solver(tmp_path / "cfg"))
    s.step(1)
    with caplog.at_level(logging.WARNING, logger="caffe_torch.solver"):
        s.snapshot()
    assert (tmp_path / "_iter_1.caffemodel").exists() and (tmp_path / "_iter_1.solverstate").exists()
    assert "snapshot_prefix is not set" in caplog.text
