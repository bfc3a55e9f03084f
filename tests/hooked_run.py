"""Run trainAug.main in this process with test hooks that act at a chosen event, never at a chosen time:

    python -m tests.hooked_run [--at KIND:K:ACTION] [--ddp-events DIR] -- <trainAug.py arguments>

--at: at the K-th event of KIND in this process (counted from its start), do ACTION to the trainer:
  step        the K-th solver.step (before it runs)
  snapshot    the K-th rename of a .caffemodel or .solverstate into snapshots/ (its temporary file is written)
  csv         the K-th write to training_curve.csv: the first half of the row is written and flushed first
              (what a kill in the middle of an append leaves)
  cache       the K-th recording the --cache build has decoded and journaled (its decoding workers
              are other processes: the trainer acts after their result is written)
  validation  the K-th forward of the validation net
ACTION: kill (SIGKILL, as `kill -9`), stop (SIGSTOP: frozen, holding whatever it holds), or a signal name
(SIGHUP, SIGINT, ...) sent to the trainer.
--ddp-events DIR (data-parallel tests, one process of a torchrun launch): touches DIR/init-rank<r> when the
process group is about to start and DIR/waiting-rank<r> when the process waits for another one's cache lock; the
process that builds the --cache first waits until the other rank did one of the two and writes which into
DIR/observed-rank<r>; DIR/reads-rank<r> gets the number of recordings its training batches read, and
DIR/batches-rank<r>.npz the batches (its rows of them) it trained on: crops<k>, labels<k> (--workers 0 only),
and DIR/masks-rank<r>.npz the units each TRAIN forward of a Dropout layer kept: <layer>_<n> (rows, units) bool,
with zeros-rank<r> the number of exact zeros among those layers' inputs (where a zero hides whether it was kept).
Without torchrun (a single process) it writes the rank-0 files.
Exit status: trainAug's.
"""

import argparse
import csv
import io
import logging
import os
import signal
import sys
import time
from pathlib import Path

TRAINER = os.getpid()          # the trainer (forked workers keep this value: they act on the trainer)
KINDS = ("step", "snapshot", "csv", "cache", "validation")


def act(action: str) -> None:
    sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}.get(action) or signal.Signals[action]
    os.kill(TRAINER, sig)
    if sig == signal.SIGKILL and os.getpid() != TRAINER:
        os.kill(os.getpid(), signal.SIGKILL)          # a worker of the trainer goes with it


class Counter:
    def __init__(self, k: int, action: str):
        self.k, self.action, self.n = k, action, 0

    def tick(self, before=None) -> None:
        self.n += 1
        if self.n == self.k:
            if before is not None:
                before()
            act(self.action)


def install(kind: str, k: int, action: str) -> None:
    counter = Counter(k, action)
    if kind == "step":
        import caffe_torch.solver as cs

        real_step = cs.Solver.step

        def step(self, n):
            counter.tick()
            return real_step(self, n)

        cs.Solver.step = step
    elif kind == "snapshot":
        real_replace = os.replace

        def replace(src, dst, **kw):
            d = Path(dst)
            if d.parent.name == "snapshots" and d.suffix in (".caffemodel", ".solverstate"):
                counter.tick()
            return real_replace(src, dst, **kw)

        os.replace = replace
    elif kind == "csv":
        import speaker.train as train

        real_write = train.Progress._write

        def write(self, rows):
            if rows and self.file is not None:
                text = io.StringIO()
                csv.writer(text).writerows(rows)

                def torn():
                    self.file.write(text.getvalue()[: max(1, len(text.getvalue()) // 2)])
                    self.file.flush()

                counter.tick(torn)
            return real_write(self, rows)

        train.Progress._write = write
    elif kind == "cache":
        import voxdata

        real_build = voxdata.build_cache

        def build(*a, **kw):           # the trainer looks build_cache up in voxdata when it builds
            return real_build(*a, **kw, on_file=lambda n: counter.tick())

        voxdata.build_cache = build
    elif kind == "validation":
        import speaker.validation as validation

        real_forward = validation.Validator._forward

        def forward(self, *a, **kw):
            counter.tick()
            return real_forward(self, *a, **kw)

        validation.Validator._forward = forward
    else:
        raise SystemExit(f"--at: unknown kind {kind!r}; known: {', '.join(KINDS)}")


def install_ddp_events(folder: Path) -> callable:
    """The data-parallel test's events (see the module docstring); returns what to call at the end."""
    import numpy as np

    import voxdata
    import voxdata.loader as loader
    from caffe_torch.layers.common import Dropout
    from caffe_torch.proto import caffe_pb2
    from speaker.data_parallel import DataParallel

    rank = int(os.environ.get("RANK", "0"))
    other = 1 - rank
    touch = lambda name: (folder / f"{name}-rank{rank}").write_text(str(os.getpid()))  # noqa: E731

    real_init = DataParallel.init

    def init(self, gpu):
        touch("init")
        return real_init(self, gpu)

    DataParallel.init = init

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting for another process that is building the audio cache" in record.getMessage():
                touch("waiting")

    lock_log = logging.getLogger("voxdata.lockfile")
    lock_log.addHandler(Waiting())
    lock_log.setLevel(logging.INFO)          # (rank 1's log shows warnings only)
    real_build = voxdata.build_cache

    launcher = os.getppid()

    def build(*a, **kw):
        seen = None
        while seen is None:          # the other rank's next event decides (or the launcher's end: the test gave up)
            seen = next((e for e in ("waiting", "init") if (folder / f"{e}-rank{other}").exists()), None)
            if os.getppid() != launcher:
                raise SystemExit("hooked_run: the launcher is gone")
            time.sleep(0.02)
        (folder / f"observed-rank{rank}").write_text(seen)
        return real_build(*a, **kw)

    if "RANK" in os.environ:                 # (a single process has no other rank to wait for)
        voxdata.build_cache = build
    reads, batches = [0], {}
    real_batch = loader.TrainBatches.batch

    def batch(self, k):
        if self._read is None:                       # the training batches' reader (not the validation's)
            read = loader._reader(self.cache)

            def counted(path):
                reads[0] += 1
                return read(path)

            self._read = counted
        crops, labels = real_batch(self, k)
        batches[f"crops{k}"], batches[f"labels{k}"] = crops, labels
        return crops, labels

    loader.TrainBatches.batch = batch
    masks, zeros = {}, [0]
    real_dropout = Dropout.forward

    def dropout(self, x):
        y = real_dropout(self, x)
        if self.phase == caffe_pb2.TRAIN and self.ratio > 0:
            n = sum(key.startswith(f"{self.name}_") for key in masks)
            masks[f"{self.name}_{n}"] = (y != 0).cpu().numpy()
            zeros[0] += int((x == 0).sum())
        return y

    Dropout.forward = dropout

    def done():
        (folder / f"reads-rank{rank}").write_text(str(reads[0]))
        np.savez(folder / f"batches-rank{rank}.npz", **batches)
        np.savez(folder / f"masks-rank{rank}.npz", **masks)
        (folder / f"zeros-rank{rank}").write_text(str(zeros[0]))

    return done


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at", metavar="KIND:K:ACTION")
    p.add_argument("--ddp-events", type=Path)
    args = p.parse_args(argv[:split])
    if args.at:
        kind, k, action = args.at.split(":")
        install(kind, int(k), action)
    done = install_ddp_events(args.ddp_events) if args.ddp_events else None
    import trainAug

    status = trainAug.main(argv[split + 1:])
    if done is not None:
        done()
    return status


if __name__ == "__main__":
    sys.exit(main())
