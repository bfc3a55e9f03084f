"""Time and peak extra memory of one solver snapshot (.caffemodel + .solverstate) of a paper net.

    python bench/bench_snapshot.py [--net prototxt/solver_lm.prototxt] [--repeats 3] [--json OUT]

The solver is built from the paper's solver prototxt (its net at full size, the SGD history included), then
snapshotted `--repeats` times into a temporary folder, in turns with the way of before issue 21 (messages
holding each blob's values as lists of Python floats; `--no-legacy` leaves it out), side by side in one run.
Peak extra memory: the process's resident high-water mark (Linux VmHWM, reset through /proc/self/clear_refs
before each snapshot) minus its resident size before it; where the reset is not allowed it is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import caffe_torch.solver as solver_module  # noqa: E402
import caffe_torch.weights as weights_module  # noqa: E402
from caffe_torch.proto import caffe_pb2  # noqa: E402
from caffe_torch.prototxt import read_solver  # noqa: E402
from caffe_torch.solver import _SOLVERS  # noqa: E402


def list_encoding(array, blob=None, *, keep_double=False):
    """array_to_blob as it was before issue 21: the values through a list of Python floats."""
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    a = array.detach().cpu().numpy()
    if a.ndim:
        blob.shape.dim.extend(int(d) for d in a.shape)
    if keep_double and a.dtype == np.float64:
        blob.double_data.extend(a.ravel().tolist())
    else:
        blob.data.extend(a.astype(np.float32, copy=False).ravel().tolist())
    return blob


def legacy_blobs_message(message, number, arrays, keep_double=False):
    """weights.blobs_message as a message built the way of before issue 21."""
    out = type(message)()
    out.CopyFrom(message)
    field = getattr(out, message.DESCRIPTOR.fields_by_number[number].name)
    for a in arrays:
        list_encoding(a, field.add(), keep_double=keep_double)
    return out


def legacy_net_to_wire(net):
    """weights.net_to_wire as the NetParameter built the way of before issue 21."""
    out = caffe_pb2.NetParameter(name=net.name)
    for lp, layer in zip(net._layer_params, net._layers):
        dst = out.layer.add()
        dst.CopyFrom(lp)
        del dst.blobs[:]
        for p in layer.blobs:
            list_encoding(p, dst.blobs.add())
    return out


@contextlib.contextmanager
def encoding(legacy: bool):
    """Snapshots written the way of before issue 21 (legacy) or as they are now."""
    saved = solver_module.blobs_message, weights_module.net_to_wire
    if legacy:
        solver_module.blobs_message, weights_module.net_to_wire = legacy_blobs_message, legacy_net_to_wire
    try:
        yield
    finally:
        solver_module.blobs_message, weights_module.net_to_wire = saved


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


def measure(solver_file: Path, repeats: int, legacy: bool) -> dict:
    param = read_solver(solver_file)
    param.net = str(ROOT / param.net)
    candidates = {"wire pieces": False} | ({"float lists": True} if legacy else {})
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        param.snapshot_prefix = str(Path(tmp) / "snap")
        solver = _SOLVERS[param.type](solver_param=param)
        n_values = sum(p.numel() for p, *_ in solver.net.learnable_params())
        times: dict[str, list[float]] = {name: [] for name in candidates}
        extra: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, old_way in candidates.items():
                with encoding(old_way):
                    rss = _status_kb("VmRSS")
                    peak_ok = _reset_peak()
                    t0 = time.perf_counter()
                    solver.snapshot()
                    times[name].append(time.perf_counter() - t0)
                    if peak_ok:
                        extra[name].append((_status_kb("VmHWM") - rss) / 1024)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6
    for name in candidates:
        rows[name] = {"seconds_median": round(statistics.median(times[name]), 3),
                      "seconds": [round(t, 3) for t in times[name]],
                      "peak_extra_mb_median": round(statistics.median(extra[name]), 1) if extra[name] else None}
    return {"net": str(solver_file), "learnable_values": n_values, "files_mb": round(size, 1), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default=str(ROOT / "prototxt" / "solver_lm.prototxt"), help="a solver prototxt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-legacy", action="store_true", help="leave out the encoding of before issue 21")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    result = measure(Path(args.net), args.repeats, not args.no_legacy)
    print(f"snapshot (.caffemodel + .solverstate) of {result['net']}: {result['learnable_values']} learnable "
          f"values, {result['files_mb']} MB written")
    for name, row in result["rows"].items():
        print(f"  {name:13s} {row['seconds_median']:7.3f} s (median of {args.repeats}: {row['seconds']}); "
              f"peak extra memory {row['peak_extra_mb_median']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
