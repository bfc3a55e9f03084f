"""The paper's margin layers, as the 2017 Caffe forks compute them, plus one extension of ours.

Sources: the forks' published layers (SphereFace fork: MarginInnerProduct; happynear's
AM-Softmax fork: Normalize, InnerProduct `normalize: true`, LabelSpecificAdd). "Faithful" includes the forks'
quirks: a lambda schedule that advances on every forward, weights renormalised in place, a margin applied
only above a threshold and only in TRAIN, and backward passes that are deliberately not the exact derivative.

MarginInnerProduct (A-Softmax; SphereFace fork)
    bottoms: x (flattened from `axis` to M x K), label (M, float as Caffe stores it); tops: logits (M x N)
    and optionally lambda (shape (1,); the fork always writes it, so its prototxts give two tops). One
    learnable blob W (N x K), no bias. Every forward (TRAIN or TEST net, every forward of an iter_size
    accumulation; never the net's shape inference) first increments a counter that starts at `iteration`,
    then lambda = max(base * (1 + gamma * counter)^-power, lambda_min), then renormalises each row of W IN
    PLACE (no epsilon; `net.params[...]` shows the normalised W afterwards, as in Caffe). Target logit
    (|x| psi(cos) + lambda x.w_y) / (1 + lambda), the others x.w_j; SINGLE ignores lambda.
    Backward: CUSTOM (`_MarginIPFunction`), the fork's: dW = dF^T x (plain inner product w.r.t. the
    normalised W), dx with the (w_y, x) coefficient pair of the target rescaled to unit length. W is read at
    backward time (Caffe reads its blob then), not saved with a version check. The label gets no gradient.
    `exact_gradient: true` (our field 1001, default false) instead differentiates the forward with autograd:
    x.w/|x| through psi with the signs piecewise constant, and W through its renormalisation w/||w||.
    The parameter is read from `margin_inner_product_param` (field 147, SphereFace) or, when that is absent,
    from field 232 (`margin_inner_product_param_happynear`, where the AM-Softmax fork's binaries put it).

Normalize (happynear fork)
    Per sample and spatial position over channels: L2 y = x / sqrt(sum x^2 + 1e-6); L1 y = x / (sum |x| +
    1e-6). The tops are 4-D as in the fork: (num, channels, height, width), and the optional second top, the
    norm, (num, 1, height, width). Backward: autograd, which IS the fork's formula (exact derivative); the
    norm top back-propagates only with `bp_norm: true` (otherwise it is detached, as in the fork).
    `fix_gradient` only changes the fork's GPU path and is accepted and ignored.

InnerProduct `normalize: true` (happynear fork; the class lives in common.py)
    `normalize_rows_(W, 1e-6, rows=num_output)` before the product: the fork rescales num_output
    contiguous runs of K values of the blob's memory (for `transpose: true` that is NOT a column of the
    K x N blob: a quirk we reproduce). Backward: the plain inner-product backward with the normalised W,
    which is just autograd of `x W^T + b` on the (already normalised) parameter: no custom function needed.

LabelSpecificAdd (happynear fork; AM-Softmax's "cos - m")
    TRAIN: x[i, label_i] += bias where x[i, label_i] > -bias (strictly), the rest copied. TEST: identity,
    whatever `transform_test` says, and the optional bias top is 0 (the fork leaves it unwritten). Backward:
    identity (autograd). With `bias_base` set (has-field), each TRAIN forward first computes
    bias = min(max(bias_base + (1 + bias_gamma * it)^bias_power - 1, bias_min), bias_max) with the counter
    `it` (starts at `iteration`), then increments the counter; TEST forwards leave it alone.

AdditiveAngularMargin (OUR EXTENSION, in neither fork; `additive_angular_margin_param`, field 8301)
    ArcFace / AAM-Softmax: bottoms = cosines (N x C) and labels; TRAIN: the target column c = cos(theta)
    becomes cos(theta + margin) where theta + margin <= pi, i.e. c > cos(pi - margin), else
    c - margin * sin(margin) (ArcFace's easy_margin off); with `easy_margin: true`: cos(theta + margin) where
    c > 0, else c. TEST: identity. Backward: autograd (exact). Scale by s with a Scale layer after it:

        layer { name: "fc5" type: "InnerProduct" bottom: "emb_norm" top: "cos"
                inner_product_param { num_output: 1211 bias_term: false normalize: true
                                      weight_filler { type: "xavier" } } }
        layer { name: "aam" type: "AdditiveAngularMargin" bottom: "cos" bottom: "label" top: "cos_m"
                additive_angular_margin_param { margin: 0.2 } }
        layer { name: "s" type: "Scale" bottom: "cos_m" top: "logits"
                param { lr_mult: 0 decay_mult: 0 } scale_param { filler { value: 30 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }

Counters and snapshots. MarginInnerProduct and LabelSpecificAdd (when annealing) expose their counter through
`get_state()` / `set_state()`: the number of forwards done plus `iteration` (the value the next forward
increments / uses). Caffe keeps these only in memory (a resumed real-Caffe run restarts the schedules); the
net collects them (`Net.layer_states()`), and the solver writes them into the .solverstate as
`SolverState.layer_state` (field 1000 of our caffe.proto: LayerStateProto{layer, net, counter}), which real
Caffe skips as an unknown field; `solver.restore()` / `--resume` puts them back (`Net.set_layer_states`), so
a resumed run continues the lambda / bias schedules exactly where it stopped.
"""

import math

import torch

from ..proto import caffe_pb2
from .base import Layer, canonical_axis, count, register
from .loss import check_label_range

_MIP = caffe_pb2.MarginInnerProductParameter
SINGLE, DOUBLE, TRIPLE, QUADRUPLE = _MIP.SINGLE, _MIP.DOUBLE, _MIP.TRIPLE, _MIP.QUADRUPLE
_TYPE_NAMES = {SINGLE: "SINGLE", DOUBLE: "DOUBLE", TRIPLE: "TRIPLE", QUADRUPLE: "QUADRUPLE"}


# ---------------------------------------------------------------------------------------------- helpers

def normalize_rows_(weight: torch.Tensor, eps: float = 0.0, rows: int | None = None) -> torch.Tensor:
    """Rescale in place (no autograd) each of `rows` contiguous runs of `weight`'s memory (default: its
    rows) to unit L2 norm: w /= sqrt(||w||^2 + eps), as the forks do (eps 0 in MarginInnerProduct, 1e-6 in
    InnerProduct `normalize`). Returns `weight`. A zero row with eps 0 becomes NaN, as in the fork."""
    with torch.no_grad():
        w = weight.view(rows if rows is not None else weight.shape[0], -1)
        sq = (w * w).sum(dim=1, keepdim=True)
        if eps:
            sq = sq + eps
        w.mul_(torch.rsqrt(sq))
    return weight


def _labels(label: torch.Tensor, expected: int, classes: int, layer: Layer) -> torch.Tensor:
    """Caffe's float labels (shape (M,) or (M, 1, 1, 1)) as int64 (M,), checked against `classes`."""
    if label.numel() != expected:
        raise layer.error(f"label blob has {label.numel()} entries but the data has {expected} samples")
    lab = label.detach().reshape(-1).long()
    check_label_range(lab, classes, layer)
    return lab


def _check_one_label_per_sample(layer: Layer, bottom_shapes, samples: int) -> None:
    """The fork layers' CHECK in Reshape: bottom[1] holds one label per sample."""
    if count(bottom_shapes[1]) != samples:
        raise layer.error(f"one label per sample expected: label blob {tuple(bottom_shapes[1])} for {samples} "
                          f"samples (data {tuple(bottom_shapes[0])})")


def _schedule_pow(base: float, exponent: float) -> float:
    """C's pow for the schedules: NaN for a negative base with a fractional exponent, inf for 0^-p."""
    try:
        return math.pow(base, exponent)
    except ValueError:
        return math.nan
    except ZeroDivisionError:
        return math.inf


def _signs_and_psi(c: torch.Tensor, mtype: int) -> tuple[torch.Tensor, dict]:
    """psi(c) of the fork (differentiable in c; the signs are piecewise constants) and the signs."""
    cd = c.detach()
    s0 = torch.sign(cd)
    if mtype == DOUBLE:
        return 2 * s0 * c ** 2 - 1, {"s0": s0}
    if mtype == TRIPLE:
        s1 = torch.sign(cd.abs() - 0.5)
        s2 = s0 * (1 + s1) - 2
        return s1 * (4 * c ** 3 - 3 * c) + s2, {"s0": s0, "s1": s1, "s2": s2}
    if mtype == QUADRUPLE:
        s3 = s0 * torch.sign(2 * cd ** 2 - 1)
        s4 = 2 * s0 + s3 - 3
        return s3 * (8 * c ** 4 - 8 * c ** 2 + 1) + s4, {"s0": s0, "s3": s3, "s4": s4}
    raise ValueError(f"unknown margin type {mtype}")


def _margin_logits(x: torch.Tensor, w: torch.Tensor, lab: torch.Tensor, lam: float, mtype: int):
    """The fork's forward on (M, K) x and (N, K) normalised w: returns (top, xw, x_norm, target cos, signs).
    Differentiable (the exact_gradient path runs it under autograd)."""
    xw = x @ w.t()
    if mtype == SINGLE:
        return xw, xw, None, None, None
    rows = torch.arange(x.shape[0], device=x.device)
    x_norm = torch.sqrt((x * x).sum(dim=1))
    c = xw[rows, lab] * (1.0 / x_norm)
    psi, signs = _signs_and_psi(c, mtype)
    target = x_norm * psi
    mask = torch.zeros_like(xw, dtype=torch.bool)
    mask[rows, lab] = True
    top = torch.where(mask, target.unsqueeze(1), xw)
    top = (top + lam * xw) * (1.0 / (1.0 + lam))
    return top, xw, x_norm, c, signs


def _fork_coefficients(c, x_norm, signs, mtype):
    """The fork's (cw, cx) for the target column: the exact d(|x| psi(c))/dx = cw * w_y + cx * x."""
    if mtype == DOUBLE:
        s0 = signs["s0"]
        cw = 4 * s0 * c
        cx = (1.0 / -x_norm) * (2 * s0 * c ** 2 + 1)
    elif mtype == TRIPLE:
        s1, s2 = signs["s1"], signs["s2"]
        cw = s1 * (12 * c ** 2 - 3)
        cx = (1.0 / -x_norm) * (8 * s1 * c ** 3 - s2)
    else:
        s3, s4 = signs["s3"], signs["s4"]
        cw = s3 * (32 * c ** 3 - 16 * c)
        cx = (1.0 / -x_norm) * (s3 * (24 * c ** 4 - 8 * c ** 2 - 1) - s4)
    return cw, cx


class _MarginIPFunction(torch.autograd.Function):
    """Forward of MarginInnerProduct with the SphereFace fork's backward (not the exact derivative):
    dW = dF^T x; dx_i = sum_{j != y} dF_ij/(1+l) w_j + dF_iy/(1+l) (cw^ w_y + cx^ x_i)
    + l/(1+l) sum_j dF_ij w_j, with (cw^, cx^) = (cw, cx) / ||(cw, cx)||; SINGLE: dx = dF W."""

    @staticmethod
    def forward(ctx, x, weight, lab, lam, mtype):
        top, _, x_norm, c, signs = _margin_logits(x, weight, lab, lam, mtype)
        ctx.save_for_backward(x, lab)
        ctx.weight = weight            # read at backward time, as Caffe reads its blob (no version check)
        ctx.lam, ctx.mtype, ctx.x_norm, ctx.c, ctx.signs = lam, mtype, x_norm, c, signs
        return top

    @staticmethod
    def backward(ctx, d_top):
        x, lab = ctx.saved_tensors
        w = ctx.weight.detach()
        lam, mtype = ctx.lam, ctx.mtype
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dw = d_top.t() @ x
        if ctx.needs_input_grad[0]:
            if mtype == SINGLE:
                dx = d_top @ w
            else:
                a = 1.0 / (1.0 + lam)
                rows = torch.arange(x.shape[0], device=x.device)
                cw, cx = _fork_coefficients(ctx.c, ctx.x_norm, ctx.signs, mtype)
                norm = torch.sqrt(cw * cw + cx * cx)
                cw, cx = cw / norm, cx / norm
                dy = d_top[rows, lab]
                others = d_top.clone()
                others[rows, lab] = 0
                wy = w[lab]
                dx = (a * (others @ w)
                      + (a * dy * cw).unsqueeze(1) * wy + (a * dy * cx).unsqueeze(1) * x
                      + (lam / (1.0 + lam)) * (d_top @ w))
        return dx, dw, None, None, None


# ---------------------------------------------------------------------------------------------- layers

@register("MarginInnerProduct")
class MarginInnerProduct(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if not param.HasField("margin_inner_product_param") and \
                param.HasField("margin_inner_product_param_happynear"):
            mp = param.margin_inner_product_param_happynear          # field 232 (AM-Softmax fork binaries)
        else:
            mp = param.margin_inner_product_param                    # field 147 (SphereFace)
        if mp.num_output == 0:
            raise self.error("margin_inner_product_param.num_output must be set")
        self.num_output = mp.num_output
        self.mtype = mp.type                                           # default SINGLE
        self.axis = canonical_axis(mp.axis, len(bottom_shapes[0]), self)   # default 1
        self.base, self.gamma, self.power = mp.base, mp.gamma, mp.power   # defaults 1, 0, 1
        self.lambda_min = mp.lambda_min                                # default 0
        self.iteration = mp.iteration                                  # default 0
        self.exact_gradient = mp.exact_gradient                        # ours; default false
        self._iter = int(mp.iteration)
        self.last_lambda = 0.0
        k = count(bottom_shapes[0], self.axis)
        self.add_blob((self.num_output, k), mp.weight_filler)
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        _check_one_label_per_sample(self, bottom_shapes, count(bottom_shapes[0], 0, self.axis))
        k = count(bottom_shapes[0], self.axis)
        if k != self.blobs[0].shape[1]:
            raise self.error(f"input size {k} incompatible with the weights ({self.blobs[0].shape[1]})")
        shapes = [tuple(bottom_shapes[0][: self.axis]) + (self.num_output,)]
        if len(self.param.top) > 1:
            shapes.append((1,))
        return shapes

    def lambda_at(self, counter: int) -> float:
        """lambda for a forward that runs with counter value `counter` (after the increment)."""
        lam = self.base * _schedule_pow(1.0 + self.gamma * counter, -self.power)
        return max(lam, self.lambda_min)

    def get_state(self) -> int:
        return self._iter

    def set_state(self, value: int) -> None:
        self._iter = int(value)

    def forward(self, x, label):
        self._iter += 1
        lam = self.lambda_at(self._iter)
        self.last_lambda = lam
        w = self.blobs[0]
        if not self.rerun:              # once per forward, as the fork's Forward does
            normalize_rows_(w)
        m = count(x.shape, 0, self.axis)
        x2 = x.reshape(m, -1)
        lab = _labels(label, m, self.num_output, self)
        if self.exact_gradient:
            wn = w / torch.sqrt((w * w).sum(dim=1, keepdim=True))
            top = _margin_logits(x2, wn, lab, lam, self.mtype)[0]
        else:
            top = _MarginIPFunction.apply(x2, w, lab, lam, self.mtype)
        top = top.reshape(tuple(x.shape[: self.axis]) + (self.num_output,))
        if len(self.param.top) > 1:
            return top, torch.full((1,), lam, dtype=x.dtype, device=x.device)
        return top

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, num_output={self.num_output}, type={_TYPE_NAMES.get(self.mtype)}, "
                f"counter={self._iter}, exact_gradient={self.exact_gradient}")


@register("Normalize")
class Normalize(Layer):
    num_bottoms = (1, 1)
    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        npar = param.normalize_param
        self.normalize_type = npar.normalize_type                  # default "L2"
        if self.normalize_type not in ("L2", "L1"):
            raise self.error(f"normalize_type {self.normalize_type!r} is not implemented (L2 or L1)")
        self.bp_norm = npar.bp_norm and len(param.top) == 2        # default false
        self.fix_gradient = npar.fix_gradient                      # GPU-only in the fork: ignored
        self._legacy_shape(bottom_shapes[0])

    def _legacy_shape(self, shape) -> tuple[int, int, int, int]:
        if len(shape) > 4:
            raise self.error(f"bottom of shape {tuple(shape)}: Normalize takes blobs of at most 4 axes")
        s = tuple(shape) + (1,) * (4 - len(shape))
        return s[0], s[1], s[2], s[3]

    def top_shapes(self, bottom_shapes):
        n, c, h, w = self._legacy_shape(bottom_shapes[0])
        shapes = [(n, c, h, w)]
        if len(self.param.top) > 1:
            shapes.append((n, 1, h, w))
        return shapes

    def forward(self, x):
        n, c, h, w = self._legacy_shape(x.shape)
        x3, l1 = x.reshape(n, c, h * w), self.normalize_type == "L1"
        # an export traces the forward: an autograd.Function has no TorchScript / ONNX form (same values)
        y, norm = _normalize(x3, l1) if torch.jit.is_tracing() else _NormalizeFunction.apply(x3, l1)
        y = y.reshape(n, c, h, w)
        if len(self.param.top) > 1:
            norm_top = norm.reshape(n, 1, h, w)
            return y, (norm_top if self.bp_norm else norm_top.detach())
        return y


def _normalize(x3: torch.Tensor, l1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x3 / norm, norm) over axis 1 of x3 (N, C, H*W): norm = sum |x| + 1e-6 (L1) or sqrt(sum x^2 + 1e-6) (L2),
    shape (N, 1, H*W)."""
    if l1:
        norm = x3.abs().sum(dim=1, keepdim=True) + 1e-6
    else:
        norm = torch.sqrt((x3 * x3).sum(dim=1, keepdim=True) + 1e-6)
    return x3 / norm, norm


class _NormalizeFunction(torch.autograd.Function):
    """y = x / norm over the channel axis (norm = sqrt(sum x^2 + 1e-6) for L2, sum |x| + 1e-6 for L1), with the
    fork's backward formula (NormalizeLayer::Backward_cpu, caffe_build/layers/src/caffe/layers/normalize_layer.cpp):
    dx = (dy - dir * sum_c(y dy)) / norm + dnorm * dir, dir = y (L2) or sign(y) (L1). Where y is nearly +-1 (one
    channel, or one that dominates) the exact gradient is a small difference of nearly equal terms; autograd's
    dy / norm - x sum_c(x dy) / norm^3 rounds that difference otherwise (1% apart at one channel), and the error
    passes on, undiminished, into every well-conditioned sum below (a bias gradient)."""

    @staticmethod
    def forward(ctx, x3, l1: bool):
        y, norm = _normalize(x3, l1)
        ctx.save_for_backward(y, norm)
        ctx.l1 = l1
        ctx.set_materialize_grads(False)        # an unused output (the norm top without bp_norm) gives None
        return y, norm

    @staticmethod
    def backward(ctx, dy, dnorm):
        y, norm = ctx.saved_tensors
        direction = torch.sign(y) if ctx.l1 else y
        dx = None
        if dy is not None:
            dx = (dy - direction * (y * dy).sum(dim=1, keepdim=True)) / norm
        if dnorm is not None:
            dx = dnorm * direction if dx is None else dx + dnorm * direction
        return dx, None


@register("LabelSpecificAdd")
class LabelSpecificAdd(Layer):
    num_bottoms = (2, 2)
    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.label_specific_add_param
        self.bias = p.bias                                   # default 0
        self.transform_test = p.transform_test               # default false; no effect (see module doc)
        self.anneal = p.HasField("bias_base")
        self.bias_base, self.bias_gamma, self.bias_power = p.bias_base, p.bias_gamma, p.bias_power  # 0, 0, 1
        self.bias_min, self.bias_max = p.bias_min, p.bias_max  # 0, 0
        self._iter = int(p.iteration)                        # default 0

    def top_shapes(self, bottom_shapes):
        _check_one_label_per_sample(self, bottom_shapes, bottom_shapes[0][0])
        shapes = [tuple(bottom_shapes[0])]
        if len(self.param.top) > 1:
            shapes.append((1,))
        return shapes

    def get_state(self) -> int | None:
        return self._iter if self.anneal else None

    def set_state(self, value: int) -> None:
        if not self.anneal:
            raise self.error("has no annealing counter (no bias_base) to restore")
        self._iter = int(value)

    def forward(self, x, label):
        two = len(self.param.top) > 1
        if self.phase == caffe_pb2.TEST:
            y = self.unchanged(x)
            return (y, torch.zeros(1, dtype=x.dtype, device=x.device)) if two else y
        if self.anneal:
            b = self.bias_base + _schedule_pow(1.0 + self.bias_gamma * self._iter, self.bias_power) - 1.0
            b = max(b, self.bias_min)
            b = min(b, self.bias_max)
            self.bias = b
            self._iter += 1
        n = x.shape[0]
        flat = x.reshape(n, -1)
        lab = _labels(label, n, flat.shape[1], self)
        rows = torch.arange(n, device=x.device)
        b = self.bias          # a Python float: a kernel argument, no tensor made from it (no upload)
        with torch.no_grad():
            hit = flat[rows, lab] > -b
            add = torch.zeros_like(flat)
            add[rows, lab] = torch.zeros_like(hit, dtype=flat.dtype).masked_fill_(hit, b)
        out = (flat + add).reshape(x.shape)
        return (out, torch.full((1,), b, dtype=x.dtype, device=x.device)) if two else out


@register("AdditiveAngularMargin")
class AdditiveAngularMargin(Layer):
    """caffe_torch extension (not in either fork): ArcFace's additive angular margin on cosines."""

    num_bottoms = (2, 2)
    num_tops = (1, 1)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.additive_angular_margin_param
        self.margin = p.margin                               # default 0.2
        self.easy_margin = p.easy_margin                     # default false
        if not 0.0 <= self.margin < math.pi / 2:
            raise self.error(f"margin {self.margin} must lie in [0, pi/2)")

    def top_shapes(self, bottom_shapes):
        _check_one_label_per_sample(self, bottom_shapes, bottom_shapes[0][0])
        return [tuple(bottom_shapes[0])]

    def forward(self, x, label):
        if self.phase == caffe_pb2.TEST:
            return self.unchanged(x)
        n = x.shape[0]
        flat = x.reshape(n, -1)
        lab = _labels(label, n, flat.shape[1], self)
        rows = torch.arange(n, device=x.device)
        c = flat[rows, lab]
        m = self.margin
        sine = torch.sqrt((1.0 - c * c).clamp(min=1e-12))
        phi = c * math.cos(m) - sine * math.sin(m)
        if self.easy_margin:
            phi = torch.where(c > 0, phi, c)
        else:
            phi = torch.where(c > math.cos(math.pi - m), phi, c - m * math.sin(m))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[rows, lab] = True
        return torch.where(mask, phi.unsqueeze(1), flat).reshape(x.shape)
