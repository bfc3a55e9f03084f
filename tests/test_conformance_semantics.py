"""The divergences of issue 19, compared with the real pycaffe build (tests/test_caffe_semantics.py checks the
same behaviour against NumPy references of Caffe's sources, without the build):
- activation diffs after `solver.step` and a kept diff view; the `debug_info` summary line;
- shared params' lr_mult / decay_mult (Net::AppendParam) and a sharer with lr_mult 0;
- which blobs change when a script writes into a top's `.data` (every layer type of tests/test_conformance.py);
- set-up CHECKs: Caffe aborts (run in a forked child, so that the abort is a result) where caffe_torch raises;
- Split layers: names, blobs, top/bottom names, outputs, loss weights, and a ranged backward;
- the snapshot folder check.
Tolerances are tests/test_conformance.py's (RTOL = 1e-5 relative to the blob's largest magnitude, float32).
"""

import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

import caffe_torch
from tests.test_caffe_semantics import (
    ACCEPTED,
    FWD_NET,
    REFUSED,
    SHARE_NET,
    SHARE_TEST_NET,
    SHARE_TEST_SOLVER,
    STEP_NET,
    STEP_SOLVER,
    _inputs,
    changed_when_writing,
)
from tests.test_conformance import (
    CASES,
    Compare,
    case_net_text,
    compare_blobs,
    compare_params,
    feed,
    make_inputs,
    phase,
)
from tests.test_conformance import caffe as real_caffe

pytestmark = [pytest.mark.caffe, pytest.mark.skipif(real_caffe is None, reason="real pycaffe not built")]
caffe = real_caffe


def solvers(tmp_path, net_text, fields):
    """Both engines' solvers of the same prototxt, caffe_torch's weights copied into Caffe."""
    (tmp_path / "net.prototxt").write_text(net_text)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "{tmp_path / "net.prototxt"}"\n{fields}\n')
    caffe_torch.set_random_seed(3)
    ours = caffe_torch.get_solver(str(path))
    theirs = caffe.get_solver(str(path))
    ours.net.save(str(tmp_path / "w.caffemodel"))
    theirs.net.copy_from(str(tmp_path / "w.caffemodel"))
    return ours, theirs


def test_activation_diffs_after_step_match_caffe(tmp_path):
    ours, theirs = solvers(tmp_path, STEP_NET, STEP_SOLVER)
    rng = np.random.default_rng(0)
    batch = {"data": rng.standard_normal((4, 3)).astype(np.float32), "label": np.array([0, 1, 2, 1], np.float32)}
    kept = [{b: s.net.blobs[b].diff for b in ("ip1", "ip2")} for s in (ours, theirs)]
    cmp = Compare("activation diffs after solver.step")
    for i in range(2):
        for s in (ours, theirs):
            feed(s.net, batch)
            s.step(1)
        compare_blobs(cmp, ours.net, theirs.net, f"after step {i}", diffs=True)
        for b in ("ip1", "ip2"):
            cmp(f"kept diff view after step {i}", b, kept[0][b], kept[1][b])
            cmp(f"kept diff view after step {i} (Caffe's own)", b, kept[1][b], theirs.net.blobs[b].diff)
        assert np.abs(theirs.net.blobs["ip1"].diff).max() > 1e-3
    cmp.check()


def test_forward_leaves_diffs_as_caffe(tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(FWD_NET)
    cmp = Compare("forward after backward")
    nets = [engine.Net(str(proto), engine.TRAIN) for engine in (caffe_torch, caffe)]
    for x in (1.0, -1.0):
        for net in nets:
            net.blobs["x"].data[...] = x
            net.forward()
        if x > 0:
            nets[1].blobs["z"].diff[...] = 2
            nets[1].backward()
            nets[0].backward(z=np.full((2, 2), 2.0, np.float32))
    compare_blobs(cmp, *nets, "forward after backward", diffs=True)
    compare_params(cmp, *nets, "forward after backward")
    cmp.check()


def test_test_net_sharing_matches_caffe(tmp_path):
    ours, theirs = solvers(tmp_path, SHARE_TEST_NET, SHARE_TEST_SOLVER)
    cmp = Compare("test net weights and diffs")
    for s in (ours, theirs):
        for net in (s.net, s.test_nets[0]):
            feed(net, {"x": np.ones((4, 3), np.float32), "t": np.zeros((4, 2), np.float32)})
        s.step(1)
    compare_params(cmp, ours.test_nets[0], theirs.test_nets[0], "test net before its first test")
    for s in (ours, theirs):
        s.test_all() if s is ours else s.test_nets[0].share_with(s.net)     # pycaffe has no test_all
        s.test_nets[0].forward()
        s.test_nets[0].backward()
    compare_params(cmp, ours.test_nets[0], theirs.test_nets[0], "test net after a test and a backward")
    compare_params(cmp, ours.net, theirs.net, "train net after the test net's backward")
    cmp.check()


def test_debug_info_summary_line_matches_caffe(tmp_path, capfd, caplog):
    """The line a release build prints (LOG(ERROR) in Net::Backward): same L1 / L2 norms of data and diffs."""
    ours, theirs = solvers(tmp_path, STEP_NET, STEP_SOLVER + " display: 1 debug_info: true")
    rng = np.random.default_rng(0)
    batch = {"data": rng.standard_normal((4, 3)).astype(np.float32), "label": np.array([0, 1, 2, 1], np.float32)}
    capfd.readouterr()
    feed(theirs.net, batch)
    theirs.step(1)
    caffe_line = [line for line in capfd.readouterr().err.splitlines() if "All net params" in line]
    feed(ours.net, batch)
    with caplog.at_level("ERROR", logger="caffe_torch"):
        ours.step(1)
    our_line = [r.getMessage() for r in caplog.records if "All net params" in r.getMessage()]
    assert len(caffe_line) == 1 and len(our_line) == 1, (caffe_line, our_line)
    number = r"([-0-9.e+]+)"
    shape = rf"\[Backward\] All net params \(data, diff\): L1 norm = \({number}, {number}\); " \
            rf"L2 norm = \({number}, {number}\)$"
    theirs_numbers = [float(v) for v in re.search(shape, caffe_line[0]).groups()]
    ours_numbers = [float(v) for v in re.search(shape, our_line[0]).groups()]
    np.testing.assert_allclose(ours_numbers, theirs_numbers, rtol=2e-5)       # 6 digits printed


@pytest.mark.parametrize("a, b", [("", ""), ("", "lr_mult: 0"), ("", "decay_mult: 0"), ("lr_mult: 3", ""),
                                  ("lr_mult: 3", "lr_mult: 3 decay_mult: 2"), ("decay_mult: 0.5", "lr_mult: 0.25"),
                                  ("lr_mult: 0", "")])
def test_shared_param_mults_match_caffe(tmp_path, a, b):
    ours, theirs = solvers(tmp_path, SHARE_NET.format(a=a, b=b), 'base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 '
                           "weight_decay: 0.01 max_iter: 10")
    rng = np.random.default_rng(1)
    cmp = Compare(f"shared param, owner '{a}', sharer '{b}'")
    for i in range(3):
        batch = {"x": rng.standard_normal((4, 3)).astype(np.float32),
                 "t": rng.standard_normal((4, 2)).astype(np.float32)}
        for s in (ours, theirs):
            feed(s.net, batch)
            s.step(1)
        compare_params(cmp, ours.net, theirs.net, f"step {i}")
    # pycaffe's forward / backward: the shared diff sums the layers whose own lr_mult is not 0
    for s in (ours, theirs):
        for blobs in s.net.params.values():
            for blob in blobs:
                blob.diff[...] = 0
        s.net.forward()
        s.net.backward()
    compare_params(cmp, ours.net, theirs.net, "forward/backward")
    cmp.check()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_memory_ownership_matches_caffe(tmp_path, case):
    proto = tmp_path / "layer.prototxt"
    proto.write_text(case_net_text(case))
    inputs = make_inputs(case, np.random.default_rng(zlib.crc32(case.id.encode())))
    changed = []
    for engine in (caffe_torch, caffe):
        net = engine.Net(str(proto), phase(engine, case.phase))
        feed(net, inputs)
        net.forward()
        changed.append(changed_when_writing(net, net._layer_names))
    assert changed[0] == changed[1]


# ------------------------------------------------------------------------- what Caffe refuses (CHECK aborts)
_RUNNER = r"""
import json, os, sys
import caffe
caffe.set_mode_cpu()
status = {}
for key, kind, path in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:                     # the child builds it; a CHECK failure aborts the child only
        fd = os.open(path + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        try:
            caffe.Net(path, caffe.TRAIN) if kind == "net" else caffe.get_solver(path)
        except BaseException as exc:
            os.write(2, repr(exc).encode())
            os._exit(3)
        os._exit(0)
    st = os.waitpid(pid, 0)[1]
    status[key] = "built" if st == 0 else "aborted" if os.WIFSIGNALED(st) and os.WTERMSIG(st) == 6 else "raised"
print(json.dumps(status))
"""


def caffe_builds(items) -> dict:
    """{key: (outcome, stderr)} for [(key, "net" | "solver", path)], each built by the real Caffe in a forked child;
    outcome "built", "aborted" (SIGABRT: a CHECK failure) or "raised" (a Python exception)."""
    env = dict(os.environ, GLOG_minloglevel="2", OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps([(k, kind, str(p)) for k, kind, p in items])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    status = json.loads(run.stdout.strip().splitlines()[-1])
    return {k: (status[k], open(str(p) + ".err").read()) for k, _, p in items}


def test_setup_checks_match_caffe(tmp_path):
    """Every case of test_caffe_semantics.REFUSED: Caffe aborts on a CHECK (SIGABRT, the message on stderr),
    caffe_torch raises its one-line LayerError; every ACCEPTED case builds in both with the same top shape."""
    items = []
    for case_id, shapes, layer, _ in REFUSED:
        items.append((case_id, "net", tmp_path / f"{case_id}.prototxt"))
        items[-1][2].write_text(_inputs(shapes) + layer + "\n")
    for case_id, shapes, layer, _ in ACCEPTED:
        items.append((case_id, "net", tmp_path / f"{case_id}.prototxt"))
        items[-1][2].write_text(_inputs(shapes) + layer + "\n")
    built = caffe_builds(items)
    for case_id, *_ in REFUSED:
        outcome, err = built[case_id]
        assert outcome == "aborted" and re.search(r"Check failed|^F\d{4,}", err, re.M), (case_id, outcome, err)
        with pytest.raises(caffe_torch.LayerError):
            caffe_torch.Net(str(tmp_path / f"{case_id}.prototxt"), caffe_torch.TRAIN)
    for case_id, *_ in ACCEPTED:
        assert built[case_id][0] == "built", (case_id, built[case_id])
        path = str(tmp_path / f"{case_id}.prototxt")
        assert caffe_torch.Net(path, caffe_torch.TRAIN).blobs["y"].shape == \
            tuple(caffe.Net(path, caffe.TRAIN).blobs["y"].shape)


def test_snapshot_folder_check_matches_caffe(tmp_path):
    (tmp_path / "net.prototxt").write_text(STEP_NET)
    missing = tmp_path / "solver.prototxt"
    missing.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1 lr_policy: "fixed" snapshot: 5 '
                       f'snapshot_prefix: "{tmp_path / "missing" / "snap"}"\n')
    outcome, err = caffe_builds([("missing", "solver", missing)])["missing"]
    assert outcome == "aborted" and "Cannot write to snapshot prefix" in err, err
    with pytest.raises(caffe_torch.PrototxtError, match="cannot write to snapshot_prefix"):
        caffe_torch.get_solver(str(missing))


# ------------------------------------------------------------------------- Split layers
SPLIT_NETS = {
    "loss-weighted-top-and-fan-out": """
layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" loss_weight: 0.5
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "fc" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "ip2" top: "ip2" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" }
layer { name: "fc3" type: "InnerProduct" bottom: "data" top: "fc3"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
""",
    "input-read-twice-by-one-layer": """force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "prod" type: "Eltwise" bottom: "x" bottom: "x" top: "y" eltwise_param { operation: PROD } }
layer { name: "sq" type: "Power" bottom: "x" top: "z" power_param { power: 2 } }
""",
    "two-inner-products": """force_backward: true
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
        inner_product_param { num_output: 1 bias_term: false weight_filler { type: "constant" value: 100 } } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b"
        inner_product_param { num_output: 1 bias_term: false weight_filler { type: "constant" value: 2 } } }
""",
}

SPLIT_STARTS = {"loss-weighted-top-and-fan-out": "loss", "input-read-twice-by-one-layer": "prod",
                "two-inner-products": "a"}


@pytest.mark.parametrize("name", list(SPLIT_NETS))
def test_split_layers_match_caffe(tmp_path, name):
    proto = tmp_path / "net.prototxt"
    proto.write_text(SPLIT_NETS[name])
    caffe_torch.set_random_seed(4)
    ours = caffe_torch.Net(str(proto), caffe_torch.TRAIN)
    ours.save(str(tmp_path / "w.caffemodel"))
    theirs = caffe.Net(str(proto), str(tmp_path / "w.caffemodel"), caffe.TRAIN)
    assert list(ours._layer_names) == list(theirs._layer_names)
    assert [layer.type for layer in ours.layers] == [layer.type for layer in theirs.layers]
    assert list(ours.blobs) == list(theirs.blobs)
    assert {k: list(v) for k, v in ours.top_names.items()} == {k: list(v) for k, v in theirs.top_names.items()}
    assert {k: list(v) for k, v in ours.bottom_names.items()} == {k: list(v) for k, v in theirs.bottom_names.items()}
    assert list(ours.outputs) == list(theirs.outputs) and list(ours.inputs) == list(theirs.inputs)
    assert dict(ours.blob_loss_weights) == dict(theirs.blob_loss_weights)
    rng = np.random.default_rng(5)
    inputs = {b: rng.standard_normal(ours.blobs[b].shape).astype(np.float32) for b in ours.inputs}
    if "label" in inputs:
        inputs["label"] = np.array([0, 2], np.float32)
    cmp = Compare(f"Split layers: {name}")
    for net in (ours, theirs):
        feed(net, inputs)
        net.forward()
        for out in net.outputs:                    # every output that is not a loss gets a diff to send back
            if not net.blob_loss_weights[out]:
                net.blobs[out].diff[...] = 1.5
        net.backward()
    compare_blobs(cmp, ours, theirs, "full backward", diffs=True)
    # a ranged backward from a layer that reads one top of a split: the split sums every top's diff, those this
    # pass computes and those the full backward left (the example: "two-inner-products", start 'a')
    start = SPLIT_STARTS[name]
    for net in (ours, theirs):
        for out in net.outputs:
            if not net.blob_loss_weights[out]:
                net.blobs[out].diff[...] = 4.0
        net.backward(start=start)
    compare_blobs(cmp, ours, theirs, f"backward(start={start})", diffs=True)
    cmp.check()
