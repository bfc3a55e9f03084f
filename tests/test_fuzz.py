"""The differential fuzzer (tests/fuzz/) on a fixed set of cases, against the real Caffe build: CI's share of it.

Cases 0 .. N_NETS - 1 (each a random net, pycaffe program and, for some, one illegal field; tests/fuzz/runner.py)
run on the real build and on caffe_torch. Every divergence must be explained: a documented quirk of the build
(tests/caffe_facts.py) or caffe_torch refusing bad input earlier than Caffe aborts. The number of cases
is fixed, not the time: the same nets on every machine, whatever its load. Run with -s for the table; run the
fuzzer itself for longer (`python -m tests.fuzz --budget 30m`, docs/conformance-and-fuzzing.md).
"""

import numpy as np
import pytest

from speaker.engine import try_import_pycaffe
from tests.fuzz.makers import GENERATED_TYPES
from tests.fuzz.runner import Engines, Score, case_program, run_seeds

caffe, _IMPORT_ERROR = try_import_pycaffe({"MarginInnerProduct", "Normalize", "LabelSpecificAdd",
                                           "AdditiveAngularMargin"})

pytestmark = [
    pytest.mark.caffe,
    pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}"),
]

N_NETS = 100       # every generated type appears in them (the first 70 suffice)


def test_fixed_seed_set(tmp_path):
    engines = Engines(tmp_path / "logs")
    score = Score()
    try:
        run_seeds(range(N_NETS), lambda: engines, score)
    finally:
        engines.close()
    print("\n" + score.table(GENERATED_TYPES))
    assert score.nets == N_NETS
    # the fixed set exercises every type the generator has (a change of the generator that loses one shows here)
    assert {t for t in GENERATED_TYPES if not score.type_nets[t]} == set()
    assert not score.failed, "unexplained divergences:\n  " + "\n  ".join(
        f"case {o.seed}: {o.unexplained[0]}" for o in score.failed[:20])


def test_loss_weight_count_mutation_is_not_cleared_by_a_split():
    """An invalid case with one loss_weight too many: Caffe's InsertSplits clears a layer's loss_weight when a weighted
    top is read by another layer (the Split carries the weight), so any count passes there and Caffe aborts, if at
    all, for another reason (seed 200117: an InfogainLoss under force_backward). The mutation avoids such layers."""
    mutated = 0
    for seed in range(200000, 200300):
        prog = case_program(seed)
        if not prog.invalid.endswith("counts: loss_weight"):
            continue
        mutated += 1
        net = prog.net_param()
        lp = next(lp for lp in net.layer if lp.name == prog.invalid.split("'")[1])
        assert len(lp.loss_weight) == len(lp.top) + 1
        assert not set(lp.top) & {b for other in net.layer if other is not lp for b in other.bottom}, seed
    assert mutated


@pytest.mark.parametrize("scale_param, iter_size, diff_explained, step_explained", [
    ("axis: 0", 2, True, True), ("axis: 0 num_axes: 2", 2, True, True), ("axis: 0", 1, True, False),
    ("axis: 1", 2, False, False), ("axis: 0 num_axes: 0", 2, False, False)])
def test_scale_leading_axes_diff_explains_only_its_scale(scale_param, iter_size, diff_explained, step_explained):
    """Quirk scale-leading-axes-diff (seed 400297): a Scale with its learned scale from axis 0 (and more than one
    value) has Caffe's diff written, not accumulated: its param diff diverges after a second backward, and any
    value after a step of an iter_size > 1 solver. A Scale from axis 1, or whose scale is one value (num_axes 0),
    accumulates in Caffe too; other layers' diffs are not explained."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    net = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 dim: 4 } } }\n'
           f'layer {{ name: "sc" type: "Scale" bottom: "x" top: "y" scale_param {{ {scale_param} }} }}\n'
           'layer { name: "ip" type: "InnerProduct" bottom: "y" top: "z" inner_product_param { num_output: 2 } }\n')
    prog = Program(net_text=net, solver_text=f'base_lr: 0.1 lr_policy: "fixed" iter_size: {iter_size}')
    divs = classify(prog, [Divergence("bwd1", "value", "param/diff/sc/0", "relative difference 0.5"),
                           Divergence("step1", "value", "blob/data/z", "relative difference 0.1"),
                           Divergence("bwd1", "value", "param/diff/ip/0", "relative difference 0.5")])
    quirk = "scale-leading-axes-diff"
    assert [d.cls for d in divs] == [quirk if diff_explained else "", quirk if step_explained else "", ""]


@pytest.mark.parametrize("x_shape, scale_param, quirk", [
    ((1, 2, 4), "", "scale-leading-axes-diff"), ((1, 2, 4), "num_axes: -1", "scale-whole-bottom-diff"),
    ((1, 1, 4), "num_axes: 1", ""), ((3, 2, 4), "", ""), ((3, 2, 4), "axis: -3", "scale-leading-axes-diff")])
def test_written_scale_diffs_read_the_bottoms_shape(x_shape, scale_param, quirk):
    """With Caffe's result at hand the rule reads the bottom's shape (seed 300013: a batch of 1 under a Scale
    from axis 1): outer_dim_ 1 and a scale of several values, or the whole bottom, is written; one value over a
    larger bottom, or outer_dim_ > 1, accumulates."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program
    from tests.fuzz.worker import EngineResult

    net = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
           f'layer {{ name: "sc" type: "Scale" bottom: "x" top: "y" scale_param {{ {scale_param} }} }}\n')
    theirs = EngineResult(stages=["build"], obs={"build/blob/data/x": np.zeros(x_shape, np.float32)})
    divs = classify(Program(net_text=net), [Divergence("bwd1", "value", "param/diff/sc/0", "relative difference 1")],
                    theirs)
    assert divs[0].cls == quirk


def test_wiring_mutation_gives_a_top_a_second_producer():
    """An invalid case whose top duplicates another layer's: the other producer must be in the net whatever its state
    and the top not already the layer's own. Seed 400427 drew an alternative excluded by a NetStateRule that the
    generator gives the layer's own top, so nothing changed and Caffe aborted on the valid net (BatchReindex under
    force_backward), naming no field."""
    mutated = 0
    for seed in range(400000, 400500):
        prog = case_program(seed)
        if " wiring: " not in prog.invalid or prog.expect_field == "nowhere":
            continue
        mutated += 1
        net = prog.net_param()
        lp = next(lp for lp in net.layer if lp.name == prog.invalid.split("'")[1])
        others = [o for o in net.layer if o is not lp and prog.expect_field in o.top]
        assert lp.top[0] == prog.expect_field and others, seed
        assert any(not len(o.include) and not len(o.exclude) for o in others), seed
    assert mutated
    assert " wiring: " not in case_program(400427).invalid


def test_dropout_ratio_one_is_the_release_builds_quirk():
    """Seeds 300091, 500254: the invalid case sets dropout_ratio: 1.0, which caffe_torch refuses at build and the
    Release build runs (its only check is a DCHECK): quirk dropout-ratio-unchecked. The same refusal for another
    mutated field, or a Caffe abort, stays unexplained."""
    from tests.fuzz.compare import Divergence, classify

    prog = case_program(500254)
    assert prog.expect_field == "dropout_ratio"
    detail = ("caffe_torch raises LayerError: net.prototxt:56: layer 'drop2' (type Dropout): dropout_ratio must be in "
              "[0, 1), got 1.0 after ['nothing']; Caffe completes after ['step1']")
    assert classify(prog, [Divergence("build", "refusal", "end", detail)])[0].cls == "dropout-ratio-unchecked"
    aborts = detail.replace("Caffe completes", "Caffe aborts")
    assert classify(prog, [Divergence("build", "refusal", "end", aborts)])[0].cls != "dropout-ratio-unchecked"
    other = case_program(400427)
    assert other.expect_field != "dropout_ratio"
    assert classify(other, [Divergence("build", "refusal", "end", detail)])[0].cls != "dropout-ratio-unchecked"


def test_rms_decay_mutation_breaks_only_rms_decay():
    """Seed 420134: the rms_decay mutation landed in a solver with momentum 0.9, which RMSProp refuses first (in both
    engines), so the demanded field was not the one that failed: the mutation now leaves no momentum."""
    from google.protobuf import text_format

    from caffe_torch.proto import caffe_pb2

    mutated = 0
    for seed in range(420000, 420400):
        prog = case_program(seed)
        if prog.expect_field != "rms_decay":
            continue
        mutated += 1
        s = text_format.Parse(prog.solver_text, caffe_pb2.SolverParameter())
        assert s.type == "RMSProp" and s.rms_decay == 1.5 and s.momentum == 0, seed
    assert mutated


PARAMETER_NET = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"\n'
                 '        inner_product_param { num_output: 2 } }\n'
                 'layer { name: "p" type: "Parameter" top: "p" {weight} parameter_param { shape { dim: 2 dim: 3 } } }\n'
                 '{reader}')


@pytest.mark.parametrize("weight, reader, iter_size, step_explained", [
    ("loss_weight: 2", "", 1, True),
    ("", 'layer { name: "pw" type: "Power" bottom: "p" top: "y" loss_weight: 1 }\n', 2, True),
    ("", 'layer { name: "pw" type: "Power" bottom: "p" top: "y" loss_weight: 1 }\n', 1, False),
    ("", "", 2, False)])
def test_parameter_top_diff_explains_what_the_param_reaches(weight, reader, iter_size, step_explained):
    """Quirk parameter-top-diff: a Parameter's top diff is its param's in Caffe, so a loss weight on the unread top is
    lost (seed 500949) and a reader's backward writes the param's diff, keeping only the last of iter_size passes (seed
    500051). After a step it explains the values connected to the param (the test net's too, and a kept param array),
    never those of an unconnected layer; with one pass and no loss weight on the top nothing."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    net = PARAMETER_NET.replace("{weight}", weight).replace("{reader}", reader)
    prog = Program(net_text=net, solver_text=f'base_lr: 0.1 lr_policy: "fixed" iter_size: {iter_size}', steps=[1],
                   test_net=True, backward=None)
    divs = classify(prog, [Divergence("step1", "value", "param/data/p/0", "relative difference 0.1"),
                           Divergence("step1", "value", "kept/param/data/p/0", "relative difference 0.1"),
                           Divergence("step1", "value", "test/blob/data/p", "relative difference 0.1"),
                           Divergence("step1", "value", "param/data/ip/0", "relative difference 0.1"),
                           Divergence("step1", "value", "blob/data/z", "relative difference 0.1")])
    quirk = "parameter-top-diff" if step_explained else ""
    assert [d.cls for d in divs] == [quirk, quirk, quirk, "", ""]


def test_parameter_top_diff_second_backward():
    """A second net.backward() without clearing: Caffe's reader writes the Parameter's diff (the last pass's), an
    InnerProduct's weight diff adds up in both engines."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    reader = 'layer { name: "pw" type: "Power" bottom: "p" top: "y" loss_weight: 1 }\n'
    prog = Program(net_text=PARAMETER_NET.replace("{weight}", "").replace("{reader}", reader), second_round=True)
    divs = classify(prog, [Divergence("bwd1", "value", "param/diff/p/0", "relative difference 0.5"),
                           Divergence("bwd1", "value", "param/diff/ip/0", "relative difference 0.5"),
                           Divergence("bwd0", "value", "param/diff/p/0", "relative difference 0.5")])
    assert [d.cls for d in divs] == ["parameter-top-diff", "", ""]


def test_hinge_scratch_diff_in_the_test_net():
    """Seeds 500283, 501051: Solver::TestClassification runs the test net's forward, whose HingeLoss writes its margins
    into its bottom's diff (hinge_loss_layer.cpp) as the train net's does: quirk hinge-scratch-diff for the test net's
    key too; a quirk that needs a backward (Scale's scratch diff) is not read for the test net, which runs none."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    net = ('layer { name: "in" type: "Input" top: "x" top: "l" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } '
           '} }\n'
           'layer { name: "sc" type: "Scale" bottom: "x" top: "s" propagate_down: false }\n'
           'layer { name: "h" type: "HingeLoss" bottom: "s" bottom: "l" top: "loss" }\n')
    prog = Program(net_text=net, solver_text='base_lr: 0.1 lr_policy: "fixed"', steps=[1], test_net=True)
    divs = classify(prog, [Divergence("step1", "value", "test/blob/diff/s", "relative difference 1"),
                           Divergence("step1", "value", "test/blob/diff/x", "relative difference 1"),
                           Divergence("step1", "value", "blob/diff/x", "relative difference 1")])
    assert [d.cls for d in divs] == ["hinge-scratch-diff", "", "scale-scratch-diff"]
