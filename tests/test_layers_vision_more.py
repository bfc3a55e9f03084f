"""LRN, Deconvolution, Im2col, N-D / axis Convolution, MAX pooling's mask top, STOCHASTIC pooling and SPP
against loop-by-loop NumPy references of Caffe's semantics, and gradcheck where the backward is the derivative."""

import itertools

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from test_layers_vision import FLT_MAX, gradcheck_layer, make, np_pool

from caffe_torch.proto import caffe_pb2

FLT_MIN = float(np.finfo(np.float32).tiny)


def randn(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- LRN

def np_lrn_across(x, size, alpha, beta, k):
    """LRNLayer::CrossChannelForward: scale = k + alpha / size * (sum of x^2 over the channels c - (size-1)/2 ..
    c + (size-1)/2 that exist); y = x * scale^-beta. Also Caffe's CrossChannelBackward for a top diff."""
    n, c, h, w = x.shape
    half = (size - 1) // 2
    scale = np.full_like(x, k)
    for ci in range(c):
        for cj in range(max(0, ci - half), min(c, ci + half + 1)):
            scale[:, ci] += alpha / size * x[:, cj] ** 2
    return x * scale ** -beta, scale


def np_lrn_across_backward(x, y, scale, dy, size, alpha, beta):
    """bottom_diff = dy * scale^-beta - 2 alpha beta / size * x * sum over the channels c' whose window holds
    c of dy[c'] * y[c'] / scale[c'] (CrossChannelBackward_cpu written as a sum)."""
    c = x.shape[1]
    half = (size - 1) // 2
    ratio = dy * y / scale
    dx = dy * scale ** -beta
    for ci in range(c):
        acc = np.zeros_like(x[:, 0])
        for cj in range(max(0, ci - half), min(c, ci + half + 1)):
            acc += ratio[:, cj]
        dx[:, ci] -= 2 * alpha * beta / size * x[:, ci] * acc
    return dx


def np_lrn_within(x, size, alpha, beta):
    """WITHIN_CHANNEL: 1 + alpha * AVE-pool of x^2 (size x size, pad (size-1)/2, stride 1: always / size^2)."""
    n, c, h, w = x.shape
    half = (size - 1) // 2
    scale = np.ones_like(x)
    for i in range(h):
        for j in range(w):
            win = x[:, :, max(0, i - half): i + half + 1, max(0, j - half): j + half + 1]
            scale[:, :, i, j] += alpha / size ** 2 * (win ** 2).sum(axis=(2, 3))
    return x * scale ** -beta


LRN_ACROSS = [("", 5, 1.0, 0.75, 1.0), ("lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }", 3, 0.5, 0.6, 2.0),
              ("lrn_param { local_size: 9 alpha: 0.1 }", 9, 0.1, 0.75, 1.0)]   # 9 > C: the window is clipped


@pytest.mark.parametrize("text,size,alpha,beta,k", LRN_ACROSS)
def test_lrn_across_channels_forward_and_caffe_backward(text, size, alpha, beta, k):
    alpha, beta, k = (float(np.float32(v)) for v in (alpha, beta, k))     # proto floats
    x = randn(2, 6, 3, 4).requires_grad_(True)
    layer = make("LRN", text, [x.shape])
    y = layer(x)
    ref, scale = np_lrn_across(x.detach().numpy(), size, alpha, beta, k)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    dy = randn(2, 6, 3, 4, seed=1)
    y.backward(dy)
    want = np_lrn_across_backward(x.detach().numpy(), ref, scale, dy.numpy(), size, alpha, beta)
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size,alpha,beta", [(3, 2.0, 0.75), (5, 1.0, 0.5)])
def test_lrn_within_channel_forward(size, alpha, beta):
    alpha, beta = float(np.float32(alpha)), float(np.float32(beta))
    x = randn(2, 3, 4, 6)
    # k is not used WITHIN_CHANNEL (Caffe's Power layer shifts by 1)
    layer = make("LRN", f"lrn_param {{ norm_region: WITHIN_CHANNEL local_size: {size} alpha: {alpha} beta: {beta} "
                 "k: 7 }", [x.shape])
    np.testing.assert_allclose(layer(x).numpy(), np_lrn_within(x.numpy(), size, alpha, beta), rtol=1e-12)


@pytest.mark.parametrize("text", ["lrn_param { local_size: 3 alpha: 0.5 k: 2 }",
                                  "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 2 }"])
def test_lrn_gradcheck(text):
    gradcheck_layer(make("LRN", text, [(2, 4, 3, 3)]), [randn(2, 4, 3, 3)])


def test_lrn_errors():
    with pytest.raises(Exception, match="odd"):
        make("LRN", "lrn_param { local_size: 4 }", [(1, 3, 4, 4)])
    with pytest.raises(Exception, match="4-D"):
        make("LRN", "", [(2, 3)])


# ----------------------------------------------------------------------------- convolution family

def np_conv_nd(x, w, b, stride, pad, dil, group):
    """Caffe's convolution on (N, C, *spatial), any number of spatial axes, loop by loop."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, k, st, p, d in zip(spatial, kernel, stride, pad, dil)]
    y = np.zeros((n, o, *out))
    per_group = o // group
    for oc in range(o):
        g = oc // per_group
        for pos in itertools.product(*(range(v) for v in out)):
            acc = np.zeros(n)
            for ci in range(cg):
                for off in itertools.product(*(range(k) for k in kernel)):
                    src = [q * st - p + f * d for q, st, p, f, d in zip(pos, stride, pad, off, dil)]
                    if all(0 <= s_ < size for s_, size in zip(src, spatial)):
                        acc += x[(slice(None), g * cg + ci, *src)] * w[(oc, ci, *off)]
            y[(slice(None), oc, *pos)] = acc + (b[oc] if b is not None else 0)
    return y


def np_deconv_nd(x, w, b, stride, pad, dil, group):
    """Caffe's deconvolution: every input value scatters value * kernel into the output (the transpose of
    convolution), output size stride (in - 1) + dilation (k - 1) + 1 - 2 pad."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    cw, og = w.shape[:2]
    kernel = w.shape[2:]
    out = [st * (s - 1) + d * (k - 1) + 1 - 2 * p for s, k, st, p, d in zip(spatial, kernel, stride, pad, dil)]
    y = np.zeros((n, og * group, *out))
    per_group = c // group
    for ci in range(c):
        g = ci // per_group
        for pos in itertools.product(*(range(v) for v in spatial)):
            for oc in range(og):
                for off in itertools.product(*(range(k) for k in kernel)):
                    dst = [q * st - p + f * d for q, st, p, f, d in zip(pos, stride, pad, off, dil)]
                    if all(0 <= s_ < size for s_, size in zip(dst, out)):
                        y[(slice(None), g * og + oc, *dst)] += x[(slice(None), ci, *pos)] * w[(ci, oc, *off)]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out))
    return y


FILL = ' weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } '

DECONV_CASES = [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 4, 3, 4)),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 group: 2 dilation: 2", (1, 6, 3, 4)),
    ("num_output: 2 kernel_size: 2 stride: 2 bias_term: false", (2, 3, 2, 3, 2)),        # 3-D
    ("num_output: 2 kernel_size: 3 stride: 3 pad: 1", (2, 3, 5)),                          # 1-D
]


@pytest.mark.parametrize("text,shape", DECONV_CASES)
def test_deconvolution_forward_matches_loops(text, shape):
    layer = make("Deconvolution", f"convolution_param {{ {text} {FILL} }}", [shape])
    x = randn(*shape, seed=3)
    y = layer(x)[0]
    b = layer.blobs[1].detach().numpy() if layer.bias_term else None
    ref = np_deconv_nd(x.numpy(), layer.blobs[0].detach().numpy(), b, layer.stride, layer.pad, layer.dilation,
                       layer.group)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-10, atol=1e-10)


def test_deconvolution_blob_shape_and_gradcheck():
    layer = make("Deconvolution", f"convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 group: 2 {FILL} }}",
                 [(2, 6, 3, 3)])
    assert tuple(layer.blobs[0].shape) == (6, 2, 3, 3)             # (C_in, num_output / group, kh, kw)
    gradcheck_layer(layer, [randn(2, 6, 3, 3)])


CONV_ND_CASES = [
    ("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 4, 9)),                                   # 1-D
    ("num_output: 3 kernel_size: 2 kernel_size: 3 kernel_size: 1 stride: 1 stride: 2 stride: 1 pad: 1 "
     "dilation: 1 dilation: 1 dilation: 2 group: 1", (2, 2, 4, 5, 6)),                               # 3-D
    ("num_output: 4 kernel_size: 2 group: 2", (1, 4, 3, 3, 3)),                                      # 3-D group
]


@pytest.mark.parametrize("text,shape", CONV_ND_CASES)
def test_convolution_nd_forward_matches_loops(text, shape):
    layer = make("Convolution", f"convolution_param {{ {text} {FILL} }}", [shape])
    x = randn(*shape, seed=4)
    y = layer(x)[0]
    ref = np_conv_nd(x.numpy(), layer.blobs[0].detach().numpy(), layer.blobs[1].detach().numpy(), layer.stride,
                     layer.pad, layer.dilation, layer.group)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-10, atol=1e-10)


def test_convolution_axis2_treats_leading_axes_as_batch():
    shape = (2, 3, 4, 5, 6)                        # axis 2: 4 channels, 5 x 6 images, 2 x 3 "batch"
    layer = make("Convolution", f"convolution_param {{ num_output: 3 kernel_size: 2 axis: 2 {FILL} }}", [shape])
    x = randn(*shape, seed=5)
    y = layer(x)[0]
    ref = np_conv_nd(x.numpy().reshape(6, 4, 5, 6), layer.blobs[0].detach().numpy(),
                     layer.blobs[1].detach().numpy(), (1, 1), (0, 0), (1, 1), 1)
    assert tuple(y.shape) == (2, 3, 3, 4, 5) == layer.top_shapes([shape])[0]
    np.testing.assert_allclose(y.detach().numpy(), ref.reshape(2, 3, 3, 4, 5), rtol=1e-10, atol=1e-10)


def test_convolution_3d_gradcheck():
    layer = make("Convolution", f"convolution_param {{ num_output: 2 kernel_size: 2 stride: 2 pad: 1 {FILL} }}",
                 [(1, 2, 3, 3, 2)])
    gradcheck_layer(layer, [randn(1, 2, 3, 3, 2)])


def test_convolution_geometry_errors():
    with pytest.raises(Exception, match="once per spatial axis"):
        make("Convolution", "convolution_param { num_output: 2 kernel_size: 2 kernel_size: 3 }", [(1, 2, 4, 4, 4)])
    with pytest.raises(Exception, match="2-D"):
        make("Convolution", "convolution_param { num_output: 2 kernel_h: 2 kernel_w: 2 }", [(1, 2, 4, 4, 4)])
    with pytest.raises(Exception, match="must be set"):
        make("Convolution", "convolution_param { num_output: 2 }", [(1, 2, 4, 4)])


ND4_CASES = [("num_output: 4 kernel_size: 2 stride: 1 stride: 2 stride: 1 stride: 1 pad: 1 group: 2",
              (2, 4, 2, 3, 3, 2)),
             ("num_output: 3 kernel_size: 2 dilation: 1 dilation: 1 dilation: 2 dilation: 1 bias_term: false",
              (1, 2, 3, 2, 4, 3))]


@pytest.mark.parametrize("type_name", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("text,shape", ND4_CASES)
def test_four_spatial_axes_match_loops_and_gradcheck(type_name, text, shape):
    """Beyond 3 spatial axes caffe_torch uses Caffe's im2col / col2im with a matrix product."""
    layer = make(type_name, f"convolution_param {{ {text} {FILL} }}", [shape])
    x = randn(*shape, seed=20)
    y = layer(x)[0]
    b = layer.blobs[1].detach().numpy() if layer.bias_term else None
    ref_fn = np_deconv_nd if type_name == "Deconvolution" else np_conv_nd
    ref = ref_fn(x.numpy(), layer.blobs[0].detach().numpy(), b, layer.stride, layer.pad, layer.dilation, layer.group)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-10, atol=1e-10)
    small = make(type_name, f"convolution_param {{ num_output: 2 kernel_size: 2 stride: 2 pad: 1 group: 2 {FILL} }}",
                 [(1, 2, 2, 2, 2, 3)])
    gradcheck_layer(small, [randn(1, 2, 2, 2, 2, 3)])


@pytest.mark.parametrize("type_name", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("shape", [(2, 4, 5, 6), (1, 4, 3, 4, 3)])
def test_im2col_path_agrees_with_torch_conv(type_name, shape):
    """The >3-axis path run on 2-D and 3-D inputs gives what torch's conv ops give."""
    layer = make(type_name, f"convolution_param {{ num_output: 6 kernel_size: 3 stride: 2 pad: 1 dilation: 1 "
                 f"group: 2 {FILL} }}", [shape])
    x = randn(*shape, seed=21)
    torch.testing.assert_close(layer._forward_nd(x, layer.blobs[1]), layer(x)[0], rtol=1e-12, atol=1e-12)


def np_im2col(x, kernel, stride, pad, dil):
    """Caffe's im2col_nd: row c * prod(kernel) + (row-major kernel offset), one column per output position;
    out-of-image reads are 0."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, k, st, p, d in zip(spatial, kernel, stride, pad, dil)]
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    y = np.zeros((n, c * len(offsets), *out))
    for ci in range(c):
        for r, off in enumerate(offsets):
            for pos in itertools.product(*(range(v) for v in out)):
                src = [q * st - p + f * d for q, st, p, f, d in zip(pos, stride, pad, off, dil)]
                if all(0 <= s_ < size for s_, size in zip(src, spatial)):
                    y[(slice(None), ci * len(offsets) + r, *pos)] = x[(slice(None), ci, *src)]
    return y


IM2COL_CASES = [
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 6, 7), (3, 3), (2, 2), (1, 1), (1, 1)),
    ("kernel_h: 2 kernel_w: 3 dilation: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2", (1, 2, 6, 9), (2, 3), (1, 2),
     (1, 0), (2, 2)),
    ("kernel_size: 2 pad: 1", (1, 2, 3, 4, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("text,shape,kernel,stride,pad,dil", IM2COL_CASES)
def test_im2col_matches_loops(text, shape, kernel, stride, pad, dil):
    layer = make("Im2col", f"convolution_param {{ {text} }}", [shape])
    x = randn(*shape, seed=6)
    y = layer(x)
    ref = np_im2col(x.numpy(), kernel, stride, pad, dil)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_array_equal(y.numpy(), ref)


def test_im2col_gradcheck_and_conv_identity():
    """Convolution = weights (O, C k k) times im2col's columns; gradcheck of im2col itself."""
    x = randn(2, 3, 5, 5, seed=7)
    cols = make("Im2col", "convolution_param { kernel_size: 3 stride: 2 pad: 1 }", [x.shape])(x)
    conv = make("Convolution", f"convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 pad: 1 "
                f"bias_term: false {FILL} }}", [x.shape])
    via_cols = torch.einsum("ok,nkhw->nohw", conv.blobs[0].detach().reshape(4, -1), cols)
    torch.testing.assert_close(via_cols, conv(x)[0].detach())
    gradcheck_layer(make("Im2col", "convolution_param { kernel_size: 2 stride: 1 pad: 1 dilation: 2 }",
                         [(1, 2, 4, 4)]), [randn(1, 2, 4, 4)])


# ----------------------------------------------------------------------------- pooling: mask top, STOCHASTIC

def np_max_pool_mask(x, k, s, p):
    """PoolingLayer MAX Forward_cpu's mask: h * W + w of the first strict maximum of the window clipped to the
    image; -1 where the window holds no image element."""
    n, c, h, w = x.shape
    y = np_pool(x, k, s, p, "MAX")
    mask = np.full(y.shape, -1.0)
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h), min(ws + k[1], w)
            hs, ws = max(hs, 0), max(ws, 0)
            best = np.full((n, c), -FLT_MAX)
            for hh in range(hs, he):
                for ww in range(ws, we):
                    better = x[:, :, hh, ww] > best
                    best = np.where(better, x[:, :, hh, ww], best)
                    mask[:, :, i, j] = np.where(better, hh * w + ww, mask[:, :, i, j])
    return y, mask


MASK_CASES = [
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 7, 8), "normal"),
    ("kernel_size: 2 stride: 2", (2, 2, 5, 5), "int"),                           # ties: the first maximum
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 1", (1, 2, 5, 4), "int"),
    ("kernel_size: 1 stride: 3", (1, 1, 5, 5), "normal"),                      # an empty last window: -1
    ("global_pooling: true", (2, 3, 4, 5), "int"),
]


@pytest.mark.parametrize("text,shape,kind", MASK_CASES)
def test_max_pooling_mask_top(text, shape, kind):
    layer = make("Pooling", f'top: "y" top: "mask" pooling_param {{ pool: MAX {text} }}', [shape])
    g = torch.Generator().manual_seed(8)
    x = (torch.randint(-2, 3, shape, generator=g).to(torch.float64) if kind == "int" else randn(*shape, seed=8))
    x.requires_grad_(True)
    y, mask = layer(x)
    k, s, p = layer._geometry(shape)
    ref_y, ref_mask = np_max_pool_mask(x.detach().numpy(), k, s, p)
    assert [tuple(t.shape) for t in (y, mask)] == layer.top_shapes([shape]) == [ref_y.shape] * 2
    np.testing.assert_array_equal(y.detach().numpy(), ref_y)
    np.testing.assert_array_equal(mask.numpy(), ref_mask)
    assert not mask.requires_grad
    # the gradient goes to the element the mask names
    dy = randn(*y.shape, seed=9)
    y.backward(dy)
    want = np.zeros(shape)
    flat = want.reshape(shape[0], shape[1], -1)
    for idx in itertools.product(*(range(v) for v in y.shape)):
        if ref_mask[idx] >= 0:
            flat[idx[0], idx[1], int(ref_mask[idx])] += dy[idx]
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12)


def test_mask_top_only_for_max():
    with pytest.raises(Exception, match="mask"):
        make("Pooling", 'top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }', [(1, 1, 4, 4)])


def np_stochastic_train(x, k, s, u):
    """StoPoolForwardTrain: in the window clipped to the image, the first element (row-major) whose running
    sum reaches u * (window sum); returns the values and the picked flat indices h * W + w."""
    n, c, h, w = x.shape
    oh, ow = u.shape[2:]
    y, picked = np.zeros(u.shape), np.zeros(u.shape, dtype=int)
    for a, b, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        hs, ws = i * s[0], j * s[1]
        cells = [(hh, ww) for hh in range(hs, min(hs + k[0], h)) for ww in range(ws, min(ws + k[1], w))]
        thres = u[a, b, i, j] * sum(x[a, b, hh, ww] for hh, ww in cells)
        running = 0.0
        for hh, ww in cells:
            running += x[a, b, hh, ww]
            if running >= thres:
                y[a, b, i, j], picked[a, b, i, j] = x[a, b, hh, ww], hh * w + ww
                break
    return y, picked


@pytest.mark.parametrize("text,shape", [("kernel_size: 3 stride: 2", (2, 3, 7, 8)),
                                        ("kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 2", (1, 2, 5, 6)),
                                        ("global_pooling: true", (2, 2, 3, 4))])
def test_stochastic_pooling_train_with_a_fixed_draw(text, shape):
    """TRAIN against the reference with the same uniform draw: the generator's first draw of N x C x oh x ow
    values in float64 on the CPU; the gradient goes to the picked element only (Caffe's StoPoolBackward)."""
    layer = make("Pooling", f"pooling_param {{ pool: STOCHASTIC {text} }}", [shape], seed=11)
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(12)).requires_grad_(True)
    y = layer(x)
    oh, ow = y.shape[2:]
    u = torch.rand((shape[0], shape[1], 1, oh * ow), generator=torch.Generator().manual_seed(11),
                   dtype=torch.float64).reshape(shape[0], shape[1], oh, ow).numpy()
    k, s, _ = layer._geometry(shape)
    ref, picked = np_stochastic_train(x.detach().numpy(), k, s, u)
    assert tuple(y.shape) == layer.top_shapes([shape])[0]
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    dy = randn(*y.shape, seed=13)
    y.backward(dy)
    want = np.zeros(shape)
    flat = want.reshape(shape[0], shape[1], -1)
    for idx in itertools.product(*(range(v) for v in y.shape)):
        flat[idx[0], idx[1], picked[idx]] += dy[idx]
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12)


def test_stochastic_pooling_train_picks_in_proportion_to_the_values():
    """Each element of a non-negative window is picked with probability value / window sum."""
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    x = values.repeat(1, 1, 1, 4000)                       # 4000 windows of 2 x 2 side by side
    layer = make("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }", [x.shape], seed=14)
    y = layer(x).flatten()
    freq = torch.stack([(y == v).double().mean() for v in (1.0, 2.0, 3.0, 4.0)])
    # 4000 draws: a binomial standard error of at most 0.008; 5 of them
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.04), freq
    assert abs(float(freq.sum()) - 1.0) < 1e-12          # every pick is one of the four values
    # another forward draws again
    assert not torch.equal(layer(x).flatten(), y)


def test_stochastic_pooling_test_phase():
    """TEST: sum(x^2) / (FLT_MIN + sum(x)) over each window clipped to the image (StoPoolForwardTest)."""
    shape = (2, 2, 7, 6)
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    x[0, 0, :3, :3] = 0                                       # an all-zero window: 0 / FLT_MIN = 0
    layer = make("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }", [shape],
                 phase=caffe_pb2.TEST)
    y = layer(x).numpy()
    xn = x.numpy()
    assert y.shape == (2, 2, 3, 3)
    for a, b, i, j in itertools.product(range(2), range(2), range(3), range(3)):
        win = xn[a, b, i * 2: i * 2 + 3, j * 2: j * 2 + 3]
        np.testing.assert_allclose(y[a, b, i, j], (win ** 2).sum() / (FLT_MIN + win.sum()), rtol=1e-12)
    assert y[0, 0, 0, 0] == 0
    # the TEST gradient is the derivative of that formula
    gradcheck_layer(layer, [x[:1, :1, :5, :5] + 0.1])


def test_stochastic_pooling_refuses_padding():
    with pytest.raises(Exception, match="padding"):
        make("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }", [(1, 1, 5, 5)])


def test_stochastic_pooling_draws_from_the_layer_generator():
    """The same seed gives the same picks (the draw is on the CPU generator, whatever the device)."""
    x = torch.rand((2, 3, 6, 6), dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    text = "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }"
    a = make("Pooling", text, [x.shape], seed=17)(x)
    b = make("Pooling", text, [x.shape], seed=17)(x)
    c = make("Pooling", text, [x.shape], seed=18)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- SPP

def np_spp(x, height, method):
    n, c, h, w = x.shape
    levels = []
    for level in range(height):
        bins = 2 ** level
        k = (-(-h // bins), -(-w // bins))
        p = ((k[0] * bins - h + 1) // 2, (k[1] * bins - w + 1) // 2)
        levels.append(np_pool(x, k, k, p, method))
    if height == 1:
        return levels[0]
    return np.concatenate([v.reshape(n, -1) for v in levels], axis=1)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("height,shape", [(1, (2, 3, 5, 4)), (2, (2, 3, 5, 4)), (3, (1, 2, 9, 10)),
                                          (3, (2, 2, 8, 8))])
def test_spp_matches_pooling_reference(method, height, shape):
    layer = make("SPP", f"spp_param {{ pyramid_height: {height} pool: {method} }}", [shape])
    x = randn(*shape, seed=19)
    y = layer(x)
    ref = np_spp(x.numpy(), height, method)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12)


def test_spp_follows_reshape_and_gradcheck():
    layer = make("SPP", "spp_param { pyramid_height: 2 pool: AVE }", [(1, 2, 6, 6)])
    assert layer.top_shapes([(1, 2, 6, 6)]) == [(1, 10)]
    assert layer.top_shapes([(3, 2, 5, 7)]) == [(3, 10)]
    np.testing.assert_allclose(layer(randn(3, 2, 5, 7)).numpy(), np_spp(randn(3, 2, 5, 7).numpy(), 2, "AVE"))
    gradcheck_layer(layer, [randn(1, 2, 5, 7)])


def test_spp_errors():
    with pytest.raises(Exception, match="pyramid_height"):
        make("SPP", "", [(1, 2, 6, 6)])
    # 3 x 3 at level 2: 4 bins of kernel 1 need pad 1, not smaller than the kernel (Caffe's CHECK too)
    with pytest.raises(Exception, match="smaller than the kernel"):
        make("SPP", "spp_param { pyramid_height: 3 }", [(1, 2, 3, 3)])


# ----------------------------------------------------------------------------- device

CUDA_CASES = [
    ("LRN", "", [(2, 6, 3, 4)]),
    ("LRN", "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 }", [(2, 3, 4, 4)]),
    ("Deconvolution", f"convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 group: 2 {FILL} }}",
     [(2, 4, 3, 3)]),
    ("Convolution", f"convolution_param {{ num_output: 2 kernel_size: 2 {FILL} }}", [(1, 2, 3, 4, 3)]),
    ("Im2col", "convolution_param { kernel_size: 3 pad: 1 stride: 2 }", [(2, 3, 5, 5)]),
    ("Pooling", 'top: "y" top: "mask" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', [(2, 3, 7, 7)]),
    ("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }", [(2, 3, 7, 7)]),
    ("SPP", "spp_param { pyramid_height: 3 pool: AVE }", [(2, 3, 8, 9)]),
    ("EuclideanLoss", "", [(4, 3), (4, 3)]),
    ("ContrastiveLoss", "", [(6, 3, 1, 1), (6, 3, 1, 1), (6, 1, 1, 1)]),
    ("HingeLoss", "hinge_loss_param { norm: L2 }", [(6, 5), (6,)]),
    ("MultinomialLogisticLoss", "", [(6, 5), (6,)]),
    ("InfogainLoss", "", [(6, 4), (6,), (1, 1, 4, 4)]),
    ("SigmoidCrossEntropyLoss", "loss_param { ignore_label: 0 normalization: VALID }", [(4, 5), (4, 5)]),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("type_name,text,shapes", CUDA_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CUDA_CASES)])
def test_layer_on_cuda_matches_cpu(type_name, text, shapes):
    """The same layer (same seed: same weights, same STOCHASTIC draw) on CUDA and on the CPU: every top and the
    gradients of the first bottom and of the learnable blobs. Bottoms are non-negative (probabilities, pooled
    values) and any label is a class id."""
    from caffe_torch.layers import BuildContext, layer_class

    results = []
    for dev in ("cpu", "cuda"):
        lp = caffe_pb2.LayerParameter()
        text_format.Parse(text, lp)
        lp.name, lp.type = "l", type_name
        lp.bottom.extend([f"b{i}" for i in range(len(shapes))])
        if not lp.top:
            lp.top.append("t")
        ctx = BuildContext(torch.float64, torch.device(dev), caffe_pb2.TRAIN, torch.Generator().manual_seed(0))
        layer = layer_class(type_name)(lp, shapes, ctx)
        g = torch.Generator().manual_seed(1)
        xs = [torch.rand(s, dtype=torch.float64, generator=g) for s in shapes]
        if len(shapes) > 1 and "Loss" in type_name and type_name not in ("EuclideanLoss", "SigmoidCrossEntropyLoss"):
            label_at = 2 if type_name == "ContrastiveLoss" else 1
            classes = 2 if type_name == "ContrastiveLoss" else int(np.prod(shapes[0][1:]))
            xs[label_at] = torch.randint(0, classes, shapes[label_at], generator=g).to(torch.float64)
        xs = [x.to(dev) for x in xs]
        xs[0].requires_grad_(True)
        out = layer(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        outs[0].backward(torch.ones_like(outs[0]))
        results.append([o.detach().cpu().numpy() for o in outs] + [xs[0].grad.cpu().numpy()]
                       + [b.grad.cpu().numpy() for b in layer.blobs if b.grad is not None])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
