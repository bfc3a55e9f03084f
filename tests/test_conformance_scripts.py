"""pycaffe-style scripts that keep `.data` / `.diff` arrays give the same numbers on caffe_torch and on the real
pycaffe build (issue 13): the 2018 evaluation scripts' crop averaging (`avg = blob.data` then
`avg = avg + blob.data`) and embedding collection (`emb = blob.data` then `np.append`), and a training-style
script that keeps parameter and input diffs across backward passes.

The scripts are written once, against the pycaffe API, and run with either module. On caffe_torch alone they
are also checked against what the aliasing makes them compute ((2 crop1 + crop2 + ...) / n; batch 1 in place
of batch 0). The comparison with real Caffe is marked `caffe` and skipped without the build.
"""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's net-construction log quiet

import caffe_torch  # noqa: E402
from speaker.engine import try_import_pycaffe  # noqa: E402

CROPS, H, W, BATCH = 4, 8, 9, 2

DEPLOY = f'''name: "mini"
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: 1 dim: 1 dim: {H} dim: {W} }} }} }}
layer {{ name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param {{ num_output: 3 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "gaussian" std: 0.5 }}
    bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu1_1" type: "PReLU" bottom: "conv1_1" top: "conv1_1" }}
layer {{ name: "res4_3p" type: "Pooling" bottom: "conv1_1" top: "res4_3p"
  pooling_param {{ pool: AVE kernel_h: {(H + 1) // 2} kernel_w: 1 stride: 1 }} }}
layer {{ name: "fc5" type: "InnerProduct" bottom: "res4_3p" top: "fc5"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.5 }}
    bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
'''

TRAIN = f'''name: "mini_train"
force_backward: true
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {BATCH} dim: 1 dim: {H} dim: {W} }} shape {{ dim: {BATCH} }} }} }}
''' + DEPLOY.split("\n", 3)[3] + \
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc5" bottom: "label" top: "loss" }\n'


def utterances(n_utts=3):
    rs = np.random.RandomState(7)
    return [rs.randn(CROPS, 1, H, W).astype(np.float32) for _ in range(n_utts)]


# --------------------------------------------------------------------- the scripts, as the 2018 code wrote them
def original_crop_average(caffe, deploy, weights, utts):
    """test_ident.py's loop: per utterance, forward each crop, average res4_3p as the original did, write the
    average back, run the head, collect fc5 as embed_verif.py did."""
    net = caffe.Net(deploy, weights, caffe.TEST)
    emb = None
    for k, crops in enumerate(utts):
        for i, crop in enumerate(crops):
            net.blobs["data"].data[...] = crop
            net.forward()
            if i == 0:
                avg = net.blobs["res4_3p"].data
            else:
                avg = avg + net.blobs["res4_3p"].data
        avg = avg / len(crops)
        net.blobs["res4_3p"].data[...] = avg
        net.forward(start="fc5")
        if k == 0:
            emb = net.blobs["fc5"].data
        else:
            emb = np.append(emb, net.blobs["fc5"].data, axis=0)
    return np.array(emb)


def kept_diffs(caffe, train, weights):
    """A training-style script that keeps `.diff` arrays of a parameter and of the input across backwards."""
    net = caffe.Net(train, weights, caffe.TRAIN)
    rs = np.random.RandomState(3)
    data, d_w, d_in = net.blobs["data"].data, net.params["fc5"][0].diff, net.blobs["data"].diff
    out = []
    for _ in range(2):
        data[...] = rs.randn(*data.shape)
        net.blobs["label"].data[...] = rs.randint(0, 4, BATCH)
        net.forward()
        net.backward()
        out += [d_w.copy(), d_in.copy(), net.blobs["fc5"].data.copy()]
    return out


# --------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("scripts")
    (d / "deploy.prototxt").write_text(DEPLOY)
    (d / "train.prototxt").write_text(TRAIN)
    caffe_torch.set_mode_cpu()
    caffe_torch.set_random_seed(11)
    net = caffe_torch.Net(str(d / "deploy.prototxt"), caffe_torch.TEST)
    net.params["relu1_1"][0].data[...] = np.float32(0.25)      # PReLU slope: negatives count too
    net.save(str(d / "w.caffemodel"))
    return str(d / "deploy.prototxt"), str(d / "train.prototxt"), str(d / "w.caffemodel")


def per_crop_pooled(deploy, weights, crops):
    net = caffe_torch.Net(deploy, weights, caffe_torch.TEST)
    pooled = []
    for crop in crops:
        net.blobs["data"].data[...] = crop
        net.forward()
        pooled.append(net.blobs["res4_3p"].data.copy())
    return net, pooled


def close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1e-30), np.abs(a - b).max()


# --------------------------------------------------------------------- caffe_torch alone: what the aliasing computes
def test_caffe_torch_computes_the_original_quirks(files):
    deploy, _, weights = files
    utts = utterances()
    got = original_crop_average(caffe_torch, deploy, weights, utts)
    expected = []
    for crops in utts:
        net, pooled = per_crop_pooled(deploy, weights, crops)
        quirk = (2 * pooled[1] + sum(pooled[2:])) / len(crops)       # crop 0 lost, crop 1 counted twice
        net.blobs["res4_3p"].data[...] = quirk
        net.forward(start="fc5")
        expected.append(net.blobs["fc5"].data.copy())
    # embed_verif.py: utterance 1's embedding took utterance 0's place
    expected[0] = expected[1]
    close(got, np.concatenate(expected), rtol=1e-6)
    # ... which is not the average of all crops (what our evaluation scripts compute)
    pooled = per_crop_pooled(deploy, weights, utts[0])[1]
    assert not np.allclose(np.mean(pooled, axis=0), (2 * pooled[1] + sum(pooled[2:])) / CROPS)


def test_caffe_torch_kept_diffs_follow_and_accumulate(files):
    _, train, weights = files
    d_w1, d_in1, _, d_w2, d_in2, _ = kept_diffs(caffe_torch, train, weights)
    assert d_w1.any() and d_in1.any() and d_in2.any()
    assert not np.allclose(d_w2, d_w1)              # the second backward accumulated into the same memory


# --------------------------------------------------------------------- against real pycaffe
caffe_real, _IMPORT_ERROR = try_import_pycaffe()


@pytest.mark.caffe
@pytest.mark.skipif(caffe_real is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}")
def test_original_scripts_same_numbers_as_real_pycaffe(files):
    deploy, train, weights = files
    caffe_real.set_mode_cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        utts = utterances()
        close(original_crop_average(caffe_torch, deploy, weights, utts),
              original_crop_average(caffe_real, deploy, weights, utts))
        for ours, theirs in zip(kept_diffs(caffe_torch, train, weights), kept_diffs(caffe_real, train, weights)):
            close(ours, theirs)
    finally:
        torch.set_num_threads(threads)
