"""caffe_torch.log: a script that uses caffe_torch directly, with no logging configured, sees Caffe's glog lines
on stderr, filtered by GLOG_minloglevel; a script that configures logging keeps its own format and level.
(Subprocesses: pytest itself configures logging.)"""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from caffe_torch.log import GlogFormatter, glog_min_level

ROOT = Path(__file__).resolve().parent.parent
GLOG = re.compile(r"^([IWEF])(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) +(\d+) ([\w.]+):(\d+)\] (.*)$")

SCRIPT = '''
import logging, sys
{setup}
import caffe_torch as caffe
open("net.prototxt", "w").write("""
layer {{ name: "in" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
""")
open("solver.prototxt", "w").write('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" display: 1\\n')
s = caffe.SGDSolver("solver.prototxt")
s.step(2)
s.snapshot()          # no snapshot_prefix: Caffe's files in the working directory, with a warning
'''


def run(tmp_path, setup="", level=None):
    env = {k: v for k, v in os.environ.items() if k != "GLOG_minloglevel"}
    if level is not None:
        env["GLOG_minloglevel"] = str(level)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(setup=setup)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)   # a hang guard only
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()


def test_glog_lines_by_default(tmp_path):
    lines = run(tmp_path)
    parsed = [GLOG.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m]
    it0 = next(m for m in parsed if m.group(7).startswith("Iteration 0, loss = "))
    assert it0.group(1) == "I" and it0.group(5) == "solver.py"
    float(it0.group(7).split("= ")[1])
    assert any(m.group(1) == "W" and "snapshot_prefix is not set" in m.group(7) for m in parsed)
    assert any(m.group(7).startswith("Iteration 1, lr = ") for m in parsed)


@pytest.mark.parametrize("level, letters", [(0, {"I", "W"}), (1, {"W"}), (2, set()), (3, set())])
def test_glog_minloglevel(tmp_path, level, letters):
    lines = run(tmp_path, level=level)
    assert {GLOG.match(line).group(1) for line in lines} == letters, lines


def test_application_logging_keeps_its_format_and_level(tmp_path):
    lines = run(tmp_path, setup='logging.basicConfig(level=logging.INFO, format="APP %(levelname)s %(message)s")')
    assert "APP INFO Iteration 0, loss = " in "\n".join(lines)
    assert not any(GLOG.match(line) for line in lines)
    quiet = run(tmp_path, setup='logging.basicConfig(level=logging.WARNING, format="APP %(levelname)s %(message)s")')
    assert quiet and all(line.startswith("APP WARNING") for line in quiet), quiet


def test_formatter_and_levels():
    record = logging.LogRecord("caffe_torch.solver", logging.INFO, "/x/solver.py", 12, "Iteration %d", (3,), None)
    m = GLOG.match(GlogFormatter().format(record))
    assert m and m.group(1) == "I" and m.group(5) == "solver.py" and m.group(6) == "12"
    assert m.group(7) == "Iteration 3"
    assert glog_min_level({}) == logging.INFO and glog_min_level({"GLOG_minloglevel": "2"}) == logging.ERROR
    assert glog_min_level({"GLOG_minloglevel": "3"}) > logging.CRITICAL
