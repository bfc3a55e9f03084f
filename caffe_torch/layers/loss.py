"""SoftmaxWithLoss and Accuracy."""

import math

import torch

from ..proto import caffe_pb2
from .base import Layer, canonical_axis, count, register

_Norm = caffe_pb2.LossParameter
_FLT_MIN = 1.1754943508222875e-38


def _label_column(label: torch.Tensor, expected: int, layer: Layer) -> torch.Tensor:
    """The labels as an int64 column (expected, 1), converted once per forward for all the layers that read
    the same label blob (SoftmaxWithLoss, Accuracy: the net's forward memo)."""
    if label.numel() != expected:
        raise layer.error(f"label count {label.numel()} does not match the {expected} predictions "
                          "(outer_num x inner_num)")
    memo = layer.forward_memo(label)
    if memo is None:
        return label.reshape(expected, 1).long()
    key = ("label column", layer.memo_key(label), expected)
    if key not in memo:
        memo[key] = (label, label.reshape(expected, 1).long())     # (the label held: see memo_key)
    return memo[key][1]


def _check_label_count(layer: Layer, shape, label_shape, axis: int) -> None:
    """Caffe's CHECK in Reshape: one label per prediction (outer_num x inner_num of the scores)."""
    expected = count(shape, 0, axis) * count(shape, axis + 1)
    if count(label_shape) != expected:
        raise layer.error(f"label blob {tuple(label_shape)} must have outer_num x inner_num = {expected} entries for "
                          f"predictions of shape {tuple(shape)}")


def check_label_range(lab: torch.Tensor, classes: int, layer: Layer, valid: torch.Tensor | None = None) -> None:
    """Caffe's check 0 <= label < classes on the (non-ignored: `valid`) int64 labels; names the first bad one.
    Skipped for a layer whose labels its training loop checked on the host (`Layer.check_labels`)."""
    if not layer.check_labels:
        return
    bad = (lab < 0) | (lab >= classes)
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        raise layer.error(f"label {lab[bad][0].item()} out of range [0, {classes})")


def _normalizer(mode: int, outer: int, inner: int, valid):
    """Caffe's GetNormalizer, max(1, n): a Python number, or a 0-dim tensor where it counts the non-ignored
    labels (`valid`: their count, an int when nothing is ignored, else a tensor)."""
    if mode == _Norm.FULL:
        n = outer * inner
    elif mode == _Norm.VALID:
        n = valid
    elif mode == _Norm.BATCH_SIZE:
        n = outer
    else:  # NONE
        n = 1
    if isinstance(n, torch.Tensor):
        return torch.clamp(n.to(torch.float64), min=1.0)
    return float(max(n, 1))


class _FloorValue(torch.autograd.Function):
    """max(x, lo) as the value, the identity as the gradient (also where x is -inf: a logit of -inf gives p = 0,
    whose log Caffe clamps to log(FLT_MIN); x + (max(x, lo) - x).detach() would be -inf + inf = NaN there)."""

    @staticmethod
    def forward(ctx, x, lo):
        return x.clamp(min=lo)

    @staticmethod
    def backward(ctx, g):
        return g, None


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """loss = -sum over non-ignored positions of log(max(p[label], FLT_MIN)) / normaliser; softmax over
    `softmax_param.axis` (default 1). Optional second top: the probabilities. The gradient is Caffe's
    (p - onehot) * loss_weight / normaliser, also where the FLT_MIN clamp is active."""

    no_backward_to = (1,)           # labels: "cannot backpropagate to label inputs" (need_backward.py)
    force_backward_skips = (1,)     # LossLayer::AllowForceBackward

    is_loss = True
    num_bottoms = (2, 2)
    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.softmax_param
        # the happynear fork's extras: refuse values that would change the loss rather than ignore them
        if (sp.hard_ratio != 1.0 or len(sp.class_weight) or sp.HasField("hard_mining_label")
                or sp.HasField("cutting_point") or sp.normalize_type != "Softmax" or sp.label_smooth_factor):
            raise self.error("the happynear fork's softmax_param extras (hard_ratio, class_weight, "
                             "hard_mining_label, cutting_point, normalize_type, label_smooth_factor) are not "
                             "supported by caffe_torch")
        self.axis = canonical_axis(sp.axis, len(bottom_shapes[0]), self)        # default 1
        lp = param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.mode = lp.normalization
        elif lp.HasField("normalize"):          # deprecated bool: true = VALID, false = BATCH_SIZE
            self.mode = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.mode = _Norm.VALID
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        shape, label = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if shape[:1] != label[:1]:                      # Caffe's LossLayer::Reshape
            raise self.error(f"the data and label should have the same first dimension, got {shape} and {label}")
        _check_label_count(self, shape, label, self.axis)
        shapes = [()]
        if len(self.param.top) > 1:
            shapes.append(shape)
        return shapes

    def forward(self, x, label):
        outer, classes = count(x.shape, 0, self.axis), x.shape[self.axis]
        inner = count(x.shape, self.axis + 1)
        logp = torch.log_softmax(x, dim=self.axis)
        if logp.shape != (outer, classes, inner):      # (outer, classes, inner); a (N, classes) one stays 2-D
            logp = logp.reshape(outer, classes, inner)
        lab = _label_column(label, outer * inner, self)                 # (outer, 1) or (outer, 1, inner)
        if logp.dim() == 3:
            lab = lab.reshape(outer, 1, inner)
        # without an ignore_label every position counts: no mask (fewer ops per step on a GPU)
        valid = None if self.ignore_label is None else lab != self.ignore_label
        check_label_range(lab, classes, self, valid)
        safe = lab if valid is None else torch.where(valid, lab, 0)
        picked = logp.gather(1, safe)
        # value as Caffe's log(max(p, FLT_MIN)); gradient of log_softmax (= p - onehot) everywhere
        clamped = _FloorValue.apply(picked, math.log(_FLT_MIN))
        total = -(clamped.sum() if valid is None else (clamped * valid.to(clamped.dtype)).sum())
        normalizer = _normalizer(self.mode, outer, inner, outer * inner if valid is None else valid.sum())
        loss = total / (normalizer.to(total.dtype) if isinstance(normalizer, torch.Tensor) else normalizer)
        if len(self.param.top) > 1:
            return loss, torch.softmax(x, dim=self.axis)
        return loss


@register("Accuracy")
class Accuracy(Layer):
    """Fraction of (non-ignored) samples whose label is among the top_k scores. Ties are ranked as Caffe 1.0
    ranks (score, class) pairs: among equal scores the HIGHER class index comes first. Optional second top:
    per-class accuracy."""

    no_backward_to = "all"          # Backward_cpu: NOT_IMPLEMENTED for any bottom (need_backward.py)

    num_bottoms = (2, 2)
    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ap = param.accuracy_param
        self.top_k = ap.top_k                                       # default 1
        self.axis = canonical_axis(ap.axis, len(bottom_shapes[0]), self)   # default 1
        self.ignore_label = ap.ignore_label if ap.HasField("ignore_label") else None
        self._class_index: torch.Tensor | None = None          # arange(classes) on the scores' device
        self.top_shapes(bottom_shapes)

    def top_shapes(self, bottom_shapes):
        classes = bottom_shapes[0][self.axis]
        if self.top_k > classes:
            raise self.error(f"top_k {self.top_k} exceeds the number of classes {classes}")
        _check_label_count(self, bottom_shapes[0], bottom_shapes[1], self.axis)
        shapes = [()]
        if len(self.param.top) > 1:
            shapes.append((bottom_shapes[0][self.axis],))
        return shapes

    def forward(self, x, label):
        with torch.no_grad():
            outer, classes, inner = count(x.shape, 0, self.axis), x.shape[self.axis], \
                count(x.shape, self.axis + 1)
            column = _label_column(label, outer * inner, self)          # (samples, 1)
            # without an ignore_label every sample counts: no mask (fewer ops per step on a GPU)
            valid = None if self.ignore_label is None else column[:, 0] != self.ignore_label
            if self.check_labels:
                check_label_range(column[:, 0], classes, self, valid)
            if valid is not None:
                column = torch.where(valid.unsqueeze(1), column, 0)
            correct = self._ranks(x, label, column, outer, classes, inner) < self.top_k
            if valid is None:
                acc = correct.sum(dtype=x.dtype) / (outer * inner)
            else:
                correct &= valid
                # Caffe 1.0 divides by the count of non-ignored samples as it is (0 / 0 = NaN if all are ignored)
                acc = correct.sum(dtype=x.dtype) / valid.sum(dtype=x.dtype)
            if len(self.param.top) == 1:
                return acc
            safe = column[:, 0]
            counted = safe if valid is None else safe[valid]
            per_class_n = torch.zeros(classes, dtype=x.dtype, device=x.device).index_add_(
                0, counted, torch.ones_like(counted, dtype=x.dtype))
            per_class_c = torch.zeros(classes, dtype=x.dtype, device=x.device).index_add_(
                0, safe[correct], torch.ones_like(safe[correct], dtype=x.dtype))
            per_class = torch.where(per_class_n > 0, per_class_c / per_class_n.clamp(min=1),
                                    torch.zeros_like(per_class_n))
            return acc, per_class

    def _ranks(self, x, label, column, outer, classes, inner) -> torch.Tensor:
        """Per sample, the number of classes ranked ahead of its label (`column`, ignored ones as class 0): a
        higher score, or an equal score and a higher class index. The same for every Accuracy layer of a forward
        reading these bottoms with this axis and ignore_label (top-1 and top-5 of one net): computed once (the
        net's forward memo)."""
        memo = self.forward_memo(x, label)
        if memo is not None:
            key = ("accuracy ranks", self.memo_key(x), self.memo_key(label), self.axis, self.ignore_label)
            if key in memo:
                return memo[key][2]
        scores = x
        if inner > 1:
            scores = scores.reshape(outer, classes, inner).transpose(1, 2).reshape(-1, classes)
        elif scores.shape != (outer, classes):
            scores = scores.reshape(outer, classes)
        target = scores.gather(1, column)
        index = self._class_index
        if index is None or index.device != x.device or index.numel() != classes:
            index = self._class_index = torch.arange(classes, device=x.device)
        ahead = torch.where(index > column, scores >= target, scores > target)
        ranks = ahead.sum(dim=1)
        if memo is not None:
            memo[key] = (x, label, ranks)                       # (the bottoms held: see memo_key)
        return ranks
