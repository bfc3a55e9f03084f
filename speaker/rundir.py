"""Run directories: resolved arguments, copies of the prototxt used, the git revision, and the log."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path


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


def prepare(run_dir, args, script: str) -> Path:
    """Create `run_dir` and record the resolved arguments, the command line and the git revision."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    record = {"script": script, "argv": sys.argv, "cwd": os.getcwd(), "git": git_revision(),
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    (run / "args.json").write_text(json.dumps(record, indent=1) + "\n")
    return run


def copy_file(src, run: Path, name: str | None = None) -> Path:
    dst = run / (name or Path(src).name)
    if Path(src).resolve() != dst.resolve():
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
    fh = logging.FileHandler(run / f"{name}.log")
    ch = _TqdmHandler()
    for h in (fh, ch):
        h.setFormatter(fmt)
        h._speaker_run = True
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logging.getLogger(name)


def write_json(path, data) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
