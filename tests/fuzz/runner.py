"""Running fuzz cases on both engines, keeping the score, shrinking and saving what fails.

Case `seed` is deterministic: its program (program.draw_program) and, for one case in INVALID_SHARE, one illegal
mutation of it (invalid.mutate). Each case runs in the Caffe worker and the caffe_torch worker at the same time
(two subprocesses; tests/fuzz/worker.py); the float64 caffe_torch worker runs it too when a value differs
(compare.py: judge). A case with an unexplained divergence is shrunk (shrink.py) and written to OUT/cases/ as
NAME.prototxt (the net), NAME.json (the program, the divergences, the Caffe result's stages and end) and
NAME.npz (Caffe's observations): moved into tests/fuzz/cases/ it becomes a regression test
(tests/test_fuzz_cases.py).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .compare import Divergence, classify, judge
from .invalid import mutate
from .program import Program, draw_program
from .shrink import shrink
from .worker import EngineResult, Worker

INVALID_SHARE = 0.15


@dataclass
class Outcome:
    seed: int
    prog: Program
    theirs: EngineResult
    ours: EngineResult
    divs: list[Divergence]
    types: set[str] = field(default_factory=set)

    @property
    def unexplained(self) -> list[Divergence]:
        return [d for d in self.divs if not d.cls]


def case_program(seed: int) -> Program:
    prog = draw_program(seed)
    rng = np.random.default_rng([seed, 3])
    if rng.random() < INVALID_SHARE:
        got = mutate(rng, prog)
        if got is not None:
            prog, prog.invalid, prog.expect_field = got
    return prog


class Engines:
    """The three workers one job uses (Caffe, caffe_torch, caffe_torch float64)."""

    def __init__(self, log_dir: Path):
        self.caffe = Worker("caffe", log_dir)
        self.torch = Worker("torch", log_dir)
        self.torch64 = Worker("torch64", log_dir)
        self.pool = ThreadPoolExecutor(2)

    def close(self) -> None:
        for w in (self.caffe, self.torch, self.torch64):
            w.close()
        self.pool.shutdown()

    def run(self, prog: Program) -> tuple[list[Divergence], EngineResult, EngineResult]:
        meta = prog.to_json()
        f_theirs = self.pool.submit(self.caffe.run, prog.net_text, meta)
        ours = self.torch.run(prog.net_text, meta)
        theirs = f_theirs.result()
        divs = judge(prog, theirs, ours,
                     lambda **changes: self.torch64.run(prog.net_text, replace(prog, **changes).to_json()))
        return classify(prog, divs, theirs), theirs, ours


def net_types(prog: Program) -> set[str]:
    net = prog.net_param()
    types = {lp.type for lp in net.layer}
    if len(net.input):
        types.add("Input")
    return types


def save_case(out_dir: Path, name: str, prog: Program, theirs: EngineResult, divs: list[Divergence]) -> Path:
    """NAME.prototxt + NAME.json + NAME.npz in `out_dir` (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.prototxt").write_text(prog.net_text)
    meta = json.loads(prog.to_json())
    meta["caffe"] = {"stages": theirs.stages, "end": theirs.end, "message": theirs.message}
    meta["divergences"] = [str(d) for d in divs]
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(out_dir / f"{name}.npz", **{k.replace("/", "|"): np.asarray(v)
                                                    for k, v in theirs.obs.items()})
    return out_dir / f"{name}.prototxt"


def load_case(path: Path) -> tuple[Program, EngineResult, dict]:
    """A saved case: its program, Caffe's stored result, the metadata."""
    meta = json.loads(path.with_suffix(".json").read_text())
    prog = Program.from_files(path.read_text(), json.dumps(meta))
    with np.load(path.with_suffix(".npz")) as z:
        obs = {k.replace("|", "/"): z[k] for k in z.files}
    c = meta["caffe"]
    return prog, EngineResult(stages=c["stages"], obs=obs, end=c["end"], message=c["message"]), meta


class Score:
    """Counts for the summary table (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.nets = 0
        self.invalid = 0
        self.ends = Counter()                # (Caffe end, caffe_torch end)
        self.type_nets = Counter()
        self.type_unexplained = Counter()
        self.pairs: set[tuple[str, str]] = set()
        self.combos: set[frozenset] = set()
        self.classes = Counter()             # divergence class -> nets
        self.kinds = Counter()               # kind of the first unexplained divergence -> nets
        self.failed: list[Outcome] = []

    def add(self, o: Outcome) -> None:
        with self.lock:
            self.nets += 1
            self.invalid += bool(o.prog.invalid)
            self.ends[(o.theirs.end, o.ours.end)] += 1
            self.combos.add(frozenset(o.types))
            self.pairs |= set(itertools.combinations(sorted(o.types), 2))
            for t in o.types:
                self.type_nets[t] += 1
                if o.unexplained:
                    self.type_unexplained[t] += 1
            for c in {d.cls or "UNEXPLAINED" for d in o.divs}:
                self.classes[c] += 1
            if o.unexplained:
                self.failed.append(o)
                self.kinds[kind_of(o.unexplained[0])] += 1

    def table(self, all_types) -> str:
        lines = [f"{'layer type':26} {'nets':>6} {'unexplained':>12}"]
        for t in sorted(all_types):
            lines.append(f"{t:26} {self.type_nets[t]:6d} {self.type_unexplained[t]:12d}")
        lines.append("")
        lines.append(f"nets run: {self.nets} ({self.invalid} with an illegal field), distinct type sets "
                     f"{len(self.combos)}, type pairs {len(self.pairs)}")
        lines.append("endings (Caffe, caffe_torch): " + ", ".join(f"{a}/{b} {n}" for (a, b), n in
                                                                  sorted(self.ends.items())))
        for k, n in self.kinds.most_common():
            lines.append(f"  {n:5d} x {k}")
        lines.append("nets with divergences, by class: " + (", ".join(f"{c} {n}" for c, n in
                                                                      sorted(self.classes.items())) or "none"))
        return "\n".join(lines)


def kind_of(d: Divergence) -> str:
    """A short description of a divergence without its names and numbers, to count alike ones together."""
    stage = d.stage.rstrip("0123456789")
    if d.what in ("refusal", "refusal-message"):
        text = re.sub(r"'[^']*'|\"[^\"]*\"|0x[0-9a-f]+|-?\d[\d.e+-]*|/\S+", "_", d.detail)
        return f"{stage} {d.what}: {text[:150]}"
    part = d.key.split("/")
    return f"{stage} {d.what} {'/'.join(part[:2] if part[0] != 'test' else part[:3])}"


def shrink_and_save(eng: Engines, o: Outcome, out_dir: Path, progress=None) -> Path:
    """Shrink a failing outcome and write it as a case (see the module docstring)."""
    small, divs = shrink(o.prog, lambda p: eng.run(p)[0], progress=progress)
    _, theirs, _ = eng.run(small)
    return save_case(out_dir, f"seed{o.seed}", small, theirs, divs)


def run_seeds(seeds, engines_for_job, score: Score, on_case=None) -> None:
    """Run every seed; `engines_for_job()` gives the calling thread's Engines."""
    for seed in seeds:
        prog = case_program(seed)
        divs, theirs, ours = engines_for_job().run(prog)
        o = Outcome(seed, prog, theirs, ours, divs, net_types(prog))
        score.add(o)
        if on_case:
            on_case(o)


def per_type_counts(outcomes) -> dict[str, int]:
    counts = defaultdict(int)
    for o in outcomes:
        for t in o.types:
            counts[t] += 1
    return counts
