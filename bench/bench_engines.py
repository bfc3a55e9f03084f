"""Training throughput of the paper's ResNet-20 on both engines, caffe_torch and the real pycaffe build, measured
side by side in one run.

    python bench/bench_engines.py                          # batch 50 x 1 x 300 x 257, 3 timed steps, CPU
    python bench/bench_engines.py --batch 8 --iters 5 --threads 2 --json engines.json

At batch 50 on a 2-core machine each engine takes 20-30 s a step and the run about 5 minutes, with a peak of
about 15 GB of memory (both nets, their activations and diffs, live at once); --batch 8 takes about a minute.

Both engines run the same prototxt (its Input batch set to --batch) as a solver step: forward + backward + Caffe's
SGD update (momentum 0.9, weight decay 5e-4, fixed lr), from the same weights (initialised by caffe_torch,
written as a .caffemodel and read by Caffe) on the same fixed batch; the first step's losses must agree before
any timing counts. Then the timed steps alternate between the engines (A B, then B A, ...), so load from other
jobs on the machine falls on both alike; the median step counts. Without an importable pycaffe only caffe_torch
is measured (exit status 0). `--threads N` sets torch's intra-op threads and OpenBLAS's (Caffe's BLAS) threads;
0 leaves both libraries' defaults.
"""

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import caffe_torch  # noqa: E402
from bench.timing import interleaved_times  # noqa: E402
from caffe_torch.fast import cpu_capability  # noqa: E402
from caffe_torch.proto import caffe_pb2  # noqa: E402
from speaker.engine import try_import_pycaffe  # noqa: E402

SOLVER = ('net: "{net}"\ntype: "SGD"\nbase_lr: 0.001\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.0005\n'
          "max_iter: 1000000\ndisplay: 0\nsnapshot_after_train: false\n")


def import_caffe(threads: int):
    """The real pycaffe, or (None, why). OPENBLAS_NUM_THREADS must be set before its BLAS is loaded."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    if threads:
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    return try_import_pycaffe()


def openblas_threads(set_to: int = 0) -> int | None:
    """OpenBLAS's thread count (after setting it, when set_to > 0); None if no OpenBLAS is loaded."""
    for name in ("libopenblas.so.0", ctypes.util.find_library("openblas")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        if set_to and hasattr(lib, "openblas_set_num_threads"):
            lib.openblas_set_num_threads(int(set_to))
        if hasattr(lib, "openblas_get_num_threads"):
            return int(lib.openblas_get_num_threads())
    return None


def write_net(src: Path, batch: int, dst: Path) -> tuple[tuple[int, ...], int]:
    """`src` with its Input batch set to `batch`, written to `dst`; returns (data shape, classes)."""
    param = text_format.Parse(src.read_text(), caffe_pb2.NetParameter())
    data_shape = None
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
            data_shape = tuple(lp.input_param.shape[0].dim)
    if data_shape is None:
        raise SystemExit(f"{src}: no Input layer")
    heads = [lp for lp in param.layer if lp.type in ("InnerProduct", "MarginInnerProduct")]
    last = heads[-1]
    classes = (last.margin_inner_product_param if last.type == "MarginInnerProduct"
               else last.inner_product_param).num_output
    dst.write_text(text_format.MessageToString(param))
    return data_shape, classes


def loss_blob(net) -> str:
    names = [n for n in net.outputs if "loss" in n]
    return names[0] if names else net.outputs[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prototxt", default=str(ROOT / "prototxt" / "ResNet-20_softmax.prototxt"),
                        help="net to train (default: the paper's softmax ResNet-20)")
    parser.add_argument("--batch", type=int, default=50, help="examples per step (paper: 50)")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per engine (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per engine first, at least 1 (the "
                        "first one checks that the losses agree) (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch and OpenBLAS threads (0: library defaults)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.iters, args.batch, args.warmup) < 1:
        parser.error("--iters, --batch and --warmup must be >= 1")

    caffe, why = import_caffe(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
        openblas_threads(args.threads)
    caffe_torch.set_mode_cpu()
    if caffe is not None:
        caffe.set_mode_cpu()
    else:
        print(f"real pycaffe not available ({why}); measuring caffe_torch only")

    src = Path(args.prototxt)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        net_file = tmp / "net.prototxt"
        data_shape, classes = write_net(src, args.batch, net_file)
        solver_file = tmp / "solver.prototxt"
        solver_file.write_text(SOLVER.format(net=net_file))
        weights = tmp / "init.caffemodel"

        t0 = time.perf_counter()
        caffe_torch.set_random_seed(0)
        # caffe_torch as speaker/train.py runs it (no activation diffs kept after a step)
        solvers = {"caffe_torch": caffe_torch.get_solver(str(solver_file), blob_diffs=False)}
        solvers["caffe_torch"].net.save(str(weights))
        if caffe is not None:
            solvers["Caffe"] = caffe.get_solver(str(solver_file))
            solvers["Caffe"].net.copy_from(str(weights))
        setup_s = time.perf_counter() - t0

        rng = np.random.default_rng(0)
        data = rng.standard_normal(data_shape).astype(np.float32)
        label_shape = solvers["caffe_torch"].net.blobs["label"].data.shape
        label = rng.integers(0, classes, size=label_shape).astype(np.float32)
        for s in solvers.values():
            s.net.blobs["data"].data[...] = data
            s.net.blobs["label"].data[...] = label

        # first (untimed) step: same weights and batch, so the losses must agree
        first = {}
        for name, s in solvers.items():
            t0 = time.perf_counter()
            s.step(1)
            first[name] = time.perf_counter() - t0
        losses = {name: float(np.asarray(s.net.blobs[loss_blob(s.net)].data)) for name, s in solvers.items()}
        if "Caffe" in losses:
            a, b = losses["caffe_torch"], losses["Caffe"]
            if abs(a - b) > 1e-4 * max(1.0, abs(b)):
                print(f"loss mismatch after the first step: caffe_torch {a} vs Caffe {b}", file=sys.stderr)
                return 1
        times = interleaved_times({name: partial(s.step, 1) for name, s in solvers.items()}, args.iters,
                                  warmup=args.warmup - 1, alternate=True)

    threads = {"torch": torch.get_num_threads(), "openblas": openblas_threads()}
    result = {
        "prototxt": str(src), "input": list(data_shape), "batch": args.batch, "iters": args.iters,
        "warmup": args.warmup, "threads": threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "setup_s": setup_s, "first_step_s": first, "first_step_loss": losses,
        "engines": {name: {"examples_per_s": args.batch / statistics.median(t), "median_step_s":
                           statistics.median(t), "step_s": t} for name, t in times.items()},
    }
    if caffe is None:
        result["caffe_unavailable"] = why
    else:
        result["ratio_caffe_torch_over_caffe"] = (result["engines"]["caffe_torch"]["examples_per_s"]
                                                  / result["engines"]["Caffe"]["examples_per_s"])

    shape = " x ".join(map(str, data_shape))
    print(f"training step (forward + backward + SGD update), {src.name}, input {shape}, CPU; {args.iters} timed "
          f"step(s) per engine after {args.warmup} warm-up, interleaved; threads: torch {threads['torch']}, "
          f"OpenBLAS {threads['openblas']}, {os.cpu_count()} cores; fp32; CPU {cpu_capability()}")
    print(f"  {'engine':12} {'examples/s':>11} {'median s/step':>14} {'steps (s)':>10}   first-step loss")
    for name, t in times.items():
        e = result["engines"][name]
        steps = " ".join(f"{x:.2f}" for x in t)
        print(f"  {name:12} {e['examples_per_s']:11.2f} {e['median_step_s']:14.3f}   {steps:10}  {losses[name]:.6g}")
    if caffe is not None:
        print(f"  ratio caffe_torch / Caffe (examples/s): {result['ratio_caffe_torch_over_caffe']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
