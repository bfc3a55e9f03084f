"""The differential fuzzer's command line:

    python -m tests.fuzz --budget 10m --seed S [--jobs N] [--out DIR]      # as many nets as fit in 10 minutes
    python -m tests.fuzz --nets 500 --seed S                               # exactly 500 nets

Cases S, S+1, ... run on the real Caffe build and on caffe_torch (tests/fuzz/runner.py); progress on stderr,
then the table: per registered layer type, the nets it appeared in and those with unexplained divergences;
the type sets and pairs generated; how the cases ended; divergences by class. Each unexplained failure (one per
kind) is shrunk and written to DIR/cases/ (default fuzz-out/); `--no-shrink` only lists them. Exit status 1 when
any divergence is unexplained.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import re
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from caffe_torch.layers.base import known_types

from ..caffe_facts import NOT_IN_BUILD
from .compare import class_reason
from .makers import GENERATED_TYPES
from .runner import Engines, Outcome, Score, case_program, net_types, shrink_and_save
from .shrink import signature


def parse_budget(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"budget {text!r}: give seconds, or a number with s, m or h (10m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _say(prefix: str, msg: str) -> None:
    tqdm.write(prefix + msg, file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--budget", type=parse_budget, help="wall time to spend on new cases (e.g. 30m)")
    size.add_argument("--nets", type=int, help="number of cases to run")
    ap.add_argument("--seed", type=int, default=0, help="first case seed (default 0)")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at the same time (each: 2-3 processes; default 1)")
    ap.add_argument("--out", type=Path, default=Path("fuzz-out"),
                    help="where logs and shrunk cases go (default fuzz-out)")
    ap.add_argument("--no-shrink", action="store_true", help="list failing cases without shrinking them")
    ap.add_argument("--max-shrinks", type=int, default=10, help="failures of distinct kinds to shrink (default 10)")
    args = ap.parse_args(argv)
    if args.jobs < 1 or (args.nets is not None and args.nets < 1):
        ap.error("--jobs and --nets must be >= 1")

    score = Score()
    counter = itertools.count(args.seed)
    stop_at = time.monotonic() + args.budget if args.budget is not None else None
    last = args.seed + args.nets if args.nets is not None else None
    lock = threading.Lock()
    bar = tqdm(total=args.nets, unit="net", file=sys.stderr, dynamic_ncols=True, mininterval=2.0)
    engines: list[Engines] = []

    def job() -> None:
        eng = Engines(args.out / "logs")
        with lock:
            engines.append(eng)
        while True:
            with lock:
                seed = next(counter)
            if (last is not None and seed >= last) or (stop_at is not None and time.monotonic() > stop_at):
                return
            prog = case_program(seed)
            divs, theirs, ours = eng.run(prog)
            o = Outcome(seed, prog, theirs, ours, divs, net_types(prog))
            score.add(o)
            with lock:
                bar.update(1)
                bar.set_postfix(unexplained=len(score.failed))
                if o.unexplained:
                    tqdm.write(f"seed {seed}: {o.unexplained[0]}", file=sys.stderr)

    threads = [threading.Thread(target=job) for _ in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()

    saved = []
    if score.failed and not args.no_shrink:
        kinds = {}
        for o in sorted(score.failed, key=lambda o: o.seed):
            kinds.setdefault((signature(o.divs), o.unexplained[0].key.split("/")[0]), o)
        for o in list(kinds.values())[:args.max_shrinks]:
            saved.append(shrink_and_save(engines[0], o, args.out / "cases", progress=functools.partial(
                _say, f"seed {o.seed}: ")))
    for eng in engines:
        eng.close()

    all_types = (set(known_types()) - set(NOT_IN_BUILD)) | set(GENERATED_TYPES)
    print(score.table(all_types))
    missing = sorted(t for t in set(known_types()) - set(GENERATED_TYPES))
    print("registered types not generated: " + ", ".join(f"{t} ({NOT_IN_BUILD.get(t, '?')})" for t in missing))
    for c in sorted(c for c in score.classes if c != "UNEXPLAINED"):
        print(f"  {c}: {class_reason(c)}")
    if score.failed:
        print(f"unexplained divergences in {len(score.failed)} nets (seeds "
              f"{', '.join(str(o.seed) for o in sorted(score.failed, key=lambda o: o.seed)[:30])}):")
        for o in sorted(score.failed, key=lambda o: o.seed)[:30]:
            print(f"  seed {o.seed}: {o.unexplained[0]}")
    for p in saved:
        print(f"shrunk case written: {p}")
    return 1 if score.failed else 0


if __name__ == "__main__":
    sys.exit(main())
