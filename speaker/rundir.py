"""Run directories: resolved arguments, copies of the prototxt used, the git revision, and the log.

A folder that already holds a run is never overwritten silently: `claim` refuses it unless the run is to be
continued (--resume) or started over (--force: the old run is moved aside to <dir>.old-N, never deleted).
Every file-system operation of a run goes through `io_step`, so an OSError (disk full, permissions, a file
where a folder should be) becomes one RunIOError line naming the operation and the path.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

# what marks a folder as holding a training run: args.json is written once the run is about to train (a start
# that stopped earlier, e.g. on bad audio, leaves only its log and can simply be retried)
RUN_MARKERS = ("args.json", "training_curve.csv", "final.caffemodel")


class RunIOError(RuntimeError):
    """A file-system operation of a run failed; the message names the operation and the path."""


@contextmanager
def io_step(operation: str, path):
    """Turn an OSError inside the block into RunIOError("cannot <operation> <path>: <reason>")."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        other = f" ({exc.filename})" if exc.filename and os.fspath(exc.filename) != os.fspath(path) else ""
        raise RunIOError(f"cannot {operation} {path}{other}: {reason}") from exc


def existing_run(run: Path) -> list[str]:
    """The run markers present in `run` (empty: no run there)."""
    if not run.is_dir():
        return []
    found = [m for m in RUN_MARKERS if (run / m).exists()]
    snapshots = run / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        found.append("snapshots/")
    return found


def claim(run_dir, resume: bool, force: bool, move: bool = True) -> Path | None:
    """Check that `run_dir` may take a new run: absent, empty of runs, or resumed (resume=True). force=True
    moves an existing run aside to <run_dir>.old-N first (only when move; other processes of a data-parallel
    launch only check); returns where it went, or None. Raises RunIOError with what to do."""
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise RunIOError(f"--out {run}: a file of that name exists; a run directory must be a folder")
    found = existing_run(run)
    if not found or resume:
        return None
    if not force:
        raise RunIOError(f"--out {run} already holds a training run ({', '.join(found)}): add --resume auto to "
                         "continue it, or --force to start over (the old run is moved to "
                         f"{run}.old-N, not deleted), or choose another --out")
    if not move:
        return None
    n = 1
    while Path(f"{run}.old-{n}").exists():
        n += 1
    aside = Path(f"{run}.old-{n}")
    with io_step("move the old run aside to", aside):
        os.replace(run, aside)
    return aside


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def prepare(run_dir) -> Path:
    """Create `run_dir` (and its parents)."""
    run = Path(run_dir)
    with io_step("create the run directory", run):
        run.mkdir(parents=True, exist_ok=True)
    return run


def record_args(run: Path, args, script: str, resumed_at: int | None = None) -> None:
    """Record the resolved arguments, the command line and the git revision in <run>/args.json. A resumed
    run keeps the first start's record and appends its own under "resumes" (with the iteration)."""
    record = {"script": script, "argv": sys.argv, "cwd": os.getcwd(), "git": git_revision(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    path = run / "args.json"
    if resumed_at is not None and path.exists():
        with io_step("read", path):
            first = json.loads(path.read_text())
        first.setdefault("resumes", []).append({"iteration": resumed_at, **record})
        record = first
    with io_step("write", path):
        write_json(path, record)


def copy_file(src, run: Path, name: str | None = None) -> Path:
    dst = run / (name or Path(src).name)
    if Path(src).resolve() != dst.resolve():
        with io_step(f"copy {src} to", dst):
            shutil.copyfile(src, dst)
    return dst


def setup_logging(run: Path, name: str, verbose: bool = False) -> logging.Logger:
    """Log to <run>/<name>.log and to stderr (through tqdm.write, so progress bars stay intact)."""
    from tqdm import tqdm

    class _TqdmHandler(logging.Handler):
        def emit(self, record):
            tqdm.write(self.format(record), file=sys.stderr)

    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_speaker_run", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%Y-%m-%d %H:%M:%S")
    with io_step("open the log", run / f"{name}.log"):
        fh = logging.FileHandler(run / f"{name}.log")
    ch = _TqdmHandler()
    for h in (fh, ch):
        h.setFormatter(fmt)
        h._speaker_run = True
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logging.getLogger(name)


def logging_active() -> bool:
    """Is a run's log (setup_logging) installed?"""
    return any(getattr(h, "_speaker_run", False) for h in logging.getLogger().handlers)


def close_logging() -> None:
    """Remove and close the handlers setup_logging installed (the run is over; nothing global outlives it)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_speaker_run", False):
            root.removeHandler(h)
            h.close()


def write_json(path, data) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
