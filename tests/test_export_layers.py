"""caffe_torch.export, layer by layer: every case of the conformance suite (tests/test_conformance.py: every layer
type, its variants and edge cases) as a one-layer net with random weights, exported in the TEST phase to ONNX
(run by ONNX Runtime) and TorchScript, and compared with caffe_torch's TEST forward on every top:
    max|exported - caffe_torch| <= RTOL * max|caffe_torch|        (RTOL 1e-5: float32 in all three)
with a dynamic batch where the net allows one (then also at batch + 1). caffe_torch itself equals real Caffe on
these cases (test_conformance.py), and the exported full nets are compared with Caffe in test_export_nets.py.
A type the exporter refuses must be refused with one line naming the layer, its type and file:line.
"""

import re
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="export extras not installed (pip install -r requirements-export.txt)")
ort = pytest.importorskip("onnxruntime", reason="export extras not installed "
                          "(pip install -r requirements-export.txt)")

import caffe_torch  # noqa: E402
from caffe_torch.export import ExportError, build_net, export_table, make_plan, to_onnx, to_torchscript  # noqa: E402
from caffe_torch.export.convert import output_name  # noqa: E402
from tests.test_conformance import CASES, Case, _layer, case_net_text, make_inputs, randomise_params  # noqa: E402

RTOL = 1e-5
REFUSED = {t for t, status, _ in export_table() if status == "refused"}
X4 = (("x", (2, 3, 4, 5), "normal"),)
EXTRA = [
    Case("Clip", _layer("Clip", "clip_param { min: -0.5 max: 0.7 }"), X4),
    Case("Swish", _layer("Swish", "swish_param { beta: 1.5 }"), X4),
    Case("Pooling-STOCHASTIC-TEST", _layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }"),
         (("x", (2, 3, 9, 10), "positive"),)),
    Case("Scale-min-max", _layer("Scale", "scale_param { min_value: -0.5 max_value: 0.5 bias_term: true }"), X4),
    Case("Reshape-batch-merged", _layer("Reshape", "reshape_param { shape { dim: -1 dim: 5 } }"), X4),
    Case("LRN-within-in-place-input", _layer("Power", "power_param { scale: 2 }", tops=("x",)), X4),
]
ALL = CASES + EXTRA


def _types(case: Case) -> set[str]:
    return set(re.findall(r'type: "(\w+)"', case.layer))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max() if b.size else 0.0
    diff = np.abs(a - b).max() if b.size else 0.0
    return diff / scale if scale else diff


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch_inputs(case: Case) -> set[str]:
    """The inputs whose first axis is the batch: those sized like the first input's first axis."""
    if not case.inputs or not case.inputs[0][1]:
        return set()
    return {n for n, s, _ in case.inputs if s and s[0] == case.inputs[0][1][0]}


def _grown(case: Case) -> Case:
    batch = _batch_inputs(case)
    return replace(case, inputs=tuple((n, (s[0] + 1, *s[1:]) if n in batch else s, k) for n, s, k in case.inputs))


def _run(net, plan, inputs, session, script, outputs, states):
    net.set_layer_states(states)        # the export fixes the counters' next values (MarginInnerProduct's lambda)
    for name, value in inputs.items():
        if tuple(net.blobs[name].shape) != value.shape:
            net.blobs[name].reshape(*value.shape)
    net.reshape()
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
    got = session.run([output_name(plan, o) for o in outputs], feeds)
    with torch.no_grad():
        traced = script(*[torch.from_numpy(inputs[i.name]) for i in session.get_inputs()])
    for o, y, t in zip(outputs, got, traced):
        want = net.blobs[o].data
        assert rel_err(y, want) <= RTOL, f"ONNX Runtime: top '{o}' differs by {rel_err(y, want):.3g}"
        t = t.detach().numpy()
        assert rel_err(t, want) <= RTOL, f"TorchScript: top '{o}' differs by {rel_err(t, want):.3g}"


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_layer_exports_as_caffe_torch_computes(tmp_path, case):
    proto = tmp_path / "layer.prototxt"
    proto.write_text(case_net_text(case))
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    caffe_torch.set_random_seed(9)
    net, where = build_net(str(proto), None, "TEST")
    if case.params == "random":
        randomise_params(net, rng)
    outputs = list(net.blobs)
    refused = _types(case) & REFUSED or ({"Pooling"} if "mask" in case.id else set())
    if refused:
        with pytest.raises(ExportError) as info:
            to_onnx(make_plan(net, where, outputs), 17, "layer")
        message = str(info.value)
        assert "\n" not in message
        assert re.match(rf"{re.escape(str(proto))}:\d+: layer 'l' \(type ({'|'.join(refused)})\) is not exported: ",
                        message), message
        return
    try:
        plan = make_plan(net, where, outputs, {n: frozenset({0}) for n in _batch_inputs(case)})
        model = to_onnx(plan, 17, "layer")
        dynamic = any(plan.input_dynamic.values())
    except ExportError as exc:
        assert "dynamic" in str(exc), exc
        plan = make_plan(net, where, outputs)
        model = to_onnx(plan, 17, "layer")
        dynamic = False
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    script = to_torchscript(plan)
    states = net.layer_states()
    _run(net, plan, make_inputs(case, rng), session, script, plan.outputs, states)
    if dynamic:
        _run(net, plan, make_inputs(_grown(case), rng), session, script, plan.outputs, states)


def ours() -> set[str]:
    """The layer types caffe_torch implements (not those other test modules register for their own use)."""
    from caffe_torch.layers.base import layer_class

    return {t for t in caffe_torch.known_types() if layer_class(t).__module__.startswith("caffe_torch.")}


def test_every_type_has_a_rule_or_a_refusal():
    """The exporter's table covers every layer type caffe_torch implements."""
    listed = {t for t, _, _ in export_table()}
    assert ours() - listed == set()


OPSET_CASES = [c for c in ALL if c.id in ("MVN", "Normalize-L2-2x3x2x5-2top", "Normalize-L1-4x6-1top",
                                          "BatchNorm-TEST-batch-stats", "Reduction-MEAN-last-axis",
                                          "Reduction-ASUM-axis1", "Slice-points", "Pooling-MAX-k3-s2-p1",
                                          "MarginInnerProduct-QUADRUPLE-TEST")]


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("case", OPSET_CASES, ids=[c.id for c in OPSET_CASES])
def test_lowest_and_highest_opset(tmp_path, case, opset):
    """The ops whose form changed between opsets (Reduce* axes an attribute before 18, an input from 18; Split,
    Pad) at the ends of the supported range."""
    proto = tmp_path / "layer.prototxt"
    proto.write_text(case_net_text(case))
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    caffe_torch.set_random_seed(9)
    net, where = build_net(str(proto), None, "TEST")
    randomise_params(net, rng)
    plan = make_plan(net, where, list(net.blobs))
    session = ort.InferenceSession(to_onnx(plan, opset, "layer").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    inputs = make_inputs(case, rng)
    net.set_layer_states(net.layer_states())
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    got = session.run([output_name(plan, o) for o in plan.outputs], {i.name: inputs[i.name] for i in
                                                                      session.get_inputs()})
    for o, y in zip(plan.outputs, got):
        assert rel_err(y, net.blobs[o].data) <= RTOL, f"opset {opset}: top '{o}'"


def test_opset_out_of_range(tmp_path):
    proto = tmp_path / "layer.prototxt"
    proto.write_text(case_net_text(ALL[0]))
    net, where = build_net(str(proto), None, "TEST")
    with pytest.raises(ValueError, match="--opset 12: the exporter writes opsets 13 to 21"):
        to_onnx(make_plan(net, where), 12, "x")
