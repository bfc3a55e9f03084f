"""Makers of the loss layers, Accuracy, and the fork's margin layers (labels drawn as net inputs)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from caffe_torch.proto import caffe_pb2

if TYPE_CHECKING:
    from ..builder import NetGen


def _loss_weight(g, lp, n_tops=1):
    """An explicit loss weight sometimes. Without one the top is not read by later layers: its implicit weight
    gets no Split in Caffe, and a reader's backward overwrites it (caffe_facts QUIRKS: implicit-loss-top-read)."""
    if g.chance(0.3):
        lp.loss_weight.extend(float(g.choice((1.0, 2.0, 0.5, 0.0))) for _ in range(n_tops))
    else:
        for t in lp.top:
            g.blobs[t].terminal = True


def _scores_and_labels(g: NetGen, p_axis: float, loss: bool = False):
    """A bottom of scores with its class axis (1, or any axis with chance `p_axis`) and a label input for it:
    (scores, its number of axes, the axis, the classes, the label blob, whether labels -1 are ignored).
    `loss`: a LossLayer's labels, whose first axis must be the scores' (LossLayer::Reshape's CHECK_EQ, loss_layer.cpp):
    for class axis 0 they are (classes, rest / classes), class axis 1 where that does not divide."""
    b = g.pick(lambda b: len(b.shape) >= 2)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd)) if g.chance(p_axis) else 1
    rest = math.prod(b.shape[1:])
    if loss and axis == 0 and rest % b.shape[0]:
        axis = 1
    classes = b.shape[axis]
    lshape = b.shape[:axis] + b.shape[axis + 1:]
    if loss and axis == 0:
        lshape = (classes, rest // classes)
    ignore = g.chance(0.3)
    label = g.label_input(lshape if lshape else (1,), classes, ignore)
    return b, nd, axis, classes, label, ignore


def make_softmax_loss(g: NetGen) -> bool:
    b, nd, axis, classes, label, ignore = _scores_and_labels(g, 0.2, loss=True)
    lp = g.layer("SoftmaxWithLoss", [b, label], [(None, (), "normal")])
    if axis != 1:
        lp.softmax_param.axis = axis - nd if g.chance(0.4) else axis
    lossp = lp.loss_param
    if ignore:
        lossp.ignore_label = -1
    if g.chance(0.4):
        lossp.normalization = g.choice((0, 1, 2, 3))
    elif g.chance(0.2):
        lossp.normalize = g.chance(0.5)
    _loss_weight(g, lp)
    return True


def make_euclidean(g: NetGen) -> bool:
    a = g.pick(multi=True)
    b = g.pick(lambda x: math.prod(x.shape) == math.prod(a.shape) and x.shape[:1] == a.shape[:1],
               make=lambda: a.shape, multi=True)
    lp = g.layer("EuclideanLoss", [a, b], [(None, (), "normal")])
    _loss_weight(g, lp)
    return True


def make_sigmoid_ce(g: NetGen) -> bool:
    a = g.pick(multi=True)
    t = g.new_input(a.shape, g.choice(("prob", "label:2")))
    lp = g.layer("SigmoidCrossEntropyLoss", [a, t], [(None, (), "normal")])
    _loss_weight(g, lp)
    g.fatal(lp, set())      # target: LossLayer does not force it
    return True


def make_contrastive(g: NetGen) -> bool:
    a = g.pick(lambda b: len(b.shape) in (2, 4) and all(s == 1 for s in b.shape[2:]), multi=True,
               make=lambda: (g.batch, int(g.rng.integers(1, 4))))
    b = g.pick(lambda x: x.shape == a.shape, make=lambda: a.shape, multi=True)
    sim = g.label_input((a.shape[0],) + ((1, 1, 1) if g.chance(0.5) else ()), 2)
    lp = g.layer("ContrastiveLoss", [a, b, sim], [(None, (), "normal")])
    cp = lp.contrastive_loss_param
    if g.chance(0.4):
        cp.margin = float(g.choice((0.5, 2.0, 3.0)))
    if g.chance(0.3):
        cp.legacy_version = True
    _loss_weight(g, lp)
    return True


def make_hinge(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    label = g.label_input((b.shape[0],), math.prod(b.shape[1:]))
    lp = g.layer("HingeLoss", [b, label], [(None, (), "normal")])
    if g.chance(0.5):
        lp.hinge_loss_param.norm = g.choice((1, 2))
    _loss_weight(g, lp)
    return True


def make_multinomial(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2, kinds=("prob",))
    label = g.label_input((b.shape[0],) + b.shape[2:], b.shape[1]) if len(b.shape) > 2 and \
        math.prod(b.shape[2:]) > 1 else g.label_input((b.shape[0],), b.shape[1])
    if math.prod(b.shape[2:]) != 1:
        return False
    lp = g.layer("MultinomialLogisticLoss", [b, label], [(None, (), "normal")])
    _loss_weight(g, lp)
    return True


def make_infogain(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2 and math.prod(b.shape[2:]) == 1, kinds=("prob",),
               make=lambda: (g.batch, int(g.rng.integers(2, 5))))
    c = b.shape[1]
    label = g.label_input((b.shape[0],), c)
    bottoms = [b, label]
    if g.chance(0.6):
        bottoms.append(g.new_input((1, 1, c, c), "prob"))
        lp = g.layer("InfogainLoss", bottoms, [(None, (), "normal")])
        g.fatal(lp, {2})
    else:
        lp = g.layer("InfogainLoss", bottoms, [(None, (), "normal")])
        name = f"{lp.name}_H.binaryproto"
        g.files.append(("binaryproto", name, (1, 1, c, c), int(g.rng.integers(1 << 30))))
        lp.infogain_loss_param.source = name
    _loss_weight(g, lp)
    return True


def make_accuracy(g: NetGen) -> bool:
    b, nd, axis, classes, label, ignore = _scores_and_labels(g, 0.3)
    tops = [(None, (), "terminal")]
    if g.chance(0.3):
        tops.append((None, (classes,), "terminal"))
    lp = g.layer("Accuracy", [b, label], tops)
    ap = lp.accuracy_param
    if axis != 1:
        ap.axis = axis - nd if g.chance(0.4) else axis
    if g.chance(0.5):
        ap.top_k = int(g.rng.integers(1, classes + 1))
    if ignore:
        ap.ignore_label = -1
    g.fatal(lp, "all")
    return True


def make_margin_ip(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    n_out = int(g.rng.integers(2, 6))
    label = g.label_input((b.shape[0],) if g.chance(0.7) else (b.shape[0], 1, 1, 1), n_out)
    tops = [(None, (b.shape[0], n_out), "normal")]
    if g.chance(0.5):
        tops.append((None, (1,), "terminal"))
    lp = g.layer("MarginInnerProduct", [b, label], tops)
    field_name = "margin_inner_product_param_happynear" if g.chance(0.1) else "margin_inner_product_param"
    p = getattr(lp, field_name)
    p.num_output = n_out
    if g.chance(0.8):
        p.type = g.choice((0, 1, 2, 3))
    for f, vals in (("base", (0.0, 1.0, 5.0, 1000.0)), ("gamma", (0.0, 0.12, 0.5)), ("power", (1.0, 2.0)),
                    ("lambda_min", (0.0, 1.0, 5.0)), ("iteration", (0, 3, 100))):
        if g.chance(0.5):
            setattr(p, f, g.choice(vals))
    g.filler(p.weight_filler)
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    g.share(lp, 1)
    g.fatal(lp, set())       # label: not differentiable; Caffe's MarginInnerProduct never writes its diff
    return True


def make_label_specific_add(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) == 2, make=lambda: (g.batch, int(g.rng.integers(2, 5))))
    label = g.label_input((b.shape[0],), b.shape[1])
    tops = [(None, b.shape, "normal")]
    if g.chance(0.3):
        tops.append((None, (1,), "terminal"))
    lp = g.layer("LabelSpecificAdd", [b, label], tops, in_place=g.in_place_ok(b))
    p = lp.label_specific_add_param
    if g.chance(0.5):
        p.bias = float(g.choice((-0.35, -0.5, 0.2)))
    else:
        p.bias_base, p.bias_gamma, p.bias_power = -0.5, 0.1, 1.0
        p.bias_min, p.bias_max = -0.45, -0.2
        if g.chance(0.5):
            p.iteration = int(g.rng.integers(0, 5))
    if g.chance(0.3):
        p.transform_test = True
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    g.fatal(lp, set())
    return True


def make_aam(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) == 2, kinds=("cos",), make=lambda: (g.batch, int(g.rng.integers(2, 5))))
    label = g.label_input((b.shape[0],), b.shape[1])
    lp = g.layer("AdditiveAngularMargin", [b, label], [(None, b.shape, "normal")], in_place=g.in_place_ok(b))
    p = lp.additive_angular_margin_param
    if g.chance(0.6):
        p.margin = float(g.choice((0.0, 0.2, 0.5, 1.2)))
    if g.chance(0.4):
        p.easy_margin = g.chance(0.5)
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    g.fatal(lp, set())
    return True
