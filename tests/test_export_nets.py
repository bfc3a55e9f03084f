"""caffe_torch.export on whole nets: BVLC's five model-zoo deploy nets (from the sdist, as
tests/test_conformance_zoo.py builds them: batch 2, He-scaled random weights from a fixed seed, inputs N(0, 30))
and the paper's nets (prototxt/ResNet-20_*.prototxt reduced as tests/test_conformance.py does, weights from
caffe_torch's fillers with seed 1, TEST phase, exported up to every blob the losses and accuracies read).

Every blob the export computes is an output of the ONNX graph (exported with a dynamic batch) and of the
TorchScript module; ONNX Runtime and TorchScript are compared with caffe_torch and with the real Caffe build:
    max|exported - reference| <= RTOL * max|reference|,  RTOL = 1e-4
(the inf-norm convention of the conformance suite; float32 everywhere, measured differences ~1e-6).

OpenCV (cv2.dnn.readNetFromCaffe) reads the same deploy prototxt (what the export wrote as one) and .caffemodel
as a second, independent reader of Caffe files; where it differs from Caffe is recorded in OPENCV below (and in
docs/export.md), and the test checks that table.
"""

import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

os.environ.setdefault("GLOG_minloglevel", "2")

pytest.importorskip("onnx", reason="export extras not installed (pip install -r requirements-export.txt)")
ort = pytest.importorskip("onnxruntime", reason="export extras not installed "
                          "(pip install -r requirements-export.txt)")

import caffe_torch  # noqa: E402
from caffe_torch.export import build_net, deploy_net, export_table, make_plan, to_onnx, to_torchscript  # noqa: E402
from speaker.engine import try_import_pycaffe  # noqa: E402
from tests.test_conformance import NETS, _engines, reduced_net  # noqa: E402, F401  (_engines: CPU, 1 thread)
from tests.test_conformance_zoo import MODELS, _deploy_at_batch, _random_weights  # noqa: E402

caffe, _IMPORT_ERROR = try_import_pycaffe({"MarginInnerProduct", "Normalize", "LabelSpecificAdd"})
try:
    import cv2
except ImportError:
    cv2 = None

RTOL = 1e-4
REFUSED = {t for t, status, _ in export_table() if status == "refused"}
PAPER = {p.stem: p for p in NETS if p.parent.name == "prototxt"}
CASES = [f"zoo/{m}" for m in MODELS] + [f"paper/{n}" for n in PAPER]

# What OpenCV 4.11's Caffe reader gives on the same deploy prototxt and .caffemodel, every blob compared with
# Caffe: "agrees" (within RTOL), or how it differs (the start of opencv_status's line). Where it refuses a layer
# type, what it gives on the layers before that layer follows. It has no LabelSpecificAdd nor
# AdditiveAngularMargin; it reads InnerProduct's `normalize: true` (happynear fork) but ignores it, so fc6_aam /
# fc6_12 (cosine logits) come out with the stored, unnormalised weights; its own "Normalize" (SSD's, with
# defaults) gives the happynear fork's L2 result here (an N x C blob; eps 1e-10 against 1e-6 inside the root).
OPENCV = {
    "zoo/bvlc_alexnet": "agrees",
    "zoo/bvlc_reference_caffenet": "agrees",
    "zoo/bvlc_googlenet": "agrees",
    "zoo/bvlc_reference_rcnn_ilsvrc13": "agrees",
    "zoo/finetune_flickr_style": "agrees",
    "paper/ResNet-20_aam": "refuses fc6_angular (AdditiveAngularMargin); before it differs: fc6_aam:",
    "paper/ResNet-20_amsoftmax": "refuses fc6_margin (LabelSpecificAdd); before it differs: fc6_12:",
    "paper/ResNet-20_asoftmax": "agrees",
    "paper/ResNet-20_lm": "refuses fc6_margin (LabelSpecificAdd); before it agrees",
    "paper/ResNet-20_softmax": "agrees",
}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if b.size else 0.0
    return diff / scale if scale else diff


def _exportable_blobs(net) -> list[str]:
    """Every blob the export can compute: the tops of layers of exported types, and the inputs they read."""
    blobs = []
    for name, layer in zip(net._layer_names, net.modules):
        if layer.type_name == "Split" and all("_split_" in t for t in net.top_names[name]):
            continue          # Caffe's inserted copies: the blob itself is compared
        if layer.type_name not in REFUSED and not layer.is_source:
            blobs += [b for b in net.bottom_names[name] + net.top_names[name] if b not in blobs]
    return blobs


class Setup:
    """One net: its prototxt, caffe_torch net (weights set), inputs, export plan, ONNX and TorchScript results."""

    def __init__(self, case: str, tmp: Path):
        kind, name = case.split("/")
        self.case = case
        if kind == "zoo":
            self.prototxt = _deploy_at_batch(name, tmp)
            self.net, self.where = build_net(self.prototxt, None, "TEST")
            seed = zlib.crc32(name.encode())
            self.weights = _random_weights(self.net.params, seed)
            for layer, arrays in self.weights.items():
                for j, array in enumerate(arrays):
                    self.net.params[layer][j].data[...] = array
            rng = np.random.default_rng(seed + 1)
            self.inputs = {n: rng.normal(0.0, 30.0, size=self.net.blobs[n].shape).astype(np.float32)
                           for n in self.net.inputs}
            self.caffemodel = None
        else:
            self.prototxt = str(tmp / f"{name}.prototxt")
            Path(self.prototxt).write_text(text_format.MessageToString(reduced_net(PAPER[name])))
            self.caffemodel = str(tmp / f"{name}.caffemodel")
            caffe_torch.set_random_seed(1)
            caffe_torch.Net(self.prototxt, caffe_torch.TRAIN).save(self.caffemodel)
            self.net, self.where = build_net(self.prototxt, self.caffemodel, "TEST")
            self.weights = None
            rng = np.random.default_rng(3)
            shape = self.net.blobs["label"].shape
            self.inputs = {"data": rng.standard_normal(self.net.blobs["data"].shape).astype(np.float32),
                           "label": rng.integers(0, 10, size=shape).astype(np.float32)}
        self.outputs = _exportable_blobs(self.net)
        self.plan = make_plan(self.net, self.where, self.outputs, {n: frozenset({0}) for n in self.net.inputs})
        model = to_onnx(self.plan, 17, name)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: self.inputs[i.name] for i in session.get_inputs()}
        self.onnx = dict(zip(self.outputs, session.run(self.outputs, feeds)))
        script = to_torchscript(self.plan)
        with torch.no_grad():
            traced = script(*[torch.from_numpy(self.inputs[n]) for n in self.plan.inputs])
        self.torchscript = {o: t.detach().numpy() for o, t in zip(self.outputs, traced)}
        self.net.set_layer_states({})
        for n, v in self.inputs.items():
            self.net.blobs[n].data[...] = v
        self.net.forward()
        self.caffe_torch = {o: self.net.blobs[o].data.copy() for o in self.outputs}
        self.tmp = tmp
        self.deploy = self.write_deploy(self.plan)

    def write_deploy(self, plan, suffix: str = "") -> str:
        path = self.tmp / f"deploy{suffix}.prototxt"
        path.write_text(text_format.MessageToString(deploy_net(plan)))
        return str(path)

    def caffe_net(self, tmp: Path):
        """Real Caffe's TEST net with the same weights (a zoo net also saves them for OpenCV)."""
        if self.caffemodel is not None:
            return caffe.Net(self.prototxt, self.caffemodel, caffe.TEST)
        theirs = caffe.Net(self.prototxt, caffe.TEST)
        for layer, arrays in self.weights.items():
            for j, array in enumerate(arrays):
                theirs.params[layer][j].data[...] = array
        self.caffemodel = str(tmp / "weights_by_caffe.caffemodel")
        theirs.save(self.caffemodel)
        return theirs


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    cache = {}

    def get(case: str) -> Setup:
        if case not in cache:
            cache[case] = Setup(case, tmp_path_factory.mktemp(case.replace("/", "_")))
        return cache[case]

    return get


def _check(results: dict, reference: dict, what: str) -> float:
    worst = 0.0
    for o, ref in reference.items():
        err = rel_err(results[o], ref)
        assert err <= RTOL, f"{what}: blob '{o}' differs by {err:.3g} (relative to max |{ref.max():.3g}|)"
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize("case", CASES)
def test_export_equals_caffe_torch(setups, case):
    s = setups(case)
    assert s.plan.outputs == s.outputs and len(s.outputs) > 3
    w1 = _check(s.onnx, s.caffe_torch, f"{case} ONNX Runtime vs caffe_torch")
    w2 = _check(s.torchscript, s.caffe_torch, f"{case} TorchScript vs caffe_torch")
    print(f"\n{case}: {len(s.outputs)} blobs; largest relative difference ONNX {w1:.2g}, TorchScript {w2:.2g}")


@pytest.mark.caffe
@pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}")
@pytest.mark.parametrize("case", CASES)
def test_export_equals_caffe(setups, case, tmp_path):
    s = setups(case)
    reference = caffe_outputs(s, tmp_path)
    w1 = _check(s.onnx, reference, f"{case} ONNX Runtime vs Caffe")
    w2 = _check(s.torchscript, reference, f"{case} TorchScript vs Caffe")
    print(f"\n{case}: {len(s.outputs)} blobs; largest relative difference to Caffe: ONNX {w1:.2g}, "
          f"TorchScript {w2:.2g}")


def caffe_outputs(s: Setup, tmp: Path) -> dict:
    theirs = s.caffe_net(tmp)
    for n, v in s.inputs.items():
        theirs.blobs[n].data[...] = v
    theirs.forward()
    return {o: theirs.blobs[o].data.copy() for o in s.outputs}


def _not_inserted(blobs: list[str]) -> list[str]:
    """The blobs but the tops of the Split layers Caffe inserts (a deploy prototxt has none)."""
    return [b for b in blobs if "_split_" not in b]


def opencv_outputs(s: Setup, plan, deploy: str) -> dict:
    """OpenCV's result for every blob the plan exports: the output of the layer that writes its last version."""
    net = cv2.dnn.readNetFromCaffe(deploy, s.caffemodel)
    for n in plan.inputs:
        net.setInput(s.inputs[n], n)
    writer = {}
    for step in plan.steps:
        for t in step.tops:
            writer[t] = step.layer.param.name
    got = {}
    for o in _not_inserted(plan.outputs):
        if o in writer:       # one blob per call (several at once trips an assertion of OpenCV 4.11)
            y = np.asarray(net.forward(writer[o]))
            got[o] = y.reshape(s.caffe_torch[o].shape) if y.size == s.caffe_torch[o].size else y
    return got


def opencv_status(s: Setup, reference: dict) -> str:
    """'agrees', 'differs: <blobs and relative differences>', or 'refuses <layer> (<type>)' followed by what
    OpenCV gives on the layers before that one."""
    plan, deploy, prefix = s.plan, s.deploy, ""
    while True:
        try:
            got = opencv_outputs(s, plan, deploy)
            break
        except cv2.error as exc:
            match = re.search(r'Can\'t create layer "([^"]+)" of type "([^"]+)"', str(exc))
            if not match:
                lines = [ln for ln in str(exc).splitlines() if "error:" in ln]
                return prefix + "fails: " + (lines[-1].split("error:")[-1].strip() if lines else str(exc))
            names = [st.layer.param.name for st in plan.steps]
            before = plan.steps[:names.index(match.group(1))]
            prefix += f"refuses {match.group(1)} ({match.group(2)}); before it "
            outputs = [o for o in _not_inserted(plan.outputs) if any(o in st.tops for st in before)]
            plan = make_plan(s.net, s.where, outputs, {n: frozenset({0}) for n in s.net.inputs})
            deploy = s.write_deploy(plan, f"_before_{match.group(1)}")
    bad = []
    for o, y in got.items():
        ref = reference[o]
        if y.shape != ref.shape:
            bad.append(f"{o}: shape {y.shape} vs {ref.shape}")
        elif rel_err(y, ref) > RTOL:
            bad.append(f"{o}: {rel_err(y, ref):.2g}")
    return prefix + ("agrees" if not bad else "differs: " + "; ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))


@pytest.mark.caffe
@pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}")
@pytest.mark.skipif(cv2 is None, reason="opencv-python-headless not installed (pip install -r "
                    "requirements-export.txt)")
@pytest.mark.parametrize("case", CASES)
def test_opencv_reads_the_same_files(setups, case, tmp_path):
    s = setups(case)
    status = opencv_status(s, caffe_outputs(s, tmp_path))
    print(f"\n{case}: OpenCV {cv2.__version__} {status}")
    assert status.startswith(OPENCV[case]), status


FORK_NET = """name: "fork_test"
layer { name: "data" type: "Input" top: "x" top: "label"
  input_param { shape { dim: 6 dim: 4 dim: 2 dim: 2 } shape { dim: 6 } } }
layer { name: "fc5" type: "InnerProduct" bottom: "x" top: "fc5"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "norm" type: "Normalize" bottom: "fc5" top: "fc5_norm" }
layer { name: "cos" type: "InnerProduct" bottom: "fc5_norm" top: "cos"
  inner_product_param { num_output: 5 bias_term: false normalize: true weight_filler { type: "xavier" } } }
layer { name: "aam" type: "AdditiveAngularMargin" bottom: "cos" bottom: "label" top: "cos_m" }
layer { name: "lsa" type: "LabelSpecificAdd" bottom: "cos_m" bottom: "label" top: "logits"
  label_specific_add_param { bias: -0.3 } }
layer { name: "mip" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "margin" top: "lambda"
  margin_inner_product_param { num_output: 5 type: QUADRUPLE base: 1000 gamma: 0.12 power: 1 lambda_min: 5
    iteration: 40 weight_filler { type: "xavier" } } }
"""


@pytest.mark.caffe
@pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}")
def test_fork_layers_at_test_equal_caffe(tmp_path):
    """The fork layers' TEST forward, exported, against Caffe's first TEST forward of the same net (the
    MarginInnerProduct lambda and the in-place weight normalisations of that forward): every blob."""
    proto = tmp_path / "fork.prototxt"
    proto.write_text(FORK_NET)
    caffe_torch.set_random_seed(4)
    weights = tmp_path / "fork.caffemodel"
    caffe_torch.Net(str(proto), caffe_torch.TEST).save(str(weights))
    net, where = build_net(str(proto), str(weights), "TEST")
    outputs = ["fc5", "fc5_norm", "cos", "cos_m", "logits", "margin", "lambda"]
    plan = make_plan(net, where, outputs, {"x": frozenset({0}), "label": frozenset({0})})
    session = ort.InferenceSession(to_onnx(plan, 17, "fork").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    script = to_torchscript(plan)
    rng = np.random.default_rng(6)
    inputs = {"x": rng.standard_normal((6, 4, 2, 2)).astype(np.float32),
              "label": rng.integers(0, 5, size=6).astype(np.float32)}
    got = dict(zip(outputs, session.run(outputs, inputs)))
    with torch.no_grad():
        traced = dict(zip(outputs, (t.numpy() for t in script(*[torch.from_numpy(inputs[n]) for n in plan.inputs]))))
    theirs = caffe.Net(str(proto), str(weights), caffe.TEST)
    for n, v in inputs.items():
        theirs.blobs[n].data[...] = v
    theirs.forward()
    for o in outputs:
        want = theirs.blobs[o].data
        assert rel_err(got[o], want) <= RTOL, f"ONNX Runtime: '{o}' differs by {rel_err(got[o], want):.3g}"
        assert rel_err(traced[o], want) <= RTOL, f"TorchScript: '{o}' differs by {rel_err(traced[o], want):.3g}"
    assert float(theirs.blobs["lambda"].data[0]) == pytest.approx(1000 / (1 + 0.12 * 41), rel=1e-6)
