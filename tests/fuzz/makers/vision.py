"""Makers of the vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, LRN (shapes by Caffe's formulas)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from caffe_torch.proto import caffe_pb2

from .neuron import engine_field

if TYPE_CHECKING:
    from ..builder import NetGen


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def pool_out(size: int, k: int, s: int, p: int) -> int:
    """Caffe's PoolingLayer::Reshape: ceil, then the last window must start inside the image (or its left pad)."""
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def _spatial_pick(g, min_axes=3, max_axes=4, min_size=1):
    def pred(b):
        return min_axes <= len(b.shape) <= max_axes and all(s >= min_size for s in b.shape[2:])
    return g.pick(pred, make=lambda: (g.batch, int(g.rng.integers(1, 4)))
                  + tuple(int(g.rng.integers(max(min_size, 2), 7)) for _ in range(max(2, min_axes - 2)
                          if max_axes >= 4 else min_axes - 2)))


def _conv_geometry(g: NetGen, spatial: tuple[int, ...], deconv: bool, msg, kernel_only: bool = False):
    """Draw kernel/stride/pad/dilation for `spatial` (all legal); write them into `msg` in one of Caffe's
    spellings (repeated per axis, one value for all, or the _h/_w fields for 2-D); return the output sizes."""
    n = len(spatial)
    while True:
        k = [int(g.rng.integers(1, 4)) for _ in range(n)]
        s = [int(g.rng.integers(1, 3)) for _ in range(n)]
        p = [int(g.rng.integers(0, 2)) for _ in range(n)]
        d = [int(g.rng.integers(1, 3)) if g.chance(0.3) else 1 for _ in range(n)]
        if g.chance(0.5):       # one value for every axis
            k, s, p, d = [k[0]] * n, [s[0]] * n, [p[0]] * n, [d[0]] * n
        if deconv:
            out = [s_ * (x - 1) + d_ * (k_ - 1) + 1 - 2 * p_ for x, k_, s_, p_, d_ in zip(spatial, k, s, p, d)]
        else:
            out = [_conv_out(x, k_, s_, p_, d_) for x, k_, s_, p_, d_ in zip(spatial, k, s, p, d)]
        if all(o >= 1 for o in out):
            break
    hw = n == 2 and g.chance(0.3)
    if hw and (g.chance(0.5) or k[0] != k[1]):
        msg.kernel_h, msg.kernel_w = k
    elif len(set(k)) == 1 and g.chance(0.7):
        msg.kernel_size.append(k[0])
    else:
        msg.kernel_size.extend(k)
    for name, vals, default in (("stride", s, 1), ("pad", p, 0)):
        if all(v == default for v in vals) and g.chance(0.6):
            continue
        if hw and g.chance(0.5):
            setattr(msg, f"{name}_h", vals[0])
            setattr(msg, f"{name}_w", vals[1])
        elif len(set(vals)) == 1 and g.chance(0.7):
            getattr(msg, name).append(vals[0])
        else:
            getattr(msg, name).extend(vals)
    if any(x != 1 for x in d) or g.chance(0.1):
        if len(set(d)) == 1:
            msg.dilation.append(d[0])
        else:
            msg.dilation.extend(d)
    return out, k


def make_conv(type_: str):
    def make(g: NetGen) -> bool:
        nd_choice = g.chance(0.15)
        if nd_choice:     # N-D: 1 or 3 spatial axes
            b = g.pick(lambda b: len(b.shape) in (3, 5) and all(s >= 1 for s in b.shape),
                       make=lambda: (g.batch, int(g.rng.integers(1, 4))) + tuple(
                           int(g.rng.integers(2, 5)) for _ in range(g.choice((1, 3)))))
        else:
            b = _spatial_pick(g, 4, 4)
        lp = caffe_pb2.LayerParameter()
        cp = lp.convolution_param
        axis = 1
        if g.chance(0.1) and len(b.shape) >= 4:
            axis = 2 if len(b.shape) >= 5 or g.chance(0.5) else 1
        c_in = b.shape[axis]
        spatial = b.shape[axis + 1:]
        if not spatial:
            return False
        out, k = _conv_geometry(g, spatial, type_ == "Deconvolution", cp)
        groups = [x for x in (1, 2, 3) if c_in % x == 0]
        group = g.choice(groups) if g.chance(0.3) else 1
        n_out = group * int(g.rng.integers(1, 3))
        cp.num_output = n_out
        if group != 1:
            cp.group = group
        if axis != 1:
            cp.axis = axis if g.chance(0.5) else axis - len(b.shape)
        nb = g.bias_term(cp)
        if g.chance(0.1):
            cp.force_nd_im2col = True
        engine_field(g, cp)
        g.filler(cp.weight_filler)
        # several bottoms: each of the same shape gives its own top
        bottoms = [b]
        if g.chance(0.15):
            bottoms.append(g.pick(lambda x: x.shape == b.shape, make=lambda: b.shape, multi=True))
        top_shape = b.shape[:axis] + (n_out,) + tuple(out)
        made = g.layer(type_, bottoms, [(None, top_shape, "normal") for _ in bottoms])
        made.convolution_param.CopyFrom(cp)
        g.share(made, nb)
        wshape = (c_in, n_out // group) if type_ == "Deconvolution" else (n_out, c_in // group)
        g.share_names(made, f"{type_}{wshape}{tuple(k)}{nb}", nb)
        return True
    return make


def make_im2col(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    lp = g.layer("Im2col", [b], [(None, (), "normal")])
    out, k = _conv_geometry(g, b.shape[2:], False, lp.convolution_param)
    g.blobs[lp.top[0]].shape = (b.shape[0], b.shape[1] * math.prod(k)) + tuple(out)
    return True


def make_pooling(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    h, w = b.shape[2:]
    lp = caffe_pb2.LayerParameter()
    pp = lp.pooling_param
    pool = g.choice((0, 1))     # MAX, AVE (STOCHASTIC has no CPU implementation in Caffe)
    if pool or g.chance(0.3):
        pp.pool = pool
    if g.chance(0.15):
        pp.global_pooling = True
        kh, kw, sh, sw, ph, pw = h, w, 1, 1, 0, 0
    else:
        while True:
            kh, kw = int(g.rng.integers(1, min(h, 3) + 1 + 1)), int(g.rng.integers(1, min(w, 3) + 1 + 1))
            if g.chance(0.6):
                kw = kh
            sh, sw = int(g.rng.integers(1, 3)), int(g.rng.integers(1, 3))
            if g.chance(0.6):
                sw = sh
            ph, pw = int(g.rng.integers(0, kh)), int(g.rng.integers(0, kw))
            if g.chance(0.6):
                pw = ph = min(ph, pw)
            # no window may start past the bottom: without padding Caffe's ceil rounding is not clipped, and an
            # empty MAX window back-propagates to index -1 (caffe_facts QUIRKS: pooling-empty-window)
            if kh <= h + 2 * ph and kw <= w + 2 * pw and all(
                    p_ or (pool_out(x, k, s_, p_) - 1) * s_ < x for x, k, s_, p_ in ((h, kh, sh, ph), (w, kw, sw, pw))):
                break
        if kh == kw and g.chance(0.7):
            pp.kernel_size = kh
        else:
            pp.kernel_h, pp.kernel_w = kh, kw
        if sh == sw and (sh != 1 or g.chance(0.3)) and g.chance(0.7):
            pp.stride = sh
        elif (sh, sw) != (1, 1) or g.chance(0.2):
            pp.stride_h, pp.stride_w = sh, sw
        if ph == pw and (ph or g.chance(0.3)) and g.chance(0.7):
            pp.pad = ph
        elif (ph, pw) != (0, 0) or g.chance(0.2):
            pp.pad_h, pp.pad_w = ph, pw
    engine_field(g, pp)
    top = (b.shape[0], b.shape[1], pool_out(h, kh, sh, ph), pool_out(w, kw, sw, pw))
    tops = [(None, top, "normal")]
    if pool == 0 and g.chance(0.2):
        tops.append((None, top, "terminal"))     # the argmax mask
    made = g.layer("Pooling", [b], tops)
    made.pooling_param.CopyFrom(pp)
    return True


def make_spp(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    h, w = b.shape[2:]
    heights = []
    for ph in (1, 2, 3):
        ok, total = True, 0
        for lvl in range(ph):
            bins = 2 ** lvl
            sizes = []
            for x in (h, w):
                k = math.ceil(x / bins)
                p = (k * bins - x + 1) // 2
                if p >= k:
                    ok = False
                sizes.append(pool_out(x, k, k, p))
            total += b.shape[1] * sizes[0] * sizes[1]
        if ok:
            heights.append((ph, total))
    ph, total = g.choice(heights)
    lp = g.layer("SPP", [b], [(None, (b.shape[0], total), "normal")])
    lp.spp_param.pyramid_height = ph
    if g.chance(0.5):
        lp.spp_param.pool = g.choice((0, 1))
    return True


def make_lrn(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    # never in place: BVLC's LRN computes garbage in place (caffe_facts QUIRKS: lrn-in-place)
    lp = g.layer("LRN", [b], [(None, b.shape, "normal")])
    p = lp.lrn_param
    if g.chance(0.6):
        p.local_size = int(g.choice((1, 3, 5)))
    if g.chance(0.5):
        p.alpha = float(g.choice((1.0, 0.5, 0.01)))
    if g.chance(0.5):
        p.beta = float(g.choice((0.75, 0.5, 1.0)))
    if g.chance(0.4):
        p.k = float(g.choice((1.0, 2.0)))
    if g.chance(0.4):
        p.norm_region = 1
    engine_field(g, p)
    return True
