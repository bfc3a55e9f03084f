"""Makers of neuron-like layers: the element-wise activations, Dropout, Softmax, BatchNorm, PReLU."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from caffe_torch.proto import caffe_pb2

if TYPE_CHECKING:
    from ..builder import NetGen


def _neuron(type_: str, fill=None, out_kind: str = "normal", in_kinds=None, in_place: bool = True,
            min_ndim: int = 0):
    def make(g: NetGen) -> bool:
        b = g.pick(lambda b: len(b.shape) >= min_ndim, kinds=in_kinds, scalar=min_ndim == 0)
        ip = in_place and g.in_place_ok(b)
        lp = g.layer(type_, [b], [(None, b.shape, out_kind)], in_place=ip)
        if fill:
            fill(g, lp, b)
        return True
    return make


def engine_field(g, msg):
    if g.chance(0.2):
        msg.engine = g.choice((0, 1))     # DEFAULT or CAFFE (CUDNN is refused by the CPU-only build)


def _in_place(lp) -> bool:
    return bool(lp.bottom) and lp.top[0] == lp.bottom[0]


def _relu(g, lp, b):
    # a negative slope flips signs, and Caffe's in-place backward tests the overwritten bottom (caffe_facts
    # QUIRKS: neuron-in-place-backward)
    if g.chance(0.5):
        lp.relu_param.negative_slope = float(g.choice((0.0, 0.1, 0.5) + (() if _in_place(lp) else (-0.2,))))
    engine_field(g, lp.relu_param)


def _elu(g, lp, b):
    if g.chance(0.5):
        lp.elu_param.alpha = float(g.choice((0.5, 1.0, 2.0)))


def _exp(g, lp, b):
    ep = lp.exp_param
    if g.chance(0.5):
        ep.base = float(g.choice((-1.0, 2.0, 0.5, 10.0)))
    if g.chance(0.5):
        ep.scale = float(g.choice((0.5, -0.5, 1.0, 0.0)))
    if g.chance(0.5):
        ep.shift = float(g.choice((0.0, 0.5, -1.0)))


def _log(g, lp, b):
    p = lp.log_param
    if g.chance(0.5):
        p.base = float(g.choice((-1.0, 2.0, 10.0)))
    if g.chance(0.5):
        p.scale = float(g.choice((1.0, 2.0, 0.5)))
    if g.chance(0.5):
        p.shift = float(g.choice((0.0, 0.5, 1.0)))


def _power(g, lp, b):
    p = lp.power_param
    positive = b.kind in ("positive", "prob")
    powers = (1.0, 2.0, 3.0, 0.0) + ((0.5, -1.0, 1.5) if positive else ())
    if _in_place(lp):       # Caffe's in-place backward is wrong unless dy/dx = 0 (neuron-in-place-backward)
        powers = (0.0,)
    if g.chance(0.8) or _in_place(lp):
        p.power = float(g.choice(powers))
    if g.chance(0.5):
        p.scale = float(g.choice((1.0, 2.0, 0.5) if positive else (1.0, 2.0, -1.0, 0.0)))
    if g.chance(0.5) and not (positive and p.power != int(p.power)):
        p.shift = float(g.choice((0.0, 1.0, -0.5)))
    elif positive and g.chance(0.5):
        p.shift = 0.5


def _threshold(g, lp, b):
    if g.chance(0.7):
        lp.threshold_param.threshold = float(g.choice((0.0, 0.5, -0.3, 1.0)))
    g.fatal(lp, "all")


def _sigmoid(g, lp, b):
    engine_field(g, lp.sigmoid_param)


def _tanh(g, lp, b):
    engine_field(g, lp.tanh_param)


def _prelu(g, lp, b):
    if g.chance(0.4):
        lp.prelu_param.channel_shared = True
    if g.chance(0.3):
        g.filler(lp.prelu_param.filler)
    g.share(lp, 1)
    c = 1 if lp.prelu_param.channel_shared else b.shape[1]
    g.share_names(lp, f"PReLU{c}", 1)


def _dropout(g, lp, b):
    # TRAIN masks come from each engine's own generator: only TEST (any ratio) or ratio 0 is deterministic
    deterministic_phase = g.phase == caffe_pb2.TEST
    if g.chance(0.3):
        lp.phase = caffe_pb2.TEST
        deterministic_phase = True
    lp.dropout_param.dropout_ratio = float(g.choice((0.0, 0.3, 0.5))) if deterministic_phase else 0.0


def make_dropout(g):
    return _neuron("Dropout", _dropout)(g)


def make_softmax(g: NetGen) -> bool:
    b = g.pick()
    lp = g.layer("Softmax", [b], [(None, b.shape, "prob")], in_place=g.in_place_ok(b))
    if g.chance(0.5):
        lp.softmax_param.axis = int(g.rng.integers(-len(b.shape), len(b.shape)))
    engine_field(g, lp.softmax_param)
    return True


def make_batchnorm(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2 and math.prod(b.shape) // b.shape[1] > 1)
    lp = g.layer("BatchNorm", [b], [(None, b.shape, "normal")], in_place=g.in_place_ok(b))
    p = lp.batch_norm_param
    if g.chance(0.3):
        p.use_global_stats = g.chance(0.5)
    if g.chance(0.3):
        p.moving_average_fraction = float(g.choice((0.9, 0.5, 0.999)))
    if g.chance(0.3):
        p.eps = float(g.choice((1e-3, 1e-5, 0.1)))
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    if g.chance(0.2):   # older prototxts carry these (Caffe 1.0's upgrade drops them)
        for _ in range(3):
            lp.param.add().lr_mult = 0
    return True


def make_prelu(g):
    return _neuron("PReLU", _prelu, min_ndim=2)(g)
