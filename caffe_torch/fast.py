"""Opt-in speed options for caffe_torch nets (the GPU fast path). Nothing here is on by default.

    from caffe_torch.fast import FastOptions, apply_to_solver
    opts = FastOptions(channels_last=True, amp="bf16", tf32=True, compile=True)
    apply_to_solver(solver, opts)          # the train net and every test net; or apply(net, opts)

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
- `tf32`: TensorFloat-32 for float32 convolutions and matrix products on Ampere+ GPUs (a process-wide
  switch; no effect on the CPU). ~1e-3 relative. Note that PyTorch already lets cuDNN use TF32 for
  convolutions by default; without this option that default is left alone, with it the matrix products
  (InnerProduct layers) use TF32 too.
- `compile`: `torch.compile` of the net's forward (the whole layer loop, so consecutive layers fuse; its
  backward is compiled too). The first iteration pays the compile time (tens of seconds); if compiling
  fails the net falls back to the interpreted forward with a warning. On a CPU it brings nothing measurable
  (see bench/bench_all.py); it is meant for GPUs, where it removes launch overhead and fuses PReLU/Eltwise.
- CUDA graphs are not offered: one iteration has host-side control flow (the Python layer loop, the
  solver's per-blob update with a host-side learning rate, the loss read for logging, variable shapes in
  validation), so graph capture would need the whole step rewritten as a static function; use `compile`
  (mode "max-autotune" or "reduce-overhead" can be passed as `compile="reduce-overhead"` to try).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("caffe_torch.fast")

#: layer types run under autocast with amp (the convolutional trunk); everything else stays in the net dtype
TRUNK_TYPES = frozenset({"Convolution", "Pooling", "PReLU", "ReLU", "Eltwise"})
AMP_DTYPES = {"bf16": torch.bfloat16}


@dataclass
class FastOptions:
    channels_last: bool = False
    amp: str | None = None            # None or "bf16"
    tf32: bool = False
    compile: bool | str = False       # False, True (default mode), or a torch.compile mode string

    def __post_init__(self):
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None or one of {sorted(AMP_DTYPES)}, got {self.amp!r} (fp16 would "
                             "need loss scaling, which Caffe's solver does not have)")

    def any(self) -> bool:
        return bool(self.channels_last or self.amp or self.tf32 or self.compile)

    def describe(self) -> str:
        on = [n for n, v in (("channels_last", self.channels_last), ("tf32", self.tf32)) if v]
        if self.amp:
            on.append(f"amp={self.amp}")
        if self.compile:
            on.append("compile" if self.compile is True else f"compile={self.compile}")
        return ", ".join(on) or "fp32 (no fast options)"

    @classmethod
    def from_args(cls, args) -> FastOptions:
        """From the training scripts' flags (--channels-last, --amp, --tf32, --compile)."""
        return cls(channels_last=bool(getattr(args, "channels_last", False)), amp=getattr(args, "amp", None),
                   tf32=bool(getattr(args, "tf32", False)), compile=bool(getattr(args, "compile", False)))


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
        # blobs read outside the trunk (or net outputs): trunk layers hand these over in the net's dtype
        outside = set(net.outputs)
        for i, name in enumerate(net._layer_names):
            if i not in self.trunk:
                outside.update(net.bottom_names[name])
        self.cast_tops = {i: [t in outside for t in net.top_names[net._layer_names[i]]] for i in self.trunk}

    def __call__(self, i, layer, bottoms):
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


def _compile_forward(net, mode) -> None:
    """Replace net.forward_range by a compiled version that falls back to the interpreted one if compiling
    (at the first call) fails."""
    eager = net.forward_range
    kw = {} if mode is True else {"mode": mode}
    state = {"ok": True}
    try:
        compiled = torch.compile(eager, **kw)
    except Exception as exc:  # unknown mode, no compiler for this platform
        log.warning("torch.compile unavailable for net '%s' (%s); using the interpreted forward", net.name, exc)
        state["ok"] = False
        compiled = eager

    def forward_range(start, end, retain_blob_diffs=False):
        if state["ok"]:
            try:
                return compiled(start, end, retain_blob_diffs)
            except Exception as exc:  # any compiler/backend failure: run interpreted from now on
                state["ok"] = False
                log.warning("torch.compile of net '%s' failed (%s: %s); using the interpreted forward",
                            net.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return eager(start, end, retain_blob_diffs)

    net.forward_range = forward_range
    net._fast_compile_state = state


def apply(net, options: FastOptions) -> None:
    """Apply `options` to one caffe_torch Net in place (call once, before training)."""
    if getattr(net, "_fast_options", None) is not None:
        raise RuntimeError(f"fast options already applied to net '{net.name}'")
    net._fast_options = options
    if options.tf32:
        set_tf32(True)
    if options.channels_last:
        with torch.no_grad():
            for m in net.modules:
                if m.type_name == "Convolution":
                    w = m.blobs[0]
                    if w.dim() == 4:
                        # in place on the Parameter (same object: the solver, shared nets, snapshots keep it)
                        w.data = w.data.contiguous(memory_format=torch.channels_last)
    if options.channels_last or options.amp:
        net.layer_call = _LayerCall(net, options)
    if options.compile:
        _compile_forward(net, options.compile)


def apply_to_solver(solver, options: FastOptions) -> None:
    """Apply `options` to the solver's train net and test nets (their shared weights are converted once)."""
    apply(solver.net, options)
    for tn in solver.test_nets:
        apply(tn, options)
