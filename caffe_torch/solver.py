"""Caffe's solvers: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, with Caffe's own update rule.

One `step()` (Solver::Step in Caffe 1.0):
  zero the parameter diffs; test if `iter % test_interval == 0`; forward+backward `iter_size` times (diffs
  accumulate, the loss is averaged); smooth and display the loss; apply the update; `iter += 1`; snapshot if
  `iter % snapshot == 0`.
The update (SGDSolver::ApplyUpdate) for every learnable blob:
  clip (global L2 norm of all diffs > clip_gradients: scale all by clip_gradients / norm); diff /= iter_size;
  diff += weight_decay * decay_mult * data (L2) or * sign(data) (L1); then the solver's rule, e.g. SGD:
  history = momentum * history + rate * lr_mult * diff; data -= history.
This is NOT torch.optim.SGD (which multiplies by the rate after the momentum sum): the two differ whenever the
rate changes. The rate is a function of (iter, current_step) only: see `learning_rate`.
"""

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import PrototxtError, WeightsError
from .mode import set_random_seed
from .net import TEST, TRAIN, Net
from .prototxt import read_solver
from .proto import caffe_pb2
from .weights import array_to_blob, blob_to_array, read_solverstate, write_proto_atomic

log = logging.getLogger("caffe_torch.solver")


def learning_rate(param, it: int, current_step: int) -> tuple[float, int]:
    """(rate, current_step) at iteration `it` (before it is incremented), as Caffe's GetLearningRate.
    `current_step` only matters for "multistep", which advances it by at most one per call."""
    policy = param.lr_policy
    base = param.base_lr
    if policy == "fixed":
        return base, current_step
    if policy == "step":
        if param.stepsize <= 0:
            raise PrototxtError("lr_policy 'step' needs stepsize > 0")
        step = it // param.stepsize
        return base * param.gamma ** step, step
    if policy == "exp":
        return base * param.gamma ** it, current_step
    if policy == "inv":
        return base * (1 + param.gamma * it) ** (-param.power), current_step
    if policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
        return base * param.gamma ** current_step, current_step
    if policy == "poly":
        return base * (1 - it / param.max_iter) ** param.power, current_step
    if policy == "sigmoid":
        return base * (1 / (1 + math.exp(-param.gamma * (it - param.stepsize)))), current_step
    raise PrototxtError(f"unknown lr_policy {policy!r}; known: fixed, step, exp, inv, multistep, poly, sigmoid")


class Solver:
    """Base of the Caffe solvers. `Solver(solver_prototxt)`; caffe_torch extensions: `solver_param=` (a parsed
    SolverParameter), `dtype=`, `device=`, `base_dir=` (where relative net paths are also looked up)."""

    type_name = "SGD"
    n_history = 1     # history blobs per learnable blob (Adam and AdaDelta keep two)

    def __init__(self, solver_file=None, *, solver_param=None, dtype=torch.float32, device=None):
        if solver_param is None:
            if solver_file is None:
                raise TypeError("Solver needs a solver prototxt file (or solver_param=)")
            solver_param = read_solver(solver_file)
        self.param = solver_param
        self.path = str(solver_file) if solver_file is not None else "<solver>"
        self._base_dir = Path(solver_file).resolve().parent if solver_file is not None else Path.cwd()
        p = self.param
        if p.random_seed >= 0:
            set_random_seed(p.random_seed)
        if p.iter_size < 1:
            raise PrototxtError(f"{self.path}: iter_size must be >= 1")
        if not p.HasField("lr_policy"):
            raise PrototxtError(f"{self.path}: lr_policy is not set")
        self.net = self._make_net(TRAIN, None, dtype, device)
        self.test_nets = [self._make_net(TEST, i, dtype, device) for i in range(len(p.test_iter))]
        for tn in self.test_nets:
            tn.share_with(self.net)
        self.iter = 0
        self.current_step = 0
        self._params = self.net.learnable_params()
        # Caffe's layout: [first history of every blob..., second history of every blob...] (Adam, AdaDelta)
        self.history = [torch.zeros_like(prm.data) for _ in range(self.n_history) for prm, *_ in self._params]
        self._losses: list[float] = []
        self.smoothed_loss = 0.0
        self.last_lr = None
        # Called after each iteration's update with the solver; return "snapshot" / "stop" / None (Caffe's
        # action request, used for signals). caffe_torch extension.
        self.action_callback: Callable[["Solver"], str | None] | None = None
        self.requested_early_exit = False

    # ------------------------------------------------------------------ nets
    def _resolve(self, name: str) -> str:
        path = Path(name)
        if path.exists() or path.is_absolute():
            return str(path)
        alt = self._base_dir / name
        if alt.exists():
            return str(alt)
        raise PrototxtError(f"{self.path}: net file '{name}' not found (looked in {Path.cwd()} and "
                            f"{self._base_dir})")

    def _make_net(self, phase: int, test_index: int | None, dtype, device) -> Net:
        p = self.param
        state = None
        if phase == TRAIN:
            sources = [("train_net_param", p.HasField("train_net_param")), ("train_net", p.HasField("train_net")),
                       ("net_param", p.HasField("net_param")), ("net", p.HasField("net"))]
            given = [n for n, has in sources if has]
            if len(given) != 1:
                raise PrototxtError(f"{self.path}: give exactly one of net, net_param, train_net, "
                                    f"train_net_param (got {given or 'none'})")
            kind = given[0]
            if p.HasField("train_state"):
                state = p.train_state
        else:
            n_specific = len(p.test_net) + len(p.test_net_param)
            if n_specific and n_specific != len(p.test_iter):
                raise PrototxtError(f"{self.path}: {len(p.test_iter)} test_iter values for {n_specific} test nets")
            if test_index < len(p.test_net_param):
                kind, src = "test_net_param", p.test_net_param[test_index]
            elif test_index - len(p.test_net_param) < len(p.test_net):
                kind, src = "test_net", p.test_net[test_index - len(p.test_net_param)]
            elif p.HasField("net_param"):
                kind = "net_param"
            elif p.HasField("net"):
                kind = "net"
            else:
                raise PrototxtError(f"{self.path}: test_iter given but no test net (test_net or net)")
            if test_index < len(p.test_state):
                state = p.test_state[test_index]
        level = state.level if state is not None else 0
        stages = list(state.stage) if state is not None else []
        kw = dict(level=level, stages=stages, dtype=dtype, device=device)
        if kind in ("train_net_param", "net_param", "test_net_param"):
            msg = {"train_net_param": p.train_net_param, "net_param": p.net_param}.get(kind)
            if kind == "test_net_param":
                msg = src
            return Net(None, phase, net_param=msg, **kw)
        name = {"train_net": p.train_net, "net": p.net}.get(kind) if kind != "test_net" else src
        return Net(self._resolve(name), phase, **kw)

    # ------------------------------------------------------------------ the loop
    def get_learning_rate(self) -> float:
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return rate

    def _update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        average = max(1, self.param.average_loss)
        if len(self._losses) < average:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % average
            self.smoothed_loss += (loss - self._losses[idx]) / average
            self._losses[idx] = loss

    def forward_backward(self) -> float:
        """One forward + backward of the train net; returns its loss (diffs accumulate)."""
        net = self.net
        loss = net.forward_range(0, len(net._layers) - 1)
        net.backward_loss()
        value = net.loss_value()
        if not math.isfinite(value):
            raise FloatingPointError(f"iteration {self.iter}: the loss is {value} (net '{net.name}'); "
                                     "lower base_lr or check the data")
        return value

    def step(self, iters: int) -> None:
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self._losses, self.smoothed_loss = [], 0.0
        t0, i0 = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            for prm, *_ in self._params:
                prm.grad = None
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
            display = p.display and self.iter % p.display == 0
            loss = 0.0
            for _ in range(p.iter_size):
                loss += self.forward_backward()
            loss /= p.iter_size
            self._update_smoothed_loss(loss, start_iter)
            if display:
                dt = time.perf_counter() - t0
                rate = (self.iter - i0) / dt if dt > 0 and self.iter > i0 else float("nan")
                log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
                log.debug("Iteration %d: %.3g iter/s", self.iter, rate)
                self._log_outputs(self.net, "Train")
                t0, i0 = time.perf_counter(), self.iter
            self.apply_update()
            self.iter += 1
            action = self.action_callback(self) if self.action_callback else None
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self.snapshot()
            if action == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume_file=None) -> None:
        p = self.param
        log.info("Solving %s", self.net.name)
        if resume_file:
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _log_outputs(self, net: Net, label: str, values: dict[str, float] | None = None) -> None:
        index = 0
        for name in net.outputs:
            data = values[name] if values is not None else net.blobs[name].data.reshape(-1)
            w = net._loss_weights.get(name, 0.0)
            for v in (data if hasattr(data, "__len__") else [data]):
                extra = f" (* {w:g} = {w * float(v):.6g} loss)" if w else ""
                log.info("    %s net output #%d: %s = %.6g%s", label, index, name, float(v), extra)
                index += 1

    def test_all(self) -> list[dict]:
        """Run every test net test_iter times and log the averaged outputs ("Test net output #k: ...")."""
        results = []
        for i, tn in enumerate(self.test_nets):
            log.info("Iteration %d, Testing net (#%d)", self.iter, i)
            sums: dict[str, torch.Tensor] = {}
            n = self.param.test_iter[i]
            with torch.no_grad():
                for _ in range(n):
                    tn.forward_range(0, len(tn._layers) - 1)
                    for name in tn.outputs:
                        v = tn.blobs[name].tensor.detach().reshape(-1).to(torch.float64)
                        sums[name] = sums[name] + v if name in sums else v.clone()
            means = {k: (v / max(n, 1)).cpu().numpy() for k, v in sums.items()}
            index = 0
            for name in tn.outputs:
                for v in means.get(name, []):
                    log.info("    Test net output #%d: %s = %.6g", index, name, float(v))
                    index += 1
            results.append(means)
        return results

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def apply_update(self) -> None:
        p = self.param
        self.net._sync.flush()
        rate = self.get_learning_rate()
        self.last_lr = rate
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        grads = [prm.grad if prm.grad is not None else torch.zeros_like(prm) for prm, *_ in self._params]
        if p.clip_gradients > 0:
            norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
            if norm > p.clip_gradients:
                factor = p.clip_gradients / norm
                log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                         norm, p.clip_gradients, factor)
                grads = [g * factor for g in grads]
        for i, ((prm, lr_mult, decay_mult, _), g) in enumerate(zip(self._params, grads)):
            if p.iter_size > 1:
                g = g / p.iter_size
            local_decay = p.weight_decay * decay_mult
            if local_decay:
                if p.regularization_type == "L2":
                    g = g + local_decay * prm
                elif p.regularization_type == "L1":
                    g = g + local_decay * torch.sign(prm)
                else:
                    raise PrototxtError(f"{self.path}: unknown regularization_type {p.regularization_type!r}")
            update = self.compute_update(i, g, rate * lr_mult)
            prm.sub_(update)
        self._after_update()

    def _after_update(self) -> None:
        # happynear fork: optional clamping / clipping of weights after the update (off by default)
        p = self.param
        if p.HasField("clamp_weights_lower") or p.HasField("clamp_weights_upper") or p.clip_weights > 0:
            for prm, *_ in self._params:
                if p.clip_weights > 0:
                    prm.clamp_(-p.clip_weights, p.clip_weights)
                lo = p.clamp_weights_lower if p.HasField("clamp_weights_lower") else None
                hi = p.clamp_weights_upper if p.HasField("clamp_weights_upper") else None
                if lo is not None or hi is not None:
                    prm.clamp_(lo, hi)

    def compute_update(self, i: int, g: torch.Tensor, local_rate: float) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ snapshots
    def _prefix(self) -> str:
        if not self.param.snapshot_prefix:
            raise PrototxtError(f"{self.path}: snapshot_prefix is not set; cannot snapshot")
        return self.param.snapshot_prefix

    def snapshot_filename(self, ext: str) -> str:
        return f"{self._prefix()}_iter_{self.iter}{ext}"

    def snapshot(self) -> tuple[str, str]:
        """Write <prefix>_iter_<N>.caffemodel and .solverstate (each atomically); return their paths."""
        model = self.snapshot_filename(".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        self.net.save(model)
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step)
        for h in self.history:
            array_to_blob(h, state.history.add())
        for net_label, net in [("train", self.net)] + [(f"test{i}", tn) for i, tn in enumerate(self.test_nets)]:
            for layer, counter in net.layer_states().items():
                state.layer_state.add(layer=layer, net=net_label, counter=counter)
        path = self.snapshot_filename(".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", path)
        write_proto_atomic(state, path)
        return model, path

    def restore(self, state_file) -> None:
        """Continue from a .solverstate: iteration, lr step, history, layer counters and the learned net."""
        state = read_solverstate(state_file)
        if len(state.history) != len(self.history):
            raise WeightsError(f"{state_file}: holds {len(state.history)} history blobs, the solver needs "
                               f"{len(self.history)} (different net or solver type?)")
        if state.learned_net:
            model = Path(state.learned_net)
            if not model.exists():
                model = Path(state_file).resolve().parent / Path(state.learned_net).name
            self.net.copy_from(model)
        with torch.no_grad():
            for h, bp in zip(self.history, state.history):
                values = blob_to_array(bp, str(state_file))
                if values.size != h.numel():
                    raise WeightsError(f"{state_file}: history blob of {values.size} values for a param of "
                                       f"{h.numel()}")
                h.copy_(torch.from_numpy(values.reshape(h.shape)).to(h.dtype))
        self.iter = state.iter
        self.current_step = state.current_step
        nets = {"train": self.net} | {f"test{i}": tn for i, tn in enumerate(self.test_nets)}
        for ls in state.layer_state:
            if ls.net in nets:
                nets[ls.net].set_layer_states({ls.layer: ls.counter})


class SGDSolver(Solver):
    type_name = "SGD"

    def compute_update(self, i, g, local_rate):
        h = self.history[i]
        h.mul_(self.param.momentum).add_(g, alpha=local_rate)
        return h


class NesterovSolver(Solver):
    type_name = "Nesterov"

    def compute_update(self, i, g, local_rate):
        h = self.history[i]
        m = self.param.momentum
        old = h.clone()
        h.mul_(m).add_(g, alpha=local_rate)
        return (1 + m) * h - m * old


class AdaGradSolver(Solver):
    type_name = "AdaGrad"

    def compute_update(self, i, g, local_rate):
        h = self.history[i]
        h.add_(g * g)
        return local_rate * g / (h.sqrt() + self.param.delta)


class RMSPropSolver(Solver):
    type_name = "RMSProp"

    def compute_update(self, i, g, local_rate):
        h = self.history[i]
        d = self.param.rms_decay
        h.mul_(d).add_((1 - d) * g * g)
        return local_rate * g / (h.sqrt() + self.param.delta)


class AdaDeltaSolver(Solver):
    type_name = "AdaDelta"
    n_history = 2

    def compute_update(self, i, g, local_rate):
        n = len(self._params)
        grad_hist, upd_hist = self.history[i], self.history[n + i]
        m, delta = self.param.momentum, self.param.delta
        grad_hist.mul_(m).add_((1 - m) * g * g)
        update = g * torch.sqrt((upd_hist + delta) / (grad_hist + delta))
        upd_hist.mul_(m).add_((1 - m) * update * update)
        return local_rate * update


class AdamSolver(Solver):
    type_name = "Adam"
    n_history = 2

    def compute_update(self, i, g, local_rate):
        n = len(self._params)
        m, v = self.history[i], self.history[n + i]
        b1, b2 = self.param.momentum, self.param.momentum2
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        t = self.iter + 1
        correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        return local_rate * correction * m / (v.sqrt() + self.param.delta)


_SOLVERS = {cls.type_name: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                            AdaDeltaSolver, AdamSolver)}
_LEGACY_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def get_solver(solver_file, **kwargs) -> Solver:
    """The solver named by the prototxt's `type` (or legacy `solver_type`)."""
    param = read_solver(solver_file)
    name = param.type if param.HasField("type") or not param.HasField("solver_type") \
        else _LEGACY_TYPES[param.solver_type]
    if name not in _SOLVERS:
        raise PrototxtError(f"{solver_file}: unknown solver type {name!r}; known: {', '.join(_SOLVERS)}")
    return _SOLVERS[name](solver_file, solver_param=param, **kwargs)
