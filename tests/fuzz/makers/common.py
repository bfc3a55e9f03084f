"""Makers of the layers with learned blobs or bottoms that pick axes: Bias, Scale, InnerProduct, Embed, Parameter, MVN,
Normalize."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from caffe_torch.proto import caffe_pb2

if TYPE_CHECKING:
    from ..builder import NetGen


def make_bias_or_scale(type_: str):
    def make(g: NetGen) -> bool:
        b = g.pick(lambda b: len(b.shape) >= 1)
        nd = len(b.shape)
        axis = int(g.rng.integers(0, nd)) if g.chance(0.5) else min(1, nd - 1)
        num_axes = int(g.rng.integers(-1, nd - axis + 1))
        end = nd if num_axes == -1 else axis + num_axes
        pshape = b.shape[axis:end]
        bottoms = [b]
        two = g.chance(0.3)
        if two:
            # the second bottom's shape says which axes; axis counts in the first bottom
            ax2 = axis
            s = g.pick(lambda x: x.shape == pshape, make=lambda: pshape, multi=True) if pshape else None
            if s is None:
                return False
            bottoms.append(s)
        lp = g.layer(type_, bottoms, [(None, b.shape, "normal")], in_place=g.in_place_ok(b))
        msg = lp.scale_param if type_ == "Scale" else lp.bias_param
        if two:
            if ax2 != 1 or g.chance(0.3):
                msg.axis = ax2 - nd if g.chance(0.3) else ax2
        else:
            if axis != 1 or g.chance(0.3):
                msg.axis = axis - nd if g.chance(0.3) and axis > 0 else axis
            if num_axes != 1 or g.chance(0.3):
                msg.num_axes = num_axes
            g.filler(msg.filler)
        n_blobs = 0 if two else 1
        if type_ == "Scale" and g.chance(0.4):
            msg.bias_term = True
            n_blobs += 1
            if g.chance(0.3):
                g.filler(msg.bias_filler)
        if n_blobs:
            g.share(lp, n_blobs)
            if not two:
                g.share_names(lp, f"{type_}{pshape}{n_blobs}", n_blobs)
        return True
    return make


def make_inner_product(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 1)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd)) if g.chance(0.3) else min(1, nd - 1)
    if axis == 0 and nd > 1 and g.chance(0.7):
        axis = 1
    n_out = int(g.rng.integers(1, 5))
    lp = g.layer("InnerProduct", [b], [(None, b.shape[:axis] + (n_out,), "normal")])
    p = lp.inner_product_param
    p.num_output = n_out
    if axis != 1 or g.chance(0.2):
        p.axis = axis - nd if g.chance(0.4) else axis
    nb = g.bias_term(p)
    if g.chance(0.3):
        p.transpose = True
    if g.chance(0.15):
        p.normalize = True
    g.filler(p.weight_filler)
    g.share(lp, nb)
    g.share_names(lp, f"IP{math.prod(b.shape[axis:])}-{n_out}-{nb}-{p.transpose}", nb)
    return True


def make_embed(g: NetGen) -> bool:
    k = int(g.rng.integers(1, 6))
    idx = g.label_input(g.shape(int(g.rng.integers(1, 3))), k)
    n_out = int(g.rng.integers(1, 4))
    lp = g.layer("Embed", [idx], [(None, idx.shape + (n_out,), "normal")])
    ep = lp.embed_param
    ep.num_output, ep.input_dim = n_out, k
    nb = g.bias_term(ep)
    g.filler(ep.weight_filler)
    g.share(lp, nb)
    g.share_names(lp, f"Embed{k}-{n_out}-{nb}", nb)
    g.fatal(lp, {0})
    return True


def make_parameter(g: NetGen) -> bool:
    shape = g.shape(int(g.rng.integers(1, 4)), batch=False)
    lp = g.layer("Parameter", [], [(None, shape, "normal")])
    lp.parameter_param.shape.dim.extend(shape)
    g.share(lp, 1)
    g.share_names(lp, f"Parameter{shape}", 1)
    return True


def make_mvn(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2 and math.prod(b.shape[2:]) >= 1)
    lp = caffe_pb2.LayerParameter()
    p = lp.mvn_param
    if g.chance(0.4):
        p.normalize_variance = False
    if g.chance(0.4):
        p.across_channels = True
    if g.chance(0.3):
        p.eps = float(g.choice((1e-3, 0.1)))
    # in place only without normalize_variance (caffe_facts: MVN_IN_PLACE_VARIANCE)
    ip = not p.normalize_variance and g.in_place_ok(b)
    made = g.layer("MVN", [b], [(None, b.shape, "normal")], in_place=ip)
    made.mvn_param.CopyFrom(p)
    return True


def make_normalize(g: NetGen) -> bool:
    b = g.pick(lambda b: 2 <= len(b.shape) <= 4)
    legacy = tuple(b.shape) + (1,) * (4 - len(b.shape))
    tops = [(None, legacy, "normal")]
    two = g.chance(0.4)
    if two:
        tops.append((None, (legacy[0], 1, legacy[2], legacy[3]), "normal"))
    lp = g.layer("Normalize", [b], tops, in_place=len(b.shape) == 4 and g.in_place_ok(b))
    if g.chance(0.5):
        lp.normalize_param.normalize_type = g.choice(("L2", "L1"))
    if two and g.chance(0.5):
        lp.normalize_param.bp_norm = True
    return True
