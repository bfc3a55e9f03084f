"""The differential fuzzer (tests/fuzz/) on a fixed set of cases, against the real Caffe build: CI's share of it.

Cases 0 .. N_NETS - 1 (each a random net, pycaffe program and, for some, one illegal field; tests/fuzz/runner.py)
run on the real build and on caffe_torch. Every divergence must be explained: a documented quirk of the build
(tests/caffe_facts.py) or caffe_torch refusing bad input earlier than Caffe aborts. The number of cases
is fixed, not the time: the same nets on every machine, whatever its load. Run with -s for the table; run the
fuzzer itself for longer (`python -m tests.fuzz --budget 30m`, docs/conformance-and-fuzzing.md).
"""

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
