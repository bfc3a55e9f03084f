"""Caffe's fillers: large-sample statistics against Caffe's formulas, and reproducibility by seed."""

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe_torch as caffe
from caffe_torch.fillers import fill
from caffe_torch.proto import caffe_pb2


def filler(text):
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def draw(text, shape, seed=0):
    return fill(filler(text), shape, torch.Generator().manual_seed(seed)).numpy()


def test_constant_default_and_value():
    assert (draw("", (3, 4)) == 0).all()                  # a filler with no type is constant 0
    assert (draw('type: "constant" value: 2.5', (7,)) == 2.5).all()


def test_gaussian_and_uniform_statistics():
    g = draw('type: "gaussian" mean: 1.5 std: 0.5', (400, 500))
    assert abs(g.mean() - 1.5) < 0.005 and abs(g.std() - 0.5) < 0.005
    u = draw('type: "uniform" min: -2 max: 3', (400, 500))
    assert u.min() >= -2 and u.max() <= 3
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 25 / 12) < 0.02


@pytest.mark.parametrize("norm", ["FAN_IN", "FAN_OUT", "AVERAGE"])
def test_xavier_and_msra_variance_norms(norm):
    shape = (50, 40, 3, 5)                                # fan_in = 600, fan_out = 750
    n = {"FAN_IN": 40 * 3 * 5, "FAN_OUT": 50 * 3 * 5, "AVERAGE": (600 + 750) / 2}[norm]
    x = draw(f'type: "xavier" variance_norm: {norm}', shape)
    a = math.sqrt(3 / n)
    assert x.min() >= -a and x.max() <= a and x.max() > 0.99 * a
    assert abs(x.var() - a * a / 3) < 0.02 * a * a / 3
    m = draw(f'type: "msra" variance_norm: {norm}', shape)
    assert abs(m.mean()) < 0.01 * math.sqrt(2 / n) * 10
    assert abs(m.std() - math.sqrt(2 / n)) < 0.01 * math.sqrt(2 / n)


def test_xavier_fans_of_1d_and_2d_blobs():
    # fan_out of a 1-D blob is its count (Caffe's channels() of a 1-axis blob is 1)
    v = draw('type: "xavier" variance_norm: FAN_OUT', (20000,))
    assert abs(v.max() - math.sqrt(3 / 20000)) < 1e-4
    w = draw('type: "xavier"', (3, 20000))               # fan_in = count / shape[0]
    assert abs(w.max() - math.sqrt(3 / 20000)) < 1e-4


def test_positive_unitball():
    x = draw('type: "positive_unitball"', (30, 4, 5))
    assert (x >= 0).all() and (x <= 1).all()
    np.testing.assert_allclose(x.reshape(30, -1).sum(axis=1), 1.0)


def test_gaussian_sparse_and_sparse_elsewhere():
    x = draw('type: "gaussian" sparse: 10', (100, 1000))   # keep with probability 10 / 100
    assert abs((x != 0).mean() - 0.1) < 0.01
    with pytest.raises(ValueError, match="[Ss]parsity"):
        draw('type: "xavier" sparse: 3', (3, 4))
    with pytest.raises(ValueError, match="unknown filler"):
        draw('type: "bogus"', (3,))


NET = '''
input: "data" input_shape { dim: 2 dim: 3 dim: 5 dim: 5 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "msra" }
                            bias_filler { type: "uniform" } } }
layer { name: "fc" type: "InnerProduct" bottom: "c" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
'''


def test_set_random_seed_makes_nets_reproducible(tmp_path):
    path = tmp_path / "n.prototxt"
    path.write_text(NET)
    caffe.set_random_seed(123)
    a = caffe.Net(str(path), caffe.TRAIN)
    b = caffe.Net(str(path), caffe.TRAIN)
    caffe.set_random_seed(123)
    c = caffe.Net(str(path), caffe.TRAIN)
    for name in ("c", "fc"):
        for pa, pc in zip(a.params[name], c.params[name]):
            np.testing.assert_array_equal(pa.data, pc.data)
    assert not np.array_equal(a.params["c"][0].data, b.params["c"][0].data)
    # float64 nets draw the same numbers (drawn in float64, then cast)
    caffe.set_random_seed(123)
    d = caffe.Net(str(path), caffe.TRAIN, dtype=torch.float64)
    np.testing.assert_array_equal(d.params["fc"][0].data.astype(np.float32), a.params["fc"][0].data)


def test_bilinear_matches_caffes_formula():
    """Caffe's BilinearFiller, written out element by element from its documented rule (x = i % K,
    y = (i / K) % K over the flat blob); K = 4 (factor 2) and K = 3 (odd)."""
    for k in (4, 3):
        shape = (2, 3, k, k)
        got = fill(text_format.Parse('type: "bilinear"', caffe_pb2.FillerParameter()), shape,
                   torch.Generator()).numpy().reshape(-1)
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        want = [(1 - abs((i % k) / f - c)) * (1 - abs(((i // k) % k) / f - c)) for i in range(got.size)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="4-D"):
        fill(text_format.Parse('type: "bilinear"', caffe_pb2.FillerParameter()), (3, 4), torch.Generator())
