"""The differential fuzzer's saved cases (tests/fuzz/cases/NAME.prototxt, NAME.json, NAME.npz): each a small net and
pycaffe program on which caffe_torch once differed from the real Caffe build, shrunk by the fuzzer, with the
Caffe result stored beside it (stages completed, how it ended, every observation; tests/fuzz/runner.py).

- test_case: caffe_torch (float32; float64, unperturbed and perturbed, as the referees of ill-conditioned values)
  runs the program and must agree with the stored Caffe result within tests/fuzz/compare.py's tolerance; only the
  real build's documented quirks (tests/caffe_facts.py) are excused. Needs no Caffe build.
- test_stored_result_is_the_builds (`caffe`): the real build, run again, still gives the stored result.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from speaker.engine import try_import_pycaffe
from tests.caffe_facts import RTOL, rel_err
from tests.fuzz.compare import classify, judge
from tests.fuzz.runner import load_case
from tests.fuzz.worker import Worker

CASES_DIR = Path(__file__).resolve().parent / "fuzz" / "cases"
CASES = sorted(p.name for p in CASES_DIR.glob("*.prototxt"))


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("fuzz-logs")
    ws = {name: Worker(name, logs) for name in ("torch", "torch64", "caffe")}
    yield ws
    for w in ws.values():
        w.close()


def _case(name):
    return load_case(CASES_DIR / name)


@pytest.mark.parametrize("name", CASES)
def test_case(workers, name):
    prog, theirs, _ = _case(name)
    text, js = prog.net_text, prog.to_json()
    ours = workers["torch"].run(text, js)
    divs = judge(prog, theirs, ours,
                 lambda **changes: workers["torch64"].run(text, replace(prog, **changes).to_json()))
    unexplained = [d for d in classify(prog, divs, theirs) if not d.cls]
    assert not unexplained, f"{name}: caffe_torch differs from the stored Caffe result:\n  " + \
        "\n  ".join(map(str, unexplained[:20]))


@pytest.mark.caffe
@pytest.mark.parametrize("name", CASES)
def test_stored_result_is_the_builds(workers, name):
    caffe, err = try_import_pycaffe({"MarginInnerProduct", "Normalize", "LabelSpecificAdd"})
    if caffe is None:
        pytest.skip(f"real pycaffe not built (run `make caffe`): {err}")
    prog, stored, _ = _case(name)
    now = workers["caffe"].run(prog.net_text, prog.to_json())
    assert (now.stages, now.end) == (stored.stages, stored.end), (now.stages, now.end, now.message)
    assert now.message.split(":")[0] == stored.message.split(":")[0]
    assert sorted(now.obs) == sorted(stored.obs)
    for k, v in stored.obs.items():
        a, b = np.asarray(now.obs[k]), np.asarray(v)
        if a.dtype.kind in "USO":
            assert np.array_equal(a, b), k
        else:
            assert a.shape == b.shape and rel_err(a, b) <= RTOL, k
