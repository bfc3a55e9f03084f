"""Convolution and Pooling against explicit-loop NumPy references of Caffe's semantics, and gradcheck."""

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.func import functional_call

from caffe_torch.layers import BuildContext, layer_class
from caffe_torch.layers.vision import pooled_size
from caffe_torch.proto import caffe_pb2

FLT_MAX = np.finfo(np.float32).max


def make(type_name, text, bottom_shapes, phase=caffe_pb2.TRAIN, seed=0):
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    lp.name = lp.name or "l"
    lp.type = type_name
    if not lp.bottom:
        lp.bottom.extend([f"b{i}" for i in range(len(bottom_shapes))])
    if not lp.top:
        lp.top.append("t")
    ctx = BuildContext(torch.float64, torch.device("cpu"), phase, torch.Generator().manual_seed(seed))
    return layer_class(type_name)(lp, [tuple(s) for s in bottom_shapes], ctx)


def gradcheck_layer(layer, inputs):
    """gradcheck w.r.t. every input and every learnable blob of `layer` (float64)."""
    names = [f"blobs.{i}" for i, p in enumerate(layer.blobs) if p.requires_grad]
    params = [layer.blobs[int(n.split(".")[1])].detach().clone().requires_grad_(True) for n in names]
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    n_in = len(inputs)

    def f(*args):
        out = functional_call(layer, dict(zip(names, args[n_in:])), tuple(args[:n_in]))
        return out

    assert torch.autograd.gradcheck(f, tuple(inputs + params), eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- references

def np_conv(x, w, b, stride, pad, dil, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, o, oh, ow))
    per_group = o // group
    for oc in range(o):
        g = oc // per_group
        for i in range(oh):
            for j in range(ow):
                acc = np.zeros(n)
                for ci in range(cg):
                    for a in range(kh):
                        for bb in range(kw):
                            hh = i * stride[0] - pad[0] + a * dil[0]
                            ww = j * stride[1] - pad[1] + bb * dil[1]
                            if 0 <= hh < h and 0 <= ww < wd:
                                acc += x[:, g * cg + ci, hh, ww] * w[oc, ci, a, bb]
                y[:, oc, i, j] = acc + (b[oc] if b is not None else 0)
    return y


def np_pool_size(size, k, s, p, any_pad):
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1
    return out


def np_pool(x, k, s, p, method):
    """Caffe's PoolingLayer::Forward_cpu, loop for loop."""
    n, c, h, w = x.shape
    any_pad = p[0] > 0 or p[1] > 0
    ph, pw = np_pool_size(h, k[0], s[0], p[0], any_pad), np_pool_size(w, k[1], s[1], p[1], any_pad)
    y = np.zeros((n, c, ph, pw))
    for i in range(ph):
        for j in range(pw):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            if method == "MAX":
                he, we = min(hs + k[0], h), min(ws + k[1], w)
                hs, ws = max(hs, 0), max(ws, 0)
                best = np.full((n, c), -FLT_MAX)
                for hh in range(hs, he):
                    for ww in range(ws, we):
                        best = np.where(x[:, :, hh, ww] > best, x[:, :, hh, ww], best)
                y[:, :, i, j] = best
            else:
                he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                total = np.zeros((n, c))
                for hh in range(hs, he):
                    for ww in range(ws, we):
                        total += x[:, :, hh, ww]
                y[:, :, i, j] = total / size
    return y


# ----------------------------------------------------------------------------- convolution

CONV_CASES = [
    # (text, input shape)
    ("convolution_param { num_output: 4 kernel_size: 3 }", (3, 5, 7, 11)),
    ("convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 }", (3, 4, 7, 11)),
    ("convolution_param { num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 2 pad_w: 1 }",
     (2, 5, 7, 11)),
    ("convolution_param { num_output: 4 kernel_size: 3 dilation: 2 pad: 1 stride: 3 bias_term: false }",
     (2, 3, 9, 11)),
    ("convolution_param { num_output: 2 kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 0 pad: 1 }",
     (1, 3, 5, 7)),
]


@pytest.mark.parametrize("text,shape", CONV_CASES)
def test_convolution_forward_matches_loops(text, shape):
    fill = ' weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } '
    text = text.rstrip()[:-1] + fill + "}"
    layer = make("Convolution", text, [shape])
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = layer(x)[0]
    b = layer.blobs[1].detach().numpy() if layer.bias_term else None
    ref = np_conv(x.numpy(), layer.blobs[0].detach().numpy(), b, layer.stride, layer.pad, layer.dilation,
                  layer.group)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-10, atol=1e-10)


def test_convolution_blob_shapes_and_errors():
    layer = make("Convolution", "convolution_param { num_output: 6 kernel_size: 3 group: 2 }", [(1, 4, 5, 5)])
    assert tuple(layer.blobs[0].shape) == (6, 2, 3, 3) and tuple(layer.blobs[1].shape) == (6,)
    with pytest.raises(Exception, match="group"):
        make("Convolution", "convolution_param { num_output: 5 kernel_size: 3 group: 2 }", [(1, 4, 5, 5)])
    with pytest.raises(Exception, match="incompatible"):
        layer.top_shapes([(1, 3, 5, 5)])


def test_convolution_two_bottoms_share_weights():
    layer = make("Convolution", 'name: "c" top: "t1" top: "t2" '
                 'convolution_param { num_output: 2 kernel_size: 1 '
                 'weight_filler { type: "gaussian" } }', [(2, 3, 4, 5), (2, 3, 4, 5)])
    a, b = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    ya, yb = layer(a, b)
    torch.testing.assert_close(ya, layer(a, a)[0])
    torch.testing.assert_close(yb, layer(b, b)[0])


@pytest.mark.parametrize("text,shape", [CONV_CASES[1], CONV_CASES[3]])
def test_convolution_gradcheck(text, shape):
    text = text.rstrip()[:-1] + ' weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
    layer = make("Convolution", text, [(2, *shape[1:3], 5)])
    gradcheck_layer(layer, [torch.randn(2, *shape[1:3], 5, dtype=torch.float64)])


# ----------------------------------------------------------------------------- pooling

POOL_CASES = [
    # text, shape, expected (H_out, W_out) (hand-computed from Caffe's rule)
    ("kernel_size: 3 stride: 2", (2, 3, 8, 11), (4, 5)),               # ceil: floor would give 3 x 5
    ("kernel_size: 2 stride: 2 pad: 1", (2, 3, 5, 7), (3, 4)),          # ceil 4, last window in padding
    ("kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0", (1, 2, 6, 5), (4, 2)),   # pad_h trims W
    ("kernel_size: 3 stride: 2 pad: 2", (2, 2, 7, 9), (5, 6)),          # pad > kernel / 2 (Caffe allows)
    ("kernel_size: 3 stride: 3 pad: 1", (3, 5, 7, 11), (3, 4)),         # W: ceil 5, minus one
    ("kernel_h: 19 kernel_w: 1", (2, 3, 19, 5), (1, 5)),                # the paper's time-average pool
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("text,shape,expected", POOL_CASES)
def test_pooling_forward_matches_loops(method, text, shape, expected):
    layer = make("Pooling", f"pooling_param {{ pool: {method} {text} }}", [shape])
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = layer(x)
    k, s, p = layer._geometry(shape)
    ref = np_pool(x.numpy(), k, s, p, method)
    assert ref.shape[2:] == expected
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_pooling_size_rule_examples():
    assert pooled_size(8, 3, 2, 0) == 4          # ceil((8 - 3) / 2) + 1
    assert pooled_size(5, 2, 2, 1) == 3          # 4, minus the window starting at 6 >= 5 + 1
    assert pooled_size(5, 1, 3, 0) == 3          # no pad: no correction (an empty last window)
    assert pooled_size(5, 1, 3, 0, any_pad=True) == 2


def test_max_pooling_empty_window_gives_minus_flt_max():
    # stride > kernel and no pad: Caffe's last window lies outside the image and keeps its -FLT_MAX
    layer = make("Pooling", "pooling_param { pool: MAX kernel_size: 1 stride: 3 }", [(1, 1, 5, 5)])
    y = layer(torch.randn(1, 1, 5, 5, dtype=torch.float64))
    assert tuple(y.shape) == (1, 1, 3, 3)
    assert float(y[0, 0, 2, 2]) == -FLT_MAX


def test_global_pooling():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    ave = make("Pooling", "pooling_param { pool: AVE global_pooling: true }", [x.shape])
    mx = make("Pooling", "pooling_param { pool: MAX global_pooling: true }", [x.shape])
    np.testing.assert_allclose(ave(x).numpy()[:, :, 0, 0], x.numpy().mean(axis=(2, 3)))
    np.testing.assert_allclose(mx(x).numpy()[:, :, 0, 0], x.numpy().max(axis=(2, 3)))


def test_pooling_errors():
    with pytest.raises(Exception, match="smaller than the kernel"):
        make("Pooling", "pooling_param { kernel_size: 2 pad: 2 }", [(1, 1, 5, 5)])
    with pytest.raises(Exception, match="global_pooling"):
        make("Pooling", "pooling_param { kernel_size: 2 global_pooling: true }", [(1, 1, 5, 5)])


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("text", [POOL_CASES[1][0], POOL_CASES[2][0], POOL_CASES[3][0]])
def test_pooling_gradcheck(method, text):
    shape = (1, 2, 7, 6)
    layer = make("Pooling", f"pooling_param {{ pool: {method} {text} }}", [shape])
    # distinct values, so that no MAX window has a tie that finite differences would straddle
    x = torch.randperm(84, generator=torch.Generator().manual_seed(3)).to(torch.float64).reshape(shape) / 10
    gradcheck_layer(layer, [x])


def test_max_pooling_gradient_goes_to_first_maximum():
    layer = make("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", [(1, 1, 2, 2)])
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
