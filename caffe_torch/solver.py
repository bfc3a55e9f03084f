"""Caffe's solvers: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, with Caffe's own update rule.

One `step()` (Solver::Step in Caffe 1.0):
  zero the parameter diffs; test if `iter % test_interval == 0`; forward+backward `iter_size` times (diffs
  accumulate, the loss is averaged); smooth and display the loss; apply the update; `iter += 1`; snapshot if
  `iter % snapshot == 0`.
The update (SGDSolver::ApplyUpdate) for every learnable blob (lr_mult 0 ones included: they have history
and count in snapshots, but no diff and a zero update):
  clip (clip_gradients >= 0 and the global L2 norm of all the accumulated diffs > clip_gradients: scale all by
  clip_gradients / norm); diff *= 1 / iter_size; diff += weight_decay * decay_mult * data (L2) or
  * sign(data) (L1); then the solver's rule, e.g. SGD: history = momentum * history + rate * lr_mult * diff;
  diff = history; data -= diff (so after a step a param's `.diff` holds its last update, as in pycaffe).
This is NOT torch.optim.SGD (which multiplies by the rate after the momentum sum): the two differ whenever the
rate changes. The rate is a function of (iter, current_step) only, taken before `iter` is incremented: see
`learning_rate`.
`solve()` (Solver::Solve): [restore;] step to max_iter; snapshot unless the last step just did (also after an
early stop); one more train forward to display the loss and a final test, when display / test_interval divide
max_iter.
"""

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .blob import set_param_diff
from .errors import PrototxtError, WeightsError
from .fast import FastOptions
from .mode import set_random_seed
from .net import TEST, TRAIN, Net
from .opcount import host_values
from .proto import caffe_pb2
from .prototxt import read_solver
from .pycaffe_solver import PycaffeSolverMixin
from .weights import (
    blob_to_array,
    blobs_message,
    copy_weights,
    file_sha256,
    read_caffemodel,
    read_solverstate,
    solverstate_weights,
    write_proto_atomic,
)

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
        if param.max_iter <= 0:
            raise PrototxtError("lr_policy 'poly' needs max_iter > 0")
        return base * (1 - it / param.max_iter) ** param.power, current_step
    if policy == "sigmoid":
        try:
            return base * (1 / (1 + math.exp(-param.gamma * (it - param.stepsize)))), current_step
        except OverflowError:          # exp overflows to inf in C++, giving rate 0; Python raises instead
            return 0.0, current_step
    raise PrototxtError(f"unknown lr_policy {policy!r}; known: fixed, step, exp, inv, multistep, poly, "
                        "sigmoid")


class SmoothedLoss:
    """Caffe's UpdateSmoothedLoss (the display's loss, the mean of the last `average_loss` iterations' losses,
    updated incrementally as Caffe does) kept on the device: per iteration a few float64 scalar kernels and
    no read; `read()` is the one device read. The arithmetic is Caffe's formula in float64."""

    def __init__(self, average_loss: int, start_iter: int):
        self.average = max(1, average_loss)
        self.start_iter = start_iter
        self.losses: list[torch.Tensor] = []
        self.value: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, it: int) -> None:
        """Add the loss (a float64 device scalar) of iteration `it`."""
        if len(self.losses) < self.average:
            self.losses.append(loss)
            n = len(self.losses)
            # (0 * 0 + loss) / 1 is loss exactly: the first iteration needs no arithmetic
            self.value = loss if n == 1 else (self.value * (n - 1) + loss) / n
        else:
            idx = (it - self.start_iter) % self.average
            self.value = self.value + (loss - self.losses[idx]) / self.average
            self.losses[idx] = loss

    def read(self) -> float:
        """The smoothed loss (0 before any iteration, as Caffe's)."""
        return 0.0 if self.value is None else host_values(self.value)[0]


_LEGACY_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def upgrade_solver_type(param, where: str = "<solver>") -> None:
    """Caffe's UpgradeSolverType: the deprecated enum `solver_type` becomes the string `type` (giving both is
    an error)."""
    if not param.HasField("solver_type"):
        return
    if param.HasField("type"):
        raise PrototxtError(f"{where}: old solver_type field (enum) and new type field (string) cannot be "
                            "both specified")
    if param.solver_type not in _LEGACY_TYPES:
        raise PrototxtError(f"{where}: unknown solver_type {param.solver_type}")
    param.type = _LEGACY_TYPES[param.solver_type]
    param.ClearField("solver_type")


class Solver(PycaffeSolverMixin):
    """Base of the Caffe solvers. `Solver(solver_prototxt)`; caffe_torch extensions: `solver_param=` (a parsed
    SolverParameter), `dtype=`, `device=`, `base_dir=` (where relative net paths are also looked up),
    `blob_diffs=` (default True: after a step every activation blob's `.diff` holds the last backward's diff,
    as in pycaffe; False for a training loop that never reads them, which then keeps neither their memory nor
    the per-top views of Split layers, nor the per-layer records of a ranged backward), `label_checks=`
    (default True: the loss, accuracy and margin layers check the label range, as Caffe's, which reads the
    labels on the host every forward; False for a training loop that checks its labels on the host before
    uploading them), `fast=` (caffe_torch.fast.FastOptions for the train net and every test net)."""

    type_name = "SGD"
    n_history = 1     # history blobs per learnable blob (Adam and AdaDelta keep two)

    def __init__(self, solver_file=None, *, solver_param=None, dtype=torch.float32, device=None,
                 base_dir=None, blob_diffs=True, label_checks=True, fast: FastOptions | None = None):
        if solver_param is None:
            if solver_file is None:
                raise TypeError("Solver needs a solver prototxt file (or solver_param=)")
            solver_param = read_solver(solver_file)
        else:
            solver_param = caffe_pb2.SolverParameter.FromString(solver_param.SerializeToString())
        self.path = str(solver_file) if solver_file is not None else "<solver>"
        upgrade_solver_type(solver_param, self.path)
        self.param = solver_param
        if base_dir is not None:
            self._base_dir = Path(base_dir).resolve()
        else:
            self._base_dir = Path(solver_file).resolve().parent if solver_file is not None else Path.cwd()
        p = self.param
        self._check_param()
        self._check_snapshot_folder()
        if p.random_seed >= 0:
            set_random_seed(p.random_seed)
        self.blob_diffs = bool(blob_diffs)
        self.fast = fast
        self.net = self._make_net(TRAIN, None, dtype, device)
        for layer in self.net.modules:
            layer.check_labels = bool(label_checks)
        n_test = self._num_test_nets()
        self.test_nets = [self._make_net(TEST, i, dtype, device) for i in range(n_test)]
        for tn in self.test_nets:
            # Caffe's InitTestNets: debug_info; the trained weights are shared when a test runs (test_all), as
            # Caffe's Solver::Test does: before the first test a test net has its own filled weights
            tn.debug_info = p.debug_info
        self._iter = 0
        self.current_step = 0
        self._params = self.net.learnable_params()
        # Caffe forces lr_mult 0 on blobs a layer never learns (BatchNorm's statistics): they get no update
        # (and no weight decay), whatever the ParamSpec says.
        self._lr_mults = [lr if prm.requires_grad else 0.0 for prm, lr, _, _ in self._params]
        # Caffe's layout: [first history of every blob..., second history of every blob...] (Adam, AdaDelta); each
        # in its blob's memory format (channels_last weights with `fast`), so the foreach update reads both in one
        # order
        self.history = [torch.zeros_like(prm.data) for _ in range(self.n_history) for prm, *_ in self._params]
        # per learnable blob: is its history still all zero (then a frozen blob's update is provably zero)
        self._zero_history = [True] * len(self._params)
        self._groups = self._update_groups()
        self.loss_window = SmoothedLoss(self.param.average_loss, 0)
        self.displayed_loss = math.nan     # the loss of the last display line (caffe_torch extension)
        # A SmoothedLoss kept across step() calls, or None: a script's step(1) loop then smooths over the whole
        # run, as `caffe train` does (Caffe's Step starts a new window at every call). caffe_torch extension.
        self.run_window: SmoothedLoss | None = None
        self.last_lr = None
        # Called after each iteration's update with the solver; return "snapshot" / "stop" / None (Caffe's
        # action request, used for signals). caffe_torch extension.
        self.action_callback: Callable[[Solver], str | None] | None = None
        # Called as hook(solver, loss) after the iter_size forward/backward passes, before apply_update; returns
        # the loss to log (data-parallel training averages the diffs and the loss across processes here).
        # caffe_torch extension.
        self.gradient_hook: Callable[[Solver, float], float] | None = None
        self.requested_early_exit = False
        # True from the start of apply_update (lr step, history blobs, weights) until it is complete: an
        # exception that leaves it True left the solver half-updated (no consistent iteration to snapshot).
        # caffe_torch extension, read by the training scripts.
        self.updating = False

    @property
    def iter(self) -> int:
        """The iteration count (read-only, as pycaffe's `solver.iter`; `restore` sets it)."""
        return self._iter

    # ------------------------------------------------------------------ checks
    def _check_param(self) -> None:
        """Caffe's CHECKs on a SolverParameter, as errors naming the file."""
        p = self.param
        if p.iter_size < 1:
            raise PrototxtError(f"{self.path}: iter_size must be >= 1")
        if p.average_loss < 1:
            raise PrototxtError(f"{self.path}: average_loss must be >= 1")
        if not p.HasField("lr_policy"):
            raise PrototxtError(f"{self.path}: lr_policy is not set")
        if p.snapshot < 0:
            raise PrototxtError(f"{self.path}: snapshot must be >= 0")
        if p.snapshot and not p.HasField("snapshot_prefix"):
            raise PrototxtError(f"{self.path}: snapshot is specified but snapshot_prefix is not")
        if p.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
            raise PrototxtError(f"{self.path}: snapshot_format HDF5 is not supported by caffe_torch "
                                "(use BINARYPROTO)")
        if p.snapshot_diff:
            raise PrototxtError(f"{self.path}: snapshot_diff is not supported by caffe_torch")
        if p.regularization_type not in ("L2", "L1"):
            raise PrototxtError(f"{self.path}: unknown regularization_type {p.regularization_type!r} "
                                "(L2 or L1)")
        self._check_type_param()

    def _check_type_param(self) -> None:
        """Per-solver checks (Caffe's constructor_sanity_check)."""

    def _check_snapshot_folder(self) -> None:
        """Caffe's CheckSnapshotWritePermissions, before any net is built: with `snapshot` set, a file must be
        creatable where the snapshots will go (probed with a unique temporary file, then removed)."""
        if not self.param.snapshot:
            return
        folder = os.path.dirname(self.param.snapshot_prefix + "_iter_0.tempfile") or "."
        try:
            fd, probe = tempfile.mkstemp(suffix=".tempfile", dir=folder)
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise PrototxtError(f"{self.path}: cannot write to snapshot_prefix '{self.param.snapshot_prefix}': "
                                f"folder '{folder}': {exc.strerror or exc} (make sure it exists and is "
                                "writable)") from None

    def _num_test_nets(self) -> int:
        """Caffe's InitTestNets count: test_net_param + test_net, plus one generic (net / net_param) instance
        per further test_iter."""
        p = self.param
        n_specific = len(p.test_net) + len(p.test_net_param)
        generic = p.HasField("net") or p.HasField("net_param")
        if generic:
            if len(p.test_iter) < n_specific:
                raise PrototxtError(f"{self.path}: test_iter must be specified for each test network "
                                    f"({len(p.test_iter)} test_iter values for {n_specific} test nets)")
        elif len(p.test_iter) != n_specific:
            raise PrototxtError(f"{self.path}: test_iter must be specified for each test network "
                                f"({len(p.test_iter)} test_iter values for {n_specific} test nets)")
        n = len(p.test_iter)
        if len(p.test_state) and len(p.test_state) != n:
            raise PrototxtError(f"{self.path}: test_state must be unspecified or specified once per test net "
                                f"({len(p.test_state)} for {n} test nets)")
        if n and p.test_interval <= 0:
            raise PrototxtError(f"{self.path}: {n} test net(s) but test_interval is {p.test_interval} "
                                "(must be > 0)")
        return n

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
            sources = [(f, p.HasField(f)) for f in ("train_net_param", "train_net", "net_param", "net")]
            given = [n for n, has in sources if has]
            if len(given) != 1:
                raise PrototxtError(f"{self.path}: give exactly one of net, net_param, train_net, "
                                    f"train_net_param (got {given or 'none'})")
            kind = given[0]
            if p.HasField("train_state"):
                state = p.train_state
        else:
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
        # a training loop that reads no diffs runs no ranged backward either: no per-layer records
        kw = dict(level=level, stages=stages, dtype=dtype, device=device,
                  record_layer_inputs=phase != TRAIN or self.blob_diffs, fast=self.fast)
        if kind in ("train_net_param", "net_param", "test_net_param"):
            msg = {"train_net_param": p.train_net_param, "net_param": p.net_param}.get(kind)
            if kind == "test_net_param":
                msg = src
            return Net(None, phase, net_param=msg, **kw)
        name = {"train_net": p.train_net, "net": p.net}.get(kind) if kind != "test_net" else src
        return Net(self._resolve(name), phase, **kw)

    # ------------------------------------------------------------------ the loop
    def get_learning_rate(self) -> float:
        """The rate of the step at `self.iter` (advancing multistep's `current_step`), in the net's precision
        (Caffe's `Dtype rate`)."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return self._dtype_round(rate)

    def _dtype_round(self, x: float) -> float:
        return float(np.float32(x)) if self.net.dtype == torch.float32 else float(x)

    def forward_backward(self) -> torch.Tensor:
        """One forward + backward of the train net; returns its loss as a float64 device scalar, read by
        nothing (diffs accumulate). A NaN or infinite loss is Caffe's business as usual: it shows in the
        display line and training goes on (the training scripts stop on it themselves)."""
        net = self.net
        loss = net.forward_range(0, len(net._layers) - 1, retain_blob_diffs=self.blob_diffs)
        net.backward_loss(retain_blob_diffs=self.blob_diffs)
        return self._loss_scalar(loss)

    def _loss_scalar(self, loss: torch.Tensor | None) -> torch.Tensor:
        """A forward's loss as a float64 device scalar (Caffe's Dtype loss summed in double, as Python
        floats did; a net without loss layers has loss 0)."""
        if loss is None:
            return torch.zeros((), dtype=torch.float64, device=self.net.device)
        return loss.detach().to(torch.float64)

    def _display(self) -> None:
        """Caffe's display lines: the smoothed loss and every train net output, read in one device read;
        `displayed_loss` keeps the value for the training scripts (caffe_torch extension)."""
        net = self.net
        outs = [net.blobs[name].tensor.detach().reshape(-1).to(torch.float64) for name in net.outputs]
        values = host_values(torch.cat([self.loss_window.value.reshape(1), *outs]))
        self.displayed_loss = values[0]
        log.info("Iteration %d, loss = %.6g", self.iter, self.displayed_loss)
        per_output, k = {}, 1
        for name, t in zip(net.outputs, outs):
            per_output[name] = values[k:k + t.numel()]
            k += t.numel()
        self._log_outputs(net, "Train", per_output)

    @property
    def smoothed_loss(self) -> float:
        """Caffe's smoothed loss of the last step() call (a device read)."""
        return self.loss_window.read()

    def step(self, iters: int) -> None:
        """Caffe's Solver::Step: a new smoothing window per call, unless `run_window` holds one. Nothing is read
        from the device except at display iterations (one read)."""
        p = self.param
        stop_iter = self.iter + iters
        self.loss_window = self.run_window or SmoothedLoss(p.average_loss, self.iter)
        t0, i0 = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
            self._run_on_start()
            display = p.display and self.iter % p.display == 0
            self.net.debug_info = bool(display and p.debug_info)
            loss = self.forward_backward()
            for _ in range(1, p.iter_size):
                loss = loss + self.forward_backward()
            if p.iter_size > 1:
                loss = loss / p.iter_size
            if self.gradient_hook is not None:
                loss = self.gradient_hook(self, loss)
            self.loss_window.update(loss, self.iter)
            if display:
                dt = time.perf_counter() - t0
                rate = (self.iter - i0) / dt if dt > 0 and self.iter > i0 else float("nan")
                self._display()
                log.debug("Iteration %d: %.3g iter/s", self.iter, rate)
                t0, i0 = time.perf_counter(), self.iter
            self._run_on_gradients()
            self.apply_update()
            self._iter += 1
            action = self.action_callback(self) if self.action_callback else None
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self.snapshot()
            if action == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume_file=None) -> None:
        """Caffe's Solver::Solve: [restore,] step to max_iter, snapshot (snapshot_after_train, also after an
        early stop), then one forward of the train net for display and a final test."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                loss = self.net.forward_range(0, len(self.net._layers) - 1)
            self.loss_window.update(self._loss_scalar(loss), self.iter)
            self._display()
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _log_outputs(self, net: Net, label: str, values: dict[str, list[float]]) -> None:
        index = 0
        for name in net.outputs:
            w = net._loss_weights.get(name, 0.0)
            for v in values.get(name, []):
                extra = f" (* {w:g} = {w * float(v):.6g} loss)" if w else ""
                log.info("    %s net output #%d: %s = %.6g%s", label, index, name, float(v), extra)
                index += 1

    def test_all(self) -> list[dict]:
        """Run every test net test_iter times and log the averaged outputs ("Test net output #k: ...")."""
        results = []
        for i, tn in enumerate(self.test_nets):
            log.info("Iteration %d, Testing net (#%d)", self.iter, i)
            # Caffe's Solver::Test: ShareTrainedLayersWith before every test (the train net's storage may also have
            # been replaced since, e.g. by caffe_torch.fast's channels_last)
            tn.share_with(self.net)
            sums: dict[str, torch.Tensor] = {}
            n = self.param.test_iter[i]
            loss = torch.zeros((), dtype=torch.float64, device=tn.device)
            with torch.no_grad():
                for _ in range(n):
                    out = tn.forward_range(0, len(tn._layers) - 1)
                    if out is not None:
                        loss = loss + out.detach().to(torch.float64)
                    for name in tn.outputs:
                        v = tn.blobs[name].tensor.detach().reshape(-1).to(torch.float64)
                        sums[name] = sums[name] + v if name in sums else v.clone()
            # one device read for the whole test
            flat = host_values(torch.cat([loss.reshape(1)] + [v / max(n, 1) for v in sums.values()]))
            if self.param.test_compute_loss and n:
                log.info("Test loss: %.6g", flat[0] / n)
            means, k = {}, 1
            for name, v in sums.items():
                means[name] = np.array(flat[k:k + v.numel()])
                k += v.numel()
            self._log_outputs(tn, "Test", means)
            results.append(means)
        return results

    # ------------------------------------------------------------------ update
    def _update_groups(self) -> list[tuple[float, float, list[int]]]:
        """(lr_mult, decay_mult, blob indices): the learnable blobs grouped by their multipliers (one local rate
        and decay per group)."""
        groups: dict[tuple[float, float], list[int]] = {}
        for i, ((_, _, decay_mult, _), lr_mult) in enumerate(zip(self._params, self._lr_mults)):
            groups.setdefault((lr_mult, decay_mult), []).append(i)
        return [(lr, decay, idx) for (lr, decay), idx in groups.items()]

    def _update_is_zero(self, lr_mult: float, local_decay: float, i: int) -> bool:
        """Is Caffe's update of blob i provably zero, history included (so that it can be skipped)? With lr_mult
        0 and a zero history: SGD/Nesterov keep history = momentum * 0; the other rules add a function of the
        diff, which is zero when no weight decay adds to it."""
        return lr_mult == 0 and self._zero_history[i] and (local_decay == 0 or
                                                            self.type_name in ("SGD", "Nesterov"))

    @torch.no_grad()
    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate for all blobs at once: clip, then normalize, regularize, the solver's rule
        (compute_update) and Net::Update, in place on the diffs (which end up holding the update, as in Caffe):
        a few torch._foreach_* calls for all the blobs together, each blob with its own local rate and decay
        (scalar lists; the same kernels, element by element, as a loop over the blobs). Blobs whose update is
        provably zero cost nothing. Nothing is read from the device, except the gradient norm when
        clip_gradients is set (Caffe logs it)."""
        p = self.param
        self.updating = True
        self.net._sync.flush()
        rate = self.get_learning_rate()
        self.last_lr = rate
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        if p.clip_gradients >= 0:
            self._clip_gradients()
        live, rates, decays = [], [], []
        for lr_mult, decay_mult, indices in self._groups:
            local_decay = p.weight_decay * decay_mult
            local_rate = self._dtype_round(rate * lr_mult)
            for i in indices:
                prm = self._params[i][0]
                if self._update_is_zero(lr_mult, local_decay, i):
                    if prm.grad is not None:           # the diff shows the (zero) update, as in Caffe
                        prm.grad.zero_()
                    continue
                if prm.grad is None:
                    set_param_diff(prm, torch.zeros_like(prm))
                live.append(i)
                rates.append(local_rate)
                decays.append(local_decay)
        if live:
            params = [self._params[i][0] for i in live]
            grads = [prm.grad for prm in params]
            if p.iter_size > 1:                                        # Normalize
                torch._foreach_mul_(grads, 1.0 / p.iter_size)
            decayed = [k for k, d in enumerate(decays) if d]
            if decayed:                                                # Regularize: diff += local_decay * data
                on = [params[k] for k in decayed]
                decay = on if p.regularization_type == "L2" else torch._foreach_sign(on)
                torch._foreach_add_([grads[k] for k in decayed], torch._foreach_mul(decay, _scalars(
                    [decays[k] for k in decayed])))
            self.compute_update(live, grads, rates)
            for i in live:
                self._zero_history[i] = False
            torch._foreach_sub_(params, grads)                         # Net::Update: data -= diff
        self._after_update()
        self.updating = False

    def _clip_gradients(self) -> None:
        """Caffe's ClipGradients on the accumulated diffs (before the iter_size normalisation): one reduction
        (the global L2 norm, in float64) and one read; Caffe returns only when clip_gradients < 0, so 0 clips
        everything to zero."""
        p = self.param
        grads = [prm.grad for prm, *_ in self._params if prm.grad is not None]
        if not grads:
            return
        norm = host_values(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64))))[0]
        if norm > p.clip_gradients:
            factor = p.clip_gradients / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                     norm, p.clip_gradients, factor)
            torch._foreach_mul_(grads, factor)

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

    def compute_update(self, indices: list[int], grads: list[torch.Tensor], rates: list[float]) -> None:
        """The solver's rule for blobs `indices` (each with its local rate, `rates`): update their history and
        replace their diffs `grads` by the update, in place (Caffe's ComputeUpdateValue)."""
        raise NotImplementedError

    def _histories(self, indices: list[int], which: int = 0) -> list[torch.Tensor]:
        n = len(self._params)
        return [self.history[which * n + i] for i in indices]

    # ------------------------------------------------------------------ snapshots
    def snapshot_filename(self, ext: str) -> str:
        """Caffe's SnapshotFilename: `<snapshot_prefix>_iter_<iter><ext>`."""
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{ext}"

    def _labelled_nets(self) -> dict[str, Net]:
        return {"train": self.net} | {f"test{i}": tn for i, tn in enumerate(self.test_nets)}

    def snapshot(self) -> None:
        """Write <prefix>_iter_<N>.caffemodel and .solverstate (each atomically, with the umask's permissions);
        returns None, as pycaffe's (the paths are `snapshot_filename(".caffemodel")` / `(".solverstate")`)."""
        if not self.param.snapshot_prefix:
            # Caffe writes "_iter_<N>.*" into the working directory then; say so.
            log.warning("%s: snapshot_prefix is not set; snapshotting to '_iter_%d.*' in %s", self.path,
                        self.iter, Path.cwd())
        model = self.snapshot_filename(".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        self.net.save(model)
        # learned_net as Caffe writes it (real Caffe reads it so); restore() takes the file of that name beside
        # the .solverstate and checks it against the digest
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step,
                                      learned_net_sha256=file_sha256(model))
        for net_label, net in self._labelled_nets().items():
            counters, rngs = net.layer_states(), net.layer_rng_states()
            for layer in [n for n in net._layer_names if n in counters or n in rngs]:
                entry = state.layer_state.add(layer=layer, net=net_label)
                if layer in counters:
                    entry.counter = counters[layer]
                if layer in rngs:
                    entry.rng_state = rngs[layer]
        path = self.snapshot_filename(".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", path)
        # the history blobs (SolverState.history = 3) as wire bytes; a float64 net's as double_data
        write_proto_atomic(blobs_message(state, 3, self.history, keep_double=True), path)

    def restore(self, state_file) -> None:
        """Continue from a .solverstate: iteration, lr step, history, layer counters and generator states, and the
        learned net: the .caffemodel beside the .solverstate (weights.solverstate_weights).
        Everything is read and checked before anything changes, so a bad file leaves the solver as it was
        (except for a learned net that fails half-way through its own copy)."""
        state_file = str(state_file)
        state = read_solverstate(state_file)
        if len(state.history) != len(self.history):
            raise WeightsError(f"{state_file}: holds {len(state.history)} history blobs, the "
                               f"{self.type_name} solver needs {len(self.history)} (different net or solver "
                               "type?)")
        histories = []
        for k, (h, bp) in enumerate(zip(self.history, state.history)):
            values = blob_to_array(bp, f"{state_file}: history blob {k}")
            if values.size != h.numel():
                raise WeightsError(f"{state_file}: history blob {k} holds {values.size} values for a param "
                                   f"of {h.numel()} (shape {tuple(h.shape)})")
            histories.append(values)
        nets = self._labelled_nets()
        layer_states: dict[str, dict[str, int]] = {}
        rng_states: dict[str, dict[str, bytes]] = {}
        skipped = 0
        for ls in state.layer_state:
            if ls.net not in nets:
                skipped += 1
                continue
            if ls.layer not in nets[ls.net]._layer_names:
                raise WeightsError(f"{state_file}: holds state for layer '{ls.layer}', which the {ls.net} "
                                   f"net '{nets[ls.net].name}' lacks")
            if ls.HasField("counter"):
                layer_states.setdefault(ls.net, {})[ls.layer] = int(ls.counter)
            if ls.HasField("rng_state"):
                rng_states.setdefault(ls.net, {})[ls.layer] = bytes(ls.rng_state)
        if skipped:
            log.warning("%s: ignored %d layer state(s) of test nets this solver does not have", state_file,
                        skipped)
        model = solverstate_weights(state_file, state)
        learned = read_caffemodel(model) if model is not None else None
        if learned is not None:
            self.net._sync.flush()
            copy_weights(self.net, learned, str(model))
        with torch.no_grad():
            for h, values in zip(self.history, histories):
                h.copy_(torch.from_numpy(np.ascontiguousarray(values).reshape(h.shape)).to(h.dtype))
        n = len(self._params)
        self._zero_history = [not any(histories[k * n + i].any() for k in range(self.n_history))
                              for i in range(n)]
        self._iter = state.iter
        self.current_step = state.current_step
        self.updating = False
        for label, states in layer_states.items():
            nets[label].set_layer_states(states)
        for label, states in rng_states.items():
            nets[label].set_layer_rng_states(states)


def _scalars(values: list[float]) -> float | list[float]:
    """A foreach op's scalar argument: one number where all the blobs share it, else one per blob (the same
    arithmetic either way)."""
    return values[0] if all(v == values[0] for v in values) else values


def _add_scaled_(out: list[torch.Tensor], x: list[torch.Tensor], rates: list[float]) -> None:
    """out[k] += rates[k] * x[k] (Caffe's axpy), one foreach call per distinct rate (add's alpha is one scalar)."""
    by_rate: dict[float, list[int]] = {}
    for k, r in enumerate(rates):
        by_rate.setdefault(r, []).append(k)
    if len(by_rate) == 1:
        torch._foreach_add_(out, x, alpha=rates[0])
        return
    for r, ks in by_rate.items():
        torch._foreach_add_([out[k] for k in ks], [x[k] for k in ks], alpha=r)


class SGDSolver(Solver):
    type_name = "SGD"

    def compute_update(self, indices, grads, rates):
        h = self._histories(indices)
        torch._foreach_mul_(h, self.param.momentum)           # history = momentum * history + rate * diff
        _add_scaled_(h, grads, rates)
        torch._foreach_copy_(grads, h)                        # diff = history


class NesterovSolver(Solver):
    type_name = "Nesterov"

    def compute_update(self, indices, grads, rates):
        h = self._histories(indices)
        m = self.param.momentum
        old = torch._foreach_mul(h, m)                        # momentum * the history before this step
        torch._foreach_mul_(h, m)
        _add_scaled_(h, grads, rates)
        update = torch._foreach_mul(h, 1 + m)                 # (1 + momentum) * history - momentum * old
        torch._foreach_sub_(update, old)
        torch._foreach_copy_(grads, update)


class AdaGradSolver(Solver):
    type_name = "AdaGrad"

    def _check_type_param(self):
        if self.param.momentum != 0:
            raise PrototxtError(f"{self.path}: momentum cannot be used with AdaGrad")

    def compute_update(self, indices, grads, rates):
        h = self._histories(indices)
        torch._foreach_add_(h, torch._foreach_mul(grads, grads))     # history += diff^2
        _scaled_by_rms(grads, h, self.param.delta, rates)


def _scaled_by_rms(grads: list[torch.Tensor], h: list[torch.Tensor], delta: float, rates: list[float]) -> None:
    """diff = rate * diff / (sqrt(history) + delta), in place (AdaGrad, RMSProp)."""
    denom = torch._foreach_sqrt(h)
    torch._foreach_add_(denom, delta)
    torch._foreach_mul_(grads, _scalars(rates))
    torch._foreach_div_(grads, denom)


class RMSPropSolver(Solver):
    type_name = "RMSProp"

    def _check_type_param(self):
        if self.param.momentum != 0:
            raise PrototxtError(f"{self.path}: momentum cannot be used with RMSProp")
        if not 0 <= self.param.rms_decay < 1:
            raise PrototxtError(f"{self.path}: rms_decay should lie between 0 and 1")

    def compute_update(self, indices, grads, rates):
        h = self._histories(indices)
        d = self.param.rms_decay
        sq = torch._foreach_mul(grads, 1 - d)                 # history = d * history + (1 - d) * diff^2
        torch._foreach_mul_(sq, grads)
        torch._foreach_mul_(h, d)
        torch._foreach_add_(h, sq)
        _scaled_by_rms(grads, h, self.param.delta, rates)


def _decayed_square_(hist: list[torch.Tensor], x: list[torch.Tensor], m: float) -> None:
    """hist = m * hist + (1 - m) * x^2, in place (AdaDelta's and Adam's second moments)."""
    sq = torch._foreach_mul(x, 1 - m)
    torch._foreach_mul_(sq, x)
    torch._foreach_mul_(hist, m)
    torch._foreach_add_(hist, sq)


class AdaDeltaSolver(Solver):
    type_name = "AdaDelta"
    n_history = 2

    def compute_update(self, indices, grads, rates):
        grad_hist, upd_hist = self._histories(indices, 0), self._histories(indices, 1)
        m, delta = self.param.momentum, self.param.delta
        _decayed_square_(grad_hist, grads, m)
        ratio = torch._foreach_add(upd_hist, delta)           # update = diff * sqrt((uh + delta) / (gh + delta))
        torch._foreach_div_(ratio, torch._foreach_add(grad_hist, delta))
        torch._foreach_sqrt_(ratio)
        torch._foreach_mul_(grads, ratio)
        _decayed_square_(upd_hist, grads, m)
        torch._foreach_mul_(grads, _scalars(rates))


class AdamSolver(Solver):
    type_name = "Adam"
    n_history = 2

    def compute_update(self, indices, grads, rates):
        m, v = self._histories(indices, 0), self._histories(indices, 1)
        b1, b2 = self.param.momentum, self.param.momentum2
        first = torch._foreach_mul(grads, 1 - b1)             # m = b1 * m + (1 - b1) * diff
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, first)
        _decayed_square_(v, grads, b2)                        # v = b2 * v + (1 - b2) * diff^2
        t = self.iter + 1
        correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, self.param.delta)
        update = torch._foreach_mul(m, _scalars([rate * correction for rate in rates]))
        torch._foreach_div_(update, denom)
        torch._foreach_copy_(grads, update)


_SOLVERS = {cls.type_name: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                            AdaDeltaSolver, AdamSolver)}


def get_solver(solver_file, **kwargs) -> Solver:
    """The solver named by the prototxt's `type` (or legacy `solver_type`)."""
    param = read_solver(solver_file)
    upgrade_solver_type(param, str(solver_file))
    name = param.type
    if name not in _SOLVERS:
        raise PrototxtError(f"{solver_file}: unknown solver type {name!r}; known: {', '.join(_SOLVERS)}")
    return _SOLVERS[name](solver_file, solver_param=param, **kwargs)
