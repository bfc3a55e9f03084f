"""Randomised crash harness: kill a small training run with SIGKILL again and again, continue it with
`--resume auto` after every kill, and check that what it finally holds is what an uninterrupted run holds.

    python -m tests.crash_harness --kills 20 [--seed 1] [--workdir DIR]

The run: a tiny net with Dropout on a synthetic corpus, --cache (built by the run), snapshots every 3
iterations, a validation every 6, a curve row every iteration, one loader worker. Each start is a separate
process (tests/hooked_run.py) killed at an event drawn from the seeded generator (the first kills take each
kind once, the cache build first, then the kinds are drawn too): the k-th rename of a snapshot
file, the k-th curve append (half of the row written first), the k-th recording the cache build has decoded
and journaled, the k-th validation forward, the k-th solver step; or, for "random" kills, after a delay drawn
uniformly from the time an uninterrupted start takes (where that lands is up to the machine; what the run
holds afterwards is checked all the same). A kill point that the start never reaches lets it finish: that run
is checked, and the next kills go to a new run. Every finished run must equal the uninterrupted reference bit for bit:
final.caffemodel, every snapshot's .caffemodel and .solverstate (all but learned_net, the absolute path),
training_curve.csv, the set of files in the run directory (no temporary file, no half snapshot), and the
--cache folder complete with no temporary file. Exit status 0 when every check passed.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.test_ddp import NET as _DDP_NET
from tests.test_ddp import SPEAKERS, TEST_SPEAKERS

ROOT = Path(__file__).resolve().parent.parent
# test_ddp's tiny net (batch 6, 20 frames, 4 classes) with Dropout on fc5
NET = _DDP_NET.replace('layer { name: "fc6"', 'layer { name: "drop5" type: "Dropout" bottom: "fc5" top: "fc5" '
                       'dropout_param { dropout_ratio: 0.5 } }\nlayer { name: "fc6"')
MAX_ITER, SNAPSHOT, TEST_INTERVAL = 30, 3, 6
SOLVER = f"""net: "net.prototxt"
base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 12 momentum: 0.9 weight_decay: 0.0005
max_iter: {MAX_ITER} display: 1 average_loss: 1 snapshot: {SNAPSHOT} snapshot_prefix: "crash"
"""
# kind -> the largest k drawn: small, so that the event comes soon after a start (a kill point the start never
# reaches lets the run finish)
KINDS = {"snapshot": 2, "csv": 4, "cache": 12, "validation": 2, "step": 4, "random": 0}


@dataclass
class Report:
    kills: list[str] = field(default_factory=list)
    runs_checked: int = 0
    problems: list[str] = field(default_factory=list)


def make_setup(folder: Path) -> tuple[Path, Path]:
    """(corpus, solver file) in `folder`."""
    from voxdata import make_corpus

    corpus = folder / "corpus"
    if not (corpus / "iden_split.txt").exists():
        make_corpus(corpus, speakers=SPEAKERS, utterances=6, test_speakers=TEST_SPEAKERS, seed=5, min_videos=3,
                    max_videos=3, min_dur=1.0, max_dur=1.5, trials=10, workers=1, progress=False)
    (folder / "net.prototxt").write_text(NET)
    solver = folder / "solver.prototxt"
    solver.write_text(SOLVER)
    return corpus, solver


def train_args(solver: Path, corpus: Path, run: Path, cache: Path) -> list[str]:
    return ["--solver", str(solver), "--data-root", str(corpus), "--mode", "verification", "--out", str(run),
            "--gpu", "-1", "--workers", "1", "--test-interval", str(TEST_INTERVAL), "--no-progress",
            "--seed", "3", "--cache", str(cache), "--resume", "auto"]


def start(args: list[str], stderr: Path, at: str | None = None) -> subprocess.Popen:
    """A trainer process (its stderr into a file: a pipe would stay open while a killed trainer's loader worker
    lives on for a few seconds, until its watchdog sees the parent gone)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    hook = ["--at", at] if at else []
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "tests.hooked_run", *hook, "--", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def tail(path: Path) -> str:
    return path.read_text(errors="replace").strip()[-1500:]


def files_of(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def snapshot_state(path: Path) -> bytes:
    """A .solverstate's bytes without learned_net (an absolute path, the run directory's)."""
    from caffe_torch.weights import read_solverstate

    state = read_solverstate(path)
    state.ClearField("learned_net")
    return state.SerializeToString()


def check_run(run: Path, cache: Path, ref: Path) -> list[str]:
    """How a finished run differs from the uninterrupted reference (empty: it does not)."""
    problems = []
    if files_of(run) != files_of(ref):
        problems.append(f"{run}: files {sorted(files_of(run) ^ files_of(ref))} differ from the reference's")
    for name in ("final.caffemodel", "training_curve.csv"):
        if (run / name).exists() and (run / name).read_bytes() != (ref / name).read_bytes():
            problems.append(f"{run / name} differs from the uninterrupted run's")
    for model in sorted((ref / "snapshots").glob("*.caffemodel")):
        mine = run / "snapshots" / model.name
        state = model.with_suffix(".solverstate")
        if not mine.exists() or mine.read_bytes() != model.read_bytes():
            problems.append(f"{mine}: missing or not the uninterrupted run's")
        elif snapshot_state(mine.with_suffix(".solverstate")) != snapshot_state(state):
            problems.append(f"{mine.with_suffix('.solverstate')}: not the uninterrupted run's")
    leftovers = [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    if not (cache / "index.json").exists() or leftovers:
        problems.append(f"{cache}: no index.json or temporary files left: {leftovers}")
    return problems


def harness(kills: int, seed: int, workdir: Path, say=print) -> Report:
    """`kills` SIGKILLs of the run described in the module docstring; returns what happened and went wrong."""
    rng = random.Random(seed)
    corpus, solver = make_setup(workdir)
    ref, ref_cache = workdir / "reference", workdir / "reference_cache"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    proc = start(train_args(solver, corpus, ref, ref_cache), logs / "reference.err")
    proc.wait()
    uninterrupted = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted reference run failed ({proc.returncode}): "
                           f"{tail(logs / 'reference.err')}")
    report, sequence, starts = Report(), 0, 0
    run, cache = workdir / "run0", workdir / "cache0"
    # the first kills take every kind once (the cache build first: only a run's first starts build it)
    planned = ["cache", *rng.sample([k for k in KINDS if k != "cache"], len(KINDS) - 1)]
    while len(report.kills) < kills:
        kinds = [k for k in KINDS if k != "cache" or not (cache / "index.json").exists()]
        kind = planned.pop(0) if planned else rng.choice(kinds)
        args = train_args(solver, corpus, run, cache)
        starts += 1
        err = logs / f"start{starts}.err"
        if kind == "random":
            delay = rng.uniform(0, uninterrupted)
            proc = start(args, err)
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            what = f"random after {delay:.2f} s"
        else:
            k = rng.randint(1, KINDS[kind])
            proc = start(args, err, f"{kind}:{k}:kill")
            what = f"{kind}:{k}"
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            report.kills.append(f"{run.name} {what}")
            say(f"kill {len(report.kills)}/{kills}: {run.name}, {what}")
            continue
        if proc.returncode != 0:
            report.problems.append(f"{run.name} after {what}: exit status {proc.returncode}: {tail(err)}")
            break
        say(f"{run.name} finished before {what}: checking it, the next kills go to a new run")
        report.problems += check_run(run, cache, ref)
        report.runs_checked += 1
        sequence += 1
        run, cache = workdir / f"run{sequence}", workdir / f"cache{sequence}"
    if run.exists() and not report.problems:            # the last run: one more start, no kill
        proc = start(train_args(solver, corpus, run, cache), logs / "final.err")
        proc.wait()
        if proc.returncode != 0:
            report.problems.append(f"{run.name} final start: exit status {proc.returncode}: "
                                   f"{tail(logs / 'final.err')}")
        else:
            report.problems += check_run(run, cache, ref)
            report.runs_checked += 1
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="how many SIGKILLs (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the kill points (default %(default)s)")
    p.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    if args.kills < 1:
        p.error("--kills must be at least 1")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        p.error(f"--workdir {args.workdir} is not empty (the harness compares fresh runs)")
    with tempfile.TemporaryDirectory(prefix="crash_harness_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = harness(args.kills, args.seed, workdir)
    for problem in report.problems:
        print(f"FAILED: {problem}")
    if report.problems:
        print(f"crash harness FAILED: {len(report.problems)} problem(s) after {len(report.kills)}/{args.kills} kills "
              f"(seed {args.seed}), {report.runs_checked} finished run(s) checked")
    else:
        print(f"crash harness passed: {len(report.kills)}/{args.kills} kills (seed {args.seed}), "
              f"{report.runs_checked} finished run(s) equal to the uninterrupted one bit for bit, no partial file")
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
