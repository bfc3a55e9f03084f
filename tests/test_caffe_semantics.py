"""What real pycaffe does where caffe_torch used to differ silently (issue 19), checked against Caffe's source
semantics with NumPy references (tests/test_conformance_semantics.py compares the same cases with the real
build):
- after `solver.step(n)` every activation's `.diff` holds the last backward's diff and a kept diff view follows
  it; `debug_info: true` logs Caffe's [Forward] / [Backward] lines;
- shared params take lr_mult / decay_mult as Net::AppendParam merges them (a sharer's value when the owner set
  none; conflicting values are an error naming the layer and the field), and a layer whose own ParamSpec has
  lr_mult 0 adds nothing to a shared param's diff;
- tops own their memory wherever Caffe's layer copies (and every `.data` / `.diff` is C-ordered);
- Caffe's set-up CHECKs are errors naming the file, line, layer and field;
- Split layers where Caffe's InsertSplits puts them, with its names, summed in a ranged backward;
- the snapshot folder is checked when the solver is built;
- a TEST net's backward reads what its in-place layers read in the forward, though that forward recorded nothing.
"""

import logging
import re
import zlib

import numpy as np
import pytest
import torch

import caffe_torch as caffe

F64 = torch.float64


def net_from(tmp_path, text, phase=caffe.TRAIN, name="net.prototxt", **kw):
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), phase, **kw)


def solver_from(tmp_path, net_text, solver_fields, **kw):
    (tmp_path / "net.prototxt").write_text(net_text)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "{tmp_path / "net.prototxt"}"\n{solver_fields}\n')
    return caffe.get_solver(str(path), **kw)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------- activation diffs after a step
STEP_NET = """
layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.7 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.7 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" }
"""
STEP_SOLVER = 'base_lr: 0.5 lr_policy: "fixed" momentum: 0.9 max_iter: 10'


def step_net_diffs(params, x, label):
    """NumPy forward/backward of STEP_NET: {blob: diff} as Caffe leaves them after Backward."""
    (w1, b1), (w2, b2) = params
    pre = x @ w1.T + b1
    h = np.maximum(pre, 0)
    z = h @ w2.T + b2
    onehot = np.eye(3)[label.astype(int)]
    dz = (softmax(z) - onehot) / len(x)
    dh = dz @ w2
    return {"ip2": dz, "ip2_ip2_0_split_0": dz, "ip2_ip2_0_split_1": np.zeros_like(dz),
            "ip1": dh * (pre > 0), "loss": np.ones(())}


def test_activation_diffs_after_solver_step_as_pycaffe(tmp_path):
    caffe.set_random_seed(3)
    s = solver_from(tmp_path, STEP_NET, STEP_SOLVER, dtype=F64)
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((4, 3)), np.array([0, 1, 2, 1.0])
    s.net.blobs["data"].data[...] = x
    s.net.blobs["label"].data[...] = label
    kept = {b: s.net.blobs[b].diff for b in ("ip1", "ip2")}       # views kept across the steps
    for _ in range(2):
        params = [[p.data.copy() for p in s.net.params[layer]] for layer in ("ip1", "ip2")]
        s.step(1)
        want = step_net_diffs(params, x, label)
        for blob, diff in want.items():
            np.testing.assert_allclose(s.net.blobs[blob].diff, diff, rtol=1e-12, atol=1e-15, err_msg=blob)
        for blob, view in kept.items():
            np.testing.assert_allclose(view, want[blob], rtol=1e-12, atol=1e-15, err_msg=blob)
        assert np.abs(want["ip1"]).max() > 1e-3          # the check is not vacuous
    # Caffe computes no diff for an input without force_backward
    assert not s.net.blobs["data"].diff.any()


FWD_NET = """force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "z" }
"""


def test_forward_leaves_the_diffs_of_the_last_backward(tmp_path):
    """Caffe's Forward writes data only: after forward, backward, forward every diff is still the backward's."""
    net = net_from(tmp_path, FWD_NET, dtype=F64)
    net.blobs["x"].data[...] = 1
    net.forward()
    net.backward(z=np.full((2, 2), 2.0))
    net.blobs["x"].data[...] = -1            # the second forward computes other data...
    net.forward()
    assert (net.blobs["z"].data == 0).all()
    np.testing.assert_array_equal(net.blobs["z"].diff, 2)          # ...and keeps every diff
    np.testing.assert_array_equal(net.blobs["y"].diff, 2)          # relu'(3) = 1 at the first forward
    np.testing.assert_array_equal(net.blobs["x"].diff, 4)
    np.testing.assert_array_equal(net.params["ip"][0].diff, 4)


def test_training_loop_choice_keeps_no_activation_diffs(tmp_path):
    """blob_diffs=False (what speaker/train.py asks for): same update, no activation diff kept."""
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((4, 3)), np.array([0, 1, 2, 1.0])
    out = {}
    for keep in (True, False):
        caffe.set_random_seed(3)
        (tmp_path / str(keep)).mkdir()
        s = solver_from(tmp_path / str(keep), STEP_NET, STEP_SOLVER, dtype=F64, blob_diffs=keep)
        s.net.blobs["data"].data[...] = x
        s.net.blobs["label"].data[...] = label
        s.step(3)
        out[keep] = ([p.data.copy() for layer in s.net.params.values() for p in layer],
                     s.net.blobs["ip1"].diff.copy())
    for a, b in zip(out[True][0], out[False][0]):
        np.testing.assert_array_equal(a, b)
    assert out[True][1].any() and not out[False][1].any()


def test_debug_info_logs_caffe_lines(tmp_path, caplog):
    caffe.set_random_seed(3)
    s = solver_from(tmp_path, STEP_NET, STEP_SOLVER + " display: 2 debug_info: true", dtype=F64)
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((4, 3)), np.array([0, 1, 2, 1.0])
    s.net.blobs["data"].data[...] = x
    s.net.blobs["label"].data[...] = label
    params = [[p.data.copy() for p in s.net.params[layer]] for layer in ("ip1", "ip2")]
    with caplog.at_level(logging.INFO, logger="caffe_torch"):
        s.step(2)                          # iteration 0 is a display iteration, iteration 1 is not
    lines = [r.getMessage() for r in caplog.records if re.search(r"\[(Forward|Backward)\] Layer", r.getMessage())]
    (w1, b1), (w2, b2) = params
    pre = x @ w1.T + b1
    h = np.maximum(pre, 0)
    z = h @ w2.T + b2
    diffs = step_net_diffs(params, x, label)
    loss = -np.log(softmax(z)[np.arange(4), label.astype(int)]).mean()
    acc = np.mean(z.argmax(axis=1) == label)
    dw2 = diffs["ip2"].T @ h
    dw1 = diffs["ip1"].T @ x
    mean = lambda a: float(np.abs(a).mean())  # noqa: E731
    want = [
        ("Forward", "in", "top blob", "data", mean(x)), ("Forward", "in", "top blob", "label", mean(label)),
        ("Forward", "label_in_1_split", "top blob", "label_in_1_split_0", mean(label)),
        ("Forward", "label_in_1_split", "top blob", "label_in_1_split_1", mean(label)),
        ("Forward", "ip1", "top blob", "ip1", mean(pre)), ("Forward", "ip1", "param blob", "0", mean(w1)),
        ("Forward", "ip1", "param blob", "1", mean(b1)), ("Forward", "relu", "top blob", "ip1", mean(h)),
        ("Forward", "ip2", "top blob", "ip2", mean(z)), ("Forward", "ip2", "param blob", "0", mean(w2)),
        ("Forward", "ip2", "param blob", "1", mean(b2)),
        ("Forward", "ip2_ip2_0_split", "top blob", "ip2_ip2_0_split_0", mean(z)),
        ("Forward", "ip2_ip2_0_split", "top blob", "ip2_ip2_0_split_1", mean(z)),
        ("Forward", "loss", "top blob", "loss", loss), ("Forward", "acc", "top blob", "acc", acc),
        ("Backward", "loss", "bottom blob", "ip2_ip2_0_split_0", mean(diffs["ip2"])),
        ("Backward", "ip2_ip2_0_split", "bottom blob", "ip2", mean(diffs["ip2"])),
        ("Backward", "ip2", "bottom blob", "ip1", mean(diffs["ip2"] @ w2)),
        ("Backward", "ip2", "param blob", "0", mean(dw2)),
        ("Backward", "ip2", "param blob", "1", mean(diffs["ip2"].sum(0))),
        ("Backward", "relu", "bottom blob", "ip1", mean(diffs["ip1"])),
        ("Backward", "ip1", "param blob", "0", mean(dw1)),
        ("Backward", "ip1", "param blob", "1", mean(diffs["ip1"].sum(0))),
    ]
    pattern = re.compile(r"^    \[(Forward|Backward)\] Layer (\S+), (top blob|bottom blob|param blob) (\S+) "
                         r"(?:data|diff): (\S+)$")
    got = [pattern.match(line) for line in lines]
    assert all(got), lines
    assert [m.groups()[:4] for m in got] == [w[:4] for w in want]          # once: display iteration only
    for m, w in zip(got, want):
        assert float(m.group(5)) == pytest.approx(w[4], rel=1e-5), m.group(0)      # 6 significant digits
    summary = [r for r in caplog.records if "All net params" in r.getMessage()]
    assert len(summary) == 1 and summary[0].levelno == logging.ERROR
    numbers = [float(v) for v in re.findall(r"[-0-9.e+]+(?=[,)])", summary[0].getMessage())]
    ps = [p for pair in params for p in pair]
    gs = [dw1, diffs["ip1"].sum(0), dw2, diffs["ip2"].sum(0)]
    want_norms = [sum(np.abs(p).sum() for p in ps), sum(np.abs(g).sum() for g in gs),
                  np.sqrt(sum((p ** 2).sum() for p in ps)), np.sqrt(sum((g ** 2).sum() for g in gs))]
    np.testing.assert_allclose(numbers, want_norms, rtol=1e-5)


# ------------------------------------------------------------------------- shared params (Net::AppendParam)
SHARE_NET = """
layer {{ name: "in" type: "Input" top: "x" top: "t"
        input_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 dim: 2 }} }} }}
layer {{ name: "a" type: "InnerProduct" bottom: "x" top: "a" param {{ name: "w" {a} }} param {{ lr_mult: 0 }}
        inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" }} }} }}
layer {{ name: "b" type: "InnerProduct" bottom: "x" top: "b" param {{ name: "w" {b} }} param {{ lr_mult: 0 }}
        inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" }} }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "t" top: "loss" }}
"""


@pytest.mark.parametrize("a, b, lr, decay", [
    ("", "", 1.0, 1.0),
    ("", "lr_mult: 0", 0.0, 1.0),                    # the case: the sharer freezes the blob
    ("", "decay_mult: 0", 1.0, 0.0),
    ("lr_mult: 3", "", 3.0, 1.0),
    ("lr_mult: 3", "lr_mult: 3 decay_mult: 2", 3.0, 2.0),
    ("decay_mult: 0.5", "lr_mult: 0.25", 0.25, 0.5),
])
def test_shared_param_mults_merge_as_append_param(tmp_path, a, b, lr, decay):
    caffe.set_random_seed(5)
    s = solver_from(tmp_path, SHARE_NET.format(a=a, b=b), 'base_lr: 0.1 lr_policy: "fixed" weight_decay: 0.01 '
                    "max_iter: 10", dtype=F64)
    assert [(name, mult_lr, mult_decay) for _, mult_lr, mult_decay, name in s.net.learnable_params()] == \
        [("a[0]", lr, decay), ("a[1]", 0.0, 1.0), ("b[1]", 0.0, 1.0)]
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    s.net.blobs["x"].data[...] = x
    s.net.blobs["t"].data[...] = t
    w = s.net.params["a"][0].data.copy()
    ba, bb = s.net.params["a"][1].data.copy(), s.net.params["b"][1].data.copy()
    s.step(1)
    # reference: each layer whose own ParamSpec has lr_mult != 0 adds its part of the diff
    own = [not re.search(r"lr_mult: 0(?![.\d])", spec) for spec in (a, b)]
    r = (x @ w.T + ba + x @ w.T + bb - t) / 4
    diff = sum(r.T @ x for flag in own if flag)
    # base_lr and weight_decay are float fields of caffe.proto: 0.1 and 0.01 as float32 values
    update = s.param.base_lr * lr * (diff + s.param.weight_decay * decay * w)
    np.testing.assert_allclose(s.net.params["a"][0].data, w - update, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(s.net.params["b"][0].data, s.net.params["a"][0].data)


def test_sharer_with_lr_mult_zero_adds_no_diff(tmp_path):
    """pycaffe's forward/backward: the diff of a shared blob sums the layers that compute one (own lr_mult != 0)."""
    caffe.set_random_seed(5)
    net = net_from(tmp_path, SHARE_NET.format(a="lr_mult: 0", b=""), dtype=F64)
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    net.forward(x=x, t=t)
    net.backward()
    w, ba, bb = net.params["a"][0].data, net.params["a"][1].data, net.params["b"][1].data
    r = (x @ w.T + ba + x @ w.T + bb - t) / 4
    np.testing.assert_allclose(net.params["a"][0].diff, r.T @ x, rtol=1e-12)        # b's part only
    np.testing.assert_allclose(net.params["b"][0].diff, r.T @ x, rtol=1e-12)


@pytest.mark.parametrize("a, b, field", [("lr_mult: 1", "lr_mult: 2", "lr_mult"),
                                         ("decay_mult: 0", "decay_mult: 1", "decay_mult"),
                                         ("", "lr_mult: 0 decay_mult: 3", None)])
def test_shared_param_conflicting_mults_are_refused(tmp_path, a, b, field):
    text = SHARE_NET.format(a=a, b=b)
    if field is None:                 # a third layer that disagrees with what the second one set
        text += ('layer { name: "c" type: "InnerProduct" bottom: "x" top: "c" param { name: "w" decay_mult: 2 } '
                 'inner_product_param { num_output: 2 } }\n')
        field, layer, other = "decay_mult", "c", "b"
    else:
        layer, other = "b", "a"
    with pytest.raises(caffe.LayerError) as info:
        net_from(tmp_path, text, name="shared.prototxt")
    msg = str(info.value)
    assert "\n" not in msg and "shared.prototxt:" in msg and f"layer '{layer}'" in msg
    assert f"mismatched {field}" in msg and f"layer '{other}'" in msg


SHARE_TEST_NET = """
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
SHARE_TEST_SOLVER = 'base_lr: 0.1 lr_policy: "fixed" test_iter: 1 test_interval: 100 test_initialization: false ' \
    "max_iter: 10"


def test_test_nets_share_trained_weights_from_their_first_test_and_keep_their_diffs(tmp_path):
    """Caffe's Solver::Test calls ShareTrainedLayersWith (ShareData only) before each test: until then a test net
    has its own filled weights, and a pycaffe backward of a test net never touches the train net's diffs."""
    s = solver_from(tmp_path, SHARE_TEST_NET, SHARE_TEST_SOLVER, dtype=F64)
    tn = s.test_nets[0]
    for net in (s.net, tn):
        net.blobs["x"].data[...] = 1
        net.blobs["t"].data[...] = 0
    s.step(1)                                   # no test yet: the test net keeps its filler values
    np.testing.assert_array_equal(tn.params["ip"][0].data, 0.5)
    np.testing.assert_allclose(s.net.params["ip"][0].data, 0.5 - 0.1 * 1.5 / 4 * 4, rtol=1e-6)   # dy = 1.5 / 4
    train_diff = s.net.params["ip"][0].diff.copy()
    s.test_all()                                # shares the data
    assert np.shares_memory(tn.params["ip"][0].data, s.net.params["ip"][0].data)
    tn.forward()
    tn.backward()
    y = 3 * s.net.params["ip"][0].data[0, 0] + s.net.params["ip"][1].data[0]
    np.testing.assert_allclose(tn.params["ip"][0].diff, np.full((2, 3), 4 * y / 4), rtol=1e-12)
    np.testing.assert_array_equal(s.net.params["ip"][0].diff, train_diff)        # the train net's, untouched


# ------------------------------------------------------------------------- memory ownership
# The layers whose Caffe implementation shares a top's memory with a bottom (ShareData): Flatten, Reshape,
# Split, Parameter (its blob), a one-bottom Concat and a one-top Slice. Every other top is the layer's own.
SHARING = {"Flatten", "Reshape", "Split", "Parameter"}


def _conformance_cases():
    from tests.test_conformance import CASES

    return CASES


def changed_when_writing(net, layers) -> dict:
    """{top: [the other blobs whose data changed]} writing into each top of `layers` in turn (tops of Input
    layers, tops that are their layer's bottom and empty tops left out)."""
    out = {}
    for lname in layers:
        if net.layer_dict[lname].type == "Input":
            continue
        for top in net.top_names[lname]:
            if top in net.bottom_names[lname] or not net.blobs[top].data.size:
                continue
            before = {b: net.blobs[b].data.copy() for b in net.blobs if b != top}
            net.blobs[top].data[...] = 12345.0
            out[top] = sorted(b for b, v in before.items() if not np.array_equal(net.blobs[b].data, v,
                                                                                    equal_nan=True))
    return out


def _shares(net, lname) -> bool:
    kind = net.layer_dict[lname].type
    return kind in SHARING or (kind == "Concat" and len(net.bottom_names[lname]) == 1) or \
        (kind == "Slice" and len(net.top_names[lname]) == 1)


@pytest.mark.parametrize("case", _conformance_cases(), ids=lambda c: c.id)
def test_tops_own_their_memory_where_caffe_copies(tmp_path, case):
    """Every layer type (tests/test_conformance.py's catalogue): write into each top's `.data` after a forward;
    no other blob may change unless Caffe's layer shares that memory. Every array handed out is C-ordered."""
    from tests.test_conformance import case_net_text, feed, make_inputs

    net = net_from(tmp_path, case_net_text(case), caffe.TRAIN if case.phase == "TRAIN" else caffe.TEST)
    feed(net, make_inputs(case, np.random.default_rng(zlib.crc32(case.id.encode()))))
    net.forward()
    if case.backward:
        net.backward()
    for name, blob in net.blobs.items():
        assert blob.data.flags.c_contiguous and blob.diff.flags.c_contiguous, name
    changed = changed_when_writing(net, [n for n in net._layer_names if not _shares(net, n)])
    assert all(v == [] for v in changed.values()), changed


def test_slice_and_dropout_tops_are_copies(tmp_path):
    """The issue's cases: a Slice along axis 1 (its tops were strided views of the bottom), Dropout in TEST and
    with ratio 0, LabelSpecificAdd and AdditiveAngularMargin in TEST."""
    net = net_from(tmp_path, """
layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 4 } shape { dim: 2 } } }
layer { name: "slice" type: "Slice" bottom: "x" top: "p" top: "q" slice_param { axis: 1 } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "d" dropout_param { dropout_ratio: 0 } }
layer { name: "drop_test" type: "Dropout" bottom: "x" top: "e" include { phase: TEST } }
layer { name: "lsa" type: "LabelSpecificAdd" bottom: "x" bottom: "label" top: "f" label_specific_add_param { bias: 1 } }
layer { name: "aam" type: "AdditiveAngularMargin" bottom: "x" bottom: "label" top: "g" }
""", caffe.TEST)
    x = np.arange(8.0).reshape(2, 4) / 10
    net.blobs["x"].data[...] = x
    net.blobs["label"].data[...] = [0, 1]
    net.forward()
    for top in ("p", "q", "e", "f", "g"):
        assert net.blobs[top].data.flags.c_contiguous
        net.blobs[top].data[...] = -1
        np.testing.assert_array_equal(net.blobs["x"].data, x.astype(np.float32))
    np.testing.assert_array_equal(net.blobs["q"].data, -1)          # p's write did not reach its sibling q
    crop = net_from(tmp_path, 'layer { name: "in" type: "Input" top: "x" top: "r" '
                    'input_param { shape { dim: 2 dim: 4 } shape { dim: 2 dim: 4 } } }\n'
                    'layer { name: "crop" type: "Crop" bottom: "x" bottom: "r" top: "c" crop_param { axis: 1 } }\n',
                    name="crop.prototxt")            # found on the way: a Crop that crops nothing
    crop.blobs["x"].data[...] = x
    crop.forward()
    crop.blobs["c"].data[...] = -1
    np.testing.assert_array_equal(crop.blobs["x"].data, x.astype(np.float32))
    net2 = net_from(tmp_path, 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }\n'
                    'layer { name: "drop" type: "Dropout" bottom: "x" top: "d" dropout_param { dropout_ratio: 0 } }\n',
                    name="train.prototxt")
    net2.blobs["x"].data[...] = x
    net2.forward()
    net2.blobs["d"].data[...] = -1
    np.testing.assert_array_equal(net2.blobs["x"].data, x.astype(np.float32))


# ------------------------------------------------------------------------- set-up CHECKs
def _layer(type_, param="", bottoms=("x",), tops=("y",)):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "bad" type: "{type_}" {b} {t} {param} }}'


def _inputs(shapes: dict) -> str:
    tops = " ".join(f'top: "{n}"' for n in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes.values())
    return f'layer {{ name: "in" type: "Input" {tops} input_param {{ {dims} }} }}\n'


X4 = {"x": (2, 3, 4, 5)}
XL = {"x": (4, 6), "label": (3,)}
# (id, inputs, layer, what the error must mention): each breaks one CHECK of Caffe's LayerSetUp / Reshape (the
# real build aborts on every one: tests/test_conformance_semantics.py)
REFUSED = [
    ("Pooling-pad-and-pad_h", X4, _layer("Pooling", "pooling_param { kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1 }"),
     "pad_h"),
    ("Pooling-pad_h-without-pad_w", X4, _layer("Pooling", "pooling_param { kernel_size: 3 pad_h: 1 }"), "pad_w"),
    ("Pooling-stride-and-stride_h", X4,
     _layer("Pooling", "pooling_param { kernel_size: 2 stride: 1 stride_h: 1 stride_w: 1 }"), "stride_h"),
    ("Pooling-stride_w-without-stride_h", X4, _layer("Pooling", "pooling_param { kernel_size: 2 stride_w: 2 }"),
     "stride_h"),
    ("Pooling-kernel_h-without-kernel_w", X4, _layer("Pooling", "pooling_param { kernel_h: 2 }"), "kernel_w"),
    ("Pooling-kernel_size-and-kernel_h-kernel_w", X4,
     _layer("Pooling", "pooling_param { kernel_size: 2 kernel_h: 2 kernel_w: 2 }"), "kernel_h"),
    ("Flatten-in-place", X4, _layer("Flatten", tops=("x",)), "in-place"),
    ("Reshape-in-place", X4, _layer("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }", tops=("x",)),
     "in-place"),
    ("Split-in-place", X4, _layer("Split", tops=("x", "y")), "in-place"),
    ("Concat-axis-and-concat_dim", {"x": (2, 3), "z": (2, 3)},
     _layer("Concat", "concat_param { axis: 1 concat_dim: 1 }", ("x", "z")), "concat_dim"),
    ("Slice-axis-and-slice_dim", {"x": (2, 4)}, _layer("Slice", "slice_param { axis: 1 slice_dim: 1 }",
                                                       tops=("p", "q")), "slice_dim"),
    ("Accuracy-label-count", XL, _layer("Accuracy", "", ("x", "label")), "label"),
    ("SoftmaxWithLoss-batch", {"x": (4, 6), "label": (2, 2)}, _layer("SoftmaxWithLoss", "", ("x", "label")),
     "first dimension"),
    ("LabelSpecificAdd-label-count", XL, _layer("LabelSpecificAdd", "", ("x", "label")), "label"),
    ("AdditiveAngularMargin-label-count", XL, _layer("AdditiveAngularMargin", "", ("x", "label")), "label"),
    ("MarginInnerProduct-label-count", {"x": (4, 6), "label": (4, 2)},
     _layer("MarginInnerProduct", "margin_inner_product_param { num_output: 3 }", ("x", "label")), "label"),
    ("BatchNorm-1D", {"x": (4,)}, _layer("BatchNorm"), "channel axis"),
    ("Flatten-end_axis-two-before-axis", X4, _layer("Flatten", "flatten_param { axis: 3 end_axis: 0 }"), "end_axis"),
    ("Slice-in-place", {"x": (2, 4)}, _layer("Slice", "slice_param { axis: 1 }", tops=("x", "q")), "in place"),
    ("in-place-after-a-reader", {"x": (2, 3)},
     _layer("ReLU", bottoms=("x",), tops=("r",)).replace('"bad"', '"reader"') + "\n" + _layer("ReLU", tops=("x",)),
     "produced by multiple sources"),
]
# what Caffe accepts although it looks odd, with the top shape it gives: kernel_size with a lone kernel_h
# (kernel_size wins), a Flatten whose end_axis is just before its axis (an axis of 1 is inserted)
ACCEPTED = [
    ("Pooling-kernel_size-and-lone-kernel_h", X4, _layer("Pooling", "pooling_param { kernel_size: 2 kernel_h: 3 }"),
     (2, 3, 3, 4)),
    ("Slice-one-top", {"x": (2, 4)}, _layer("Slice", "slice_param { axis: 1 }"), (2, 4)),
    ("Concat-one-bottom", {"x": (2, 4)}, _layer("Concat"), (2, 4)),
    ("Flatten-end_axis-one-before-axis", X4, _layer("Flatten", "flatten_param { axis: 2 end_axis: 1 }"),
     (2, 3, 1, 4, 5)),
]


@pytest.mark.parametrize("case_id, shapes, layer, mention", REFUSED, ids=[c[0] for c in REFUSED])
def test_caffe_setup_checks_are_one_line_errors(tmp_path, case_id, shapes, layer, mention):
    with pytest.raises(caffe.LayerError) as info:
        net_from(tmp_path, _inputs(shapes) + layer + "\n", name="bad.prototxt")
    msg = str(info.value)
    assert "\n" not in msg and "bad.prototxt:" in msg and mention in msg, msg
    assert re.search(r"bad\.prototxt:\d+: layer '\w+' \(type \w+\)", msg), msg


@pytest.mark.parametrize("case_id, shapes, layer, top_shape", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_what_caffe_accepts_builds(tmp_path, case_id, shapes, layer, top_shape):
    net = net_from(tmp_path, _inputs(shapes) + layer + "\n")
    assert net.blobs["y"].shape == top_shape
    net.blobs["x"].data[...] = np.arange(net.blobs["x"].count).reshape(shapes["x"])
    net.forward()
    assert net.blobs["y"].data.shape == top_shape


@pytest.mark.parametrize("layer", [_layer("Pooling", "pooling_param { kernel_size: 2 }", tops=("x",)),
                                   _layer("InnerProduct", "inner_product_param { num_output: 2 }", tops=("x",)),
                                   _layer("ArgMax", tops=("x",))], ids=["Pooling", "InnerProduct", "ArgMax"])
def test_in_place_top_that_changes_shape_is_refused(tmp_path, layer):
    """Deliberately stricter than Caffe, which builds such a net and then runs every later forward on a bottom it
    reshaped itself (garbage, or an abort at the next Reshape): one line naming the layer and the shapes."""
    with pytest.raises(caffe.LayerError, match=r"in place but changes its shape .* give the top another name"):
        net_from(tmp_path, _inputs({"x": (2, 3, 4, 4)}) + layer + "\n")


# ------------------------------------------------------------------------- Split layers (InsertSplits)
def test_split_layers_as_caffe_inserts_them(tmp_path):
    """insert_splits.cpp by hand: a Split after every top with several readers (a loss_weight counts as one),
    named <blob>_<layer>_<top index>_split(_<k>); the loss weight moves to the split's first top."""
    net = net_from(tmp_path, """
layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" loss_weight: 0.5
        inner_product_param { num_output: 4 } }
layer { name: "ip2" type: "InnerProduct" bottom: "fc" top: "ip2" inner_product_param { num_output: 3 } }
layer { name: "relu" type: "ReLU" bottom: "ip2" top: "ip2" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" }
layer { name: "fc3" type: "InnerProduct" bottom: "data" top: "fc3" inner_product_param { num_output: 2 } }
""")
    assert net._layer_names == ["in", "data_in_0_split", "label_in_1_split", "fc", "fc_fc_0_split", "ip2", "relu",
                                "ip2_relu_0_split", "loss", "acc", "fc3"]
    assert [layer.type for layer in net.layers] == ["Input", "Split", "Split", "InnerProduct", "Split",
                                                    "InnerProduct", "ReLU", "Split", "SoftmaxWithLoss", "Accuracy",
                                                    "InnerProduct"]
    assert net.top_names["fc_fc_0_split"] == ["fc_fc_0_split_0", "fc_fc_0_split_1"]
    assert net.bottom_names["ip2"] == ["fc_fc_0_split_1"]
    assert net.bottom_names["relu"] == net.top_names["relu"] == ["ip2"]         # in place, one reader: no split
    assert net.bottom_names["loss"] == ["ip2_relu_0_split_0", "label_in_1_split_0"]
    assert net.bottom_names["acc"] == ["ip2_relu_0_split_1", "label_in_1_split_1"]
    assert net.bottom_names["fc3"] == ["data_in_0_split_1"]
    assert list(net.blobs) == ["data", "label", "data_in_0_split_0", "data_in_0_split_1", "label_in_1_split_0",
                               "label_in_1_split_1", "fc", "fc_fc_0_split_0", "fc_fc_0_split_1", "ip2",
                               "ip2_relu_0_split_0", "ip2_relu_0_split_1", "loss", "acc", "fc3"]
    # fc's loss weight moved to the first top of its split, which no layer reads: a net output
    assert net.blob_loss_weights["fc_fc_0_split_0"] == 0.5 and net.blob_loss_weights["fc"] == 0
    assert net.outputs == ["acc", "fc3", "fc_fc_0_split_0", "loss"]
    assert net.params.keys() == {"fc", "ip2", "fc3"}
    x = np.random.default_rng(0).standard_normal((2, 3))
    out = net.forward(data=x, label=np.array([0, 2.0]))
    for k in (0, 1):       # split tops share the bottom's data (Caffe's ShareData)
        assert np.shares_memory(net.blobs[f"data_in_0_split_{k}"].data, net.blobs["data"].data)
    net.backward()
    # the loss weight 0.5 on fc reaches fc's diff through the split (its other top carries ip2's diff)
    w2 = net.params["ip2"][0].data
    np.testing.assert_allclose(net.blobs["fc"].diff, 0.5 + net.blobs["fc_fc_0_split_1"].diff, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["fc_fc_0_split_1"].diff, net.blobs["ip2"].diff @ w2, rtol=1e-5,
                               atol=1e-7)
    assert out["fc_fc_0_split_0"].shape == (2, 4)


def test_ranged_backward_sums_every_split_top(tmp_path):
    """The issue's example: data read by two InnerProducts. backward(start='a') runs a, the Split and the input:
    the Split adds the diff b's top left from the earlier full backward, as Caffe's SplitLayer::Backward."""
    net = net_from(tmp_path, """force_backward: true
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
        inner_product_param { num_output: 1 bias_term: false weight_filler { type: "constant" value: 100 } } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b"
        inner_product_param { num_output: 1 bias_term: false weight_filler { type: "constant" value: 2 } } }
""")
    net.blobs["data"].data[...] = 1
    net.forward()
    net.backward(a=np.ones((1, 1)), b=np.ones((1, 1)))
    np.testing.assert_array_equal(net.blobs["data"].diff, [[102, 102]])
    np.testing.assert_array_equal(net.blobs["data_in_0_split_1"].diff, [[2, 2]])
    net.blobs["a"].diff[...] = 2
    net.backward(start="a")
    np.testing.assert_array_equal(net.blobs["data"].diff, [[202, 202]])        # 2 x 100 + b's 2 left over


def test_split_layers_save_and_load(tmp_path):
    """A .caffemodel lists every layer, Split ones included (Caffe's Net::ToProto), without blobs; HDF5 weights
    get an empty group for them, as Caffe's ToHDF5."""
    import h5py

    from caffe_torch.weights import read_caffemodel

    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 2 } }\n'
            'layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" inner_product_param { num_output: 2 } }\n')
    net = net_from(tmp_path, text)
    net.save(str(tmp_path / "w.caffemodel"))
    saved = read_caffemodel(str(tmp_path / "w.caffemodel"))
    assert [(lp.name, lp.type, len(lp.blobs)) for lp in saved.layer] == [
        ("in", "Input", 0), ("x_in_0_split", "Split", 0), ("a", "InnerProduct", 2), ("b", "InnerProduct", 2)]
    other = net_from(tmp_path, text, name="other.prototxt")
    other.copy_from(str(tmp_path / "w.caffemodel"))
    for layer in ("a", "b"):
        for mine, theirs in zip(other.params[layer], net.params[layer]):
            np.testing.assert_array_equal(mine.data, theirs.data)
    net.save_hdf5(str(tmp_path / "w.h5"))
    with h5py.File(tmp_path / "w.h5") as f:
        assert list(f["data"]) == sorted(["in", "x_in_0_split", "a", "b"]) and len(f["data/x_in_0_split"]) == 0


# ------------------------------------------------------------------------- the snapshot folder
def test_snapshot_folder_is_checked_when_the_solver_is_built(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for prefix, why in ((tmp_path / "missing" / "snap", "No such file"),
                        (tmp_path / "file" / "snap", "Not a directory")):
        with pytest.raises(caffe.PrototxtError) as info:
            solver_from(tmp_path, STEP_NET, f'base_lr: 0.1 lr_policy: "fixed" snapshot: 5 snapshot_prefix: "{prefix}"')
        msg = str(info.value)
        assert "\n" not in msg and "solver.prototxt" in msg and str(prefix.parent) in msg and why in msg, msg
    s = solver_from(tmp_path, STEP_NET, f'base_lr: 0.1 lr_policy: "fixed" snapshot: 5 snapshot_prefix: '
                    f'"{tmp_path / "snap"}"')
    assert s.iter == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["file", "net.prototxt", "solver.prototxt"]


IN_PLACE_TEST_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
layer { name: "p0" type: "PReLU" bottom: "x" top: "x" }
layer { name: "sc" type: "Scale" bottom: "x" top: "x" }
layer { name: "p1" type: "PReLU" bottom: "x" top: "x" }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "out" loss_weight: 1 inner_product_param { num_output: 2 } }
"""


@pytest.mark.parametrize("how", ["whole", "ranged", "kept-view"])
def test_test_net_backward_reads_in_place_inputs_of_its_forward(tmp_path, how):
    """A TEST net without force_backward records nothing in its forwards (evaluation pays nothing for a backward
    that may never come), yet its backward, whole or ranged, must read what each in-place layer read in that
    forward, as Caffe's in-place PReLU and Scale keep it (bottom_memory_, temp_), not the blob's overwritten data.
    NumPy reference of the chain x -> PReLU(a) -> Scale(s) -> PReLU(b) -> InnerProduct(W), all in place on x."""
    net = net_from(tmp_path, IN_PLACE_TEST_NET, caffe.TEST)
    rng = np.random.default_rng(5)
    a, s, b = (net.params[n][0] for n in ("p0", "sc", "p1"))
    a.data[...], s.data[...], b.data[...] = [0.3, 0.5, 0.7], [-1.5, 0.8, 2.0], [0.2, 0.4, 0.9]
    w = net.params["ip"][0].data
    w[...] = rng.standard_normal(w.shape)
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    view = net.blobs["x"].data if how == "kept-view" else None       # its memory gets the forward's top
    net.blobs["x"].data[...] = x
    net.forward()
    if how == "ranged":
        net.backward(start="ip", end="sc")
    else:
        net.backward()
    if view is not None:
        np.testing.assert_array_equal(view, net.blobs["x"].data)
    per_channel = (1, 3, 1, 1)
    x = x.astype(np.float64)
    y1 = np.where(x > 0, x, a.data.reshape(per_channel) * x)
    y2 = s.data.reshape(per_channel) * y1
    dy3 = (np.ones((2, 2)) @ w).reshape(x.shape)
    dy2 = dy3 * np.where(y2 > 0, 1, b.data.reshape(per_channel))
    dy1 = dy2 * s.data.reshape(per_channel)
    # Caffe's PReLU slope diff: sum of top_diff * bottom_data over bottom_data <= 0, per channel
    np.testing.assert_allclose(b.diff, (dy3 * y2 * (y2 <= 0)).sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.diff, (dy2 * y1).sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
    da = 0 if how == "ranged" else (dy1 * x * (x <= 0)).sum((0, 2, 3))      # a range ending at sc leaves p0
    np.testing.assert_allclose(a.diff, da, rtol=1e-5, atol=1e-5)


def test_silence_back_propagates_its_zero_diff_through_the_layers_below(tmp_path):
    """Caffe's Silence writes its bottoms a zero diff (force_backward: its backward runs), which the layers below
    back-propagate: a Log at x = 0 gives 0 * (1 / 0) = NaN there, 0 elsewhere (fuzz seed 907255). A loss elsewhere
    in the net makes its backward start from the losses."""
    net = net_from(tmp_path, 'force_backward: true\ninput: "x" input_shape { dim: 4 }\n'
                             'input: "z" input_shape { dim: 2 dim: 3 }\ninput: "label" input_shape { dim: 2 }\n'
                             'layer { name: "log" type: "Log" bottom: "x" top: "y" }\n'
                             'layer { name: "silence" type: "Silence" bottom: "y" }\n'
                             'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "label" top: "l" }\n')
    net.blobs["x"].data[...] = [0.0, 0.5, 1.0, 2.0]
    net.blobs["label"].data[...] = [0, 2]
    net.forward()
    net.backward()
    diff = net.blobs["x"].diff
    assert np.isnan(diff[0]) and np.array_equal(diff[1:], np.zeros(3, np.float32))
