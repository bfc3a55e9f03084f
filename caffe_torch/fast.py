"""Opt-in speed options for caffe_torch nets (the GPU fast path). Nothing here is on by default.

    from caffe_torch.fast import FastOptions
    opts = FastOptions(channels_last=True, amp="bf16", tf32=True, compile=True)
    solver = caffe_torch.SGDSolver("solver.prototxt", fast=opts)     # the train net and every test net
    net = caffe_torch.Net("net.prototxt", caffe_torch.TEST, fast=opts)

Chosen when the net is built: Net.__init__ calls prepare, layer_call and compiled_layers below, and its
forward_range / backward_loss run inside precision_scope.

- `channels_last`: convolution weights (and the convolutions' inputs) in NHWC memory order, the layout
  cuDNN's tensor-core kernels want. Same numbers (only the memory order changes; summation order inside
  cuDNN may differ, so ~1e-6 relative).
- `amp="bf16"`: the trunk (Convolution, Pooling, PReLU, ReLU, Eltwise layers) runs under
  `torch.autocast(bfloat16)`; every other layer (InnerProduct, Normalize, the margin and loss layers) gets
  its bottoms cast back to the net's dtype and runs with autocast off, and the solver's update is untouched
  (parameters, gradients and history stay float32). The trunk's internal blobs are then bfloat16 tensors
  (read them with `.tensor`; `.data` of a bfloat16 blob is not a NumPy array); the blobs that leave the
  trunk (e.g. res4_3p) are cast back to float32. Expected deviation: ~1e-2 relative on activations, training
  curves indistinguishable. fp16 is not offered: it needs loss scaling, which Caffe's solver does not have.
  On a CPU without native bfloat16 (no AVX512-BF16 / AMX; see `cpu_capability()`) bf16 is 15-18x *slower*
  than fp32 (measured on an AMD EPYC: the paper net 0.09 vs 1.63 examples/s), so a net with it is refused
  there.
- `tf32`: TensorFloat-32 for float32 convolutions and matrix products on Ampere+ GPUs (torch's switches are
  process-wide, so they are turned on only while this net runs its forward and backward, and restored
  after: another net or benchmark in the process keeps full fp32; no effect on the CPU). ~1e-3 relative.
  Note that PyTorch already lets cuDNN use TF32 for convolutions by default; without this option that
  default is left alone (bench/ turns it off for its fp32 rows), with it the matrix products (InnerProduct
  layers) use TF32 too.
- `compile`: `torch.compile` of the net's forward (the whole layer loop, so consecutive layers fuse; its
  backward is compiled too). The first iteration pays the compile time (tens of seconds); if compiling
  fails, forward or backward, the net falls back to the interpreted one with a warning (a failed backward
  restores the diffs and layer counters and redoes that forward and backward interpreted). Layers with a
  per-forward counter (the margin layers' annealing) run outside the compiled graph, so their changing
  counter does not force a recompile every step. On a CPU it brings nothing measurable (see
  bench/bench_all.py); it is meant for GPUs, where it removes launch overhead and fuses PReLU/Eltwise.
- `deterministic`: cuDNN's deterministic algorithms and `torch.use_deterministic_algorithms` (process-wide,
  as torch has them), so that a resumed GPU run equals the uninterrupted one as it does on the CPU
  (atomics in some CUDA kernels otherwise change the summation order from run to run). Slower.
- CUDA graphs are not offered: one iteration has host-side control flow (the Python layer loop, the
  solver's per-blob update with a host-side learning rate, the loss read for logging, variable shapes in
  validation), so graph capture would need the whole step rewritten as a static function; use `compile`
  (mode "max-autotune" or "reduce-overhead" can be passed as `compile="reduce-overhead"` to try).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CaffeError

log = logging.getLogger("caffe_torch.fast")


class UnsuitableOption(CaffeError, ValueError):
    """A speed option that this device would run slower (the training scripts print it and stop)."""

#: layer types run under autocast with amp (the convolutional trunk); everything else stays in the net dtype
TRUNK_TYPES = frozenset({"Convolution", "Pooling", "PReLU", "ReLU", "Eltwise"})
AMP_DTYPES = {"bf16": torch.bfloat16}


@dataclass
class FastOptions:
    channels_last: bool = False
    amp: str | None = None            # None or "bf16"
    tf32: bool = False
    compile: bool | str = False       # False, True (default mode), or a torch.compile mode string
    deterministic: bool = False

    def __post_init__(self):
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None or one of {sorted(AMP_DTYPES)}, got {self.amp!r} (fp16 would "
                             "need loss scaling, which Caffe's solver does not have)")

    def any(self) -> bool:
        return bool(self.channels_last or self.amp or self.tf32 or self.compile or self.deterministic)

    def describe(self) -> str:
        on = [n for n, v in (("channels_last", self.channels_last), ("tf32", self.tf32),
                             ("deterministic", self.deterministic)) if v]
        if self.amp:
            on.append(f"amp={self.amp}")
        if self.compile:
            on.append("compile" if self.compile is True else f"compile={self.compile}")
        return ", ".join(on) or "fp32 (no fast options)"

    @classmethod
    def from_args(cls, args) -> FastOptions:
        """From the training scripts' flags (--channels-last, --amp, --tf32, --compile, --deterministic)."""
        return cls(channels_last=bool(getattr(args, "channels_last", False)), amp=getattr(args, "amp", None),
                   tf32=bool(getattr(args, "tf32", False)), compile=bool(getattr(args, "compile", False)),
                   deterministic=bool(getattr(args, "deterministic", False)))

    def precision(self) -> str:
        """The arithmetic a net with these options runs in: "fp32", "tf32" or "bf16" (trunk)."""
        return self.amp or ("tf32" if self.tf32 else "fp32")


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_native(cpuinfo: str | None = None) -> bool:
    """Does this CPU compute bfloat16 natively (AVX512-BF16 or AMX-BF16)? Read from /proc/cpuinfo (Linux);
    False where that is not available (bf16 is then emulated, much slower than fp32)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    return bool(_cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


def cpu_capability(cpuinfo: str | None = None) -> str:
    """torch's CPU kernel level and whether bf16 is native, e.g. "AVX2, bf16 emulated" (for benchmark rows)."""
    level = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    return f"{level}, bf16 {'native' if cpu_bf16_native(cpuinfo) else 'emulated'}"


def check_device(options: FastOptions, device: torch.device) -> None:
    """Refuse options that would make this device slower, with the reason (bf16 on a CPU without it)."""
    if options.amp == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        raise UnsuitableOption(f"--amp bf16 on this CPU ({cpu_capability()}): without AVX512-BF16 or AMX, bfloat16 "
                         "is emulated and 15-18x slower than fp32 (paper net: 0.09 vs 1.63 examples/s on an "
                         "AMD EPYC); train in fp32 here, or use bf16 on a GPU or a CPU that has it")


def set_deterministic(enabled: bool) -> None:
    """cuDNN's deterministic algorithms, no autotuning, and torch's deterministic-algorithms mode (which needs
    CUBLAS_WORKSPACE_CONFIG before cuBLAS starts; set here if the user has not)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = bool(enabled)
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(bool(enabled))


def _new_tf32_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 convolutions and matmuls (process-wide, as torch's own switches). Uses the
    `fp32_precision` settings where torch has them (it refuses a mix of those and the legacy `allow_tf32`)."""
    if _new_tf32_api():
        value = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)


@contextlib.contextmanager
def tf32_scope(enabled: bool = True):
    """TF32 on (or off) for the duration of the block, then the switches as they were."""
    before = tf32_enabled()
    set_tf32(enabled)
    try:
        yield
    finally:
        set_tf32(before)


def tf32_enabled() -> bool:
    if _new_tf32_api():
        return torch.backends.cuda.matmul.fp32_precision == "tf32" and \
            torch.backends.cudnn.conv.fp32_precision == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)


def _reduced(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float32 \
        and t.dtype != torch.float64


class _LayerCall:
    """Net.layer_call: runs trunk layers under autocast (channels_last inputs for convolutions) and the
    others in the net's dtype with autocast off."""

    def __init__(self, net, options: FastOptions):
        self.dtype = net.dtype
        self.device_type = net.device.type
        self.amp_dtype = AMP_DTYPES[options.amp] if options.amp else None
        self.channels_last = options.channels_last
        types = [m.type_name for m in net.modules]
        self.trunk = {i for i, t in enumerate(types) if t in TRUNK_TYPES} if self.amp_dtype else set()
        self.conv = {i for i, t in enumerate(types) if t == "Convolution"}
        # Split layers (Caffe's InsertSplits) pass their bottom on in whatever dtype it has
        self.split = {i for i, t in enumerate(types) if t == "Split"}
        # blobs read outside the trunk (or net outputs): trunk layers hand these over in the net's dtype; a
        # Split's bottom counts as read outside when one of its tops is
        outside = set(net.outputs)
        for i in reversed(range(len(types))):
            name = net._layer_names[i]
            if i not in self.trunk and (i not in self.split or any(t in outside for t in net.top_names[name])):
                outside.update(net.bottom_names[name])
        self.cast_tops = {i: [t in outside for t in net.top_names[net._layer_names[i]]] for i in self.trunk}

    def __call__(self, i, layer, bottoms):
        if i in self.split:
            return layer(*bottoms)
        if self.channels_last and i in self.conv:
            bottoms = [b.contiguous(memory_format=torch.channels_last) if b.dim() == 4 else b for b in bottoms]
        if i in self.trunk:
            with torch.autocast(self.device_type, dtype=self.amp_dtype):
                out = layer(*bottoms)
            single = isinstance(out, torch.Tensor)
            outs = (out,) if single else tuple(out)
            outs = tuple(o.to(self.dtype) if cast and _reduced(o) else o
                         for o, cast in zip(outs, self.cast_tops[i]))
            return outs[0] if single else outs
        if self.amp_dtype is None:
            return layer(*bottoms)
        bottoms = [b.to(self.dtype) if _reduced(b) else b for b in bottoms]
        with torch.autocast(self.device_type, enabled=False):
            return layer(*bottoms)


def _stateful_layers_eager(net, inner):
    """A layer call that runs the layers with a per-forward counter (margin annealing) outside the compiled
    graph (and the others through `inner`, or plainly): dynamo guards on a Python int attribute, so a counter
    that changes every forward would otherwise recompile every step (until torch's recompile limit, then the
    whole forward would run uncompiled). `inner` itself when the net has no such layer."""
    stateful = {i for i, m in enumerate(net.modules) if m.get_state() is not None}
    if not stateful:
        return inner

    def plain(i, layer, bottoms):
        return layer(*bottoms) if inner is None else inner(i, layer, bottoms)

    eager = torch._dynamo.disable(plain)

    def layer_call(i, layer, bottoms):
        return eager(i, layer, bottoms) if i in stateful else plain(i, layer, bottoms)

    return layer_call


def _refusal(exc: Exception) -> bool:
    """An exception of the net itself, raised the same interpreted (a layer's LayerError when the shapes a Filter
    gives a later layer are ones Caffe's Reshape aborts on; a Python layer's own exception), not a compiler's."""
    return isinstance(exc, CaffeError) or getattr(exc, "caffe_torch_user_code", False)


class CompiledLayers:
    """A net's layer loop (Net._run_layers) compiled with torch.compile, falling back to the interpreted one if
    compiling fails: at the first forward, or at the first backward of a newly compiled graph (then that
    iteration's forward and backward are redone interpreted, from the diffs and layer counters they started
    with). The net calls run_layers / backward_loss instead of its interpreted ones when it has one."""

    def __init__(self, net, mode):
        self.net = net
        self.ok = True
        try:
            self.compiled = torch.compile(net._run_layers, **({} if mode is True else {"mode": mode}))
        except Exception as exc:  # unknown mode, no compiler for this platform
            log.warning("torch.compile unavailable for net '%s' (%s); using the interpreted forward", net.name,
                        exc)
            self.ok = False
        # input shapes whose compiled backward has run once (a new shape compiles a new graph and backward)
        self.verified: set[tuple] = set()
        # what redoing the last forward interpreted needs, should its compiled backward fail
        self.last: dict = {}

    def _fail(self, what, exc) -> None:
        self.ok = False
        log.warning("torch.compile of net '%s' failed in %s (%s: %s); using the interpreted forward", self.net.name,
                    what, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

    def run_layers(self, start, end, retain_blob_diffs=False):
        net = self.net
        if self.ok:
            key = (start, end, tuple(tuple(net.blobs[n].shape) for n in net.inputs))
            if key not in self.verified:
                self.last.update(key=key, args=(start, end, retain_blob_diffs), states=net.layer_states(),
                                 grads=[None if p.grad is None else p.grad.clone() for p, *_ in net._learnable])
            else:
                self.last.clear()
            try:
                return self.compiled(start, end, retain_blob_diffs)
            except Exception as exc:  # any compiler/backend failure: run interpreted from now on
                if _refusal(exc):
                    raise
                self._fail("the forward", exc)
                if self.last:
                    net.set_layer_states(self.last["states"])
        return net._run_layers(start, end, retain_blob_diffs)

    def backward_loss(self, extra=None, retain_blob_diffs=False):
        net, last = self.net, self.last
        if not (self.ok and last):
            return net._backward_loss(extra, retain_blob_diffs)
        try:
            net._backward_loss(extra, retain_blob_diffs)
        except Exception as exc:  # the compiled backward is compiled at its first call
            if _refusal(exc):
                raise
            self._fail("the backward", exc)
            for (p, *_), g in zip(net._learnable, last["grads"]):
                p.grad = g
            net.set_layer_states(last["states"])
            net.forward_range(*last["args"])
            net._backward_loss(extra, retain_blob_diffs)
        else:
            self.verified.add(last["key"])
        last.clear()


def precision_scope(options: FastOptions):
    """What a net's forward and backward run inside: TF32 on for this net only (torch's switches are
    process-wide, restored after), or nothing."""
    return tf32_scope() if options.tf32 else contextlib.nullcontext()


def prepare(net, options: FastOptions) -> None:
    """The process-wide switches and weight layout `options` ask for, at the net's construction (Net calls it
    before it builds its layer call and compiled loop)."""
    check_device(options, net.device)
    if options.deterministic:
        set_deterministic(True)
    if options.channels_last:
        with torch.no_grad():
            for m in net.modules:
                if m.type_name == "Convolution":
                    w = m.blobs[0]
                    if w.dim() == 4:
                        # in place on the Parameter (same object: the solver, shared nets, snapshots keep it)
                        w.data = w.data.contiguous(memory_format=torch.channels_last)


def layer_call(net, options: FastOptions):
    """Net.layer_call for `options`: None (a plain call per layer), or f(index, layer, bottoms)."""
    call = _LayerCall(net, options) if options.channels_last or options.amp else None
    return _stateful_layers_eager(net, call) if options.compile else call


def compiled_layers(net, options: FastOptions) -> CompiledLayers | None:
    return CompiledLayers(net, options.compile) if options.compile else None
