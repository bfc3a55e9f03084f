"""Makers of the layers that move values around: Eltwise, Concat, Slice, Split, Flatten, Reshape, Crop, Tile,
Reduction, ArgMax, BatchReindex, Filter, Silence."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from caffe_torch.proto import caffe_pb2

from ..builder import FLOAT_KINDS

if TYPE_CHECKING:
    from ..builder import NetGen


def make_eltwise(g: NetGen) -> bool:
    a = g.pick(multi=True)
    n = int(g.rng.integers(2, 4))
    bottoms = [a] + [g.pick(lambda x: x.shape == a.shape, make=lambda: a.shape, multi=True) for _ in range(n - 1)]
    # never in place: Caffe's SUM and MAX clear the top before reading bottom 0 (caffe_facts: eltwise-in-place)
    lp = g.layer("Eltwise", bottoms, [(None, a.shape, "normal")])
    op = g.choice((0, 1, 2))
    if op != 1 or g.chance(0.3):
        lp.eltwise_param.operation = op
    if op == 1 and g.chance(0.4):
        lp.eltwise_param.coeff.extend(float(g.choice((1.0, -1.0, 0.5, 2.0))) for _ in bottoms)
    if op == 0 and g.chance(0.3):
        lp.eltwise_param.stable_prod_grad = False
    return True


def make_concat(g: NetGen) -> bool:
    a = g.pick(multi=True)
    nd = len(a.shape)
    axis = int(g.rng.integers(0, nd))
    n = int(g.rng.integers(1, 4))
    bottoms = [a]
    for _ in range(n - 1):
        def same_but_axis(x, axis=axis):
            return len(x.shape) == nd and all(x.shape[i] == a.shape[i] for i in range(nd) if i != axis)
        bottoms.append(g.pick(same_but_axis, multi=True, make=lambda axis=axis: tuple(
            int(g.rng.integers(1, 4)) if i == axis else a.shape[i] for i in range(nd))))
    top = tuple(sum(x.shape[axis] for x in bottoms) if i == axis else a.shape[i] for i in range(nd))
    lp = g.layer("Concat", bottoms, [(None, top, "normal")])
    if axis != 1 or g.chance(0.2):
        if g.chance(0.15) and axis >= 0:
            lp.concat_param.concat_dim = axis            # the legacy spelling
        else:
            lp.concat_param.axis = axis - nd if g.chance(0.4) else axis
    return True


def make_slice(g: NetGen) -> bool:
    b = g.pick(lambda b: max(b.shape) >= 2)
    nd = len(b.shape)
    axes = [i for i in range(nd) if b.shape[i] >= 2]
    axis = g.choice(axes)
    size = b.shape[axis]
    if g.chance(0.5):
        n = int(g.rng.integers(2, size + 1))
        points = sorted(int(x) for x in g.rng.choice(np.arange(1, size), size=n - 1, replace=False))
        bounds = [0] + points + [size]
        sizes = [bounds[i + 1] - bounds[i] for i in range(n)]
    else:
        divs = [d for d in range(1, size + 1) if size % d == 0]
        n = g.choice(divs)
        points = []
        sizes = [size // n] * n
    tops = [(None, tuple(s if i == axis else b.shape[i] for i in range(nd)), b.kind if b.kind in FLOAT_KINDS
             else "normal") for s in sizes]
    lp = g.layer("Slice", [b], tops)
    sp = lp.slice_param
    if points:
        sp.slice_point.extend(points)
    if axis != 1 or g.chance(0.2):
        if g.chance(0.15):
            sp.slice_dim = axis
        else:
            sp.axis = axis - nd if g.chance(0.4) else axis
    return True


def make_split(g: NetGen) -> bool:
    b = g.pick()
    n = int(g.rng.integers(1, 4))
    g.layer("Split", [b], [(None, b.shape, b.kind if b.kind in FLOAT_KINDS else "normal") for _ in range(n)])
    return True


def make_flatten(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 1)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    end = int(g.rng.integers(axis, nd))
    top = b.shape[:axis] + (math.prod(b.shape[axis:end + 1]),) + b.shape[end + 1:]
    lp = g.layer("Flatten", [b], [(None, top, b.kind if b.kind in FLOAT_KINDS else "normal")])
    if axis != 1 or g.chance(0.3):
        lp.flatten_param.axis = axis - nd if g.chance(0.3) else axis
    if end != nd - 1 or g.chance(0.3):
        lp.flatten_param.end_axis = end - nd if g.chance(0.5) else end
    return True


def make_reshape(g: NetGen) -> bool:
    b = g.pick()
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd + 1))
    num_axes = int(g.rng.integers(0, nd - axis + 1)) if g.chance(0.5) else -1
    end = nd if num_axes == -1 else axis + num_axes
    part = b.shape[axis:end]
    total = math.prod(part)
    # a new shape for `part`: some dims copied (0), at most one inferred (-1), others explicit
    new = []
    rest = total
    k = int(g.rng.integers(0, 3)) + (1 if total > 1 else 0)
    for i in range(k):
        if i < len(part) and rest % part[i] == 0 and g.chance(0.3):
            new.append((0, part[i]))
            rest //= part[i]
            continue
        divs = [d for d in range(1, rest + 1) if rest % d == 0]
        d = g.choice(divs)
        new.append((d, d))
        rest //= d
    if rest != 1 or g.chance(0.3):
        if any(v == 0 for v, _ in new) and g.chance(0.5) or not new:
            new.append((-1, rest))
        else:
            new.append((rest, rest))
    # a copy (0) must stand at an index inside `part`; redo the ones that do not
    new = [(v if v != 0 or i < len(part) else real, real) for i, (v, real) in enumerate(new)]
    if math.prod(r for _, r in new) != total:
        return False
    top = b.shape[:axis] + tuple(r for _, r in new) + b.shape[end:]
    lp = g.layer("Reshape", [b], [(None, top, b.kind if b.kind in FLOAT_KINDS else "normal")])
    rp = lp.reshape_param
    rp.shape.dim.extend(v for v, _ in new)
    if axis != 0 or g.chance(0.2):
        rp.axis = axis - nd - 1 if g.chance(0.3) and axis <= nd else axis
    if num_axes != -1 or g.chance(0.2):
        rp.num_axes = num_axes
    return True


def make_crop(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2, multi=True)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    ref_shape = tuple(b.shape[i] if i < axis else int(g.rng.integers(1, b.shape[i] + 1)) for i in range(nd))
    ref = g.pick(lambda x: len(x.shape) == nd and all(x.shape[i] <= b.shape[i] for i in range(axis, nd)),
                 make=lambda: ref_shape, multi=True)
    offsets = [int(g.rng.integers(0, b.shape[i] - ref.shape[i] + 1)) for i in range(axis, nd)]
    one = len(set(offsets)) == 1 or g.chance(0.3)
    if one:
        o = min(b.shape[i] - ref.shape[i] for i in range(axis, nd))
        offsets = [int(g.rng.integers(0, o + 1))] * (nd - axis)
    top = b.shape[:axis] + ref.shape[axis:]
    lp = g.layer("Crop", [b, ref], [(None, top, "normal")])
    cp = lp.crop_param
    if axis != 2 or g.chance(0.2):
        cp.axis = axis - nd if g.chance(0.3) else axis
    if any(offsets) or g.chance(0.3):
        cp.offset.extend(offsets[:1] if one else offsets)
    return True


def make_tile(g: NetGen) -> bool:
    b = g.pick()
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    tiles = int(g.rng.integers(1, 4))
    top = tuple(s * tiles if i == axis else s for i, s in enumerate(b.shape))
    lp = g.layer("Tile", [b], [(None, top, "normal")])
    lp.tile_param.tiles = tiles
    if axis != 1 or g.chance(0.2):
        lp.tile_param.axis = axis - nd if g.chance(0.4) else axis
    return True


def make_reduction(g: NetGen) -> bool:
    b = g.pick()
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    lp = g.layer("Reduction", [b], [(None, b.shape[:axis], "normal")])
    rp = lp.reduction_param
    op = g.choice((1, 2, 3, 4))
    if op != 1 or g.chance(0.3):
        rp.operation = op
    if axis != 0 or g.chance(0.3):
        rp.axis = axis - nd if g.chance(0.4) else axis
    if g.chance(0.4):
        rp.coeff = float(g.choice((0.5, 2.0, -1.0)))
    return True


def make_argmax(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    nd = len(b.shape)
    p = caffe_pb2.ArgMaxParameter()
    if g.chance(0.5):
        axis = int(g.rng.integers(0, nd))
        p.axis = axis - nd if g.chance(0.4) else axis
        k = int(g.rng.integers(1, b.shape[axis] + 1))
        top = tuple(k if i == axis else s for i, s in enumerate(b.shape))
    else:
        k = int(g.rng.integers(1, math.prod(b.shape[1:]) + 1))
        top = (b.shape[0], 1, k) + (1,) * (nd - 3)
    if k != 1 or g.chance(0.3):
        p.top_k = k
    if g.chance(0.4):
        p.out_max_val = True
        if not p.HasField("axis"):
            top = (top[0], 2) + top[2:]
    lp = g.layer("ArgMax", [b], [(None, top, "terminal")])
    lp.argmax_param.CopyFrom(p)
    g.fatal(lp, "all")
    return True


def make_batch_reindex(g: NetGen) -> bool:
    b = g.pick(multi=True)
    n = int(g.rng.integers(1, 5))
    idx = g.label_input((n,), b.shape[0])
    g.fatal(g.layer("BatchReindex", [b, idx], [(None, (n,) + b.shape[1:], "normal")]), {1})
    return True


def make_filter(g: NetGen) -> bool:
    a = g.pick(multi=True)
    bottoms = [a]
    if g.chance(0.4):
        bottoms.append(g.pick(lambda x: x.shape[:1] == a.shape[:1], make=lambda: (a.shape[0],) + g.shape()[1:],
                              multi=True))
    sel_shape = (a.shape[0],) + ((1,) * int(g.rng.integers(0, 3)))
    sel = g.new_input(sel_shape, "binary1")
    lp = g.layer("Filter", bottoms + [sel], [(None, x.shape, "normal") for x in bottoms])
    for t in lp.top:
        g.blobs[t].dynamic = True
    g.fatal(lp, {len(bottoms)})
    return True


def make_silence(g: NetGen) -> bool:
    n = int(g.rng.integers(1, 3))
    bottoms = [g.pick() for _ in range(n)]
    if len({b.name for b in bottoms}) != len(bottoms):
        bottoms = bottoms[:1]
    g.layer("Silence", bottoms, [])
    return True
