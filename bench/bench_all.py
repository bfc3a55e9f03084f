"""All the speed figures of the project in one command: a table on stdout and (--json) a JSON file.

    python bench/bench_all.py                    # this machine's GPU if present, else the CPU (small sizes)
    python bench/bench_all.py --quick            # fewer nets and iterations (CPU: about a minute)
    python bench/bench_all.py --device cuda --compile --json bench.json

(a) train step (forward + backward + Caffe SGD update) examples/s of every shipped prototxt net
    (prototxt/*.prototxt and prototxt/demo/*.prototxt), in fp32 and with the fast options (channels_last +
    bf16 trunk autocast, + TF32 on CUDA, + torch.compile with --compile), timed side by side in interleaved
    rounds (median; robust on a shared machine), with the ratio to fp32 (the fp32 rows run with TF32 off,
    whatever torch's cuDNN default; bf16 only where the device computes it natively: see
    caffe_torch.fast.cpu_capability, printed next to every CPU row); on CUDA also the peak GPU memory
    per example (torch.cuda.max_memory_allocated / batch; weights, diffs and solver history included).
(b) front end: spectrograms/s, NumPy batched (CPU) and voxdata.spectrogram_torch on the device.
(c) sustained end to end: the training loop's work (train_loader from a memory-mapped int16 cache of wav
    files on disk, spectrogram on the device, solver.step), and apart, the loader alone and the step alone on
    one fixed batch, which says which of the two limits the loop.
(d) evaluation: the paper's protocol (50 crops per utterance, crop-averaged pooled feature, then the head;
    speaker.evaluate.crop_averaged_forward, as test_identification/test_verification run it), seconds per
    1,000 utterances, extrapolated from --eval-utterances utterances.
(e) all-pairs scoring of 4,874 embeddings (11.9 M pairs, speaker.scoring.all_pairs_scores) and the EER over
    them (speaker.metrics.compute_eer).
(f) data (bench/bench_data.py, which has more): the audio cache's decode throughput for wav and m4a with
    --workers processes (files/s, hours of audio/s), and the training loader's examples/s on one core with
    and without the noise + reverberation augmentation (defaults of voxdata.augment).
Every examples/s figure also gives its ratio to the original's 89 examples/s (1.78 it/s at batch 50).
CPU defaults are small (paper nets at batch 2, one timed iteration; demo nets at their batch 24) so that
the whole run takes minutes; the batch and iterations are in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import caffe_torch as caffe  # noqa: E402
from bench.timing import interleaved_times  # noqa: E402
from caffe_torch.fast import FastOptions, cpu_bf16_native, cpu_capability, tf32_scope  # noqa: E402
from caffe_torch.proto import caffe_pb2  # noqa: E402
from caffe_torch.prototxt import read_net  # noqa: E402
from caffe_torch.solver import SGDSolver  # noqa: E402

ORIGINAL = 89.0          # examples/s of the 2017 original (1.78 it/s x batch 50)
SOLVER = 'type: "SGD" base_lr: 0.001 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.0005 max_iter: 1000000 ' \
         'display: 0'


def _sync(device: torch.device, cuda=torch.cuda):
    """Waits for the benchmarked device (not the current one)."""
    return partial(cuda.synchronize, device) if device.type == "cuda" else (lambda: None)


def select_device(name: str | None, cuda=torch.cuda) -> torch.device:
    """The device to benchmark, with its index ("cuda" = the current CUDA device), made the current one.
    (`cuda` is torch.cuda; tests pass a stand-in.)"""
    device = torch.device(name or ("cuda" if cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", cuda.current_device())
        cuda.set_device(device.index)
    return device


def precision(device: torch.device, options: FastOptions | None) -> str:
    """What a row actually ran in, and on a CPU what the CPU can do (bf16 native or emulated)."""
    text = options.precision() if options is not None else "fp32"
    return f"{text}; CPU {cpu_capability()}" if device.type == "cpu" else text


def timed_step(solver, options: FastOptions | None):
    """One training step as timed: a config without tf32 runs with TF32 off (torch lets cuDNN use it by
    default, which would make the fp32 baseline not fp32); with tf32 the net turns it on itself."""
    tf32 = options is not None and options.tf32

    def step():
        if tf32:
            return solver.step(1)
        with tf32_scope(False):
            return solver.step(1)
    return step


def _net_param(path: Path, batch: int | None = None, classes: int | None = None):
    param, _ = read_net(path)
    for lp in param.layer:
        if lp.type == "Input" and batch is not None:
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
        if classes is not None:
            for field in ("inner_product_param", "margin_inner_product_param"):
                if lp.name == "fc6" and lp.HasField(field):
                    getattr(lp, field).num_output = classes
    return param


def _classes(param) -> int:
    from speaker.train import classifier_widths

    widths = classifier_widths(param)
    return min(widths.values()) if widths else 2


def make_solver(param, device: torch.device, options: FastOptions | None):
    from google.protobuf import text_format

    sp = text_format.Parse(SOLVER, caffe_pb2.SolverParameter())
    sp.net_param.CopyFrom(param)
    caffe.set_random_seed(0)
    # as speaker/train.py builds it
    return SGDSolver(solver_param=sp, device=device, blob_diffs=False, fast=options)


def _fill(net, batch: int, classes: int, device, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    shape = net.blobs["data"].shape
    net.blobs["data"].tensor = torch.randn(shape, generator=gen).to(device)
    net.blobs["label"].tensor = torch.randint(0, classes, (batch, 1, 1, 1), generator=gen).float().to(device)


def _setup(path: Path, batch: int, device, options):
    param = _net_param(path, batch)
    solver = make_solver(param, device, options)
    _fill(solver.net, batch, _classes(param), device)
    return solver


def peak_memory(path: Path, batch: int, device, options, warmup: int) -> int:
    """Peak GPU bytes of training steps of this net alone (weights, diffs, history, activations)."""
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    solver = _setup(path, batch, device, options)
    for _ in range(max(2, warmup)):
        solver.step(1)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del solver
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def train_step_rates(path: Path, batch: int, device, configs, iters: int, warmup: int, rounds: int) -> dict:
    """examples/s of each config, measured side by side: every config's solver is built and warmed up, then
    `rounds` rounds each time `iters` steps of every config in turn; the median round counts."""
    solvers = {name: _setup(path, batch, device, opts) for name, opts in configs}
    options = dict(configs)
    times = interleaved_times({name: timed_step(s, options[name]) for name, s in solvers.items()}, rounds,
                              warmup=warmup, per_round=iters, sync=_sync(device))
    return {name: batch * iters / float(np.median(t)) for name, t in times.items()}


def fast_options(device, compile_: bool) -> FastOptions:
    """channels_last + bf16 trunk (where the device has bf16: a GPU, or a CPU with AVX512-BF16/AMX; elsewhere
    bf16 is refused as 15-18x slower) + TF32 on CUDA (+ compile)."""
    bf16 = device.type == "cuda" or cpu_bf16_native()
    return FastOptions(channels_last=True, amp="bf16" if bf16 else None, tf32=device.type == "cuda",
                       compile=compile_)


# ---------------------------------------------------------------------------------------------------------
def section_a(args, device, rows):
    nets = sorted((ROOT / "prototxt").glob("ResNet-20_*.prototxt"))
    demo = sorted((ROOT / "prototxt" / "demo").glob("ResNet-20_*.prototxt"))
    if args.quick:
        nets = [p for p in nets if p.name == "ResNet-20_softmax.prototxt"]
    if args.nets:
        wanted = set(args.nets.split(","))
        nets = [p for p in nets if p.stem.split("_", 1)[1] in wanted]
        demo = [p for p in demo if p.stem.split("_", 1)[1] in wanted]
    configs = [("fp32", None), ("fast", fast_options(device, False))]
    if args.compile:
        configs.append(("fast+compile", fast_options(device, True)))
    for group, paths, batch, iters in (("paper", nets, args.batch, args.iters),
                                       ("demo", demo, args.demo_batch, args.demo_iters)):
        for path in paths:
            try:
                rates = train_step_rates(path, batch, device, configs, iters, args.warmup, args.rounds)
            except Exception as exc:  # report, keep benchmarking the rest
                rows.append(row("a", f"{group} {path.stem}", device, None, "examples/s",
                                note=f"failed: {type(exc).__name__}: {exc}"[:200]))
                continue
            for cname, opts in configs:
                note = f"batch {batch}, median of {args.rounds} x {iters} it; {precision(device, opts)}"
                if opts is not None:
                    note += f"; {opts.describe()}; x{rates[cname] / rates['fp32']:.2f} vs fp32"
                rows.append(row("a", f"{group} {path.stem} {cname}", device, rates[cname], "examples/s",
                                ratio=True, note=note))
            if device.type == "cuda":
                for cname, opts in configs:
                    peak = peak_memory(path, batch, device, opts, args.warmup)
                    fits = "fits" if peak / batch * 50 < 16 * 2**30 else "does NOT fit"
                    rows.append(row("4", f"{group} {path.stem} {cname} peak GPU memory", device,
                                    peak / batch / 2**20, "MiB/example",
                                    note=f"peak {peak / 2**30:.2f} GiB at batch {batch}; batch 50 {fits} in 16 GB"))


def section_b(args, device, rows):
    from bench_frontend import _rate

    from voxdata import crop_length, spectrogram, spectrogram_torch

    length = crop_length(300)
    crops = np.random.default_rng(0).integers(-32768, 32768, size=(50, length)).astype(np.int16)
    rows.append(row("b", "spectrogram NumPy batched (CPU)", "cpu", _rate(lambda: spectrogram(crops), 50,
                                                                          args.seconds), "spectrograms/s",
                    note=f"50 crops of 300 frames; {precision(torch.device('cpu'), None)}"))
    t = torch.from_numpy(crops)
    if device.type == "cuda":
        t = t.pin_memory()
        fn = lambda: spectrogram_torch(t.to(device, non_blocking=True))  # noqa: E731
        note = "50 crops, int16 host->device copy included"
    else:
        fn = lambda: spectrogram_torch(t)  # noqa: E731
        note = f"50 crops, {torch.get_num_threads()} threads"
    note += f"; {precision(device, None)}"
    with tf32_scope(False):
        rate = _rate(fn, 50, args.seconds, _sync(device))
    rows.append(row("b", "spectrogram_torch", device, rate, "spectrograms/s", note=note))


def section_c(args, device, rows):
    from bench_frontend import _make_wavs

    from speaker.train import _input_feeder
    from voxdata import build_cache, crop_length, train_loader

    path = ROOT / "prototxt" / ("ResNet-20_softmax.prototxt" if device.type == "cuda" and not args.quick
                                else "demo/ResNet-20_softmax.prototxt")
    speakers = 20
    param = _net_param(path, args.batch if device.type == "cuda" else None, classes=speakers)
    batch = [lp for lp in param.layer if lp.type == "Input"][0].input_param.shape[0].dim[0]
    frames = [lp for lp in param.layer if lp.type == "Input"][0].input_param.shape[0].dim[2]
    opts = fast_options(device, args.compile) if device.type == "cuda" else None
    with tempfile.TemporaryDirectory() as tmp:
        paths = _make_wavs(os.path.join(tmp, "wav"), args.wavs)
        cache = build_cache(paths, os.path.join(tmp, "cache"), progress=False)
        labels = np.arange(len(paths)) % speakers
        solver = make_solver(param, device, opts)
        feed = _input_feeder(caffe, device)
        sync = _sync(device)

        step = timed_step(solver, opts)

        def loader():
            return iter(train_loader(paths, labels, batch_size=batch, frames=frames, seed=0,
                                     num_workers=args.workers, cache=cache, pin_memory=device.type == "cuda"))

        it = loader()
        fixed = next(it)
        for _ in range(args.warmup + 1):
            feed(solver.net, *fixed)
            step()
        # the loader alone (its workers are warm: started and prefetching)
        for _ in range(max(2, args.workers)):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.e2e_iters):
            next(it)
        load = batch * args.e2e_iters / (time.perf_counter() - t0)
        # interleaved rounds (median): the whole loop, and the front end + step alone on one fixed batch
        t_e2e, t_step = [], []
        for _ in range(args.rounds):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.e2e_iters):
                crops, lab = next(it)
                feed(solver.net, crops, lab)
                step()
            sync()
            t_e2e.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(args.e2e_iters):
                feed(solver.net, *fixed)
                step()
            sync()
            t_step.append(time.perf_counter() - t0)
        del it
        e2e = batch * args.e2e_iters / float(np.median(t_e2e))
        step = batch * args.e2e_iters / float(np.median(t_step))
    what = f"{path.relative_to(ROOT)} batch {batch}, {frames} frames ({crop_length(frames)} samples), " \
           f"{args.workers} loader workers, median of {args.rounds} x {args.e2e_iters} it"
    if opts is not None:
        what += f"; {opts.describe()}"
    what += f"; {precision(device, opts)}"
    limit = "loader" if load < step * 1.1 else "step (front end + net)"
    rows.append(row("c", "end to end: loader + front end + step", device, e2e, "examples/s", ratio=True,
                    note=what))
    rows.append(row("c", "  loader alone (int16 cache)", "cpu", load, "examples/s", ratio=True,
                    note=f"{args.workers} workers"))
    rows.append(row("c", "  front end + step alone", device, step, "examples/s", ratio=True,
                    note=f"limit of the loop: {limit}"))


def section_d(args, device, rows):
    from speaker.evaluate import crop_averaged_forward
    from voxdata import crop_length

    nets = [("demo", ROOT / "prototxt" / "demo" / "ResNet-20_softmax.prototxt")]
    if not args.quick:
        nets.append(("paper", ROOT / "prototxt" / "ResNet-20_softmax.prototxt"))
    for group, path in nets:
        caffe.set_random_seed(0)
        net = caffe.Net(str(path), caffe.TEST, net_param=_net_param(path), device=device)
        frames = net.blobs["data"].shape[2]
        length = crop_length(frames)
        n = args.eval_utterances if group == "demo" or device.type == "cuda" else 1

        def provider(_utt, rng, length=length):
            return rng.integers(-32768, 32768, size=(args.crops, length)).astype(np.int16)

        with tf32_scope(False):
            crop_averaged_forward(net, ["warm"], provider, ["fc5"], rng=0, progress=False)
            _sync(device)()
            t0 = time.perf_counter()
            crop_averaged_forward(net, [f"u{i}" for i in range(n)], provider, ["fc5"], rng=1, progress=False)
            _sync(device)()
        dt = time.perf_counter() - t0
        rows.append(row("d", f"evaluation {group} {path.stem}", device, dt / n * 1000, "s/1000 utterances",
                        note=f"{args.crops} crops of {frames} frames, NumPy front end; measured on {n} "
                        f"utterance(s), extrapolated; {precision(device, None)}"))


def section_e(args, device, rows):
    from speaker.metrics import compute_eer
    from speaker.scoring import all_pairs_scores

    rng = np.random.default_rng(0)
    n = 4874
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    spk = rng.integers(0, 40, n)
    t0 = time.perf_counter()
    scores, labels = all_pairs_scores(emb, spk)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    compute_eer(labels, scores)
    t_eer = time.perf_counter() - t0
    rows.append(row("e", f"all-pairs cosine scores, {n} x 512", "cpu", t_score, "s",
                    note=f"{len(scores) / 1e6:.1f} M pairs"))
    rows.append(row("e", "  EER over all pairs", "cpu", t_eer, "s", note="sort + ROC"))


# ---------------------------------------------------------------------------------------------------------
def section_f(args, device, rows):
    from bench_data import decode_rates, loader_rates

    with tempfile.TemporaryDirectory() as tmp:
        for r in decode_rates(tmp, args.wavs, 8.0, [args.workers]):
            note = f"{r['files']} files of 8 s, {r['workers']} workers"
            rows.append(row("f", f"cache build, {r['format']}: files/s", "cpu", r["files_per_s"], "files/s",
                            note=note))
            rows.append(row("f", f"cache build, {r['format']}: hours of audio/s", "cpu", r["audio_hours_per_s"],
                            "h audio/s", note=f"VoxCeleb2 dev (2,360 h) in {r['VoxCeleb2 dev hours']:.1f} h"))
        loader, what = loader_rates(tmp, 50, 300, args.seconds, args.workers)
    for r in loader:
        rows.append(row("f", f"loader, {r['augmentation']}", "cpu", r["examples_per_s_one_core"], "examples/s",
                        ratio=True, note=f"one core; {what}"))


def row(section, item, device, value, unit, ratio=False, note=""):
    return {"section": section, "item": item, "device": str(device), "value": value, "unit": unit,
            "ratio_to_original_89": (value / ORIGINAL) if ratio and value is not None else None, "note": note}


def print_table(rows, header):
    print(header)
    print(f"{'':2} {'item':58} {'device':7} {'value':>11} {'unit':18} {'x 89 ex/s':>9}  note")
    for r in rows:
        v = "failed" if r["value"] is None else f"{r['value']:11.4g}"
        ratio = "" if r["ratio_to_original_89"] is None else f"{r['ratio_to_original_89']:9.3g}"
        print(f"{r['section']:2} {r['item'][:58]:58} {r['device'][:7]:7} {v:>11} {r['unit']:18} {ratio:>9}  "
              f"{r['note']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present, else cpu)")
    p.add_argument("--quick", action="store_true", help="one paper net, fewer figures")
    p.add_argument("--batch", type=int, default=None, help="paper nets' batch (default: 50 on CUDA, 2 on CPU)")
    p.add_argument("--demo-batch", type=int, default=None, help="demo nets' batch (default: 50 CUDA, 24 CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations of the paper nets (a) (default: 20 "
                   "CUDA, 1 CPU)")
    p.add_argument("--demo-iters", type=int, default=None, help="timed iterations of the demo nets (a) "
                   "(default: 20 CUDA, 4 CPU)")
    p.add_argument("--rounds", type=int, default=3, help="(a, c): timing rounds, configs interleaved; the median "
                   "counts (default %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default: 3 CUDA, 1 CPU)")
    p.add_argument("--compile", action="store_true", help="also time the fast options + torch.compile (a, c)")
    p.add_argument("--nets", metavar="LIST", help="(a): only these heads, e.g. softmax,lm (of ResNet-20_<head>)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per front-end figure (b)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="loader workers (c)")
    p.add_argument("--wavs", type=int, default=40, help="wav files of 4-10 s written for (c)")
    p.add_argument("--e2e-iters", type=int, default=None, help="timed iterations (c) (default: 50 CUDA, 5 CPU)")
    p.add_argument("--eval-utterances", type=int, default=None, help="utterances timed in (d) (default: 20 "
                   "CUDA, 2 CPU; 1 for the paper net on the CPU)")
    p.add_argument("--crops", type=int, default=50, help="crops per utterance (d)")
    p.add_argument("--sections", default="abcdef", help="which sections to run (default: abcdef)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (50 if gpu else 2)
    args.demo_batch = args.demo_batch or (50 if gpu else 24)
    args.iters = args.iters or (20 if gpu else 1)
    args.demo_iters = args.demo_iters or (20 if gpu else 4)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.e2e_iters = args.e2e_iters or (50 if gpu else 10)
    args.eval_utterances = args.eval_utterances or (20 if gpu else 2)
    if args.quick:
        args.iters = min(args.iters, 10 if gpu else 1)
        args.demo_iters = min(args.demo_iters, 10 if gpu else 2)
    name = torch.cuda.get_device_name(device) if gpu else \
        f"{platform.processor() or platform.machine()}, {cpu_capability()}"
    header = (f"bench_all on {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
              f"{os.cpu_count()} cores; original: {ORIGINAL:g} examples/s")
    print(header, flush=True)
    rows: list[dict] = []
    t_all = time.perf_counter()
    for s, fn in (("a", section_a), ("b", section_b), ("c", section_c), ("d", section_d), ("e", section_e),
                  ("f", section_f)):
        if s in args.sections:
            t0 = time.perf_counter()
            fn(args, device, rows)
            print(f"  section ({s}) done in {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print_table(rows, header)
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "device": str(device), "device_name": name,
                                               "torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "args": vars(args), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
