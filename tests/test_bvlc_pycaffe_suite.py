"""BVLC Caffe's own pycaffe test suite (python/caffe/test of the sdist caffe_build/build.sh uses), run
unchanged against caffe_torch: `python -m caffe_torch -m pytest <suite>` in a subprocess, so `import caffe`
in those files is caffe_torch. One test here per BVLC test, named after it, passing when it passed there.

The suite runs once per session in a scratch copy (its tests write snapshots into the working directory);
the files come from the build's source tree or the cached sdist tarball (tests/bvlc_sdist.py) and are never
copied into this repository. Skipped when neither is present. The real pycaffe build passes all but
test_solver.py::TestSolver::test_apply_update (that sdist's pycaffe has no Solver.apply_update).
"""

import ast
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.bvlc_sdist import ROOT, sdist_path

pytestmark = pytest.mark.slow

SUITE = sdist_path("python/caffe/test")


def _suite_test_ids(folder: Path | None) -> list[str]:
    """"file.py::Class::test_name" of every unittest method of the suite, read from the source (no import)."""
    if folder is None:
        return []
    ids = []
    for path in sorted(folder.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                ids += [f"{path.name}::{node.name}::{f.name}" for f in node.body
                        if isinstance(f, ast.FunctionDef) and f.name.startswith("test")]
    return ids


TEST_IDS = _suite_test_ids(SUITE)


@pytest.fixture(scope="module")
def suite_results(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """{test id: (outcome, message)} from one run of the whole suite under `python -m caffe_torch`."""
    work = tmp_path_factory.mktemp("bvlc_suite")
    for path in SUITE.glob("*.py"):
        shutil.copy(path, work / path.name)
    report = work / "report.xml"
    cmd = [sys.executable, "-m", "caffe_torch", "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={report}", "--rootdir", str(work), str(work)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "GLOG_minloglevel": "2", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                         timeout=3600)      # a hang guard only (the suite takes minutes)
    if not report.exists():
        pytest.fail(f"the suite did not run (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module, _, cls = case.get("classname").rpartition(".")
        # a file that failed to import is one case: classname "", name = the module
        key = f"{module}.py::{cls}::{case.get('name')}" if module else f"{case.get('name')}.py"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, (child.get("message") or "") + "\n" + (child.text or "")[-1500:]
        results[key] = (outcome, message)
    print(f"\nBVLC pycaffe suite on caffe_torch: {sum(o == 'passed' for o, _ in results.values())} of "
          f"{len(TEST_IDS)} passed")
    return results


@pytest.mark.skipif(SUITE is None, reason="no BVLC sdist: run caffe_build/build.sh (it caches the sdist)")
def test_suite_found():
    assert len(TEST_IDS) >= 39, TEST_IDS


@pytest.mark.parametrize("test_id", TEST_IDS)
def test_bvlc(test_id, suite_results):
    module = test_id.split("::")[0]
    outcome, message = suite_results.get(test_id) or suite_results.get(module, ("missing", "not run"))
    assert outcome == "passed", f"{test_id}: {outcome}: {message}"
