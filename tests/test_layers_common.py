"""InnerProduct, Eltwise, Scale, Bias, BatchNorm, Dropout, Split, Silence, activations and shape layers
against NumPy references of Caffe's semantics, and gradcheck (float64) w.r.t. inputs and learnable blobs."""

import numpy as np
import pytest
import torch
from fp import assert_within, matmul_bound
from google.protobuf import text_format
from torch.func import functional_call

from caffe_torch.layers import BuildContext, layer_class
from caffe_torch.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make(type_name, text, bottom_shapes, phase=TRAIN, seed=0, n_top=1):
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    lp.name = lp.name or "l"
    lp.type = type_name
    if not lp.bottom:
        lp.bottom.extend([f"b{i}" for i in range(len(bottom_shapes))])
    if not lp.top:
        lp.top.extend([f"t{i}" for i in range(n_top)])
    ctx = BuildContext(torch.float64, torch.device("cpu"), phase, torch.Generator().manual_seed(seed))
    return layer_class(type_name)(lp, [tuple(s) for s in bottom_shapes], ctx)


def gradcheck_layer(layer, inputs, check_params=True):
    names = [f"blobs.{i}" for i, p in enumerate(layer.blobs) if p.requires_grad] if check_params else []
    params = [layer.blobs[int(n.split(".")[1])].detach().clone().requires_grad_(True) for n in names]
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    n_in = len(inputs)

    def f(*args):
        return functional_call(layer, dict(zip(names, args[n_in:])), tuple(args[:n_in]))

    assert torch.autograd.gradcheck(f, tuple(inputs + params), eps=1e-6, atol=1e-5, rtol=1e-4)


def rnd(*shape, seed=0):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def away_from_zero(*shape, seed=0):
    """Random values with |x| >= 0.1 (finite differences must not straddle a kink at 0)."""
    x = rnd(*shape, seed=seed)
    return torch.where(x.abs() < 0.1, torch.sign(x) * 0.1 + x, x)


# ----------------------------------------------------------------------------- InnerProduct

@pytest.mark.parametrize("text,shape", [
    ("inner_product_param { num_output: 4 }", (3, 5, 2, 3)),
    ("inner_product_param { num_output: 3 axis: 2 }", (2, 3, 5, 2)),
    ("inner_product_param { num_output: 5 transpose: true }", (3, 7)),
    ("inner_product_param { num_output: 2 bias_term: false axis: -1 }", (3, 2, 7)),
])
def test_inner_product(text, shape):
    text = text[:-1] + ' weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
    layer = make("InnerProduct", text, [shape])
    x = rnd(*shape)
    axis = layer.axis
    m = int(np.prod(shape[:axis]))
    flat = x.numpy().reshape(m, -1)
    w = layer.blobs[0].detach().numpy()
    ref = flat @ w if layer.transpose else flat @ w.T
    k = flat.shape[1]
    assert w.shape == ((k, layer.num_output) if layer.transpose else (layer.num_output, k))
    if layer.bias_term:
        ref = ref + layer.blobs[1].detach().numpy()
    ref = ref.reshape(*shape[:axis], layer.num_output)
    y = layer(x)
    assert tuple(y.shape) == layer.top_shapes([shape])[0] == ref.shape
    bias = layer.blobs[1].detach().numpy() if layer.bias_term else None
    bound = matmul_bound(flat, w if layer.transpose else w.T, extra_terms=bias)   # signed k-term sums
    assert_within(y.detach().numpy(), ref, bound.reshape(ref.shape))
    gradcheck_layer(layer, [x])
    with pytest.raises(Exception, match="incompatible"):
        layer.top_shapes([(*shape[:-1], shape[-1] + 1)])


# ----------------------------------------------------------------------------- Eltwise

def test_eltwise_sum_prod_max():
    a, b, c = rnd(3, 5, 2, seed=1), rnd(3, 5, 2, seed=2), rnd(3, 5, 2, seed=3)
    s = make("Eltwise", "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 3 }", [a.shape] * 3)
    np.testing.assert_allclose(s(a, b, c).numpy(), 0.5 * a.numpy() - 2 * b.numpy() + 3 * c.numpy())
    plain = make("Eltwise", "", [a.shape] * 2)
    np.testing.assert_allclose(plain(a, b).numpy(), a.numpy() + b.numpy())
    p = make("Eltwise", "eltwise_param { operation: PROD }", [a.shape] * 3)
    np.testing.assert_allclose(p(a, b, c).numpy(), a.numpy() * b.numpy() * c.numpy())
    m = make("Eltwise", "eltwise_param { operation: MAX }", [a.shape] * 3)
    np.testing.assert_allclose(m(a, b, c).numpy(), np.maximum(np.maximum(a.numpy(), b.numpy()), c.numpy()))
    for layer in (s, p, m):
        gradcheck_layer(layer, [a, b, c])
    with pytest.raises(Exception, match="coeff"):
        make("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 1 }", [a.shape] * 2)
    with pytest.raises(Exception, match="as many values"):
        make("Eltwise", "", [(3, 5), (3, 4)])


def test_eltwise_bottoms_of_other_shapes():
    # the build's EltwiseLayer::Reshape (shape CHECK commented out): the top takes bottom 0's shape, every bottom is
    # read as count(bottom 0) flat values; fuzz case eltwise-other-shape-same-count checks it against the build
    a, b, c = rnd(2, 3, 1, 1, seed=1), rnd(2, 3, seed=2), rnd(6, seed=3)
    for op, ref in (("SUM", lambda x, y, z: x + y + z), ("PROD", lambda x, y, z: x * y * z),
                    ("MAX", lambda x, y, z: np.maximum(np.maximum(x, y), z))):
        layer = make("Eltwise", f"eltwise_param {{ operation: {op} }}", [a.shape, b.shape, c.shape])
        assert layer.top_shapes([a.shape, b.shape, c.shape]) == [(2, 3, 1, 1)]
        flat = [x.numpy().reshape(-1) for x in (a, b, c)]
        np.testing.assert_allclose(layer(a, b, c).numpy(), ref(*flat).reshape(2, 3, 1, 1))
        gradcheck_layer(layer, [a, b, c])


def test_eltwise_max_tie_rule():
    # Caffe: bottom 1 wins a tie with bottom 0; a later bottom must be strictly larger than the running max
    m = make("Eltwise", "eltwise_param { operation: MAX }", [(3,)] * 3)
    a = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    m(a, b, c).sum().backward()
    assert a.grad.tolist() == [0.0, 1.0, 0.0]
    assert b.grad.tolist() == [1.0, 0.0, 1.0]
    assert c.grad.tolist() == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- Scale / Bias

def test_scale_learned_per_channel_with_bias():
    x = rnd(3, 4, 5, 2)
    layer = make("Scale", 'scale_param { bias_term: true filler { type: "gaussian" } '
                 'bias_filler { type: "gaussian" } }', [x.shape])
    s, b = layer.blobs[0].detach().numpy(), layer.blobs[1].detach().numpy()
    assert s.shape == (4,) and b.shape == (4,)
    ref = x.numpy() * s[None, :, None, None] + b[None, :, None, None]
    np.testing.assert_allclose(layer(x).detach().numpy(), ref)
    gradcheck_layer(layer, [x])


def test_scale_defaults_and_axes():
    x = rnd(2, 3, 4)
    one = make("Scale", "", [x.shape])
    assert one.blobs[0].detach().tolist() == [1.0, 1.0, 1.0] and len(one.blobs) == 1   # filler constant 1
    wide = make("Scale", 'scale_param { axis: 1 num_axes: -1 filler { type: "uniform" } }', [x.shape])
    assert tuple(wide.blobs[0].shape) == (3, 4)
    np.testing.assert_allclose(wide(x).detach().numpy(), x.numpy() * wide.blobs[0].detach().numpy()[None])
    scalar = make("Scale", 'scale_param { axis: 0 num_axes: 0 filler { type: "constant" value: 3 } }',
                  [x.shape])
    assert tuple(scalar.blobs[0].shape) == ()
    np.testing.assert_allclose(scalar(x).detach().numpy(), 3 * x.numpy())
    gradcheck_layer(wide, [x])
    gradcheck_layer(scalar, [x])


def test_scale_two_bottoms():
    x, s = rnd(2, 3, 4, 5, seed=1), rnd(3, 4, seed=2)
    layer = make("Scale", "scale_param { axis: 1 bias_term: true bias_filler { type: 'gaussian' } }",
                 [x.shape, s.shape])
    assert len(layer.blobs) == 1 and tuple(layer.blobs[0].shape) == (3, 4)
    bias = layer.blobs[0].detach().numpy()
    ref = x.numpy() * s.numpy()[None, :, :, None] + bias[None, :, :, None]
    np.testing.assert_allclose(layer(x, s).detach().numpy(), ref)
    gradcheck_layer(layer, [x, s])
    with pytest.raises(Exception, match="does not match"):
        make("Scale", "", [x.shape, (4, 4)])


def test_bias_learned_and_two_bottoms():
    x = rnd(2, 3, 4)
    learned = make("Bias", "bias_param { filler { type: 'gaussian' } }", [x.shape])
    b = learned.blobs[0].detach().numpy()
    np.testing.assert_allclose(learned(x).detach().numpy(), x.numpy() + b[None, :, None])
    zero = make("Bias", "", [x.shape])
    assert zero.blobs[0].detach().tolist() == [0.0, 0.0, 0.0]
    y = rnd(3, 4, seed=5)
    two = make("Bias", "", [x.shape, y.shape])
    np.testing.assert_allclose(two(x, y).numpy(), x.numpy() + y.numpy()[None])
    gradcheck_layer(learned, [x])
    gradcheck_layer(two, [x, y])


# ----------------------------------------------------------------------------- BatchNorm

def test_batchnorm_train_moving_average_and_test():
    x1, x2 = rnd(4, 3, 2, 5, seed=1) * 2 + 1, rnd(4, 3, 2, 5, seed=2) - 3
    layer = make("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }", [x1.shape])
    assert [tuple(b.shape) for b in layer.blobs] == [(3,), (3,), (1,)]
    assert not any(b.requires_grad for b in layer.blobs)
    m = 4 * 2 * 5
    eps, maf = float(np.float32(0.001)), float(np.float32(0.9))     # float fields, as Caffe reads them
    mean_sum, var_sum, sf = np.zeros(3), np.zeros(3), 0.0
    for x in (x1, x2):
        xn = x.numpy()
        mean = xn.mean(axis=(0, 2, 3))
        var = ((xn - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        ref = (xn - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
        np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10)
        sf = maf * sf + 1
        mean_sum = maf * mean_sum + mean
        var_sum = maf * var_sum + m / (m - 1) * var
    np.testing.assert_allclose(layer.blobs[0].detach().numpy(), mean_sum)
    np.testing.assert_allclose(layer.blobs[1].detach().numpy(), var_sum)
    np.testing.assert_allclose(layer.blobs[2].detach().numpy(), [sf])

    test = make("BatchNorm", "batch_norm_param { eps: 0.001 }", [x1.shape], phase=TEST)
    with torch.no_grad():
        for dst, src in zip(test.blobs, layer.blobs):
            dst.copy_(src)
    xt = rnd(2, 3, 2, 5, seed=3)
    mean_t, var_t = (mean_sum / sf)[None, :, None, None], (var_sum / sf)[None, :, None, None]
    ref = (xt.numpy() - mean_t) / np.sqrt(var_t + eps)
    np.testing.assert_allclose(test(xt).detach().numpy(), ref, rtol=1e-10)
    gradcheck_layer(test, [xt])
    gradcheck_layer(make("BatchNorm", "", [(3, 2, 4)]), [rnd(3, 2, 4)])


def test_batchnorm_zero_scale_factor_and_explicit_global_stats():
    x = rnd(2, 3)
    layer = make("BatchNorm", "batch_norm_param { use_global_stats: true }", [x.shape], phase=TRAIN)
    # scale factor 0 -> Caffe uses 0 for both statistics
    np.testing.assert_allclose(layer(x).detach().numpy(), x.numpy() / np.sqrt(float(np.float32(1e-5))))
    assert layer.blobs[2].item() == 0.0


# ----------------------------------------------------------------------------- Dropout, Split, Silence

def test_dropout_train_statistics_and_test_identity():
    x = torch.ones(200, 500, dtype=torch.float64)
    layer = make("Dropout", "dropout_param { dropout_ratio: 0.3 }", [x.shape])
    y = layer(x).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.7)
    again = make("Dropout", "dropout_param { dropout_ratio: 0.3 }", [x.shape])
    np.testing.assert_array_equal(again(x).numpy(), y)      # same generator seed -> same mask
    test = make("Dropout", "dropout_param { dropout_ratio: 0.3 }", [x.shape], phase=TEST)
    y = test(x)            # Caffe copies into the top's own memory (in place it is the bottom itself)
    assert torch.equal(y, x) and y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    with pytest.raises(Exception, match="dropout_ratio"):
        make("Dropout", "dropout_param { dropout_ratio: 1.0 }", [x.shape])


def test_split_and_silence():
    x = rnd(2, 3)
    split = make("Split", "", [x.shape], n_top=3)
    outs = split(x)
    # every top shares the bottom's data (Caffe's ShareData) but is its own tensor (its own diff)
    assert len(outs) == 3 and all(o is not x and o.data_ptr() == x.data_ptr() and torch.equal(o, x) for o in outs)
    silence = make("Silence", "", [x.shape, x.shape], n_top=0)
    assert silence.top_shapes([x.shape, x.shape]) == [] and silence(x, x) == ()


# ----------------------------------------------------------------------------- activations

def test_relu_and_leaky_relu():
    x = away_from_zero(3, 5, 7)
    relu = make("ReLU", "", [x.shape])
    np.testing.assert_allclose(relu(x).numpy(), np.maximum(x.numpy(), 0))
    leaky = make("ReLU", "relu_param { negative_slope: 0.1 }", [x.shape])
    xn = x.numpy()
    np.testing.assert_allclose(leaky(x).numpy(), np.maximum(xn, 0) + 0.1 * np.minimum(xn, 0))
    gradcheck_layer(relu, [x])
    gradcheck_layer(leaky, [x])
    # Caffe's gradient at exactly 0 is the negative side's
    z = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    leaky(z).sum().backward()
    assert z.grad.tolist() == [float(np.float32(0.1))] * 2     # the float field, as in Caffe


def test_prelu_channelwise_and_shared():
    x = away_from_zero(3, 4, 5, 2)
    layer = make("PReLU", "prelu_param { filler { type: 'uniform' min: 0.1 max: 0.9 } }", [x.shape])
    a = layer.blobs[0].detach().numpy()
    assert a.shape == (4,)
    xn = x.numpy()
    ref = np.maximum(xn, 0) + a[None, :, None, None] * np.minimum(xn, 0)
    np.testing.assert_allclose(layer(x).detach().numpy(), ref)
    gradcheck_layer(layer, [x])
    default = make("PReLU", "", [x.shape])
    assert default.blobs[0].detach().tolist() == [0.25] * 4
    shared = make("PReLU", "prelu_param { channel_shared: true }", [x.shape])
    assert tuple(shared.blobs[0].shape) == () and shared.blobs[0].item() == 0.25     # a 0-axis blob
    np.testing.assert_allclose(shared(x).detach().numpy(), np.maximum(xn, 0) + 0.25 * np.minimum(xn, 0))
    gradcheck_layer(shared, [x])


def test_sigmoid_tanh_softmax():
    x = rnd(3, 4, 5)
    np.testing.assert_allclose(make("Sigmoid", "", [x.shape])(x).numpy(), 1 / (1 + np.exp(-x.numpy())))
    np.testing.assert_allclose(make("TanH", "", [x.shape])(x).numpy(), np.tanh(x.numpy()))
    for axis, text in ((1, ""), (2, "softmax_param { axis: -1 }")):
        layer = make("Softmax", text, [x.shape])
        e = np.exp(x.numpy() - x.numpy().max(axis=axis, keepdims=True))
        np.testing.assert_allclose(layer(x).numpy(), e / e.sum(axis=axis, keepdims=True))
        gradcheck_layer(layer, [x])
    gradcheck_layer(make("Sigmoid", "", [x.shape]), [x])
    gradcheck_layer(make("TanH", "", [x.shape]), [x])


# ----------------------------------------------------------------------------- shape layers

def test_flatten():
    x = rnd(2, 3, 4, 5)
    assert tuple(make("Flatten", "", [x.shape])(x).shape) == (2, 60)
    mid = make("Flatten", "flatten_param { axis: 1 end_axis: 2 }", [x.shape])
    assert mid.top_shapes([x.shape]) == [(2, 12, 5)]
    np.testing.assert_array_equal(mid(x).numpy(), x.numpy().reshape(2, 12, 5))


def test_reshape():
    x = rnd(2, 3, 4, 5)
    cases = [
        ("reshape_param { shape { dim: 0 dim: -1 } }", (2, 60)),
        ("reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 5 } }", (2, 2, 6, 5)),
        ("reshape_param { shape { dim: 6 dim: 2 } axis: 1 num_axes: 2 }", (2, 6, 2, 5)),
        ("reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 }", (2, 3, 4, 5, 1)),
        ("reshape_param { shape { dim: -1 } axis: 0 num_axes: 2 }", (6, 4, 5)),
    ]
    for text, shape in cases:
        layer = make("Reshape", text, [x.shape])
        assert layer.top_shapes([x.shape]) == [shape], text
        np.testing.assert_array_equal(layer(x).numpy(), x.numpy().reshape(shape))
    with pytest.raises(Exception, match="count"):
        make("Reshape", "reshape_param { shape { dim: 7 dim: 9 } }", [x.shape])


def test_concat_and_slice():
    a, b = rnd(2, 3, 4, seed=1), rnd(2, 5, 4, seed=2)
    cat = make("Concat", "", [a.shape, b.shape])
    np.testing.assert_array_equal(cat(a, b).numpy(), np.concatenate([a.numpy(), b.numpy()], axis=1))
    gradcheck_layer(cat, [a, b])
    c = rnd(2, 3, 7, seed=3)
    cat2 = make("Concat", "concat_param { axis: -1 }", [a.shape, c.shape])
    np.testing.assert_array_equal(cat2(a, c).numpy(), np.concatenate([a.numpy(), c.numpy()], axis=2))
    with pytest.raises(Exception, match="agree"):
        make("Concat", "", [a.shape, c.shape])
    x = rnd(2, 8, 3)
    sl = make("Slice", "slice_param { axis: 1 slice_point: 2 slice_point: 5 }", [x.shape], n_top=3)
    parts = sl(x)
    assert [tuple(p.shape) for p in parts] == [(2, 2, 3), (2, 3, 3), (2, 3, 3)]
    np.testing.assert_array_equal(parts[1].numpy(), x.numpy()[:, 2:5])
    even = make("Slice", "slice_param { axis: 1 }", [x.shape], n_top=4)
    assert [tuple(p.shape) for p in even(x)] == [(2, 2, 3)] * 4
    gradcheck_layer(sl, [x])
    with pytest.raises(Exception, match="slice_point"):
        make("Slice", "slice_param { slice_point: 2 }", [x.shape], n_top=3)
