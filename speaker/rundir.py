"""Run directories: resolved arguments, copies of the prototxt used, the git revision, and the log.

A folder that already holds a run is never overwritten silently: `claim` refuses it unless the run is to be
continued (--resume) or started over (--force: the old run is moved aside to <dir>.old-N, never deleted).
One process at a time: `claim` locks <dir>/.lock for the run's life (the kernel releases the lock when the
process dies, however it dies); a second process gets RunBusyError naming the holder. Every file a run
writes is written whole or not at all (a temporary file renamed over it); temporary files that a killed
process left behind are removed when the next one takes the lock.
Every file-system operation of a run goes through `io_step`, so an OSError (disk full, permissions, a file
where a folder should be) becomes one RunIOError line naming the operation and the path.
"""

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
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


class RunBusyError(RunIOError):
    """The run directory is locked by another live process (exit status 2)."""


class RunLock:
    """An exclusive lock on <run>/.lock, held until release() or the process's death.

    A POSIX record lock (fcntl.lockf), not flock(): a flock() lock belongs to the open file, which the
    DataLoader's forked workers share, and they outlive a killed trainer by up to 5 s (their watchdog's
    interval); a record lock belongs to this process alone. The file holds who took it (pid, host, start
    time, command), which a refused process reports."""

    NAME = ".lock"

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @classmethod
    def acquire(cls, run: Path) -> "RunLock":
        with io_step("create the run directory", run):
            run.mkdir(parents=True, exist_ok=True)
        path = run / cls.NAME
        while True:
            with io_step("open the lock file", path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _lock_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise RunIOError(f"cannot lock {path}: {exc.strerror or exc}") from exc
                raise RunBusyError(f"--out {run} is in use by {holder}: two processes would mix their snapshots "
                                   "and training curves; wait until it ends (or stop it), then run again") from None
            # another process's --force may have moved the folder away between open() and the lock: then the
            # lock is on the moved run's file, and this folder is new; lock that one instead
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "argv": sys.argv}
        with io_step("write", path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)          # closing the file releases this process's record lock
            self.fd = -1


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode())
        return f"pid {info['pid']} on {info['host']} (started {info['started']}: {' '.join(info['argv'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (which has not recorded its pid yet)"


def claim(run_dir, resume: bool, force: bool, lock: bool = True) -> tuple[RunLock | None, Path | None]:
    """Take `run_dir` for a run: lock it (lock=True; the other processes of a data-parallel launch only
    check), then check that it is absent, empty of runs, or resumed (resume=True). force=True moves an
    existing run aside to <run_dir>.old-N first and locks the new, empty folder. Returns (the lock, where
    the old run went or None). Raises RunBusyError when another process holds the lock, RunIOError with what
    to do otherwise."""
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise RunIOError(f"--out {run}: a file of that name exists; a run directory must be a folder")
    held = RunLock.acquire(run) if lock else None
    try:
        found = existing_run(run)
        if not found or resume:
            return held, None
        if not force:
            raise RunIOError(f"--out {run} already holds a training run ({', '.join(found)}): add --resume auto "
                             "to continue it, or --force to start over (the old run is moved to "
                             f"{run}.old-N, not deleted), or choose another --out")
        if held is None:
            return None, None
        aside = _move_aside(run)
        new = RunLock.acquire(run)
    except BaseException:
        if held is not None:
            held.release()
        raise
    held.release()                  # the lock of the run that moved aside
    return new, aside


def _move_aside(run: Path) -> Path:
    """Rename `run` to the first free <run>.old-N, atomically: mkdir claims the name (it fails if another
    process took it first), then rename() replaces that empty folder with the run in one step."""
    n = 1
    while True:
        aside = Path(f"{run}.old-{n}")
        try:
            aside.mkdir()
            break
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise RunIOError(f"cannot move the old run aside to {aside}: {exc.strerror or exc}") from exc
    with io_step("move the old run aside to", aside):
        os.replace(run, aside)
    return aside


def remove_stale_temporaries(run: Path) -> list[Path]:
    """Delete the temporary files (*.tmp) that an interrupted process left in `run` and its snapshots/ (call
    it holding the lock: no live process is writing them). Returns what was removed."""
    removed = []
    for folder in (run, run / "snapshots"):
        if not folder.is_dir():
            continue
        for tmp in sorted(folder.iterdir()):
            if tmp.name.endswith(".tmp") and tmp.is_file():
                with io_step("remove the stale temporary file", tmp):
                    tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


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
            write_atomic(dst, Path(src).read_bytes())
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
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def write_atomic(path, data: str | bytes) -> None:
    """Write `path` whole or not at all (see replace_atomic)."""
    replace_atomic(path, lambda tmp: tmp.write_text(data) if isinstance(data, str) else tmp.write_bytes(data))


def replace_atomic(path, write) -> None:
    """write(tmp) into a temporary file beside `path` (<name>.tmp: removed on any error or interruption;
    remove_stale_temporaries removes one a killed process left), then rename it over `path`."""
    tmp = Path(f"{path}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
