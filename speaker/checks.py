"""Up-front checks of what a script was given, before any long work starts: the numeric arguments, the files and
folders the arguments name, the solver's fields, and (for verification) the trial lists' labels and the
cohort. Each failure is an InputError naming the argument or file and the fix, which the scripts print as one
line. Training calls `train_inputs` once (speaker/train.py), the test scripts `identification_inputs` /
`verification_inputs`; lists are checked by their one parser (voxdata.lists), recordings by the pre-flight
scan (voxdata.scan)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError

SEED_MAX = 2**32 - 1      # what every generator of a run takes (NumPy's legacy seeds, DataLoader workers)


def at_least(flag: str, value, least) -> None:
    if value < least:
        raise InputError(f"{flag} {value}: must be >= {least}")


def seed(flag: str, value: int) -> None:
    if not 0 <= value <= SEED_MAX:
        raise InputError(f"{flag} {value}: must be in 0..{SEED_MAX} (every run is seeded, so that it can be "
                         "repeated and resumed)")


def input_file(flag: str, path, what: str = "file") -> None:
    """`path` names a readable file (not a folder)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {path}: is a folder, not a {what}")
    if not p.is_file():
        raise InputError(f"{flag} {path}: no such {what}")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot be read ({e.strerror})") from None


def input_dir(flag: str, path) -> None:
    if not Path(path).is_dir():
        raise InputError(f"{flag} {path}: no such folder")


def output_dir(flag: str, path) -> None:
    """`path` is (or can be created as) a folder this process can write files into: created, and a probe file
    written and removed (permission bits say nothing for root or a read-only mount)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {path}: is a file, not a folder: give a folder (or remove the file)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write_probe_"):
            pass
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot write there ({e.strerror}): give a writable folder") from None


def output_file(flag: str, path) -> None:
    """`path` is a file name (not a folder) in a folder this process can write into."""
    if Path(path).is_dir():
        raise InputError(f"{flag} {path}: is a folder: give a file name (e.g. {Path(path) / 'cohort.npz'})")
    output_dir(f"{flag} {path}: its folder", Path(os.path.abspath(path)).parent)


# ---------------------------------------------------------------- training


def solver_fields(solver_param, solver_file) -> None:
    """The solver fields the training loop relies on: max_iter > 0, a learning-rate policy it knows (asked of
    the engine's own schedule at the first and the last iteration), snapshot >= 0, average_loss >= 1."""
    from caffe_torch.errors import CaffeError
    from caffe_torch.solver import learning_rate

    sp = solver_param
    if sp.max_iter <= 0:
        raise InputError(f"{solver_file}: max_iter {sp.max_iter}: must be > 0 (the number of iterations to train)")
    if sp.snapshot < 0:
        raise InputError(f"{solver_file}: snapshot {sp.snapshot}: must be >= 0 (0 = only the final snapshot)")
    if sp.average_loss < 1:
        raise InputError(f"{solver_file}: average_loss {sp.average_loss}: must be >= 1")
    for it in (0, sp.max_iter - 1):
        try:
            learning_rate(sp, it, len(sp.stepvalue))
        except CaffeError as e:
            raise InputError(f"{solver_file}: {e}") from None


def train_inputs(args, solver_param) -> None:
    """Every argument of trainAug.py / trainNoAug.py and the solver's fields, before the run directory is
    claimed (so a refused start leaves nothing behind)."""
    seed("--seed", args.seed)
    at_least("--test-interval", args.test_interval, 0)
    at_least("--val-utterances", args.val_utterances, 0)
    at_least("--workers", args.workers, 0)
    if args.weights:
        input_file("--weights", args.weights, ".caffemodel")
    if args.resume and args.resume != "auto":
        if Path(args.resume).suffix == ".caffemodel":
            raise InputError(f"--resume {args.resume}: a .caffemodel holds weights only; --resume takes the "
                             ".solverstate written beside it (snapshots/<prefix>_iter_N.solverstate) or 'auto'; "
                             "to start a new run from these weights use --weights")
        input_file("--resume", args.resume, ".solverstate")
    if args.cache and Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise InputError(f"--cache {args.cache}: is a file, not a cache folder")
    for root in args.data_root:
        input_dir("--data-root", root)
    if args.train_list:
        input_file("--train-list", args.train_list, "training list")
    augmentation(args)
    solver_fields(solver_param, args.solver)


def augmentation(args) -> None:
    """--noise / --rir and their settings: the folders exist and hold what the recipe draws from (listed, not
    opened: the files are checked with the recordings)."""
    from voxdata.augment import AugmentConfig, list_bank

    config = AugmentConfig.from_args(args)
    try:
        config.check()
        list_bank(config)
    except ValueError as e:
        raise InputError(str(e)) from None


# ---------------------------------------------------------------- evaluation


def _arg(args, flag: str):
    """The value of --some-flag (None when the script has no such argument)."""
    return getattr(args, flag[2:].replace("-", "_"), None)


def _eval_common(args) -> None:
    seed("--seed", args.seed)
    for flag in ("--batch", "--head-batch"):
        at_least(flag, _arg(args, flag), 1)
    for flag in ("--weights", "--net", "--iden-split", "--labels", "--scores", "--embeddings", "--cohort"):
        if _arg(args, flag):
            input_file(flag, _arg(args, flag))
    for flag in ("--data-root", "--run-dir", "--cache"):
        if _arg(args, flag):
            input_dir(flag, _arg(args, flag))


def identification_inputs(args) -> None:
    """test_identification.py's arguments."""
    at_least("--crops", args.crops, 1)
    _eval_common(args)


def verification_inputs(args) -> None:
    """test_verification.py's arguments: numbers, the files read (--scores, --embeddings, --cohort, every
    --trials) and the places written (--out, --make-cohort)."""
    for flag in ("--bins", "--save-every", "--top-n", "--projection-max", "--cohort-per-speaker"):
        at_least(flag, _arg(args, flag), 1)
    if args.crops != "full":
        at_least("--crops", int(args.crops), 1)
    if args.c_miss <= 0 or args.c_fa <= 0:
        raise InputError(f"--c-miss and --c-fa must be positive, got {args.c_miss} and {args.c_fa}")
    for p in args.p_target or ():
        if not 0 < p < 1:
            raise InputError(f"--p-target {p}: must be in (0, 1)")
    for path in args.trials or ():
        input_file("--trials", path, "trial list")
    for run in args.compare or ():
        input_dir("--compare", run)
    if args.make_cohort:
        output_file("--make-cohort", args.make_cohort)
    _eval_common(args)


def output_folder(args, out_dir) -> None:
    """The folder a test script writes into: --out, or its default (see the scripts' docstrings)."""
    output_dir("--out" if args.out else "the output folder (default of --out)", out_dir)


def trial_labels(path, labels) -> None:
    """A trial list needs target and non-target trials: the EER and minDCF of one class are undefined."""
    n_target = int(sum(int(x) for x in labels))
    if n_target in (0, len(labels)):
        kind = "target" if n_target else "non-target"
        raise InputError(f"{path}: all {len(labels)} trials are {kind}: error rates need both kinds of trial "
                         "(label 1 = same speaker, 0 = different speakers)")


def cohort_size(cohort_file, cohort_dim: int, embedding_dim: int, source: str) -> None:
    """The cohort's embeddings must have the trials' size (made by the same net)."""
    if cohort_dim != embedding_dim:
        raise InputError(f"--cohort {cohort_file}: embeddings of size {cohort_dim}, but {source} gives "
                         f"{embedding_dim}: a cohort of another net; make one with --make-cohort and these weights")
