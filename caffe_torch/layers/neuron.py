"""Element-wise neuron layers of BVLC Caffe: AbsVal, BNLL, Clip, ELU, Exp, Log, Power, Threshold, Swish.

Each maps a bottom to a top of the same shape. Their backward is the derivative of the forward (autograd)
except Power (Caffe's closed form, which is 0/0 = NaN where the base is 0 and shift is 0) and Threshold
(no backward in Caffe: a fatal NOT_IMPLEMENTED, an error here too).
In place, Caffe's BNLL, Log and Power backward read the bottom after the forward overwrote it with the top and
give a wrong bottom diff; here the gradient is the same in place or not (a known difference, not reproduced:
tests/test_layers_neuron.py::test_in_place_backward_against_real_caffe).
"""

import math

import torch

from .base import Layer, register


@register("AbsVal")
class AbsVal(Layer):
    """y = |x|; dy/dx = sign(x), 0 at x = 0 (as Caffe's caffe_sign). Not in place (Caffe refuses it: its
    backward reads the bottom's sign)."""

    allows_in_place = False

    def forward(self, x):
        return torch.abs(x)


@register("BNLL")
class BNLL(Layer):
    """y = log(1 + exp(x)) (binomial normal log likelihood) as Caffe writes it: x + log(1 + exp(-x)) for x > 0,
    else log(1 + exp(x)), the exp in x's precision and the log in double (Caffe's literal `1.`), which leaves y
    an absolute error of ~1e-16 where exp(x) is tiny; dy/dx = sigmoid(x) (1/2 at 0, as Caffe)."""

    def forward(self, x):
        wide = torch.promote_types(x.dtype, torch.float64)
        positive = x > 0
        e = torch.exp(torch.where(positive, -x, x)).to(wide)         # <= 1: no overflow in either branch
        return (torch.where(positive, x, torch.zeros_like(x)).to(wide) + torch.log(1.0 + e)).to(x.dtype)


@register("Clip")
class Clip(Layer):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max (both ends included, as Caffe)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.clip_param
        if not (cp.HasField("min") and cp.HasField("max")):
            raise self.error("clip_param needs both min and max (required fields)")
        if cp.min > cp.max:
            raise self.error(f"clip_param min {cp.min} is greater than max {cp.max}")
        self.min, self.max = cp.min, cp.max

    def forward(self, x):
        return torch.clamp(x, self.min, self.max)


@register("ELU")
class ELU(Layer):
    """y = x if x > 0 else alpha (exp(x) - 1), as Caffe writes it: max(x, 0) + alpha (exp(min(x, 0)) - 1), whose
    exp(x) - 1 loses the relative precision of a small negative x (not expm1); at x = 0 the gradient is alpha
    (Caffe tests x > 0)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.alpha = param.elu_param.alpha        # default 1

    def forward(self, x):
        positive = x > 0
        zero = torch.zeros_like(x)
        return torch.where(positive, x, zero) + self.alpha * (torch.exp(torch.where(positive, zero, x)) - 1)


def _log_base(layer: Layer, base: float) -> float:
    """ln(base); base -1 (the default) means e. Caffe refuses base <= 0 and base 1 for Log (1 / ln 1)."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register("Exp")
class Exp(Layer):
    """y = base ^ (shift + scale x), computed as Caffe: base^shift * exp(ln(base) scale x)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ep = param.exp_param                      # defaults base -1 (e), scale 1, shift 0
        log_base = _log_base(self, ep.base)
        self.inner_scale = log_base * ep.scale
        self.outer_scale = 1.0 if ep.shift == 0 else math.exp(log_base * ep.shift)

    def forward(self, x):
        y = torch.exp(x * self.inner_scale) if self.inner_scale != 1 else torch.exp(x)
        return y * self.outer_scale if self.outer_scale != 1 else y


@register("Log")
class Log(Layer):
    """y = log_base(shift + scale x); base -1 (default) is the natural log."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        lp = param.log_param                      # defaults base -1 (e), scale 1, shift 0
        log_base = _log_base(self, lp.base)
        if log_base == 0:
            raise self.error("base 1 has no logarithm (1 / ln 1 is infinite)")
        self.base_scale = 1.0 / log_base
        self.scale, self.shift = lp.scale, lp.shift

    def forward(self, x):
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        y = torch.log(x)
        return y * self.base_scale if self.base_scale != 1 else y


class _PowerFunction(torch.autograd.Function):
    """y = (shift + scale x)^power with Caffe's closed-form backward (PowerLayer::Backward_cpu):
    diff_scale = power * scale;
    diff_scale == 0 or power == 1: dx = diff_scale (times dy unless diff_scale is 0);
    power == 2:                    dx = dy * diff_scale * (shift + scale x);
    shift == 0:                    dx = dy * power * y / x          (NaN at x = 0, as Caffe);
    otherwise:                     dx = dy * diff_scale * y / (shift + scale x)."""

    @staticmethod
    def forward(ctx, x, power, scale, shift):
        diff_scale = power * scale
        if diff_scale == 0:
            value = 1.0 if power == 0 else shift ** power
            y = torch.full_like(x, value)
        else:
            base = x * scale if scale != 1 else x
            if shift != 0:
                base = base + shift
            y = torch.pow(base, power) if power != 1 else base.clone()
        ctx.save_for_backward(x, y)
        ctx.constants = (power, scale, shift, diff_scale)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y = ctx.saved_tensors
        power, scale, shift, diff_scale = ctx.constants
        if diff_scale == 0:
            return torch.zeros_like(x), None, None, None
        if power == 1:
            return dy * diff_scale, None, None, None
        if power == 2:
            dx = x * (diff_scale * scale)
            if shift != 0:
                dx = dx + diff_scale * shift
        elif shift == 0:
            dx = y / x * power
        else:
            base = x * scale if scale != 1 else x
            dx = y / (base + shift)
            if diff_scale != 1:
                dx = dx * diff_scale
        return dy * dx, None, None, None


@register("Power")
class Power(Layer):
    """y = (shift + scale x)^power; the backward is Caffe's closed form (see _PowerFunction)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.power_param                    # defaults power 1, scale 1, shift 0
        self.power, self.scale, self.shift = pp.power, pp.scale, pp.shift

    def forward(self, x):
        return _PowerFunction.apply(x, self.power, self.scale, self.shift)


class _NoBackward(torch.autograd.Function):
    """Identity whose backward is an error: for layers whose Caffe Backward is NOT_IMPLEMENTED (a fatal error
    there whenever the net needs a gradient through them)."""

    @staticmethod
    def forward(ctx, y, message):
        ctx.message = message
        return y.clone()

    @staticmethod
    def backward(ctx, dy):
        raise RuntimeError(ctx.message)


def no_backward(layer: Layer, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`y` (computed without gradient from `x`), made to fail on backward if `x` needs a gradient."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return y
    return _NoBackward.apply(y.detach().requires_grad_(True), str(layer.error(
        "has no backward in Caffe (NOT_IMPLEMENTED; not differentiable) but the net needs a gradient through "
        "it; set propagate_down: false or move it off the path to the loss")))


@register("Threshold")
class Threshold(Layer):
    """y = 1 if x > threshold else 0. No backward (as Caffe: an error if a gradient must pass through)."""

    backward_not_implemented = True     # need_backward.py

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.threshold = param.threshold_param.threshold     # default 0

    def forward(self, x):
        return no_backward(self, (x.detach() > self.threshold).to(x.dtype), x)


@register("Swish")
class Swish(Layer):
    """y = x sigmoid(beta x) (after Caffe 1.0: BVLC #6002); dy/dx = beta y + sigmoid(beta x) (1 - beta y)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.beta = param.swish_param.beta       # default 1

    def forward(self, x):
        return x * torch.sigmoid(x * self.beta)
