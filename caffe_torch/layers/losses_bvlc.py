"""BVLC Caffe 1.0's other losses: EuclideanLoss, ContrastiveLoss, HingeLoss, InfogainLoss,
MultinomialLogisticLoss, SigmoidCrossEntropyLoss.

Labels are read as Caffe reads them, `static_cast<int>(label)` (truncation towards zero). No loss here sends
a gradient to its label (or infogain matrix) bottom, as in Caffe; EuclideanLoss sends one to both of its
bottoms and ContrastiveLoss to both feature bottoms, also as in Caffe."""

from pathlib import Path

import torch

from ..proto import caffe_pb2
from .base import Layer, count, register

_LOG_THRESHOLD = 1e-20            # Caffe's kLOG_THRESHOLD: probabilities are clamped to it before the log
_Norm = caffe_pb2.LossParameter


def _int_labels(label: torch.Tensor, n: int, classes: int, layer: Layer) -> torch.Tensor:
    """One class id per sample (N labels), truncated as static_cast<int>; an id outside [0, classes) is an
    error (Caffe reads past the row)."""
    if label.numel() != n:
        raise layer.error(f"needs one label per sample: {label.numel()} labels for {n} samples")
    lab = label.detach().reshape(-1).long()
    bad = (lab < 0) | (lab >= classes)
    if bad.any():
        raise layer.error(f"label {int(lab[bad][0])} out of range [0, {classes})")
    return lab


def _log_clamped(p: torch.Tensor) -> torch.Tensor:
    """log(max(p, kLOG_THRESHOLD)) whose gradient is 1 / max(p, kLOG_THRESHOLD) everywhere: Caffe's backward,
    which does not zero the gradient where the clamp is active."""
    pc = p.clamp(min=_LOG_THRESHOLD)
    ratio = p / pc.detach()
    return ratio + (torch.log(pc) - ratio).detach()


class _ValueWithGradient(torch.autograd.Function):
    """`value` (shaped like x) with the derivative `grad` (elementwise, w.r.t. x): a loss whose backward Caffe
    writes as its own formula rather than as the derivative of its forward."""

    @staticmethod
    def forward(ctx, x, value, grad):
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return g * grad, None, None


class _LossLayer(Layer):
    no_backward_to = (1,)           # labels / targets: Caffe aborts (need_backward.py)
    force_backward_skips = (1,)     # LossLayer::AllowForceBackward
    is_loss = True
    num_bottoms = (2, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        if bottom_shapes[0][:1] != bottom_shapes[1][:1]:
            raise self.error(f"the data and label should have the same first dimension, got "
                             f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        return [()]


@register("EuclideanLoss")
class EuclideanLoss(_LossLayer):
    """loss = sum (a - b)^2 / N / 2 over bottoms a, b of the same count per sample; gradients (a - b) / N
    to a and -(a - b) / N to b (times the loss weight): the derivative."""

    no_backward_to = ()             # both bottoms differentiable, force_backward reaches both
    force_backward_skips = ()
    legacy_bottoms = (0,)           # Forward: bottom[0]->num()

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if len(bottom_shapes[1]) > 4:   # Backward: bottom[i]->num() for each bottom it back-propagates to
            self.no_backward_to = (1,)

    def top_shapes(self, bottom_shapes):
        shapes = super().top_shapes(bottom_shapes)
        if count(bottom_shapes[0], 1) != count(bottom_shapes[1], 1):
            raise self.error(f"inputs must have the same dimension, got {tuple(bottom_shapes[0])} and "
                             f"{tuple(bottom_shapes[1])}")
        return shapes

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        return (diff * diff).sum() / a.shape[0] / 2


class _ContrastiveFunction(torch.autograd.Function):
    """Caffe's ContrastiveLossLayer. Forward: sum over pairs of d^2 (similar, y != 0) or, dissimilar,
    max(m - d, 0)^2 (legacy_version: max(m - d^2, 0)), / N / 2. Backward (not the derivative for the
    non-legacy dissimilar term, whose 1 / d becomes 1 / (d + 1e-4)): with g = top diff / N,
    similar: g (a - b); dissimilar where the margin term is positive: legacy -g (a - b), else
    -g (m - d) / (d + 1e-4) (a - b); to b the opposite."""

    @staticmethod
    def forward(ctx, a, b, similar, margin: float, legacy: bool):
        diff = a - b                                          # (N, C)
        dist_sq = (diff * diff).sum(dim=1)                    # (N,)
        if legacy:
            dissimilar = torch.clamp(margin - dist_sq, min=0)
        else:
            dissimilar = torch.clamp(margin - torch.sqrt(dist_sq), min=0) ** 2
        loss = torch.where(similar, dist_sq, dissimilar).sum() / a.shape[0] / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy = margin, legacy
        return loss

    @staticmethod
    def backward(ctx, grad):
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = grad / diff.shape[0]
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha.expand_as(mdist)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        coef = torch.where(similar, alpha.expand_as(beta), torch.where(mdist > 0, beta, torch.zeros_like(beta)))
        ga = coef.unsqueeze(1) * diff
        return ga, -ga, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(_LossLayer):
    """Bottoms: a and b (N x C [x 1 x 1]) and the pair label y (N [x 1 x 1 x 1]; similar when int(y) != 0).
    contrastive_loss_param: margin (default 1), legacy_version (default false). See _ContrastiveFunction."""

    no_backward_to = ()             # the similarity bottom is ignored, not refused
    force_backward_skips = (2,)
    legacy_bottoms = (0, 1, 2)      # LayerSetUp: channels(), height(), width() of all three

    num_bottoms = (3, 3)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.contrastive_loss_param
        self.margin, self.legacy = float(cp.margin), bool(cp.legacy_version)

    def top_shapes(self, bottom_shapes):
        a, b, y = (tuple(s) for s in bottom_shapes)
        if a[:2] != b[:2] or count(a, 2) != 1 or count(b, 2) != 1 or a[:1] != b[:1]:
            raise self.error(f"a and b must be N x C (x 1 x 1) of the same shape, got {a} and {b}")
        # Caffe checks only the label's channels, height and width (LayerSetUp) and reads its first N values
        # (contrastive_loss_layer.cpp: bottom[2]->cpu_data()[i], i < N): more are left unread (a Filter below
        # may shrink the pairs' batch alone), fewer would be read past the blob's end
        if tuple(y[1:4]) != (1,) * len(y[1:4]):     # CHECK_EQ(bottom[2]->channels(), 1), height, width
            raise self.error(f"the pair label must be N x 1 x 1 x 1 (channels, height and width 1), got shape {y}")
        if count(y) < (a[0] if a else 1):
            raise self.error(f"the pair label must hold one value per pair (N = {a[0]}), got shape {y}: Caffe "
                             "would read past its end")
        return [()]

    def forward(self, a, b, y):
        n = a.shape[0]
        similar = y.detach().reshape(-1)[:n].long() != 0
        return _ContrastiveFunction.apply(a.reshape(n, -1), b.reshape(n, -1), similar, self.margin, self.legacy)


_Hinge = caffe_pb2.HingeLossParameter


@register("HingeLoss")
class HingeLoss(_LossLayer):
    """One-vs-all hinge over the N x D scores: t_nj = max(0, 1 + s_nj x_nj), s = -1 at the label, +1
    elsewhere; loss = sum t / N (norm L1, default) or sum t^2 / N (L2). The gradient is the derivative (0 where
    t = 0, as Caffe's sign(0)); a NaN score's t is 0, as Caffe's std::max(0, NaN)."""

    legacy_bottoms = (0,)           # Forward: bottom[0]->num()

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.norm = param.hinge_loss_param.norm                 # default L1

    def forward(self, x, label):
        n = x.shape[0]
        scores = x.reshape(n, -1)
        lab = _int_labels(label, n, scores.shape[1], self)
        sign = torch.ones_like(scores).scatter_(1, lab.unsqueeze(1), -1.0)
        # Caffe's std::max(Dtype(0), 1 + s x) (hinge_loss_layer.cpp): 0 for a NaN score, where relu gives NaN
        margin = 1 + sign * scores
        t = torch.where(margin > 0, margin, torch.zeros_like(margin))
        if self.norm == _Hinge.L1:
            return t.sum() / n
        return (t * t).sum() / n


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_LossLayer):
    """loss = -sum_n log(max(p[n, label_n], 1e-20)) / N over N x D probabilities; gradient
    -1 / max(p, 1e-20) / N at the label (also where the clamp is active, as Caffe's)."""

    legacy_bottoms = (0, 1)         # Reshape: bottom[1]->channels() ...; Forward: bottom[0]->num()

    def top_shapes(self, bottom_shapes):
        shapes = super().top_shapes(bottom_shapes)
        if count(bottom_shapes[1], 1) != 1:
            raise self.error(f"the label must be N (x 1 x 1 x 1), got {tuple(bottom_shapes[1])}")
        return shapes

    def forward(self, p, label):
        n = p.shape[0]
        probs = p.reshape(n, -1)
        lab = _int_labels(label, n, probs.shape[1], self)
        return -_log_clamped(probs.gather(1, lab.unsqueeze(1))).sum() / n


@register("InfogainLoss")
class InfogainLoss(_LossLayer):
    """loss = -sum_n sum_j H[label_n, j] log(max(p[n, j], 1e-20)) / N over N x D probabilities, with the
    D x D matrix H from a third bottom or from `infogain_loss_param.source` (a binary BlobProto, read once at
    construction). Gradient to p only: -H[label_n, j] / max(p[n, j], 1e-20) / N. Caffe wants H as a
    1 x 1 x D x D blob; caffe_torch takes any blob of D * D values."""

    no_backward_to = (1, 2)         # label inputs, infogain matrix input
    legacy_bottoms = (0, 1, 2)      # Reshape: bottom[0]->num(), bottom[1]->channels() ..., H's num() ...

    num_bottoms = (2, 3)

    def __init__(self, param, bottom_shapes, ctx):
        Layer.__init__(self, param, bottom_shapes, ctx)     # the shape check below needs H first
        self.infogain = None
        if len(bottom_shapes) < 3:
            source = param.infogain_loss_param.source
            if not source:
                raise self.error("needs the infogain matrix: infogain_loss_param.source or a third bottom")
            self.infogain = self._read(source)
            self.register_buffer("_h", self.infogain.to(ctx.dtype).to(ctx.device), persistent=False)
        self.top_shapes(bottom_shapes)

    def _read(self, source: str) -> torch.Tensor:
        from ..weights import blob_to_array

        blob = caffe_pb2.BlobProto()
        try:
            blob.ParseFromString(Path(source).read_bytes())
        except OSError as exc:
            raise self.error(f"cannot read the infogain matrix {source}: {exc.strerror}") from None
        except Exception as exc:  # protobuf's DecodeError
            raise self.error(f"{source} is not a binary BlobProto: {exc}") from None
        return torch.from_numpy(blob_to_array(blob, source).astype("float64"))

    def top_shapes(self, bottom_shapes):
        shapes = super().top_shapes(bottom_shapes)
        if count(bottom_shapes[1], 1) != 1:
            raise self.error(f"the label must be N (x 1 x 1 x 1), got {tuple(bottom_shapes[1])}")
        dim = count(bottom_shapes[0], 1)
        h_count = count(bottom_shapes[2]) if len(bottom_shapes) > 2 else self.infogain.numel()
        if h_count != dim * dim:
            raise self.error(f"the infogain matrix must be {dim} x {dim} for predictions of shape "
                             f"{tuple(bottom_shapes[0])}, it holds {h_count} values")
        return shapes

    def forward(self, p, label, h=None):
        n = p.shape[0]
        probs = p.reshape(n, -1)
        dim = probs.shape[1]
        h = (self._h if h is None else h.detach()).reshape(dim, dim).to(probs.dtype)
        lab = _int_labels(label, n, dim, self)
        return -(h[lab] * _log_clamped(probs)).sum() / n


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_LossLayer):
    """loss = -sum_i [x_i (t_i - (x_i >= 0)) - log(1 + exp(x_i - 2 x_i (x_i >= 0)))] / normaliser, over the
    positions whose int(t_i) is not `loss_param.ignore_label`; gradient (sigmoid(x) - t) / normaliser there,
    0 at ignored positions, none to the target. The normaliser (Caffe 1.0): loss_param.normalization, else
    the deprecated normalize (true VALID, false BATCH_SIZE), else BATCH_SIZE; FULL = count, VALID = the
    non-ignored count, BATCH_SIZE = N, NONE = 1, at least 1."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        lp = param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.mode = lp.normalization
        elif lp.HasField("normalize"):
            self.mode = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.mode = _Norm.BATCH_SIZE

    def top_shapes(self, bottom_shapes):
        shapes = super().top_shapes(bottom_shapes)
        if count(bottom_shapes[0]) != count(bottom_shapes[1]):
            raise self.error(f"input and target must have the same count, got {tuple(bottom_shapes[0])} and "
                             f"{tuple(bottom_shapes[1])}")
        return shapes

    def forward(self, x, target):
        t = target.detach().reshape(x.shape).to(x.dtype)
        positive = (x >= 0).to(x.dtype)
        # log(1 + exp(-|x|)) as Caffe writes it, never overflowing
        per = x * (t - positive) - torch.log1p(torch.exp(x - 2 * x * positive))
        grad = -(torch.sigmoid(x) - t)                            # d per / dx, as Caffe's backward computes it
        if self.ignore_label is not None:
            keep = (t.long() != self.ignore_label).to(x.dtype)
            per, grad = per * keep, grad * keep
        # the formula's own derivative is NaN at x = +-inf, where Caffe's sigmoid(x) - t is finite
        per = _ValueWithGradient.apply(x, per.detach(), grad.detach())
        if self.mode == _Norm.VALID and self.ignore_label is not None:
            normalizer = keep.sum().clamp(min=1)                 # a tensor: no device sync
        else:
            normalizer = max(1, {_Norm.FULL: x.numel(), _Norm.VALID: x.numel(), _Norm.BATCH_SIZE: x.shape[0],
                                 _Norm.NONE: 1}[self.mode])
        return -per.sum() / normalizer
