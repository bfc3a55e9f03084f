"""The training loop shared by trainAug.py and trainNoAug.py (they differ only in augmentation).

What comes from where: architecture, loss, batch size and crop length (the net's Input layer), and every
solver number (lr schedule, iterations, snapshots) from the prototxt files; data, device, engine, seed,
validation interval and resuming from flags. The loop talks to the engine only through the pycaffe API, so
`--engine caffe` runs the same prototxt on a real pycaffe.

Per iteration: the loader hands over raw int16 crops (B, L) and labels; the spectrogram is computed on the
net's device (only int16 crosses the bus); the batch goes into the net's input blobs (caffe_torch: the tensor
itself, no copy); `solver.step(1)` runs Caffe's forward/backward/update. Every --test-interval iterations a
TEST net sharing the weights measures validation top-1/top-5 (one seeded crop per utterance, as the paper's
validation curves). Stop signals (speaker/stopping.py): SIGTERM, SIGINT, SIGHUP, SIGUSR1/SIGUSR2 (Grid
Engine's -notify warnings) before training starts stop the run at once; during training they finish the
current iteration, write a snapshot and exit with status 99 (a second Ctrl-C aborts). `--resume auto`
continues from the newest snapshot that loads, and since batch k is a pure function of (seed, k), the
resumed run sees the same batches as an uninterrupted one.

The stages, in order (train() -> _train()): prepare_run (read the prototxt, claim and lock the run
directory, logging, lists, the audio pre-flight check) -> prepare_cache (--cache) -> [the data-parallel process
group] -> build_solver -> start_from (--weights / --resume) -> prepare_data (feeder, validator, loader, data
parallel, speed options) -> loop -> finish (final weights). Any error of a stage is one line on stderr and in
train.log, exit status 1 (-v adds the traceback); another process holding the run directory: status 2. An
exception inside the loop (CUDA out of memory included) first writes a snapshot of the last completed
iteration when the solver's state is consistent, then says how to resume.

Today's recipe beside the paper's: several --data-root folders (VoxCeleb1 through its iden_split.txt,
VoxCeleb2 dev's m4a scanned, or --train-list; voxdata/roots.py; the derived list is saved as
<run>/train_list.txt and read back on --resume) and --noise / --rir augmentation on the loader side
(voxdata/augment.py, seeded per example, so resumed and data-parallel runs see the same crops).

Speed options (caffe_torch only, all off by default; see caffe_torch/fast.py): --channels-last, --amp bf16,
--tf32, --compile; --cache decodes the training audio once into a memory-mapped int16 file (built on first
use) so that the loader only slices.

Data parallel (caffe_torch only): under `torchrun --nproc_per_node=K trainAug.py ...` (WORLD_SIZE > 1) each
of the K processes builds the same solver; the prototxt's batch B is the global batch and must be divisible
by K; process r feeds rows [r B/K, (r+1) B/K) of global batch k (every process draws the crop positions of
the whole, deterministic batch k and decodes only its slice's recordings), and its Dropout layers draw the
masks of the global batch and keep its slice's rows; after backward the parameter diffs are averaged across
processes (the mean of equal-sized per-process batch means is the global batch mean, so this is one
process's gradient up to float summation order), then every process applies the identical Caffe update.
NCCL on GPUs (LOCAL_RANK picks the GPU, or the LOCAL_RANK-th entry of $SGE_GPU), gloo on the CPU. The
process group starts after the pre-flight check and the cache build, which the processes share through file
locks (the first does the work, the others wait on the lock, then reuse it), so no process waits at a
collective with a timeout while another works. Only rank 0 writes logs, the curve, snapshots and final
weights and validates; a stop signal on any process stops all of them at the same iteration (the flag
travels with the gradients).
"""

import argparse
import csv
import io
import logging
import math
import os
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxdata.augment import add_arguments as add_augment_arguments
from voxdata.scan import CACHE_NAME

from . import checks, rundir
from .data_parallel import DataParallel
from .engine import is_caffe_torch, load_engine
from .errors import TrainingError
from .netinfo import data_geometry, missing_layers, param_input_dims, smallest_frames
from .rundir import RunBusyError, RunIOError, io_step
from .stopping import EXIT_INTERRUPTED, Interrupted, StopRequest
from .validation import Validator

log = logging.getLogger("train")

EXIT_BUSY = 2              # another process holds the run directory's lock
REPO = Path(__file__).resolve().parent.parent
BAD_AUDIO_LIST = "bad_audio.txt"

__all__ = ["DataParallel", "EXIT_INTERRUPTED", "TrainingError", "Validator", "build_parser", "main", "train"]


def build_parser(augment: bool) -> argparse.ArgumentParser:
    name = "trainAug.py" if augment else "trainNoAug.py"
    p = argparse.ArgumentParser(
        prog=name,
        description=("Train a prototxt net on VoxCeleb1, VoxCeleb2 dev or the synthetic corpus "
                     + ("with repetition + time-reversal augmentation." if augment else "without augmentation.")),
        epilog=f"Exit status: 0 done, 1 error, {EXIT_BUSY} the command line does not parse or the run directory "
        "is in use by another process, "
        f"{EXIT_INTERRUPTED} stopped by a signal (after a snapshot, once training has started).")
    p.add_argument("--solver", required=True, help="solver prototxt (its net: is the network)")
    p.add_argument("--weights", help="initialise from this .caffemodel (layers matched by name), e.g. the "
                   "stage-1 weights for stage-2 fine-tuning")
    p.add_argument("--mode", choices=("identification", "verification"), default="identification",
                   help="identification (default): train split 1, validate on split 2; verification: train "
                   "every speaker except the test speakers, validate on their split 2")
    p.add_argument("--data-root", nargs="+", default=["data/voxceleb1"], metavar="ROOT",
                   help="folder holding wav/ (and vox1_meta.csv); default %(default)s. Several roots train on "
                   "all of them (e.g. VoxCeleb1 dev + VoxCeleb2 dev); a root without iden_split.txt (VoxCeleb2: "
                   "dev/aac/) is scanned, with --mode verification (see voxdata/roots.py)")
    p.add_argument("--iden-split", help="iden_split.txt (default: <data-root>/iden_split.txt if it exists, "
                   "else lists/iden_split.txt)")
    p.add_argument("--train-list", metavar="FILE",
                   help="training utterances as '<speaker> <path>' lines (voxceleb_trainer's train_list.txt; "
                   "paths relative to a data root's audio folder) instead of the roots' lists or scans")
    p.add_argument("--gpu", type=int, default=None,
                   help="GPU index, -1 for the CPU (default: $SGE_GPU, else GPU 0 if CUDA is present and the "
                   "engine is caffe_torch, else CPU). "
                   "Under torchrun only --gpu -1 is used: each process takes GPU LOCAL_RANK (or the "
                   "LOCAL_RANK-th entry of $SGE_GPU) and any other --gpu is ignored")
    p.add_argument("--engine", choices=("torch", "caffe"), default="torch",
                   help="torch = caffe_torch (default); caffe = a real pycaffe build")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the batch stream and of the weight fillers; default %(default)s")
    p.add_argument("--resume", nargs="?", const="auto", metavar="auto|FILE.solverstate",
                   help="continue from the newest snapshot in the run directory that loads (auto) or from FILE")
    p.add_argument("--force", action="store_true",
                   help="start over in an --out that already holds a run: the old run is moved to "
                   "<out>.old-N (never deleted). Without --force or --resume such an --out is refused")
    p.add_argument("--test-interval", type=int, default=1000,
                   help="validate every N iterations (0 = only at the end); default %(default)s")
    p.add_argument("--val-utterances", type=int, default=0,
                   help="validate on the first N validation utterances only (0 = all); default %(default)s")
    p.add_argument("--out", help="run directory (default runs/<solver name>); the audio check cache is "
                   f"{CACHE_NAME} in the folder above it")
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
    add_augment_arguments(p)
    p.add_argument("--skip-bad-audio", action="store_true",
                   help="leave out unreadable, wrong-format or too short recordings found by the pre-flight "
                   "check (counted at the start and the end, listed in <out>/bad_audio.txt) instead of "
                   "refusing to start")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log; errors with their traceback")
    return p


# ---------------------------------------------------------------------- prototxt inspection

def _resolve(path: str, base: Path, what: str, where: str) -> Path:
    """A file named in a prototxt: as given (the current directory), else next to the prototxt, else in the
    repository (so `qsub -v REPO=...` from another directory finds prototxt/...), like the test scripts."""
    cand = Path(path)
    for folder in (Path.cwd(), base, REPO):
        if (folder / cand).exists():
            return (folder / cand).resolve()
    raise TrainingError(f"{where}: {what} '{path}' not found (looked in {Path.cwd()}, {base} and {REPO})")


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
    try:
        dims = param_input_dims(net_param, "data")
    except ValueError as exc:             # an Input layer without its shapes
        raise TrainingError(f"{net_path}: {exc}") from None
    if dims is None:
        raise TrainingError(f"{net_path}: no input blob named 'data' (an Input layer with top \"data\")")
    try:
        return data_geometry(dims, str(net_path))
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def classifier_widths(net_param) -> dict[str, int]:
    """{layer name: num_output} of the layers whose output the Accuracy layers read (the class scores)."""
    scored = {lp.bottom[0] for lp in net_param.layer if lp.type == "Accuracy"}
    out = {}
    for lp in net_param.layer:
        if scored & set(lp.top):
            for field_name in ("inner_product_param", "margin_inner_product_param"):
                if lp.HasField(field_name):
                    out[lp.name] = getattr(lp, field_name).num_output
    return out


# ---------------------------------------------------------------------- snapshots and signals

def snapshots(snapshot_dir: Path, prefix_name: str) -> list[Path]:
    """The .solverstate files of the run (with their .caffemodel), newest first."""
    import re

    pattern = re.compile(re.escape(prefix_name) + r"_iter_(\d+)\.solverstate$")
    found = [(int(m.group(1)), p) for p in snapshot_dir.glob("*.solverstate")
             if (m := pattern.match(p.name)) and p.with_suffix(".caffemodel").exists()]
    return [p for _, p in sorted(found, reverse=True)]


# ---------------------------------------------------------------------- stage 1: the run

@dataclass
class Run:
    """Everything the later stages need, fixed by prepare_run."""

    args: argparse.Namespace
    augment: bool
    ddp: DataParallel
    script: str
    solver_param: object
    net_path: Path
    net_param: object
    batch: int
    frames: int
    gpu: int | None
    dir: Path
    splits: object = None
    split_file: Path | None = None
    train: tuple[list[str], np.ndarray] = ((), np.zeros(0))     # usable training (paths, labels)
    train_samples: dict[str, int] = field(default_factory=dict)  # their lengths (pre-flight check)
    val: tuple[list[str], np.ndarray] = ((), np.zeros(0))
    bad_audio: list[str] = field(default_factory=list)
    augmenter: object = None                              # voxdata.augment.Augmenter (--noise / --rir) or None
    validated: set[int] = field(default_factory=set)     # iterations whose validation row the curve keeps

    @property
    def snap_dir(self) -> Path:
        return self.dir / "snapshots"

    @property
    def prefix_name(self) -> str:
        return Path(self.solver_param.snapshot_prefix or Path(self.args.solver).stem).name

    @property
    def curve(self) -> Path:
        return self.dir / "training_curve.csv"

    def snapshot_state(self, iteration: int) -> Path:
        """The .solverstate of the snapshot at `iteration` (its .caffemodel lies beside it)."""
        return self.snap_dir / f"{self.prefix_name}_iter_{iteration}.solverstate"


def _check_device(gpu: int | None, engine: str) -> None:
    if gpu is not None and engine == "torch":
        import torch

        if not torch.cuda.is_available():
            raise TrainingError(f"GPU {gpu} requested (--gpu or $SGE_GPU) but CUDA is not available here; "
                                "use --gpu -1 for the CPU")


def prepare_run(args, augment: bool, ddp: DataParallel, stop: StopRequest, cleanup: ExitStack) -> Run:
    """Read and check the prototxt and the device, claim and lock the run directory (the lock's release goes
    on `cleanup`), start the log, read the lists and check every recording (pre-flight)."""
    from caffe_torch.fast import FastOptions

    solver_param, net_path, net_param = read_solver_and_net(args.solver)
    checks.train_inputs(args, solver_param)          # arguments and solver fields, before anything is written
    if args.engine != "torch" and (FastOptions.from_args(args).any() or ddp.enabled):
        raise TrainingError("--channels-last/--amp/--tf32/--compile and torchrun (data parallel) need the "
                            "caffe_torch engine (--engine torch)")
    if args.force and args.resume:
        raise TrainingError("--force starts the run over, --resume continues it: give one of them")
    gpu = ddp.gpu(args.gpu, args.engine)
    _check_device(gpu, args.engine)
    batch, frames, _ = input_geometry(net_param, net_path)
    if solver_param.iter_size != 1:
        raise TrainingError(f"{args.solver}: iter_size {solver_param.iter_size}: the training scripts feed one "
                            "batch per iteration through Input layers, so only iter_size 1 is supported")
    if batch % ddp.world:
        raise TrainingError(f"{net_path}: batch {batch} (the global batch) is not divisible by the {ddp.world} "
                            "processes of this torchrun launch")
    run_dir = Path(args.out or Path("runs") / Path(args.solver).stem)
    lock, aside = rundir.claim(run_dir, resume=bool(args.resume), force=args.force, lock=ddp.is_main)
    if lock is not None:
        cleanup.callback(lock.release)
    script = "trainAug.py" if augment else "trainNoAug.py"
    if ddp.is_main:
        stale = rundir.remove_stale_temporaries(run_dir)
        rundir.setup_logging(run_dir, "train", args.verbose)
        log.info("run directory %s (git %s)", run_dir, rundir.git_revision())
        if aside:
            log.warning("--force: the run that was in %s is now in %s", run_dir, aside)
        if stale:
            log.info("removed %d temporary file(s) an interrupted process left: %s", len(stale),
                     ", ".join(p.name for p in stale))
    else:
        logging.basicConfig(level=logging.WARNING, format=f"[rank {ddp.rank}] %(levelname)s %(name)s: %(message)s")
    run = Run(args, augment, ddp, script, solver_param, net_path, net_param, batch, frames, gpu, run_dir)
    stop.begin("checking the noise and RIR files")
    load_augmenter(run)
    stop.begin("reading the lists")
    load_splits(run)
    stop.begin("checking the audio")
    preflight(run)
    return run


def _split_files(args) -> dict[str, Path]:
    """The iden_split.txt of each data root that has one: --iden-split (one root), else
    <data-root>/iden_split.txt, else (one root) the repository's lists/ (as the test scripts)."""
    from .evaluate import default_list

    roots = args.data_root
    if args.iden_split:
        if len(roots) > 1:
            raise TrainingError("--iden-split is the list of one --data-root; with several roots each root holds "
                                "its own iden_split.txt (or is scanned)")
        if not Path(args.iden_split).exists():
            raise TrainingError(f"--iden-split {args.iden_split}: no such file")
        return {roots[0]: Path(args.iden_split)}
    found = {}
    for root in roots:
        p = Path(default_list(root, "iden_split.txt") if len(roots) == 1 else Path(root) / "iden_split.txt")
        if p.exists():
            found[root] = p
    return found


def load_splits(run: Run) -> None:
    """run.splits from the list (one VoxCeleb1 root, as the paper) or from several roots / scans / a
    --train-list (voxdata.roots; the derived training list is saved as <run>/train_list.txt, and a resumed run
    reads it back); the classifier must have one output per training speaker."""
    from voxdata import read_iden_split
    from voxdata.roots import train_list_text, training_splits

    args = run.args
    for root in args.data_root:
        if not Path(root).is_dir():
            raise TrainingError(f"--data-root {root}: no such directory")
    split_files = _split_files(args)
    saved_list = run.dir / "train_list.txt"
    if len(args.data_root) == 1 and split_files and not args.train_list:
        run.split_file = split_files[args.data_root[0]]
        with io_step("read", run.split_file):
            run.splits = read_iden_split(run.split_file, mode=args.mode, data_root=args.data_root[0])
    else:
        train_list = args.train_list or (saved_list if args.resume and saved_list.exists() else None)
        if train_list is not None and not Path(train_list).is_file():
            raise TrainingError(f"--train-list {train_list}: no such file")
        run.split_file = Path(train_list or args.data_root[0])
        if train_list == saved_list:
            log.info("training list: %s (saved when the run started)", saved_list)
        with io_step("read", run.split_file):
            run.splits = training_splits(args.data_root, args.mode, {r: str(p) for r, p in split_files.items()},
                                         train_list, progress=not args.no_progress)
        if run.ddp.is_main and train_list != saved_list:
            with io_step("write", saved_list):
                rundir.write_atomic(saved_list, train_list_text(run.splits))
    missing_log = run.dir / "missing_files.txt"
    if run.splits.missing and run.ddp.is_main:
        with io_step("write", missing_log):
            rundir.write_atomic(missing_log, "\n".join(run.splits.missing) + "\n")
        log.warning("all %d missing files are listed in %s", len(run.splits.missing), missing_log)
    if len(run.splits.train) == 0:
        raise TrainingError(f"{run.split_file}: no training utterance found under "
                            f"{run.splits.wav_dir or ', '.join(args.data_root)} "
                            f"({len(run.splits.missing)} listed files missing)")
    for layer, width in classifier_widths(run.net_param).items():
        if width != len(run.splits.speakers):
            raise TrainingError(f"{run.net_path}: layer '{layer}' has num_output {width} but {run.split_file} "
                                f"({args.mode} mode) has {len(run.splits.speakers)} training speakers: edit "
                                "num_output (or use the matching --mode)")
    if run.ddp.is_main:
        with io_step("write", run.dir / "labels.json"):
            rundir.replace_atomic(run.dir / "labels.json", run.splits.save_labels)


def preflight(run: Run) -> None:
    """Check every training and validation recording once (cached), before iteration 0: refuse to start,
    listing every problem in <run>/bad_audio.txt, or with --skip-bad-audio leave them out. Then every
    speaker must keep a training utterance (else its class would never be trained)."""
    from voxdata import scan_audio
    from voxdata.scan import default_cache_file

    from .evaluate import crop_min_samples

    args, splits, ddp = run.args, run.splits, run.ddp
    cache_file = default_cache_file(run.dir)
    # without augmentation a training crop cannot repeat a short recording (voxdata.crops)
    min_train = crop_min_samples(run.frames, run.augment)
    # the processes of a data-parallel launch take turns on the cache's lock: the first checks, the others reuse
    train, val = (scan_audio(splits.abspaths(subset), cache_file=cache_file, min_samples=need,
                             workers=2 * (os.cpu_count() or 1), progress=not args.no_progress and ddp.is_main)
                  for subset, need in ((splits.train, min_train), (splits.val, 1)))
    bad = train.bad + val.bad
    run.bad_audio += bad           # after the noise/RIR files left out by load_augmenter
    n_files = len(splits.train) + len(splits.val)
    log.info("audio check: %d recordings, %d unusable (%d results reused from %s)", n_files, len(bad),
             train.reused + val.reused, cache_file)
    if run.bad_audio and ddp.is_main:
        with io_step("write", run.dir / BAD_AUDIO_LIST):
            rundir.write_atomic(run.dir / BAD_AUDIO_LIST, "\n".join(run.bad_audio) + "\n")
    if bad and not args.skip_bad_audio:
        raise TrainingError(f"{len(bad)} of {n_files} recordings are unusable (first: {bad[0]}; all listed in "
                            f"{run.dir / BAD_AUDIO_LIST}): fix or remove them, or pass --skip-bad-audio to "
                            "leave them out")
    if bad:
        log.warning("--skip-bad-audio: leaving out %d unusable recordings (listed in %s)", len(bad),
                    run.dir / BAD_AUDIO_LIST)
    run.train = _usable(splits.abspaths(splits.train), splits.train.labels, set(train.good))
    run.train_samples = train.samples
    run.val = _usable(splits.abspaths(splits.val), splits.val.labels, set(val.good))
    counts = np.bincount(run.train[1], minlength=len(splits.speakers))
    empty = [splits.speakers[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise TrainingError(f"{run.split_file}: {len(empty)} of {len(splits.speakers)} speakers have no usable "
                            f"training utterance (first: {empty[0]}), so their classes would never be trained: "
                            "remove them from the list (and from num_output) or restore their recordings")


def load_augmenter(run: Run) -> None:
    """--noise / --rir: the noise and RIR files, checked like the recordings (bad ones refused, or left out and
    counted with --skip-bad-audio)."""
    from voxdata.augment import AugmentConfig
    from voxdata.augment import load_augmenter as load
    from voxdata.scan import default_cache_file

    config = AugmentConfig.from_args(run.args)
    try:
        run.augmenter, bad = load(config, default_cache_file(run.dir), run.args.skip_bad_audio,
                                  progress=not run.args.no_progress)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    if bad:
        log.warning("--skip-bad-audio: leaving out %d unusable noise/RIR files (first: %s)", len(bad), bad[0])
        run.bad_audio += bad
    if run.augmenter is not None:
        log.info("augmentation beside the paper's: %s; files %s", config.describe(), run.augmenter.record()["files"])


def _usable(paths, labels, good: set) -> tuple[list[str], np.ndarray]:
    keep = [i for i, p in enumerate(paths) if p in good]
    return [paths[i] for i in keep], np.asarray(labels)[keep]


# ---------------------------------------------------------------------- stage 2: the solver

def build_solver(run: Run):
    """(engine module, solver) from a resolved copy of the solver in the run directory (net: the user's file,
    so that layer errors cite it; snapshots in <run>/snapshots; device; seed)."""
    from google.protobuf import text_format

    args = run.args
    solver_copy = run.dir / "solver.prototxt"
    if run.ddp.is_main:
        with io_step("create", run.snap_dir):
            run.snap_dir.mkdir(exist_ok=True)
        rundir.copy_file(run.net_path, run.dir, "net.prototxt")
        rundir.copy_file(args.solver, run.dir, "solver.original.prototxt")
        resolved = type(run.solver_param)()
        resolved.CopyFrom(run.solver_param)
        resolved.net = str(run.net_path)
        resolved.ClearField("train_net")
        resolved.snapshot_prefix = str((run.snap_dir / run.prefix_name).resolve())
        resolved.solver_mode = resolved.CPU if run.gpu is None else resolved.GPU
        resolved.random_seed = args.seed
        resolved.snapshot = 0          # the loop writes the snapshots (every run.solver_param.snapshot iterations)
        with io_step("write", solver_copy):
            rundir.write_atomic(solver_copy, text_format.MessageToString(resolved))
    run.ddp.barrier()
    if args.engine != "torch":
        _probe_build(run)              # a real Caffe aborts (CHECK) on a bad shape: ask caffe_torch first
    caffe = load_engine(args.engine, run.gpu)
    caffe.set_random_seed(args.seed)
    try:
        if args.engine == "torch":
            # the loop reads no activation diff: caffe_torch keeps none after a step (pycaffe's default keeps them)
            # and the feeder checks the labels on the host: the layers read nothing back (no host sync)
            from caffe_torch.fast import FastOptions

            fast = FastOptions.from_args(args)
            if fast.any():
                log.info("speed options: %s", fast.describe())
            solver = caffe.get_solver(str(solver_copy), blob_diffs=False,
                                      label_checks=not classifier_widths(run.net_param), fast=fast)
        else:
            solver = caffe.get_solver(str(solver_copy))
    except Exception as exc:
        _explain_input_size(run, exc)
        raise
    return caffe, solver


def _probe_build(run: Run) -> None:
    import caffe_torch

    try:
        caffe_torch.Net(str(run.net_path), caffe_torch.TRAIN, device="cpu")   # errors cite the user's file
    except caffe_torch.CaffeError as exc:
        _explain_input_size(run, exc)
        raise


def _explain_input_size(run: Run, exc: Exception) -> None:
    """A layer whose top would have a negative size: say which input size the net accepts."""
    if "negative shape" not in str(exc):
        return
    least = smallest_frames(run.net_param, run.frames + 1)
    if least is not None:
        raise TrainingError(f"{exc}; its Input 'data' has {run.frames} frames, the net needs at least {least} "
                            f"(crops of {least} frames or more: edit dim 3 of the Input shape)") from None


# ---------------------------------------------------------------------- stage 3: where to start from

def start_from(run: Run, caffe, solver, stop: StopRequest) -> None:
    """--resume (the newest snapshot that loads, or FILE), else --weights; then record the arguments."""
    resumed = _resume(run, caffe, solver) if run.args.resume else None
    stop.last_snapshot = resumed
    if resumed is None and run.args.weights:
        _initial_weights(run, solver)
    if run.ddp.is_main:
        rundir.record_args(run.dir, run.args, run.script, resumed_at=solver.iter if resumed else None)
        run.validated = _truncate_curve(run.curve, solver.iter if resumed else 0)


def _initial_weights(run: Run, solver) -> None:
    weights = Path(run.args.weights)
    if not weights.exists():
        raise TrainingError(f"--weights {weights}: no such file")
    missing = missing_layers(solver.net, weights)
    if len(missing) == len(solver.net.params):
        raise TrainingError(f"--weights {weights}: holds none of the learnable layers of {run.net_path} "
                            f"({', '.join(solver.net.params)}): wrong file?")
    log.info("initialising from %s", weights)
    solver.net.copy_from(str(weights))
    if missing:          # stage 2: the new loss layers (expected); anything else is worth a look
        log.info("--weights %s holds no %d layer(s), which keep their fillers: %s", weights, len(missing),
                 ", ".join(missing))


def _resume(run: Run, caffe, solver) -> Path | None:
    """Restore the newest snapshot that loads completely (auto) or FILE; None when auto finds none. A
    snapshot's weights are the .caffemodel beside its .solverstate, checked against the digest it records."""
    from caffe_torch.errors import WeightsError
    from caffe_torch.weights import solverstate_weights

    auto = run.args.resume == "auto"
    candidates = snapshots(run.snap_dir, run.prefix_name) if auto else [Path(run.args.resume)]
    if not candidates:
        log.info("--resume auto: no snapshot in %s yet; starting from the beginning", run.snap_dir)
        return None
    for state in candidates:
        try:
            if not state.is_file():
                raise TrainingError(f"--resume {state}: no such file")
            model = solverstate_weights(state)
            if model is None:
                raise TrainingError(f"{state}: names no weights (learned_net): not a snapshot of a training run")
            missing = missing_layers(solver.net, model)
            if missing:
                raise TrainingError(f"{model}: holds no weights for layer(s) {', '.join(missing)} of "
                                    f"{run.net_path}: not a snapshot of this net")
            _restore(caffe, solver, state, model)
        except (WeightsError, TrainingError) as exc:
            if not auto:
                raise
            log.warning("--resume auto: skipping %s (%s)", state.name, exc)
            continue
        log.info("resuming from %s (iteration %d)", state, solver.iter)
        return state
    raise TrainingError(f"--resume auto: none of the {len(candidates)} snapshots in {run.snap_dir} loads (see "
                        "the warnings above); use --force to start over")


def _restore(caffe, solver, state: Path, model: Path) -> None:
    """solver.restore(state) with the weights `model`. caffe_torch takes the .caffemodel beside the state
    itself; a real Caffe reads the state's learned_net as written (an absolute path, maybe of the run that now
    lives where this one was before a --force): it restores from a copy of the state that names `model`."""
    if is_caffe_torch(caffe):
        solver.restore(str(state))
        return
    import tempfile

    from caffe_torch.weights import read_solverstate

    copy = read_solverstate(state)
    copy.learned_net = str(model.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / state.name
        path.write_bytes(copy.SerializeToString())
        solver.restore(str(path))


CURVE_HEADER = ["iteration", "loss", "lr", "val_top1", "val_top5"]


def _curve_row(row: list[str]) -> bool:
    """Is `row` a whole row of training_curve.csv: an iteration, then a loss and a rate, or two accuracies?"""
    if len(row) != len(CURVE_HEADER) or not row[0].isdigit():
        return False
    if tuple(map(bool, row[1:])) not in ((True, True, False, False), (False, False, True, True)):
        return False
    try:
        [float(x) for x in row[1:] if x]
    except ValueError:
        return False
    return True


def _truncate_curve(path: Path, iteration: int) -> set[int]:
    """Keep the curve's rows of the iterations before `iteration` (validation rows up to it): after a
    kill -9 the rows between the last snapshot and the kill would otherwise appear twice. Rows that are not
    whole (a kill in the middle of an append leaves the last line without its end; anything else garbled) are
    dropped with a warning. Returns the iterations of the validation rows kept."""
    if not path.exists():
        return set()
    with io_step("rewrite", path):
        text = path.read_text(errors="replace")
        lines = text.splitlines()
        torn = lines.pop() if lines and not text.endswith(("\n", "\r")) else None
        rows = list(csv.reader(lines[1:] if lines[:1] == [",".join(CURVE_HEADER)] else lines))
        whole = [r for r in rows if _curve_row(r)]
        bad = [",".join(r) for r in rows if r and not _curve_row(r)] + ([torn] if torn else [])
        if bad:
            log.warning("%s: dropped %d incomplete or garbled row(s) (first: %r)", path, len(bad), bad[0])
        keep = [r for r in whole if int(r[0]) < iteration or (int(r[0]) == iteration and r[3])]
        out = io.StringIO()
        csv.writer(out).writerows([CURVE_HEADER, *keep])
        rundir.write_atomic(path, out.getvalue())
    return {int(r[0]) for r in keep if r[3]}


# ---------------------------------------------------------------------- stage 4: data

def _input_feeder(caffe, device, classes: int):
    """A function (net, crops int16 (B, L), labels (B,)) -> None that fills 'data' and 'label'. The labels are
    checked against `classes` on the host, before they are uploaded (caffe_torch's layers then check nothing:
    Solver(label_checks=False)); crops and labels cross to a GPU without blocking (pinned by the loader)."""
    import torch

    from voxdata import spectrogram, spectrogram_torch

    def check(labels):
        values = labels.numpy()
        if values.size and (values.min() < 0 or values.max() >= classes):
            bad = values[(values < 0) | (values >= classes)][0]
            raise TrainingError(f"label {bad} out of range [0, {classes}) in a training batch")

    if is_caffe_torch(caffe):
        def feed(net, crops, labels):
            check(labels)
            spec = spectrogram_torch(crops.to(device, non_blocking=True))          # (B, F, 257) float32
            net.blobs["data"].tensor = spec.unsqueeze(1)                            # zero-copy
            net.blobs["label"].tensor = labels.to(device, non_blocking=True).to(torch.float32).view(-1, 1, 1, 1)
    else:
        def feed(net, crops, labels):
            check(labels)
            net.blobs["data"].data[...] = spectrogram(crops.numpy())[:, None]
            net.blobs["label"].data[...] = labels.numpy().reshape(-1, 1, 1, 1)
    return feed


class Progress:
    """The progress bar and training_curve.csv (rank 0 writes it; the other ranks write nothing)."""

    def __init__(self, run: Run, solver):
        from tqdm import tqdm

        self.run, self.solver_param = run, run.solver_param
        self.display = max(1, run.solver_param.display or 100)
        self.start_iter = solver.iter
        self.bar = tqdm(total=run.solver_param.max_iter, initial=solver.iter, unit="it", dynamic_ncols=True,
                        disable=run.args.no_progress or not run.ddp.is_main)
        self.file = None
        if run.ddp.is_main:
            new = not run.curve.exists() or solver.iter == 0
            with io_step("open", run.curve):
                self.file = open(run.curve, "w" if new else "a", newline="")  # noqa: SIM115 (closed by close())
            self._write([CURVE_HEADER] if new else [])
        self.t0 = time.perf_counter()

    def _write(self, rows) -> None:
        if self.file is not None:
            with io_step("write", self.run.curve):
                csv.writer(self.file).writerows(rows)
                self.file.flush()

    def step(self, it: int, loss: float | None, lr: float, iterations_done: int) -> None:
        """After iteration `it`: the bar; at display iterations (`loss` the smoothed loss read there, else None)
        its postfix and a curve row."""
        elapsed = time.perf_counter() - self.t0
        rate = (iterations_done - self.start_iter) * self.run.batch / elapsed if elapsed > 0 else 0.0
        self.bar.update(1)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", ex_s=f"{rate:.1f}")
            self._write([[it, f"{loss:.6g}", f"{lr:.6g}", "", ""]])

    def validation(self, it: int, top1: float, top5: float) -> None:
        self._write([[it, "", "", f"{top1:.6g}", f"{top5:.6g}"]])

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
            from .plots import training_curve

            try:
                log.info("training curve: %s", training_curve(self.run.curve, self.run.dir / "training_curve.png"))
            except Exception as exc:  # a plot must never lose a run's result
                log.warning("could not plot the training curve: %s", exc)


class TorchStep:
    """One training iteration on caffe_torch: the solver's step (forward, backward, update) with the loss
    smoothed on the device over the whole run (Caffe's average_loss window); nothing is read from the device
    except at display iterations (the solver's display line; its values are returned) and before a snapshot."""

    def __init__(self, solver, display: int):
        from caffe_torch.solver import SmoothedLoss

        self.display = display
        self.window = solver.run_window = SmoothedLoss(solver.param.average_loss, solver.iter)

    def __call__(self, solver, it: int) -> tuple[float | None, float]:
        """(the smoothed loss at display iterations else None, the iteration's rate)."""
        solver.step(1)
        if it % self.display:
            return None, solver.last_lr
        shown = solver.param.display and it % solver.param.display == 0
        return (solver.displayed_loss if shown else self.window.read()), solver.last_lr

    def loss_now(self, solver) -> float:
        return self.window.read()


class CaffeStep:
    """One training iteration on a real pycaffe: its step(1), the loss read from the loss blobs every iteration
    (the sum of their values) and smoothed on the host over average_loss, the rate as Caffe computes it."""

    def __init__(self, solver_param, display: int, loss_blobs: list[str]):
        self.param, self.display, self.loss_blobs = solver_param, display, loss_blobs
        self.recent: deque = deque(maxlen=max(1, solver_param.average_loss))

    def __call__(self, solver, it: int) -> tuple[float | None, float]:
        from caffe_torch.solver import learning_rate

        solver.step(1)
        self.recent.append(self.loss_now(solver))
        if it % self.display:
            return None, math.nan
        # multistep: Caffe's current_step at `it` is the count of stepvalues passed (so nothing is logged here)
        passed = sum(1 for v in self.param.stepvalue if v <= it)
        return float(np.mean(self.recent)), learning_rate(self.param, it, passed)[0]

    def loss_now(self, solver) -> float:
        return float(sum(np.asarray(solver.net.blobs[b].data).sum() for b in self.loss_blobs))


@dataclass
class Data:
    feed: object
    loader: object
    val: Validator | None
    progress: Progress
    step: TorchStep | CaffeStep

    def validation_due(self, it: int, interval: int, validated: set[int]) -> bool:
        """Every `interval` iterations from the first on, unless the curve holds that validation already (a
        run resumed at iteration `it` after a kill that came before its validation ran does run it)."""
        return self.val is not None and interval > 0 and it > 0 and it % interval == 0 and it not in validated


def prepare_data(run: Run, caffe, solver, cache) -> Data:
    """The input feeder, the validator (rank 0), the batch loader from solver.iter on (a data-parallel
    process's loader decodes only its rows of each batch), data parallelism and the speed options."""
    import torch

    from caffe_torch.fast import FastOptions
    from voxdata import crop_length, train_loader

    args, ddp = run.args, run.ddp
    device = torch.device("cpu") if run.gpu is None else torch.device("cuda", run.gpu)
    log.info("engine %s on %s; %d training utterances of %d speakers; batch %d, %d frames (%d samples)",
             args.engine, device, len(run.train[0]), len(run.splits.speakers), run.batch, run.frames,
             crop_length(run.frames))
    if ddp.enabled:
        log.info("data parallel: %d processes (%s), %d examples per process and iteration", ddp.world,
                 "nccl" if run.gpu is not None else "gloo", run.batch // ddp.world)
        ddp.attach(solver, run.batch)
    fast = FastOptions.from_args(args)
    val = None
    if len(run.val[0]) and ddp.is_main:
        n_val = args.val_utterances or len(run.val[0])
        # the validation net in the training net's memory layout and autocast precision (not compiled)
        val_fast = FastOptions(channels_last=fast.channels_last, amp=fast.amp) \
            if fast.channels_last or fast.amp else None
        val = Validator(caffe, run.net_path, solver.net, run.val[0][:n_val], run.val[1][:n_val], run.frames,
                        args.seed, run.augment, fast=val_fast)
    rows = ddp.rows(run.batch)
    lengths = [run.train_samples[p] for p in run.train[0]] if rows is not None else None
    loader = train_loader(run.train[0], run.train[1], batch_size=run.batch, frames=run.frames, seed=args.seed,
                          start_batch=solver.iter, num_workers=args.workers, augment=run.augment, cache=cache,
                          on_error="skip" if args.skip_bad_audio else "raise", pin_memory=run.gpu is not None,
                          rows=rows, lengths=lengths, augmenter=run.augmenter)
    progress = Progress(run, solver)
    if is_caffe_torch(caffe):
        step = TorchStep(solver, progress.display)
    else:
        loss_name = next(iter(solver.net.outputs), None)
        loss_blobs = [b for b in solver.net.outputs if "loss" in b.lower()] or [loss_name]
        step = CaffeStep(run.solver_param, progress.display, loss_blobs)
    classes = len(run.splits.speakers)
    return Data(_input_feeder(caffe, device, classes), loader, val, progress, step)


def prepare_cache(run: Run, stop: StopRequest):
    """The --cache folder made to hold the current samples of every training file: built on first use, an
    unfinished build continued, new files added, files changed since they were decoded decoded again
    (voxdata.cache). The processes of a data-parallel launch (their process group has not started yet) take
    turns on a lock beside it: the first builds, the others find it current. A stop signal stops the build
    after its current file; what it decoded is kept for the next start."""
    from voxdata import build_cache
    from voxdata.cache import CacheError
    from voxdata.lockfile import exclusive

    args, paths = run.args, run.train[0]
    if not args.cache:
        return None
    try:
        stop.begin("waiting for the audio cache's lock")     # a signal stops the wait at once
        with exclusive(f"{Path(args.cache).resolve()}.lock", "building the audio cache"):
            cache = _current_cache(args.cache, paths)
            if cache is None:
                with stop.polled("building the audio cache"), io_step("build the audio cache", args.cache):
                    cache = build_cache(paths, args.cache, on_error="skip" if args.skip_bad_audio else "raise",
                                        progress=not args.no_progress and run.ddp.is_main,
                                        should_stop=lambda: stop.signal_name)
    except CacheError as exc:
        raise TrainingError(f"--cache {args.cache}: {exc}") from None
    log.info("audio cache %s: %d recordings (%d unusable left out)", args.cache, len(cache), len(cache.skipped))
    return cache


def _current_cache(folder, paths):
    """The finished cache in `folder` if it holds every one of `paths` as its file is now, else None."""
    from voxdata import WavCache
    from voxdata.cache import INDEX

    if not (Path(folder) / INDEX).exists():
        return None
    cache = WavCache(folder)
    if any(p not in cache for p in paths) or cache.stale(paths):
        return None
    return cache


# ---------------------------------------------------------------------- stages 5 and 6: loop, finish

def loop(run: Run, solver, data: Data, stop: StopRequest) -> int:
    """Iterations solver.iter .. max_iter: validate when due, feed batch k, one Caffe step, record, snapshot
    when due. On a stop signal: snapshot, EXIT_INTERRUPTED. On an exception: a snapshot of the last completed
    iteration when the solver's state is one (save_after_failure), then a TrainingError saying how to resume."""
    ddp, batches, every = run.ddp, iter(data.loader), run.solver_param.snapshot
    while solver.iter < run.solver_param.max_iter:
        it, before = solver.iter, None
        try:
            if data.validation_due(it, run.args.test_interval, run.validated):
                data.progress.validation(it, *data.val.log_run(data.feed, it))
                run.validated.add(it)
            data.feed(solver.net, *next(batches))
            before = ForwardState(solver, run.args.engine == "torch")
            loss, lr = data.step(solver, it)
            check_finite(loss)
            data.progress.step(it, loss, lr, solver.iter)
            if ddp.is_main and every and solver.iter % every == 0:
                check_finite(data.step.loss_now(solver))
                snapshot(run, solver, stop)
        except Exception as exc:
            saved = save_after_failure(run, solver, data, stop, it, before, exc)
            raise TrainingError(f"{one_line(exc)} (iteration {it}); {saved}") from exc
        # data parallel: every process asks the all-reduced flag at the same iterations: every one on CPUs, at
        # display iterations on GPUs (a read there waits for the GPU's queue)
        if (ddp.enabled and it % ddp.stop_check_every(data.progress.display) == 0 and ddp.stop_requested()) or \
                (not ddp.enabled and stop.requested):
            if ddp.is_main:
                log.warning("stopped by %s at iteration %d; snapshot %s; continue with --resume auto",
                            stop.signal_name or "a signal to another process", solver.iter,
                            last_snapshot(run, solver, stop))
            stop.settled = True
            return EXIT_INTERRUPTED
    return 0


def check_finite(loss: float | None) -> None:
    """The scripts stop on a non-finite loss (Caffe would train on): checked where the loss is read, at display
    iterations and before a snapshot (NaN weights make every later loss NaN, so none slips through)."""
    if loss is not None and not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss}")


class ForwardState:
    """What a step changes before its weight update begins, besides the diffs: the layers' counters and
    Dropout's generators (Net.layer_states / layer_rng_states) and the blobs no solver updates (BatchNorm's
    running statistics). Taken before each step (host-side values and device copies, nothing read back), so
    that an exception in the step's forward or backward can put the solver back at the iteration it had
    completed. A real pycaffe's state inside a step is unknown (known False)."""

    def __init__(self, solver, known: bool):
        self.known = known
        if known:
            net = solver.net
            self.counters, self.generators = net.layer_states(), net.layer_rng_states()
            self.frozen = [(p, p.detach().clone()) for p, *_ in net.learnable_params() if not p.requires_grad]

    def put_back(self, solver) -> None:
        import torch

        solver.net.set_layer_states(self.counters)
        solver.net.set_layer_rng_states(self.generators)
        with torch.no_grad():
            for p, value in self.frozen:
                p.copy_(value)


def save_after_failure(run: Run, solver, data: Data, stop: StopRequest, it: int, before, exc) -> str:
    """After an exception in iteration `it`: snapshot the last completed iteration when the solver holds one
    (rank 0). Says what it did, and how to resume, for the error line."""
    resume = "continue with --resume auto"
    if stop.last_snapshot is not None:
        resume += f" (from {stop.last_snapshot.name})"
    if not run.ddp.is_main:
        return f"rank 0 writes the snapshots: {resume}"
    state_known = before is None or solver.iter > it or before.known
    if isinstance(exc, FloatingPointError):
        why = "the weights after a step with a non-finite loss are not worth keeping"
    elif getattr(solver, "updating", False) or not state_known:
        why = "it came during the weight update" if state_known else "the engine's state inside a step is unknown"
    elif stop.writing is not None:
        why = "writing the snapshot failed"
    elif solver.iter == 0:
        return f"no iteration was completed: {resume}"
    elif run.snapshot_state(solver.iter) == stop.last_snapshot:
        return f"the snapshot of iteration {solver.iter} exists: {resume}"
    else:
        if solver.iter == it and before is not None:
            before.put_back(solver)            # the failed step's forward changed these
        try:
            state = snapshot(run, solver, stop)
        except Exception as failed:             # the original error is the one to report; this one is logged
            log.warning("could not write a snapshot of iteration %d: %s", solver.iter, one_line(failed))
            return f"no snapshot of iteration {solver.iter} (writing it failed): {resume}"
        return f"snapshot {state} of iteration {solver.iter} written: continue with --resume auto"
    return f"no snapshot of iteration {solver.iter} ({why}): {resume}"


def snapshot(run: Run, solver, stop: StopRequest) -> Path:
    """Write <prefix>_iter_<N>.caffemodel/.solverstate (the .solverstate last: it marks the snapshot complete);
    returns the .solverstate. A second Ctrl-C meanwhile aborts it (stop.writing says which)."""
    state = run.snapshot_state(solver.iter)
    stop.writing = state
    with io_step("write the snapshot", state.with_suffix(".*")):
        solver.snapshot()
    stop.writing, stop.last_snapshot = None, state
    return state


def last_snapshot(run: Run, solver, stop: StopRequest) -> Path:
    """The snapshot of the current iteration: written unless this process just wrote or restored it."""
    state = run.snapshot_state(solver.iter)
    return state if stop.last_snapshot == state else snapshot(run, solver, stop)


def finish(run: Run, solver, data: Data, stop: StopRequest) -> None:
    """The last snapshot, the final validation, final.caffemodel."""
    if not run.ddp.is_main:
        return
    state = last_snapshot(run, solver, stop)
    if data.val is not None and solver.iter not in run.validated:   # (a finished run resumed: done already)
        data.progress.validation(solver.iter, *data.val.log_run(data.feed, solver.iter))
    model, final = state.with_suffix(".caffemodel"), run.dir / "final.caffemodel"
    with io_step(f"copy {model} to", final):
        rundir.write_atomic(final, model.read_bytes())
    log.info("Optimization Done. final weights: %s", final)


# ---------------------------------------------------------------------- the stages in order

def _train(args, augment: bool, ddp: DataParallel, stop: StopRequest, cleanup: ExitStack) -> int:
    ddp.local_stop = lambda: stop.requested
    run = prepare_run(args, augment, ddp, stop, cleanup)
    cache = prepare_cache(run, stop)
    stop.begin("building the solver")
    if ddp.enabled:
        ddp.init(run.gpu)          # after the long work each process does alone: no collective waits for it
    caffe, solver = build_solver(run)
    stop.begin("restoring the snapshot" if args.resume else "loading the weights")
    start_from(run, caffe, solver, stop)
    stop.begin("preparing the data")
    data = prepare_data(run, caffe, solver, cache)
    stop.begin("training")
    stop.training = True
    try:
        status = loop(run, solver, data, stop)
        if status == 0:
            finish(run, solver, data, stop)
            stop.settled = True
    finally:
        data.progress.close()
        if run.bad_audio:
            log.warning("%d unusable recordings were left out (--skip-bad-audio; listed in %s)",
                        len(run.bad_audio), run.dir / BAD_AUDIO_LIST)
    ddp.barrier()      # rank 0 has written everything before any process exits (torchrun ends the rest then)
    return status


def train(args, augment: bool) -> int:
    """Run the stages; an error is one line on stderr and in train.log (traceback with -v), status 1; another
    process holding the run directory, status 2; a stop signal, status 99."""
    from caffe_torch.errors import CaffeError
    from voxdata import AudioError, CropError, ListFormatError

    ddp = DataParallel()
    stop = StopRequest()
    try:
        with stop, ExitStack() as cleanup:
            return _train(args, augment, ddp, stop, cleanup)
    except Interrupted as exc:
        report(stop.explain(exc), level=logging.WARNING)
        return EXIT_INTERRUPTED
    except RunBusyError as exc:
        report(f"error: {exc}")
        return EXIT_BUSY
    except (TrainingError, RunIOError, CaffeError, AudioError, CropError, ListFormatError, FloatingPointError,
            OSError) as exc:
        report(f"error: {one_line(exc)}", exc if args.verbose else None)
        return 1
    finally:
        ddp.close()
        rundir.close_logging()


def one_line(exc: BaseException) -> str:
    """The message of an error, one line: an error re-raised from a DataLoader worker carries the worker's
    traceback in its message (keep its last line); an OSError without our io_step names its file."""
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].replace(".", "").isidentifier() \
            else last
    elif isinstance(exc, OSError) and not isinstance(exc, RunIOError):
        where = f" {exc.filename}" if exc.filename else ""
        text = f"I/O error{where}: {exc.strerror or exc}"
    return " ".join(text.split("\n"))


def report(msg: str, exc: BaseException | None = None, level: int = logging.ERROR) -> None:
    """The run's last line: in train.log and on stderr (with exc's traceback when given)."""
    if rundir.logging_active():
        log.log(level, "%s", msg, exc_info=exc)
    else:
        import sys
        import traceback

        if exc is not None:
            traceback.print_exception(exc)
        print(msg, file=sys.stderr)


def main(argv=None, augment: bool = True) -> int:
    args = build_parser(augment).parse_args(argv)
    return train(args, augment)
