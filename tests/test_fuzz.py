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


_X = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'


@pytest.mark.parametrize("layers, explained", [
    ('layer { name: "th" type: "TanH" bottom: "x" top: "t" }\n'
     'layer { name: "sg" type: "Sigmoid" bottom: "t" top: "t" }\n', True),
    ('layer { name: "th" type: "TanH" bottom: "x" top: "x" }\n'
     'layer { name: "sg" type: "Sigmoid" bottom: "x" top: "x" }\n', True),
    ('layer { name: "re" type: "ReLU" bottom: "x" top: "x" }\n'
     'layer { name: "sg" type: "Sigmoid" bottom: "x" top: "x" }\n', True),
    ('layer { name: "th" type: "TanH" bottom: "x" top: "t" }\n'
     'layer { name: "sg" type: "Sigmoid" bottom: "t" top: "u" }\n', False),
    ('layer { name: "re" type: "ReLU" bottom: "x" top: "t" }\n'
     'layer { name: "sg" type: "Sigmoid" bottom: "t" top: "t" }\n', False),
    ('layer { name: "pw" type: "Power" bottom: "x" top: "t" power_param { power: 2 } }\n'
     'layer { name: "sg" type: "Sigmoid" bottom: "t" top: "t" }\n', False)])
def test_backward_reads_overwritten_top_explains_the_readers_bottoms(layers, explained):
    """Quirk backward-reads-overwritten-top (seed 420059): a layer whose Backward reads its top's data (TanH), or its
    bottom's computing in place (ReLU), under a later in-place layer on that top gets the gradient at that layer's
    output: its bottom's diff (and what is upstream) diverges. Without the later in-place layer, or for a layer
    reading only its bottom out of place (ReLU, Power 2), nothing is explained; the top's own data never is."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    prog = Program(net_text=_X + layers, backward="kwargs")
    divs = classify(prog, [Divergence("bwd0", "value", "blob/diff/x", "relative difference 0.3"),
                           Divergence("fwd0", "value", "blob/data/t", "relative difference 0.3")])
    assert [d.cls for d in divs] == ["backward-reads-overwritten-top" if explained else "", ""]


@pytest.mark.parametrize("learned", [True, False])
def test_backward_reads_overwritten_top_explains_steps_where_upstream_learns(learned):
    """After a solver step every value may differ where a layer upstream of the reader has params (its update
    follows the wrong gradient); with none upstream only the diffs do."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program
    from tests.fuzz.worker import EngineResult

    net = _X + ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 2 } }\n'
                'layer { name: "th" type: "TanH" bottom: "h" top: "t" }\n'
                'layer { name: "sg" type: "Sigmoid" bottom: "t" top: "t" }\n')
    obs = {"build/param/data/ip/0": np.zeros((2, 3), np.float32)} if learned else {}
    prog = Program(net_text=net, backward=None, solver_text='base_lr: 0.1 lr_policy: "fixed"', steps=[1])
    divs = classify(prog, [Divergence("step1", "value", "blob/data/t", "relative difference 0.1")],
                    EngineResult(stages=["build"], obs=obs))
    assert divs[0].cls == ("backward-reads-overwritten-top" if learned else "")


@pytest.mark.parametrize("loss_weight, key, stage, explained", [
    (2.0, "param/data/p/0", "step1", True), (2.0, "blob/data/b", "step2", True), (2.0, "param/data/p/0", "fwd0", False),
    (0.0, "param/data/p/0", "step1", False), (2.0, "param/data/q/0", "step1", False)])
def test_parameter_loss_weight_lost_explains_its_steps(loss_weight, key, stage, explained):
    """Quirk parameter-top-diff (seed 300195): a Parameter top's loss weight is lost at the first forward (ShareDiff
    with the param), so Caffe's solver never learns from that loss: the param's data (and its top's, the same
    memory) after a step differ. Not before a step, not without a loss weight, not another layer's param."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    net = (f'layer {{ name: "p" type: "Parameter" top: "b" loss_weight: {loss_weight} '
           'parameter_param { shape { dim: 2 } } }\n'
           'layer { name: "q" type: "Parameter" top: "c" parameter_param { shape { dim: 2 } } }\n')
    prog = Program(net_text=net, backward=None, solver_text='base_lr: 0.1 lr_policy: "fixed"', steps=[1, 1])
    divs = classify(prog, [Divergence(stage, "value", key, "relative difference 0.001")])
    assert divs[0].cls == ("parameter-top-diff" if explained else "")


@pytest.mark.parametrize("hinge_weight, explained", [("loss_weight: 0", True), ("", False)])
def test_hinge_scratch_diff_summed_by_a_split(hinge_weight, explained):
    """Seed 807225: a HingeLoss of loss weight 0 runs no backward (Net::Init: it contributes no loss), so its bottom,
    a Split's top, keeps the forward's margins as its diff, and the Split's backward adds them to the other top's
    (split_layer.cpp caffe_add): what is upstream of the Split diverges (quirk hinge-scratch-diff). With its default
    weight the HingeLoss's backward overwrites that diff: nothing is explained."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    net = ('layer { name: "in" type: "Input" top: "x" top: "l" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } '
           '} }\n'
           'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z" inner_product_param { num_output: 3 } }\n'
           'layer { name: "re" type: "ReLU" bottom: "z" top: "y" loss_weight: 1 }\n'
           f'layer {{ name: "h" type: "HingeLoss" bottom: "y" bottom: "l" top: "loss" {hinge_weight} }}\n')
    prog = Program(net_text=net, backward="kwargs")
    divs = classify(prog, [Divergence("bwd0", "value", "blob/diff/z", "relative difference 0.9"),
                           Divergence("bwd0", "value", "param/diff/ip/0", "relative difference 0.9")])
    assert [d.cls for d in divs] == ["hinge-scratch-diff" if explained else ""] * 2


@pytest.mark.parametrize("recurrent, tops, in_place_on, explained", [
    ("RNN", ("o", "hT"), "hT", True), ("LSTM", ("o", "hT", "cT"), "cT", True),
    ("LSTM", ("o", "hT", "cT"), "hT", False), ("RNN", ("o", "hT"), "o", False)])
def test_backward_reads_overwritten_exposed_hidden_state(recurrent, tops, in_place_on, explained):
    """Seeds 806477, 807551: a RNN's / LSTM's exposed hidden-state top shares the unrolled net's h_T / c_T data
    (RecurrentLayer::Forward_cpu ShareData), which its TanH / last LSTMUnit reads in the backward: a layer computing
    in place on it gives x (and the layer's params) the gradient at the wrong values (quirk
    backward-reads-overwritten-top; checked on the build: the x diff changes). LSTMUnit's backward does not use its
    H top, the output o is a Concat's (whose backward reads no data): nothing is explained there."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    bottoms = ["x", "c", "h0"] + (["c0"] if recurrent == "LSTM" else [])
    net = ('layer { name: "in" type: "Input" top: "x" top: "c" top: "h0" top: "c0" input_param { shape { dim: 3 dim: 2 '
           'dim: 3 } shape { dim: 3 dim: 2 } shape { dim: 1 dim: 2 dim: 2 } shape { dim: 1 dim: 2 dim: 2 } } }\n'
           f'layer {{ name: "r" type: "{recurrent}" {" ".join(f"bottom: {b!r}" for b in bottoms)} '
           f'{" ".join(f"top: {t!r}" for t in tops)} '
           'recurrent_param { num_output: 2 expose_hidden: true } }\n'.replace("'", '"') +
           f'layer {{ name: "sg" type: "Sigmoid" bottom: "{in_place_on}" top: "{in_place_on}" }}\n')
    prog = Program(net_text=net, backward="kwargs")
    divs = classify(prog, [Divergence("bwd0", "value", "blob/diff/x", "relative difference 0.1"),
                           Divergence("bwd0", "value", "param/diff/r/0", "relative difference 0.1")])
    assert [d.cls for d in divs] == ["backward-reads-overwritten-top" if explained else ""] * 2


@pytest.mark.parametrize("steps, explained", [(1, True), (2, False)])
def test_backward_reads_overwritten_rnn_output_over_one_step(steps, explained):
    """Seed 1102924: over one time step a RNN's output is the one-bottom Concat of the unrolled net's o_1, sharing its
    data (ConcatLayer::Reshape), which o_1's TanH reads in the backward: a Bias in place on the output gives x and
    the params the gradient at the wrong values (quirk backward-reads-overwritten-top). Over two steps the Concat
    copies: nothing is explained."""
    import numpy as np

    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program
    from tests.fuzz.worker import EngineResult

    net = (f'layer {{ name: "in" type: "Input" top: "x" top: "c" top: "b" input_param {{ shape {{ dim: {steps} '
           f'dim: 2 dim: 3 }} shape {{ dim: {steps} dim: 2 }} shape {{ dim: 1 }} }} }}\n'
           'layer { name: "r" type: "RNN" bottom: "x" bottom: "c" top: "o" recurrent_param { num_output: 2 } }\n'
           'layer { name: "bi" type: "Bias" bottom: "o" bottom: "b" top: "o" bias_param { axis: 2 } }\n')
    theirs = EngineResult(stages=["fwd0"], obs={"fwd0/blob/data/x": np.zeros((steps, 2, 3), np.float32)})
    divs = classify(Program(net_text=net, backward="kwargs"),
                    [Divergence("bwd0", "value", "blob/diff/x", "relative difference 0.1"),
                     Divergence("bwd0", "value", "param/diff/r/0", "relative difference 0.1")], theirs)
    assert [d.cls for d in divs] == ["backward-reads-overwritten-top" if explained else ""] * 2


@pytest.mark.parametrize("order, explained", [(("mvn2", "redu8"), True), (("redu8", "mvn2"), False)])
def test_in_place_reshape_refused_before_the_mutated_layer(order, explained):
    """Seed 807441: the invalid case gives Reduction 'redu8' a second loss_weight, but caffe_torch refuses first the
    MVN 'mvn2' before it that computes in place with another shape (quirk in-place-reshape: Caffe accepts it).
    Caffe's Net::Init sets the layers up in order, so it aborts at redu8; a refusal naming a layer after the
    mutated one stays unexplained."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    layers = {"mvn2": 'layer { name: "mvn2" type: "MVN" bottom: "in1" top: "in1" }\n',
              "redu8": 'layer { name: "redu8" type: "Reduction" bottom: "in1" top: "b9" loss_weight: 1 '
                       'loss_weight: 1 }\n'}
    net = 'input: "in1" input_shape { dim: 3 dim: 1 dim: 1 }\n' + "".join(layers[n] for n in order)
    prog = Program(net_text=net, invalid="Reduction 'redu8' counts: loss_weight", expect_field="loss_weight")
    detail = ("caffe_torch's error does not name the field 'loss_weight' (Reduction 'redu8' counts: loss_weight): "
              "net.prototxt:3: layer 'mvn2' (type MVN): computes top 'in1' in place but changes its shape "
              "(3, 1, 1) -> (3, 1, 1, 1): give the top another name")
    divs = classify(prog, [Divergence("end", "refusal-message", "LayerError", detail)])
    assert divs[0].cls == ("in-place-reshape" if explained else "")


@pytest.mark.parametrize("ours, same", [
    ("layer 'soft7' (type SoftmaxWithLoss): the data and label should have the same first dimension, got (1, 4, 2) "
     "and (4, 2)", True),
    ("layer 'hing29' (type HingeLoss): loss_weight must be unspecified or given once per top", False)])
def test_refusal_naming_caffes_failed_check(ours, same):
    """Seed 801163: the mutated net already failed another check (the SoftmaxWithLoss label's first axis, in both
    engines) before the mutated layer; caffe_torch's error repeats the words of Caffe's failed CHECK."""
    from tests.fuzz.compare import _names_what_caffe_names

    theirs = ("Check failed: bottom[0]->shape(0) == bottom[1]->shape(0) (1 vs. 4) The data and label should have the "
              "same first dimension.")
    assert _names_what_caffe_names(theirs, ours) == same


@pytest.mark.parametrize("ours, same", [
    ("layer 'pool10' (type Pooling): pooling_param: with global_pooling, kernel_size / kernel_h / kernel_w cannot be "
     "specified (Caffe: \"With Global_pooling: true Filter size cannot specified\")", True),
    ("layer 'pool10' (type Pooling): pad (3, 3) must be smaller than the kernel (2, 2)", False)])
def test_refusal_naming_caffes_failed_plain_check(ours, same):
    """Seed 903127: the pad mutation (kernel_size 2, pad 3) of a global_pooling layer fails the kernel check first, in
    both engines; Caffe's plain CHECK prints no values, its words follow the condition."""
    from tests.fuzz.compare import _names_what_caffe_names

    theirs = ("Check failed: !(pool_param.has_kernel_size() || pool_param.has_kernel_h() || "
              "pool_param.has_kernel_w()) With Global_pooling: true Filter size cannot specified")
    assert _names_what_caffe_names(theirs, ours) == same


@pytest.mark.parametrize("exp_param, ours_top, ours_down, explained", [
    ("scale: 0 shift: 0.5", np.nan, np.nan, True), ("base: 1", np.nan, np.nan, True),
    ("scale: 0.5", np.nan, np.nan, False), ("scale: 0", 1.0, np.nan, False)])
def test_blas_scal_zero_explains_what_the_exp_top_reaches(exp_param, ours_top, ours_down, explained):
    """Quirk blas-scal-zero (seed 806604): an Exp with inner scale 0 over a NaN gives exp(0) in the build (OpenBLAS
    0.3.21's sscal by 0 writes zeros), NaN in caffe_torch; the NaNs where Caffe's values are finite are explained
    there and downstream. Not for another scale, nor where caffe_torch's top is not NaN."""
    from tests.fuzz.compare import classify, compare_results
    from tests.fuzz.program import Program
    from tests.fuzz.worker import EngineResult

    net = ('input: "x" input_shape { dim: 2 }\n'
           f'layer {{ name: "e" type: "Exp" bottom: "x" top: "y" exp_param {{ {exp_param} }} }}\n'
           'layer { name: "p" type: "Power" bottom: "y" top: "z" power_param { shift: 1 } }\n')
    theirs = EngineResult(stages=["build", "fwd0"], obs={"fwd0/blob/data/y": np.float32([1.6, 2.0]),
                                                         "fwd0/blob/data/z": np.float32([2.6, 3.0])})
    ours = EngineResult(stages=["build", "fwd0"], obs={"fwd0/blob/data/y": np.float32([ours_top, 2.0]),
                                                       "fwd0/blob/data/z": np.float32([ours_down, 3.0])})
    prog = Program(net_text=net, backward=None)
    divs = classify(prog, compare_results(prog, theirs, ours), theirs)
    assert divs and all(d.cls == ("blas-scal-zero" if explained else "") for d in divs)


@pytest.mark.parametrize("solver_text, stage, explained", [
    ('type: "Nesterov" base_lr: 0.1', "step1", True), ('type: "SGD" momentum: 0 base_lr: 0.1', "step2", True),
    ('type: "SGD" momentum: 0.9 base_lr: 0.1 clip_gradients: 1', "step1", True),
    ('type: "SGD" momentum: 0.9 base_lr: 0.1', "step1", False), ('type: "Nesterov" base_lr: 0.1', "fwd0", False)])
def test_blas_scal_zero_explains_solver_updates(solver_text, stage, explained):
    """Quirk blas-scal-zero (seed 807657): with momentum 0 the build's history update (caffe_cpu_axpby by momentum,
    OpenBLAS's saxpby with beta 0 never reads y) forgets an infinite history where caffe_torch's 0 * inf is NaN; so
    does gradient clipping's scale by 0. Only after solver steps, and not with a nonzero momentum alone."""
    from tests.fuzz.compare import classify, compare_results
    from tests.fuzz.program import Program
    from tests.fuzz.worker import EngineResult

    net = ('input: "x" input_shape { dim: 1 dim: 2 }\n'
           'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1 } }\n')
    theirs = EngineResult(stages=["build", "fwd0", "step1", "step2"],
                          obs={f"{stage}/param/data/ip/0": np.float32([[np.nan, -np.inf]])})
    ours = EngineResult(stages=["build", "fwd0", "step1", "step2"],
                        obs={f"{stage}/param/data/ip/0": np.float32([[np.nan, np.nan]])})
    prog = Program(net_text=net, backward=None, solver_text=solver_text, steps=[1, 1])
    divs = classify(prog, compare_results(prog, theirs, ours), theirs)
    assert len(divs) == 1 and divs[0].cls == ("blas-scal-zero" if explained else "")


@pytest.mark.parametrize("bottom, explained", [("b3", True), ("x", False)])
def test_parameter_diff_shows_in_a_reshape_of_its_top(bottom, explained):
    """Quirk shared-blob-memory (seed 905849): a Parameter's top diff is its param's (ShareDiff in its Forward), and
    a Reshape of that top shares the top's diff (ShareDiff in its Reshape, run by each forward after the
    Parameter's): after a solver step it shows the param's update. Not a Reshape of another blob."""
    from tests.fuzz.compare import Divergence, classify
    from tests.fuzz.program import Program

    net = ('input: "x" input_shape { dim: 4 dim: 2 }\n'
           'layer { name: "p" type: "Parameter" top: "b3" parameter_param { shape { dim: 4 dim: 2 } } }\n'
           f'layer {{ name: "r" type: "Reshape" bottom: "{bottom}" top: "b5" '
           'reshape_param { shape { dim: 1 dim: 1 dim: 2 } axis: 1 } }\n')
    prog = Program(net_text=net, backward=None, solver_text='base_lr: 0.1 lr_policy: "fixed"', steps=[1])
    divs = classify(prog, [Divergence("step1", "value", "blob/diff/b5", "relative difference 1", ours_zero=True)])
    assert divs[0].cls == ("shared-blob-memory" if explained else "")


def test_softmax_loss_class_axis_zero_labels_share_the_first_axis(tmp_path):
    """Seed 801163: a SoftmaxWithLoss over class axis 0 was given labels of the scores' other axes, which
    LossLayer::Reshape refuses (their first axes differ); now the unmutated net runs in caffe_torch."""
    from tests.fuzz.program import draw_program
    from tests.fuzz.worker import Worker

    prog = draw_program(801163)
    worker = Worker("torch", tmp_path)
    try:
        ours = worker.run(prog.net_text, prog.to_json())
    finally:
        worker.close()
    assert ours.end == "done", ours.message
