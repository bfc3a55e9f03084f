"""ArgMax, BatchReindex, Crop, Tile, Filter, Reduction, Parameter, Embed, MVN against NumPy references of
Caffe's forward and backward, and gradcheck (float64) where the backward is the derivative. Where Caffe's is
not (MVN's eps, no gradient to index bottoms, ArgMax's missing backward) the tests pin Caffe's rule."""

import numpy as np
import pytest
import torch
from test_layers_common import away_from_zero, gradcheck_layer, make, rnd
from torch.func import functional_call

from caffe_torch.errors import LayerError


def grads(layer, inputs, dys, wrt):
    """Gradients of sum(top_i * dy_i) w.r.t. the tensors `wrt` (inputs or blobs), None where there is none."""
    outs = layer(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return torch.autograd.grad(outs, wrt, dys, allow_unused=True)


def ints(*shape, low=-2, high=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).to(torch.float64)


# ----------------------------------------------------------------------------- ArgMax
def np_argmax(x, top_k, out_max_val, axis):
    """ArgMaxLayer::Forward_cpu: (value, index) pairs sorted descending (so ties give the larger index)."""
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        out = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k) + (1,) * max(x.ndim - 3, 0))
        for i, row in enumerate(flat):
            best = sorted(((v, j) for j, v in enumerate(row)), reverse=True)[:top_k]
            out[i, 0, :, ...] = np.array([j for _, j in best]).reshape((top_k,) + (1,) * max(x.ndim - 3, 0))
            if out_max_val:
                out[i, 1, :, ...] = np.array([v for v, _ in best]).reshape(out[i, 1].shape)
        return out
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,))
    for idx in np.ndindex(moved.shape[:-1]):
        best = sorted(((v, j) for j, v in enumerate(moved[idx])), reverse=True)[:top_k]
        out[idx] = [v if out_max_val else j for v, j in best]
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("text,shape,top_k,out_max_val,axis", [
    ("", (2, 3, 4, 5), 1, False, None),
    ("argmax_param { top_k: 3 out_max_val: true }", (4, 6), 3, True, None),
    ("argmax_param { top_k: 2 out_max_val: true }", (2, 3, 2, 2), 2, True, None),
    ("argmax_param { axis: 1 top_k: 2 }", (2, 3, 4, 5), 2, False, 1),
    ("argmax_param { axis: -1 top_k: 2 out_max_val: true }", (2, 3, 4), 2, True, 2),
    ("argmax_param { axis: 0 }", (5, 3), 1, False, 0),
])
@pytest.mark.parametrize("values", ["normal", "ties"])
def test_argmax(text, shape, top_k, out_max_val, axis, values):
    layer = make("ArgMax", text, [shape])
    x = rnd(*shape) if values == "normal" else ints(*shape)
    y = layer(x)
    ref = np_argmax(x.numpy(), top_k, out_max_val, axis)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_array_equal(y.numpy(), ref)


def test_argmax_top_shape_has_at_least_3_axes_and_no_backward():
    layer = make("ArgMax", "", [(4, 6)])
    assert layer.top_shapes([(4, 6)]) == [(4, 1, 1)]
    with pytest.raises(LayerError, match="top_k 7 exceeds"):
        make("ArgMax", "argmax_param { top_k: 7 }", [(4, 6)])
    with pytest.raises(LayerError, match="top_k 5 exceeds"):
        make("ArgMax", "argmax_param { axis: 1 top_k: 5 }", [(4, 3, 2)])
    x = rnd(4, 6).requires_grad_(True)
    with pytest.raises(RuntimeError, match="no backward in Caffe"):
        layer(x).sum().backward()


# ----------------------------------------------------------------------------- BatchReindex
def test_batch_reindex_forward_and_summed_backward():
    layer = make("BatchReindex", "", [(4, 3, 2), (6,)])
    x, idx = rnd(4, 3, 2), torch.tensor([3.0, 0, 3, 1, 3, 0], dtype=torch.float64)
    dy = rnd(6, 3, 2, seed=1)
    xg, ig = x.clone().requires_grad_(True), idx.clone().requires_grad_(True)
    y = layer(xg, ig)
    np.testing.assert_array_equal(y.detach().numpy(), x.numpy()[[3, 0, 3, 1, 3, 0]])
    assert layer.top_shapes([(4, 3, 2), (6,)]) == [(6, 3, 2)]
    dx, didx = grads(layer, (xg, ig), (dy,), (xg, ig))
    ref = np.zeros((4, 3, 2))
    np.add.at(ref, [3, 0, 3, 1, 3, 0], dy.numpy())
    np.testing.assert_allclose(dx.numpy(), ref, rtol=1e-12)
    assert didx is None                                    # Caffe cannot back-propagate to the indices
    torch.autograd.gradcheck(lambda a: layer(a, idx), (x.clone().requires_grad_(True),))
    with pytest.raises(LayerError, match="outside the batch"):
        layer(x, torch.tensor([4.0]))
    with pytest.raises(LayerError, match="1-D"):
        make("BatchReindex", "", [(4, 3), (2, 1)])


# ----------------------------------------------------------------------------- Crop
@pytest.mark.parametrize("text,big,ref_shape,offsets", [
    ("", (2, 3, 7, 8), (2, 3, 4, 5), (0, 0, 0, 0)),
    ("crop_param { offset: 2 }", (2, 3, 7, 8), (1, 1, 4, 5), (0, 0, 2, 2)),
    ("crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }", (2, 4, 7, 8), (2, 2, 4, 5), (0, 1, 2, 3)),
    ("crop_param { axis: -1 offset: 3 }", (2, 3, 8), (5, 5, 5), (0, 0, 3)),
])
def test_crop(text, big, ref_shape, offsets):
    layer = make("Crop", text, [big, ref_shape])
    x, r = rnd(*big), rnd(*ref_shape, seed=2)
    top = layer.top_shapes([big, ref_shape])[0]
    sl = tuple(slice(o, o + n) for o, n in zip(offsets, top))
    xg, rg = x.clone().requires_grad_(True), r.clone().requires_grad_(True)
    y = layer(xg, rg)
    np.testing.assert_array_equal(y.detach().numpy(), x.numpy()[sl])
    dy = rnd(*top, seed=1)
    dx, dr = grads(layer, (xg, rg), (dy,), (xg, rg))
    ref = np.zeros(big)
    ref[sl] = dy.numpy()
    np.testing.assert_array_equal(dx.numpy(), ref)
    assert dr is None                                     # the reference bottom only gives a shape
    torch.autograd.gradcheck(lambda a: layer(a, r), (x.clone().requires_grad_(True),))


def test_crop_errors():
    with pytest.raises(LayerError, match="out of bounds"):
        make("Crop", "crop_param { offset: 4 }", [(2, 3, 7, 8), (2, 3, 4, 5)])
    with pytest.raises(LayerError, match="2 offsets"):
        make("Crop", "crop_param { offset: 1 offset: 1 }", [(2, 3, 7, 8, 9), (2, 3, 4, 5, 6)])


# ----------------------------------------------------------------------------- Tile
@pytest.mark.parametrize("text,shape,axis,tiles", [
    ("tile_param { tiles: 3 }", (2, 3, 4), 1, 3),
    ("tile_param { axis: -1 tiles: 2 }", (3, 4), 1, 2),
    ("tile_param { axis: 0 tiles: 2 }", (2, 3), 0, 2),
])
def test_tile(text, shape, axis, tiles):
    layer = make("Tile", text, [shape])
    x = rnd(*shape)
    outer, inner = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
    top = list(shape)
    top[axis] *= tiles
    ref = np.repeat(x.numpy().reshape(outer, 1, inner), tiles, axis=1).reshape(top)   # TileLayer::Forward_cpu
    xg = x.clone().requires_grad_(True)
    np.testing.assert_array_equal(layer(xg).detach().numpy(), ref)
    assert layer.top_shapes([shape]) == [tuple(top)]
    dy = rnd(*top, seed=1)
    (dx,) = grads(layer, (xg,), (dy,), (xg,))
    np.testing.assert_allclose(dx.numpy(), dy.numpy().reshape(outer, tiles, inner).sum(1).reshape(shape), rtol=1e-12)
    gradcheck_layer(layer, [x])
    with pytest.raises(LayerError, match="tiles must be specified"):
        make("Tile", "", [shape])


# ----------------------------------------------------------------------------- Filter
def test_filter():
    layer = make("Filter", 'top: "fa" top: "fb"', [(6, 3), (6, 2, 2), (6, 1)])
    assert layer.top_shapes([(6, 3), (6, 2, 2), (6, 1)]) == [(6, 3), (6, 2, 2)]   # Caffe's first Reshape: N
    a, b = rnd(6, 3), rnd(6, 2, 2, seed=1)
    sel = torch.tensor([[0.0], [1], [0], [-2], [1], [0]], dtype=torch.float64)   # nonzero = keep
    ag, bg, sg = (t.clone().requires_grad_(True) for t in (a, b, sel))
    fa, fb = layer(ag, bg, sg)
    keep = [1, 3, 4]
    np.testing.assert_array_equal(fa.detach().numpy(), a.numpy()[keep])
    np.testing.assert_array_equal(fb.detach().numpy(), b.numpy()[keep])
    da_top, db_top = rnd(3, 3, seed=2), rnd(3, 2, 2, seed=3)
    da, db, ds = grads(layer, (ag, bg, sg), (da_top, db_top), (ag, bg, sg))
    ref_a, ref_b = np.zeros((6, 3)), np.zeros((6, 2, 2))
    ref_a[keep], ref_b[keep] = da_top.numpy(), db_top.numpy()
    np.testing.assert_array_equal(da.numpy(), ref_a)
    np.testing.assert_array_equal(db.numpy(), ref_b)
    assert ds is None                                      # Caffe: fatal error if asked for the selector's
    torch.autograd.gradcheck(lambda x, y: layer(x, y, sel), (a.clone().requires_grad_(True),
                                                            b.clone().requires_grad_(True)))
    with pytest.raises(LayerError, match="N x 1"):
        make("Filter", "", [(6, 3), (6, 2)])
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        make("Filter", 'top: "x" top: "y"', [(6, 3), (6, 1)])


# ----------------------------------------------------------------------------- Reduction
@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, 0.5), (-1, 2.0), (2, -1.5)])
def test_reduction(op, axis, coeff):
    shape = (2, 3, 4)
    layer = make("Reduction", f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}", [shape])
    ax = axis % 3
    x = rnd(*shape)
    x.view(-1)[::5] = 0                                     # ASUM's sign(0) = 0
    xn = x.numpy()
    flat = xn.reshape(xn.shape[:ax] + (-1,))
    dim = flat.shape[-1]
    value = {"SUM": flat.sum(-1), "ASUM": np.abs(flat).sum(-1), "SUMSQ": (flat ** 2).sum(-1),
             "MEAN": flat.sum(-1) / dim}[op] * coeff
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == shape[:ax]
    np.testing.assert_allclose(y.detach().numpy(), value, rtol=1e-12)
    dy = rnd(*shape[:ax], seed=1)
    (dx,) = grads(layer, (xg,), (dy,), (xg,))
    g = dy.numpy()[..., None] * coeff                      # Backward_cpu: bottom_coeff = top_diff * coeff
    ref = {"SUM": np.broadcast_to(g, flat.shape), "MEAN": np.broadcast_to(g / dim, flat.shape),
           "ASUM": g * np.sign(flat), "SUMSQ": 2 * g * flat}[op]
    np.testing.assert_allclose(dx.numpy(), ref.reshape(shape), rtol=1e-12)
    gradcheck_layer(layer, [away_from_zero(*shape)])


# ----------------------------------------------------------------------------- Parameter
def test_parameter_top_is_its_blob():
    layer = make("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", [])
    assert layer.top_shapes([]) == [(2, 3)] and tuple(layer.blobs[0].shape) == (2, 3)
    assert not layer.blobs[0].detach().any()                 # an unfilled Caffe blob: zeros
    with torch.no_grad():
        layer.blobs[0].copy_(rnd(2, 3))
    y = layer()
    np.testing.assert_array_equal(y.detach().numpy(), layer.blobs[0].detach().numpy())
    dy = rnd(2, 3, seed=1)
    (dw,) = torch.autograd.grad(y, layer.blobs[0], dy)
    np.testing.assert_array_equal(dw.numpy(), dy.numpy())     # the top's diff is the blob's diff
    with pytest.raises(LayerError, match="0 bottom"):
        make("Parameter", "parameter_param { shape { dim: 2 } }", [(2,)])


# ----------------------------------------------------------------------------- Embed
@pytest.mark.parametrize("bias", [True, False])
def test_embed(bias):
    text = (f'embed_param {{ num_output: 4 input_dim: 5 bias_term: {str(bias).lower()} '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    layer = make("Embed", text, [(2, 3)])
    assert [tuple(b.shape) for b in layer.blobs] == [(5, 4)] + [(4,)] * bias
    ids = torch.tensor([[0.0, 4, 2], [2, 2, 1]], dtype=torch.float64)
    w = layer.blobs[0].detach().numpy()
    ref = w[ids.numpy().astype(int)] + (layer.blobs[1].detach().numpy() if bias else 0)
    idg = ids.clone().requires_grad_(True)
    y = layer(idg)
    assert tuple(y.shape) == layer.top_shapes([(2, 3)])[0] == (2, 3, 4)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12)
    dy = rnd(2, 3, 4, seed=1)
    got = grads(layer, (idg,), (dy,), (idg, *layer.blobs))
    assert got[0] is None                                     # Caffe: "Can't backpropagate to EmbedLayer input"
    dw = np.zeros((5, 4))
    np.add.at(dw, ids.numpy().astype(int).reshape(-1), dy.numpy().reshape(-1, 4))
    np.testing.assert_allclose(got[1].numpy(), dw, rtol=1e-12)
    if bias:
        np.testing.assert_allclose(got[2].numpy(), dy.numpy().reshape(-1, 4).sum(0), rtol=1e-12)
    names = [f"blobs.{i}" for i in range(len(layer.blobs))]
    params = tuple(b.detach().clone().requires_grad_(True) for b in layer.blobs)
    assert torch.autograd.gradcheck(lambda *p: functional_call(layer, dict(zip(names, p)), (ids,)), params)
    for bad in (5.0, -1.0, 1.5):
        with pytest.raises(LayerError, match=r"integers in \[0, 5\)"):
            layer(torch.tensor([bad], dtype=torch.float64))


def test_embed_default_filler_is_constant_zero():
    layer = make("Embed", "embed_param { num_output: 2 input_dim: 3 }", [(4,)])
    assert not any(b.detach().any() for b in layer.blobs)


# ----------------------------------------------------------------------------- MVN
def np_mvn(x, normalize_variance, across_channels, eps, dy):
    """MVNLayer's Forward_cpu and Backward_cpu on (num, dim) rows."""
    lead = 1 if across_channels else 2
    flat = x.reshape(int(np.prod(x.shape[:lead])), -1)
    g = dy.reshape(flat.shape)
    centred = flat - flat.mean(1, keepdims=True)
    if not normalize_variance:
        return centred, g - g.mean(1, keepdims=True)
    denom = np.sqrt((centred ** 2).mean(1, keepdims=True)) + eps
    y = centred / denom
    dx = (g - g.mean(1, keepdims=True) - y * (g * y).mean(1, keepdims=True)) / denom
    return y, dx


@pytest.mark.parametrize("text,nv,ac,eps", [
    ("", True, False, 1e-9),
    ("mvn_param { across_channels: true }", True, True, 1e-9),
    ("mvn_param { normalize_variance: false }", False, False, 1e-9),
    ("mvn_param { normalize_variance: false across_channels: true }", False, True, 1e-9),
    ("mvn_param { eps: 0.5 }", True, False, 0.5),
])
def test_mvn(text, nv, ac, eps):
    shape = (2, 3, 4, 5)
    layer = make("MVN", text, [shape])
    eps = float(np.float32(eps))
    x, dy = rnd(*shape) * 3 + 1, rnd(*shape, seed=1)
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    ref_y, ref_dx = np_mvn(x.numpy(), nv, ac, eps, dy.numpy())
    np.testing.assert_allclose(y.detach().numpy(), ref_y.reshape(shape), rtol=1e-10)
    (dx,) = grads(layer, (xg,), (dy,), (xg,))
    np.testing.assert_allclose(dx.numpy(), ref_dx.reshape(shape), rtol=1e-9, atol=1e-12)
    if eps < 1e-6:
        gradcheck_layer(layer, [x])              # with a tiny eps Caffe's backward is the derivative
    else:
        # Caffe's backward uses std + eps where the derivative has std: not the derivative, on purpose
        exact = torch.autograd.functional.vjp(lambda a: layer_exact(a, ac, eps), x, dy)[1]
        assert not np.allclose(dx.numpy(), exact.numpy(), rtol=1e-3)


def layer_exact(x, across_channels, eps):
    """y = (x - mean) / (std + eps) in plain autograd ops: its true derivative."""
    lead = 1 if across_channels else 2
    flat = x.reshape(int(np.prod(x.shape[:lead])), -1)
    centred = flat - flat.mean(1, keepdim=True)
    return (centred / ((centred ** 2).mean(1, keepdim=True).sqrt() + eps)).reshape(x.shape)


def test_mvn_top_has_caffes_4_axes():
    layer = make("MVN", "mvn_param { across_channels: true }", [(4, 6)])
    assert layer.top_shapes([(4, 6)]) == [(4, 6, 1, 1)]
    y = layer(rnd(4, 6))
    assert tuple(y.shape) == (4, 6, 1, 1)
    np.testing.assert_allclose(y.numpy().std(axis=(1, 2, 3)), 1, rtol=1e-6)
    with pytest.raises(LayerError, match="at most 4 axes"):
        make("MVN", "", [(2, 3, 4, 5, 6)])


# ----------------------------------------------------------------------------- index layers' backward vs real Caffe
# The conformance suite compares these layers forward only: its force_backward would make Caffe back-propagate to
# the index bottom, a fatal CHECK. Here no force_backward: a learnable blob (a Parameter layer, or Embed's weights)
# sits below, and the top goes, times a random input, into a loss, so Caffe back-propagates to the blob alone.
INDEX_NETS = {
    "Embed": ('layer { name: "in" type: "Input" top: "ids" top: "w" input_param { shape { dim: 2 dim: 3 } '
              'shape { dim: 2 dim: 3 dim: 4 } } }\n'
              'layer { name: "l" type: "Embed" bottom: "ids" top: "e" embed_param { num_output: 4 input_dim: 5 } }\n'
              'layer { name: "prod" type: "Eltwise" bottom: "e" bottom: "w" top: "loss" loss_weight: 1 '
              'eltwise_param { operation: PROD } }',
              {"ids": ((2, 3), 5), "w": ((2, 3, 4), None)}),
    "BatchReindex": ('layer { name: "in" type: "Input" top: "idx" top: "w" input_param { shape { dim: 6 } '
                     'shape { dim: 6 dim: 3 } } }\n'
                     'layer { name: "p" type: "Parameter" top: "x" parameter_param { shape { dim: 4 dim: 3 } } }\n'
                     'layer { name: "l" type: "BatchReindex" bottom: "x" bottom: "idx" top: "r" }\n'
                     'layer { name: "prod" type: "Eltwise" bottom: "r" bottom: "w" top: "loss" loss_weight: 1 '
                     'eltwise_param { operation: PROD } }',
                     {"idx": ((6,), 4), "w": ((6, 3), None)}),
    "Filter": ('layer { name: "in" type: "Input" top: "sel" top: "w" input_param { shape { dim: 8 dim: 1 } '
               'shape { dim: 8 dim: 3 } } }\n'
               'layer { name: "p" type: "Parameter" top: "x" parameter_param { shape { dim: 8 dim: 3 } } }\n'
               'layer { name: "prod" type: "Eltwise" bottom: "x" bottom: "w" top: "xw" '
               'eltwise_param { operation: PROD } }\n'
               'layer { name: "l" type: "Filter" bottom: "xw" bottom: "sel" top: "loss" loss_weight: 1 }',
               {"sel": ((8, 1), 2), "w": ((8, 3), None)}),
}


@pytest.mark.caffe
@pytest.mark.parametrize("type_name", sorted(INDEX_NETS))
def test_index_layer_backward_against_real_caffe(tmp_path, type_name):
    import os

    os.environ.setdefault("GLOG_minloglevel", "2")
    from speaker.engine import try_import_pycaffe

    caffe, err = try_import_pycaffe(set())
    if caffe is None:
        pytest.skip(f"real pycaffe not built: {err}")
    import caffe_torch

    text, inputs = INDEX_NETS[type_name]
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    rng = np.random.default_rng(4)
    ours = caffe_torch.Net(str(proto), caffe_torch.TRAIN)
    for blobs in ours.params.values():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape)
    weights = tmp_path / "net.caffemodel"
    ours.save(str(weights))
    theirs = caffe.Net(str(proto), str(weights), caffe.TRAIN)
    for _ in range(2):
        # inputs: {name: (shape, ids below `high`, or None for normal values)}
        values = {k: rng.standard_normal(shape) if high is None else rng.integers(0, high, size=shape)
                  for k, (shape, high) in inputs.items()}
        for net in (ours, theirs):
            for blobs in net.params.values():
                for b in blobs:
                    b.diff[...] = 0
            for k, v in values.items():
                net.blobs[k].data[...] = v
            net.forward()
            net.backward()
        ref = theirs.blobs["loss"].data
        assert ours.blobs["loss"].data.shape == ref.shape
        assert np.abs(ours.blobs["loss"].data - ref).max() <= 1e-5 * np.abs(ref).max()
        for layer, blobs in theirs.params.items():
            for a, b in zip(ours.params[layer], blobs):
                assert np.abs(a.diff - b.diff).max() <= 1e-5 * np.abs(b.diff).max(), layer
                assert np.abs(b.diff).max() > 0, layer


# ----------------------------------------------------------------------------- the same on every device
# (type, layer text, bottoms as (shape, ids below `high` or None for normal values), number of tops)
DEVICE_CASES = [
    ("AbsVal", "", [((2, 3, 4), None)], 1),
    ("BNLL", "", [((2, 3, 4), None)], 1),
    ("Clip", "clip_param { min: -0.5 max: 0.5 }", [((2, 3, 4), None)], 1),
    ("ELU", "", [((2, 3, 4), None)], 1),
    ("Exp", "exp_param { base: 2 shift: 1 }", [((2, 3, 4), None)], 1),
    ("Log", "log_param { shift: 10 }", [((2, 3, 4), None)], 1),
    ("Power", "power_param { power: 3 scale: 0.5 shift: 1 }", [((2, 3, 4), None)], 1),
    ("Threshold", "", [((2, 3, 4), None)], 1),
    ("Swish", "swish_param { beta: 1.5 }", [((2, 3, 4), None)], 1),
    ("ArgMax", "argmax_param { top_k: 2 out_max_val: true }", [((2, 3, 4), None)], 1),
    ("BatchReindex", "", [((4, 3), None), ((5,), 4)], 1),
    ("Crop", "crop_param { offset: 1 }", [((2, 3, 5, 6), None), ((2, 3, 3, 4), None)], 1),
    ("Tile", "tile_param { tiles: 2 }", [((2, 3, 4), None)], 1),
    ("Filter", "", [((6, 3), None), ((6, 1), 2)], 1),
    ("Reduction", "reduction_param { operation: SUMSQ axis: 1 }", [((2, 3, 4), None)], 1),
    ("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", [], 1),
    ("Embed", 'embed_param { num_output: 3 input_dim: 4 weight_filler { type: "gaussian" } }', [((5,), 4)], 1),
    ("MVN", "", [((2, 3, 4, 5), None)], 1),
    ("RNN", 'recurrent_param { num_output: 3 weight_filler { type: "gaussian" } }',
     [((3, 2, 4), None), ((3, 2), 2)], 1),
    ("LSTM", 'recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" } }',
     [((3, 2, 4), None), ((3, 2), 2), ((1, 2, 3), None), ((1, 2, 3), None)], 3),
    ("LSTMUnit", "", [((1, 2, 3), None), ((1, 2, 12), None), ((1, 2), 2)], 2),
]


def run_on(device, type_name, text, bottoms, n_top):
    """Forward (twice: the recurrent layers' carry) and backward on `device`: tops, bottom and blob diffs on CPU."""
    from google.protobuf import text_format

    from caffe_torch.layers import BuildContext, layer_class
    from caffe_torch.proto import caffe_pb2

    lp = text_format.Parse(text, caffe_pb2.LayerParameter(name="l", type=type_name))
    lp.bottom.extend(f"b{i}" for i in range(len(bottoms)))
    lp.top.extend(f"t{i}" for i in range(n_top))
    ctx = BuildContext(torch.float64, torch.device(device), caffe_pb2.TRAIN, torch.Generator().manual_seed(0))
    layer = layer_class(type_name)(lp, [shape for shape, _ in bottoms], ctx)
    g = torch.Generator().manual_seed(1)
    results = []
    for _ in range(2):
        xs = [(torch.randn(shape, generator=g, dtype=torch.float64) if high is None
               else torch.randint(0, high, shape, generator=g).to(torch.float64)).to(device).requires_grad_(True)
              for shape, high in bottoms]
        outs = layer(*xs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        results += [o.detach().cpu() for o in outs]
        live = [o for o in outs if o.requires_grad and type_name not in ("Threshold", "ArgMax")]
        if live:
            seeds = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(device) for o in live]
            wrt = xs + list(layer.blobs)
            got = torch.autograd.grad(live, wrt, seeds, allow_unused=True)
            results += [torch.zeros(0) if d is None else d.cpu() for d in got]
    return results


@pytest.mark.parametrize("case", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_device_harness_runs_on_cpu(case):
    """The harness of the CUDA test below, run on the CPU (so it is known to work where no GPU is)."""
    a, b = run_on("cpu", *case), run_on("cpu", *case)
    assert len(a) >= 2 and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_on_cuda_matches_cpu(case):
    cpu, cuda = run_on("cpu", *case), run_on("cuda", *case)
    assert len(cpu) == len(cuda)
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
