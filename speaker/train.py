"""The training loop shared by trainAug.py and trainNoAug.py (they differ only in augmentation).

What comes from where: architecture, loss, batch size and crop length (the net's Input layer), and every
solver number (lr schedule, iterations, snapshots) from the prototxt files; data, device, engine, seed,
validation interval and resuming from flags. The loop talks to the engine only through the pycaffe API, so
`--engine caffe` runs the same prototxt on a real pycaffe.

Per iteration: the loader hands over raw int16 crops (B, L) and labels; the spectrogram is computed on the
net's device (only int16 crosses the bus); the batch goes into the net's input blobs (caffe_torch: the tensor
itself, no copy); `solver.step(1)` runs Caffe's forward/backward/update. Every --test-interval iterations a
TEST net sharing the weights measures validation top-1/top-5 (one seeded crop per utterance, as the paper's
validation curves). SIGTERM/SIGINT/SIGUSR1/SIGUSR2 (Grid Engine's -notify warnings) finish the current
iteration, write a snapshot and exit with status 99; `--resume auto` continues from the newest snapshot, and
since batch k is a pure function of (seed, k), the resumed run sees the same batches as an uninterrupted one.

Speed options (caffe_torch only, all off by default; see caffe_torch/fast.py): --channels-last, --amp bf16,
--tf32, --compile; --cache decodes the training audio once into a memory-mapped int16 file (built on first
use) so that the loader only slices.

Data parallel (caffe_torch only): under `torchrun --nproc_per_node=K trainAug.py ...` (WORLD_SIZE > 1) each
of the K processes builds the same solver; the prototxt's batch B is the global batch and must be divisible
by K; process r feeds rows [r B/K, (r+1) B/K) of global batch k (every process draws the whole, deterministic
batch k and keeps its slice); after backward the parameter diffs are averaged across processes (the mean of
equal-sized per-process batch means is the global batch mean, so this is one process's gradient up to float
summation order), then every process applies the identical Caffe update. NCCL on GPUs (LOCAL_RANK picks the
GPU, or the LOCAL_RANK-th entry of $SGE_GPU), gloo on the CPU. Only rank 0 writes logs, the curve,
snapshots and final weights and validates; a stop signal on any process stops all of them at the same
iteration (the flag travels with the gradients).
"""

import argparse
import csv
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from datetime import timedelta
from pathlib import Path

import numpy as np

from . import rundir
from .engine import gpu_for_process, is_caffe_torch, load_engine

log = logging.getLogger("train")

EXIT_INTERRUPTED = 99      # stopped by a signal after writing a snapshot (Grid Engine: "requeue")
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


class TrainingError(RuntimeError):
    """A problem with the inputs of a training run (files, lists, prototxt vs data)."""


def build_parser(augment: bool) -> argparse.ArgumentParser:
    name = "trainAug.py" if augment else "trainNoAug.py"
    p = argparse.ArgumentParser(
        prog=name,
        description=("Train a prototxt net on VoxCeleb1 (or the synthetic corpus) "
                     + ("with repetition + time-reversal augmentation." if augment else "without augmentation.")),
        epilog=f"Exit status: 0 done, 1 error, {EXIT_INTERRUPTED} stopped by a signal after a snapshot.")
    p.add_argument("--solver", required=True, help="solver prototxt (its net: is the network)")
    p.add_argument("--weights", help="initialise from this .caffemodel (layers matched by name), e.g. the "
                   "stage-1 weights for stage-2 fine-tuning")
    p.add_argument("--mode", choices=("identification", "verification"), default="identification",
                   help="identification: train split 1, validate on split 2; verification: train every "
                   "speaker except the test speakers, validate on their split 2")
    p.add_argument("--data-root", default="data/voxceleb1",
                   help="folder holding wav/ (and vox1_meta.csv); default %(default)s")
    p.add_argument("--iden-split", help="iden_split.txt (default: <data-root>/iden_split.txt if it exists, "
                   "else lists/iden_split.txt)")
    p.add_argument("--gpu", type=int, default=None,
                   help="GPU index, -1 for the CPU (default: $SGE_GPU, else GPU 0 if CUDA is present, else CPU)")
    p.add_argument("--engine", choices=("torch", "caffe"), default="torch",
                   help="torch = caffe_torch (default); caffe = a real pycaffe build")
    p.add_argument("--seed", type=int, default=1, help="seed of the batch stream and of the weight fillers")
    p.add_argument("--resume", nargs="?", const="auto", metavar="auto|FILE.solverstate",
                   help="continue from the newest snapshot in the run directory (auto) or from FILE")
    p.add_argument("--test-interval", type=int, default=1000,
                   help="validate every N iterations (0 = only at the end); default %(default)s")
    p.add_argument("--val-utterances", type=int, default=0,
                   help="validate on the first N validation utterances only (0 = all)")
    p.add_argument("--out", help="run directory (default runs/<solver name>)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="loader worker processes; default %(default)s")
    p.add_argument("--cache", metavar="DIR",
                   help="memory-mapped int16 audio cache folder: decoded once on first use (from the training "
                   "list), then the loader only slices it; must hold every training file")
    fast = p.add_argument_group("speed options (caffe_torch only; all off by default, see caffe_torch/fast.py)")
    fast.add_argument("--channels-last", action="store_true",
                      help="convolution weights and inputs in NHWC memory order (tensor-core friendly); same "
                      "numbers")
    fast.add_argument("--amp", choices=("bf16",),
                      help="run the convolutional trunk (Convolution, Pooling, PReLU, ReLU, Eltwise) under "
                      "bfloat16 autocast; the layers after it, the losses, parameters, gradients and the "
                      "solver stay float32")
    fast.add_argument("--tf32", action="store_true",
                      help="allow TensorFloat-32 in float32 convolutions and matrix products (Ampere+ GPUs)")
    fast.add_argument("--compile", action="store_true",
                      help="torch.compile the train net's forward (and so its backward); the first iteration "
                      "compiles (tens of seconds); falls back to the interpreted net if compiling fails")
    fast.add_argument("--deterministic", action="store_true",
                      help="deterministic cuDNN/CUDA algorithms, so a resumed GPU run equals the uninterrupted one")
    p.add_argument("--skip-bad-audio", action="store_true",
                   help="skip (and count) unreadable or wrong-format recordings instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


# ---------------------------------------------------------------------- prototxt inspection

def _resolve(path: str, base: Path, what: str, where: str) -> Path:
    cand = Path(path)
    if cand.exists():
        return cand.resolve()
    if not cand.is_absolute() and (base / cand).exists():
        return (base / cand).resolve()
    raise TrainingError(f"{where}: {what} '{path}' not found (looked in {Path.cwd()} and {base})")


def read_solver_and_net(solver_file: str):
    """(solver param, net path, net param) using caffe_torch's parser (also for --engine caffe)."""
    from caffe_torch.prototxt import read_net, read_solver

    solver_path = Path(solver_file)
    if not solver_path.exists():
        raise TrainingError(f"solver file '{solver_file}' not found")
    sp = read_solver(solver_path)
    net_name = sp.net or sp.train_net
    if not net_name:
        raise TrainingError(f"{solver_file}: the solver names no net file (net: or train_net:)")
    net_path = _resolve(net_name, solver_path.resolve().parent, "net file", str(solver_file))
    np_, _ = read_net(net_path)
    return sp, net_path, np_


def input_geometry(net_param, net_path) -> tuple[int, int, int]:
    """(batch, frames, frequency bins) from the net's data input (N x 1 x frames x 257)."""
    for lp in net_param.layer:
        if lp.type == "Input" and "data" in lp.top:
            shapes = list(lp.input_param.shape)
            shape = shapes[list(lp.top).index("data")] if len(shapes) > 1 else shapes[0]
            dims = list(shape.dim)
            break
    else:
        if "data" in net_param.input:
            i = list(net_param.input).index("data")
            dims = list(net_param.input_shape[i].dim) if net_param.input_shape \
                else list(net_param.input_dim[4 * i:4 * i + 4])
        else:
            raise TrainingError(f"{net_path}: no input blob named 'data' (an Input layer with top \"data\")")
    if len(dims) != 4 or dims[1] != 1:
        raise TrainingError(f"{net_path}: the data input must be N x 1 x frames x 257, got {dims}")
    return int(dims[0]), int(dims[2]), int(dims[3])


def classifier_widths(net_param) -> dict[str, int]:
    """{layer name: num_output} of the layers whose output the Accuracy layers read (the class scores)."""
    scored = {lp.bottom[0] for lp in net_param.layer if lp.type == "Accuracy"}
    out = {}
    for lp in net_param.layer:
        if scored & set(lp.top):
            for field in ("inner_product_param", "margin_inner_product_param"):
                if lp.HasField(field):
                    out[lp.name] = getattr(lp, field).num_output
    return out


def score_blob(net_param) -> str:
    for lp in net_param.layer:
        if lp.type == "Accuracy":
            return lp.bottom[0]
    raise TrainingError("the net has no Accuracy layer; cannot tell which blob holds the class scores")


# ---------------------------------------------------------------------- snapshots

def latest_snapshot(snapshot_dir: Path, prefix_name: str) -> Path | None:
    pattern = re.compile(re.escape(prefix_name) + r"_iter_(\d+)\.solverstate$")
    found = [(int(m.group(1)), p) for p in snapshot_dir.glob("*.solverstate")
             if (m := pattern.match(p.name)) and p.with_suffix(".caffemodel").exists()]
    return max(found)[1] if found else None


class StopRequest:
    """Turns the stop signals into a flag that the loop checks between iterations."""

    def __init__(self):
        self.signal_name: str | None = None
        self._old = {}

    def __enter__(self):
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            log.warning("%s received: finishing this iteration, then snapshot and exit", self.signal_name)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------- data

def _iden_split_path(args) -> Path:
    if args.iden_split:
        p = Path(args.iden_split)
        if not p.exists():
            raise TrainingError(f"--iden-split {p}: no such file")
        return p
    for cand in (Path(args.data_root) / "iden_split.txt", Path("lists") / "iden_split.txt"):
        if cand.exists():
            return cand
    raise TrainingError(f"no iden_split.txt in {args.data_root} or lists/: give --iden-split "
                        "(VoxCeleb1's list; see README)")


def load_splits(args, run: Path, write: bool = True):
    from voxdata import read_iden_split

    if not Path(args.data_root).is_dir():
        raise TrainingError(f"--data-root {args.data_root}: no such directory")
    split_file = _iden_split_path(args)
    splits = read_iden_split(split_file, mode=args.mode, data_root=args.data_root,
                             missing_log=run / "missing_files.txt" if write else None)
    if len(splits.train) == 0:
        raise TrainingError(f"{split_file}: no training utterance found under {splits.wav_dir} "
                            f"({len(splits.missing)} listed files missing)")
    if write:
        splits.save_labels(run / "labels.json")
    return splits, split_file


class Validator:
    """Top-1/top-5 of a TEST net (sharing the train net's weights) on one seeded crop per utterance."""

    def __init__(self, caffe, net_file: Path, train_net, paths, labels, frames, seed, augment, scores):
        from voxdata import eval_crops

        self.net = caffe.Net(str(net_file), caffe.TEST)
        self.net.share_with(train_net)
        self.labels = np.asarray(labels)
        self.scores_name = scores
        self.crops = eval_crops(paths, n_crops=1, frames=frames, seed=seed + 7919, augment=augment)
        self.batch = self.net.blobs["data"].shape[0]

    def run(self, to_input) -> tuple[float, float]:
        from .metrics import topk_accuracy

        scores = []
        pending = []
        for crops, _ in self.crops:
            pending.append(crops[0])
            if len(pending) == self.batch:
                scores.append(self._forward(pending, to_input))
                pending = []
        if pending:
            scores.append(self._forward(pending, to_input))
        s = np.concatenate(scores)
        return topk_accuracy(s, self.labels, 1), topk_accuracy(s, self.labels, min(5, s.shape[1]))

    def _forward(self, crops, to_input) -> np.ndarray:
        import torch

        batch = torch.stack(crops)
        n = len(crops)
        if n != self.net.blobs["data"].shape[0]:
            self.net.blobs["data"].reshape(n, *self.net.blobs["data"].shape[1:])
            self.net.blobs["label"].reshape(n, *self.net.blobs["label"].shape[1:])
            self.net.reshape()
        to_input(self.net, batch, torch.zeros(n, dtype=torch.int64))
        self.net.forward()
        return np.array(self.net.blobs[self.scores_name].data).reshape(n, -1)


# ---------------------------------------------------------------------- data parallel

class DataParallel:
    """torch.distributed state of a torchrun launch (WORLD_SIZE > 1); `enabled` is False otherwise."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.is_main = self.rank == 0
        self.loss = None           # the last iteration's loss averaged over the processes
        self.stop = False          # a stop signal reached some process (same value on every process)
        self.local_stop = None     # callable: has this process received a stop signal?
        self.gpu_index = None

    def gpu(self, gpu_arg: int | None, engine: str = "torch") -> int | None:
        """The GPU of this process (speaker.engine.gpu_for_process): --gpu -1 forces the CPU; else the
        LOCAL_RANK-th entry of $SGE_GPU, else GPU LOCAL_RANK when CUDA is present; else the CPU."""
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) if self.enabled else 1
        return gpu_for_process(gpu_arg, engine, self.local_rank if self.enabled else 0, local_world)

    def init(self, gpu: int | None) -> None:
        import torch.distributed as dist

        self.gpu_index = gpu
        if gpu is None:
            dist.init_process_group("gloo", timeout=timedelta(minutes=60))
        else:
            import torch

            torch.cuda.set_device(gpu)          # before NCCL starts: each process talks from its own GPU
            dist.init_process_group("nccl", timeout=timedelta(minutes=60), device_id=torch.device("cuda", gpu))
        if dist.get_world_size() != self.world:
            raise TrainingError(f"WORLD_SIZE {self.world} but the process group has {dist.get_world_size()}")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.gpu_index is None:
                dist.barrier()
            else:
                dist.barrier(device_ids=[self.gpu_index])

    def broadcast_params(self, net) -> None:
        """Every process starts from rank 0's weights (they are equal anyway: same seed and files)."""
        import torch.distributed as dist

        for p, *_ in net.learnable_params():
            dist.broadcast(p.data, 0)

    def gradient_hook(self, solver, loss: float) -> float:
        """Solver.gradient_hook: one all-reduce of [all param diffs..., loss, stop flag]; diffs and loss
        become their mean over the processes."""
        import torch
        import torch.distributed as dist

        grads = [p.grad for p, *_ in solver.net.learnable_params() if p.grad is not None]
        device = grads[0].device if grads else solver.net.device
        extra = torch.tensor([loss, 1.0 if self.local_stop and self.local_stop() else 0.0], device=device,
                             dtype=grads[0].dtype if grads else torch.float32)
        flat = torch.cat([g.reshape(-1) for g in grads] + [extra])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view(g.shape))
            offset += n
        self.loss = float(flat[offset])
        self.stop = bool(flat[offset + 1] > 0)
        return self.loss

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _ensure_cache(args, paths, ddp: DataParallel):
    """The --cache folder: built from the training files on first use (by rank 0), checked to hold them all."""
    from voxdata import WavCache, build_cache
    from voxdata.cache import INDEX

    if not args.cache:
        return None
    index = Path(args.cache) / INDEX
    if not index.exists():
        if ddp.is_main:
            log.info("building the audio cache %s from %d training files", args.cache, len(paths))
            build_cache(paths, args.cache, on_error="skip" if args.skip_bad_audio else "raise",
                        progress=not args.no_progress)
        ddp.barrier()
    cache = WavCache(args.cache)
    missing = [p for p in paths if p not in cache]
    skipped = len(cache.skipped)
    if missing and not (args.skip_bad_audio and len(missing) <= skipped):
        raise TrainingError(f"--cache {args.cache}: {len(missing)} training files are not in the cache (first: "
                            f"{missing[0]}); it was built from another list: delete it or pick another folder")
    log.info("audio cache %s: %d recordings", args.cache, len(cache))
    return cache


# ---------------------------------------------------------------------- the run

def _input_feeder(caffe, device):
    """A function (net, crops int16 (B, L), labels (B,)) -> None that fills 'data' and 'label'."""
    import torch

    from voxdata import spectrogram, spectrogram_torch

    if is_caffe_torch(caffe):
        def feed(net, crops, labels):
            spec = spectrogram_torch(crops.to(device, non_blocking=True))          # (B, F, 257) float32
            net.blobs["data"].tensor = spec.unsqueeze(1)                            # zero-copy
            net.blobs["label"].tensor = labels.to(device, torch.float32).view(-1, 1, 1, 1)
    else:
        def feed(net, crops, labels):
            net.blobs["data"].data[...] = spectrogram(crops.numpy())[:, None]
            net.blobs["label"].data[...] = labels.numpy().reshape(-1, 1, 1, 1)
    return feed


def train(args, augment: bool) -> int:
    ddp = DataParallel()
    try:
        return _train(args, augment, ddp)
    finally:
        ddp.close()


def _train(args, augment: bool, ddp: DataParallel) -> int:
    import torch
    from tqdm import tqdm

    from caffe_torch.solver import learning_rate
    from voxdata import crop_length, train_loader

    from .plots import training_curve

    solver_param, net_path, net_param = read_solver_and_net(args.solver)
    from caffe_torch.fast import FastOptions

    fast = FastOptions.from_args(args)
    if args.engine != "torch" and (fast.any() or ddp.enabled):
        raise TrainingError("--channels-last/--amp/--tf32/--compile and torchrun (data parallel) need the "
                            "caffe_torch engine (--engine torch)")
    gpu = ddp.gpu(args.gpu, args.engine)
    if ddp.enabled:
        ddp.init(gpu)
    run_dir = Path(args.out or Path("runs") / Path(args.solver).stem)
    if ddp.is_main:
        run = rundir.prepare(run_dir, args, "trainAug.py" if augment else "trainNoAug.py")
        rundir.setup_logging(run, "train", args.verbose)
        log.info("run directory %s (git %s)", run, rundir.git_revision())
    else:
        run = run_dir
        logging.basicConfig(level=logging.WARNING, format=f"[rank {ddp.rank}] %(levelname)s %(name)s: %(message)s")
    ddp.barrier()
    batch, frames, bins = input_geometry(net_param, net_path)
    if bins != 257:
        raise TrainingError(f"{net_path}: the data input has {bins} frequency bins; the spectrogram has 257")
    if solver_param.iter_size != 1:
        raise TrainingError(f"{args.solver}: iter_size {solver_param.iter_size}: the training scripts feed one "
                            "batch per iteration through Input layers, so only iter_size 1 is supported")
    if batch % ddp.world:
        raise TrainingError(f"{net_path}: batch {batch} (the global batch) is not divisible by the {ddp.world} "
                            "processes of this torchrun launch")
    splits, split_file = load_splits(args, run, write=ddp.is_main)
    for layer, width in classifier_widths(net_param).items():
        if width != len(splits.speakers):
            raise TrainingError(f"{net_path}: layer '{layer}' has num_output {width} but {split_file} "
                                f"({args.mode} mode) has {len(splits.speakers)} training speakers: edit "
                                "num_output (or use the matching --mode)")

    # resolved copies in the run directory: the engine reads these (absolute net path, snapshots in run/)
    snap_dir = run / "snapshots"
    prefix_name = Path(solver_param.snapshot_prefix or Path(args.solver).stem).name
    net_copy = run / "net.prototxt"
    solver_copy = run / "solver.prototxt"
    if ddp.is_main:
        snap_dir.mkdir(exist_ok=True)
        net_copy = rundir.copy_file(net_path, run, "net.prototxt")
        rundir.copy_file(args.solver, run, "solver.original.prototxt")
        from google.protobuf import text_format

        resolved = type(solver_param)()
        resolved.CopyFrom(solver_param)
        resolved.net = str(net_copy.resolve())
        resolved.ClearField("train_net")
        resolved.snapshot_prefix = str((snap_dir / prefix_name).resolve())
        resolved.solver_mode = resolved.CPU if gpu is None else resolved.GPU
        resolved.random_seed = args.seed
        solver_copy.write_text(text_format.MessageToString(resolved))
    ddp.barrier()

    caffe = load_engine(args.engine, gpu)
    device = torch.device("cpu") if gpu is None else torch.device("cuda", gpu)
    log.info("engine %s on %s; %d training utterances of %d speakers; batch %d, %d frames (%d samples)",
             args.engine, device, len(splits.train), len(splits.speakers), batch, frames, crop_length(frames))
    if ddp.enabled:
        log.info("data parallel: %d processes (%s), %d examples per process and iteration", ddp.world,
                 "nccl" if gpu is not None else "gloo", batch // ddp.world)
    caffe.set_random_seed(args.seed)
    solver = caffe.get_solver(str(solver_copy))
    if args.weights:
        if not Path(args.weights).exists():
            raise TrainingError(f"--weights {args.weights}: no such file")
        log.info("initialising from %s", args.weights)
        solver.net.copy_from(str(args.weights))
    if args.resume:
        state = latest_snapshot(snap_dir, prefix_name) if args.resume == "auto" else Path(args.resume)
        if state is None:
            log.info("--resume auto: no snapshot in %s yet; starting from the beginning", snap_dir)
        else:
            if not state.exists():
                raise TrainingError(f"--resume {state}: no such file")
            log.info("resuming from %s", state)
            solver.restore(str(state))
    if ddp.enabled:
        local = batch // ddp.world
        for name in solver.net.inputs:
            blob = solver.net.blobs[name]
            blob.reshape(local, *blob.shape[1:])
        solver.net.reshape()
        ddp.broadcast_params(solver.net)
        solver.gradient_hook = ddp.gradient_hook
        if not ddp.is_main:
            solver.param.snapshot = 0          # only rank 0 writes snapshots
    if fast.any():
        from caffe_torch.fast import apply_to_solver

        log.info("speed options: %s", fast.describe())
        apply_to_solver(solver, fast)

    feed = _input_feeder(caffe, device)
    val = None
    if len(splits.val) and ddp.is_main:
        n_val = args.val_utterances or len(splits.val)
        val = Validator(caffe, net_copy, solver.net, splits.abspaths(splits.val)[:n_val],
                        splits.val.labels[:n_val], frames, args.seed, augment, score_blob(net_param))
        if fast.channels_last or fast.amp:
            from caffe_torch.fast import FastOptions, apply

            apply(val.net, FastOptions(channels_last=fast.channels_last, amp=fast.amp))
    train_paths = splits.abspaths(splits.train)
    cache = _ensure_cache(args, train_paths, ddp)
    loader = train_loader(train_paths, splits.train.labels, batch_size=batch, frames=frames,
                          seed=args.seed, start_batch=solver.iter, num_workers=args.workers, augment=augment,
                          cache=cache, on_error="skip" if args.skip_bad_audio else "raise",
                          pin_memory=gpu is not None)
    rows = slice(ddp.rank * (batch // ddp.world), (ddp.rank + 1) * (batch // ddp.world))
    max_iter = solver_param.max_iter
    display = max(1, solver_param.display or 100)
    loss_name = next(iter(solver.net.outputs), None)
    loss_blobs = [b for b in solver.net.outputs if "loss" in b.lower()] or [loss_name]
    csv_path = run / "training_curve.csv"
    if ddp.is_main:
        new_csv = not csv_path.exists() or not args.resume
        csv_file = open(csv_path, "w" if new_csv else "a", newline="")  # noqa: SIM115 (closed in the finally below)
    else:
        new_csv, csv_file = False, open(os.devnull, "w")  # noqa: SIM115 (closed in the finally below)
    writer = csv.writer(csv_file)
    if new_csv:
        writer.writerow(["iteration", "loss", "lr", "val_top1", "val_top5"])
    recent = deque(maxlen=max(1, solver_param.average_loss))
    status = 0
    bar = tqdm(total=max_iter, initial=solver.iter, disable=args.no_progress or not ddp.is_main, unit="it",
               dynamic_ncols=True)
    t_start, it_start = time.perf_counter(), solver.iter
    try:
        with StopRequest() as stop:
            ddp.local_stop = lambda: stop.signal_name is not None
            batches = iter(loader)
            while solver.iter < max_iter:
                it = solver.iter
                if val is not None and args.test_interval and it % args.test_interval == 0 and it > it_start:
                    _validate(val, feed, it, writer, csv_file)
                crops, labels = next(batches)
                if ddp.enabled:
                    crops, labels = crops[rows], labels[rows]
                feed(solver.net, crops, labels)
                solver.step(1)
                if ddp.enabled:
                    loss = ddp.loss
                else:
                    loss = float(sum(np.asarray(solver.net.blobs[b].data).sum() for b in loss_blobs))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"iteration {it}: loss is {loss}")
                recent.append(loss)
                lr, _ = learning_rate(solver_param, it, 0)
                elapsed = time.perf_counter() - t_start
                rate = (solver.iter - it_start) * batch / elapsed if elapsed > 0 else 0.0
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(recent):.4f}", lr=f"{lr:.3g}", ex_s=f"{rate:.1f}")
                if it % display == 0:
                    writer.writerow([it, f"{np.mean(recent):.6g}", f"{lr:.6g}", "", ""])
                    csv_file.flush()
                if ddp.stop if ddp.enabled else stop.signal_name:
                    name = stop.signal_name or "a signal to another process"
                    if ddp.is_main:
                        model, state = _snapshot(solver, snap_dir, prefix_name)
                        log.warning("stopped by %s at iteration %d; snapshot %s; continue with --resume auto",
                                    name, solver.iter, state)
                    status = EXIT_INTERRUPTED
                    break
        if status == 0 and ddp.is_main:
            model = snap_dir / f"{prefix_name}_iter_{solver.iter}.caffemodel"
            if not model.exists():
                model, _ = _snapshot(solver, snap_dir, prefix_name)
            if val is not None:
                _validate(val, feed, solver.iter, writer, csv_file)
            final = run / "final.caffemodel"
            shutil.copyfile(model, str(final) + ".tmp")
            os.replace(str(final) + ".tmp", final)
            log.info("Optimization Done. final weights: %s", final)
    finally:
        bar.close()
        csv_file.close()
        if ddp.is_main:
            try:
                png = training_curve(csv_path, run / "training_curve.png")
                log.info("training curve: %s", png)
            except Exception as exc:  # a plot must never lose a run's result
                log.warning("could not plot the training curve: %s", exc)
    ddp.barrier()      # rank 0 has written everything before any process exits (torchrun ends the rest then)
    return status


def _snapshot(solver, snap_dir: Path, prefix_name: str):
    solver.snapshot()
    model = snap_dir / f"{prefix_name}_iter_{solver.iter}.caffemodel"
    return model, model.with_suffix(".solverstate")


def _validate(val: Validator, feed, it: int, writer, csv_file) -> None:
    top1, top5 = val.run(feed)
    log.info("Iteration %d, Testing net (#0)", it)
    log.info("    Test net output #0: top1Accuracy = %.4f", top1)
    log.info("    Test net output #1: top5Accuracy = %.4f", top5)
    writer.writerow([it, "", "", f"{top1:.6g}", f"{top5:.6g}"])
    csv_file.flush()


def main(argv=None, augment: bool = True) -> int:
    from caffe_torch.errors import CaffeError
    from voxdata import AudioError, ListFormatError

    args = build_parser(augment).parse_args(argv)
    try:
        return train(args, augment)
    except (TrainingError, CaffeError, AudioError, ListFormatError, FloatingPointError) as exc:
        logging.getLogger("train").error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
