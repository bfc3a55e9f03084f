"""Conformance on BVLC's model zoo: the five deploy nets of the sdist caffe_build/build.sh uses (AlexNet,
CaffeNet, GoogLeNet, R-CNN ILSVRC13, Flickr style), run by caffe_torch and by the real Caffe build.

Each net at batch 2, the same random weights in both engines (a fixed seed per net; He-scaled normal
weights and small uniform biases, so that activations stay O(1) through 22 layers), the same random input;
every blob both nets have must agree within RTOL relative to the blob's largest magnitude:
    max|caffe_torch - Caffe| <= RTOL * max|Caffe|
(the inf-norm convention of tests/test_conformance.py). The prototxt come from the sdist (tests/bvlc_sdist.py),
never from this repository. Skipped without the real pycaffe build or without the sdist.
"""

import os
import zlib

import numpy as np
import pytest
import torch
from google.protobuf import text_format

os.environ.setdefault("GLOG_minloglevel", "2")

import caffe_torch  # noqa: E402
from caffe_torch.proto import caffe_pb2  # noqa: E402
from speaker.engine import try_import_pycaffe  # noqa: E402
from tests.bvlc_sdist import sdist_path  # noqa: E402

caffe, _IMPORT_ERROR = try_import_pycaffe()

pytestmark = [
    pytest.mark.caffe,
    pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}"),
]

MODELS = ["bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet", "bvlc_reference_rcnn_ilsvrc13",
          "finetune_flickr_style"]
BATCH = 2
RTOL = 1e-4


def _deploy_at_batch(model: str, tmp_path) -> str:
    """The model's deploy.prototxt with every input's batch dimension set to BATCH; the written path."""
    source = sdist_path(f"models/{model}/deploy.prototxt", tmp_path)
    if source is None:
        pytest.skip("no BVLC sdist: run caffe_build/build.sh (it caches the sdist)")
    net = text_format.Parse(source.read_text(), caffe_pb2.NetParameter())
    for layer in net.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = BATCH
    for shape in net.input_shape:
        shape.dim[0] = BATCH
    for i in range(0, len(net.input_dim), 4):
        net.input_dim[i] = BATCH
    path = tmp_path / f"{model}_deploy_b{BATCH}.prototxt"
    path.write_text(text_format.MessageToString(net))
    return str(path)


def _random_weights(params, seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    weights = {}
    for layer, blobs in params.items():
        arrays = []
        for blob in blobs:
            shape = blob.data.shape
            if len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                arrays.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32))
            else:
                arrays.append(rng.uniform(-0.1, 0.1, size=shape).astype(np.float32))
        weights[layer] = arrays
    return weights


@pytest.fixture(autouse=True, scope="module")
def _cpu_single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    caffe_torch.set_mode_cpu()
    caffe.set_mode_cpu()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model", MODELS)
def test_zoo_deploy_net_matches_caffe(model, tmp_path):
    path = _deploy_at_batch(model, tmp_path)
    ours = caffe_torch.Net(path, caffe_torch.TEST)
    theirs = caffe.Net(path, caffe.TEST)
    # the same layers and blobs in the same order, the Split layers Caffe inserts wherever a blob feeds several
    # layers included (GoogLeNet: 121 blobs)
    assert list(ours._layer_names) == list(theirs._layer_names)
    assert [layer.type for layer in ours.layers] == [layer.type for layer in theirs.layers]
    assert list(ours.blobs) == list(theirs.blobs)
    assert {k: list(v) for k, v in ours.bottom_names.items()} == {k: list(v) for k, v in theirs.bottom_names.items()}
    assert ours.outputs == list(theirs.outputs)
    seed = zlib.crc32(model.encode())
    weights = _random_weights(ours.params, seed)
    assert list(weights) == list(theirs.params)
    for layer, arrays in weights.items():
        for j, array in enumerate(arrays):
            assert theirs.params[layer][j].data.shape == array.shape, (layer, j)
            ours.params[layer][j].data[...] = array
            theirs.params[layer][j].data[...] = array
    rng = np.random.default_rng(seed + 1)
    for name in ours.inputs:
        x = rng.normal(0.0, 30.0, size=ours.blobs[name].shape).astype(np.float32)   # mean-subtracted pixels
        ours.blobs[name].data[...] = x
        theirs.blobs[name].data[...] = x
    ours.forward()
    theirs.forward()
    worst = (0.0, "")
    for name in ours.blobs:
        a, b = ours.blobs[name].data, theirs.blobs[name].data
        assert a.shape == b.shape, f"{model}: blob '{name}' has shape {a.shape}, Caffe's {b.shape}"
        scale = float(np.abs(b).max())
        err = float(np.abs(a.astype(np.float64) - b).max())
        rel = err / scale if scale else err
        assert rel <= RTOL, f"{model}: blob '{name}' differs by {err:.3g} (max |Caffe| {scale:.3g}, relative {rel:.3g})"
        worst = max(worst, (rel, name))
    print(f"\n{model}: {len(ours.blobs)} blobs within {RTOL:g}; largest relative difference {worst[0]:.3g} "
          f"('{worst[1]}')")
