"""Time and peak extra memory of one solver snapshot (.caffemodel + .solverstate) of a paper net.

    python bench/bench_snapshot.py [--net prototxt/solver_lm.prototxt] [--repeats 3] [--json OUT]

The solver is built from the paper's solver prototxt (its net at full size, the SGD history included), then
snapshotted `--repeats` times into a temporary folder. Peak extra memory: the process's resident high-water
mark (Linux VmHWM, reset through /proc/self/clear_refs before each snapshot) minus its resident size before
it; where the reset is not allowed the figure is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from caffe_torch.prototxt import read_solver  # noqa: E402
from caffe_torch.solver import _SOLVERS  # noqa: E402


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(solver_file: Path, repeats: int) -> dict:
    param = read_solver(solver_file)
    param.net = str(ROOT / param.net)
    with tempfile.TemporaryDirectory() as tmp:
        param.snapshot_prefix = str(Path(tmp) / "snap")
        solver = _SOLVERS[param.type](solver_param=param)
        n_values = sum(p.numel() for p, *_ in solver.net.learnable_params())
        times, extra = [], []
        for _ in range(repeats):
            rss = _status_kb("VmRSS")
            peak_ok = _reset_peak()
            t0 = time.perf_counter()
            solver.snapshot()
            times.append(time.perf_counter() - t0)
            if peak_ok:
                extra.append((_status_kb("VmHWM") - rss) / 1024)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6
    return {"net": str(solver_file), "learnable_values": n_values, "files_mb": round(size, 1),
            "seconds_median": round(statistics.median(times), 3), "seconds": [round(t, 3) for t in times],
            "peak_extra_mb_median": round(statistics.median(extra), 1) if extra else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default=str(ROOT / "prototxt" / "solver_lm.prototxt"), help="a solver prototxt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    result = measure(Path(args.net), args.repeats)
    print(f"snapshot of {result['net']}: {result['learnable_values']} learnable values, {result['files_mb']} MB "
          f"written; {result['seconds_median']} s (median of {args.repeats}: {result['seconds']}); peak extra "
          f"memory {result['peak_extra_mb_median']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
