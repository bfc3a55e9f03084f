"""A fuzz case: a net (prototxt text) and the pycaffe program run on it, the same in both engines.

The program (run by tests/fuzz/script.py in each engine's worker):
  build  Net(net, phase, level, stages), or get_solver(solver) and its net (+ its test net)
         every learnable blob (of the test net too) set to values drawn from the case seed
         (caffe_facts.random_param)
         `keep`: .data / .diff arrays the script holds on to from here on
  fwd0   inputs of round 0 written into the input blobs (or MemoryData's set_input_arrays), net.forward()
  bwd0   net.backward(**diffs) with random diffs for the outputs that are not losses, or the same diffs
         written into the output blobs' .diff before net.backward()
  fwd1/bwd1  optionally again with round 1's inputs, the param diffs accumulating (no clearing)
  step1.. solver.step(k) per round, the round's inputs written first; after a step a kept .data array may
         be written into (scaled by 0.5), which the next step must see
After every stage the worker records every blob's data and diff, every param's data and diff, the kept arrays,
the net's names (blobs, layers, inputs, outputs) and the forward's return value. Inputs and params are drawn by
the worker from the seed (numpy, identical in both engines), so a case is its prototxt + this metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from google.protobuf import text_format

from caffe_torch.proto import caffe_pb2

from .netgen import GenNet, generate_net

STALE_VIEW_TYPES = {"Flatten", "Split", "Parameter", "MemoryData", "Data", "ImageData", "Reshape"}
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


@dataclass
class Program:
    net_text: str
    phase: int = caffe_pb2.TRAIN
    level: int = 0
    stages: list[str] = field(default_factory=list)
    inputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    files: list = field(default_factory=list)
    memory_data: tuple | None = None
    seed: int = 0
    backward: str | None = "kwargs"          # None, "kwargs" (net.backward(**diffs)), "write" (into .diff)
    second_round: bool = False
    solver_text: str | None = None          # a SolverParameter without `net` (the worker adds its path)
    test_net: bool = False                  # the solver has a test net (the same prototxt, TEST phase)
    steps: list[int] = field(default_factory=list)
    keep: list[tuple[str, str, int, str]] = field(default_factory=list)   # ("blob"|"param", name, index, field)
    write_kept: bool = False
    invalid: str = ""                       # invalid.py: what was broken ("" for a valid case)
    expect_field: str = ""                  # ... and the field caffe_torch's error must name
    perturb: float = 0.0                    # the float64 referee's simulated rounding (rounding.py; 0: none)
    rounding_draw: int = 0                  # ... and which draw of its random signs

    # ---- files
    def to_json(self) -> str:
        d = asdict(self)
        d.pop("net_text")
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_files(cls, net_text: str, meta_json: str) -> Program:
        d = json.loads(meta_json)
        d["inputs"] = [(n, tuple(s), k) for n, s, k in d["inputs"]]
        d["keep"] = [tuple(k) for k in d["keep"]]
        d["files"] = [tuple(f) for f in d["files"]]
        if d.get("memory_data") is not None:
            d["memory_data"] = (tuple(d["memory_data"][0]), d["memory_data"][1])
        known = set(cls.__dataclass_fields__)
        return cls(net_text=net_text, **{k: v for k, v in d.items() if k in known})

    def net_param(self) -> caffe_pb2.NetParameter:
        return text_format.Parse(self.net_text, caffe_pb2.NetParameter())

    def with_net(self, net: caffe_pb2.NetParameter) -> Program:
        d = asdict(self)
        d["net_text"] = text_format.MessageToString(net)
        return Program(**d)


def stale_view_blobs(net: caffe_pb2.NetParameter) -> set[str]:
    """Blobs whose memory Caffe replaces at a forward (ShareData, set_cpu_data), so that a .data view taken
    before it dangles (caffe_facts QUIRKS: stale-view)."""
    stale = {t for lp in net.layer if lp.type in STALE_VIEW_TYPES or (lp.type, len(lp.bottom), len(lp.top)) in
             (("Concat", 1, 1), ("Slice", 1, 1)) for t in lp.top}
    # an RNN's / LSTM's exposed hidden-state tops: its Forward_cpu ShareData's them to the unrolled net's outputs
    return stale | {t for lp in net.layer if lp.type in ("RNN", "LSTM") and lp.recurrent_param.expose_hidden
                    for t in lp.top[1:]}


def draw_solver(rng: np.random.Generator, level: int, stages, test_net: bool, decay: bool = True) -> str:
    """A random SolverParameter (text) of every type, lr policy and update option Caffe has (no weight decay
    unless `decay`)."""
    def ch(seq):
        return seq[int(rng.integers(len(seq)))]

    s = caffe_pb2.SolverParameter()
    s.type = ch(SOLVER_TYPES)
    s.base_lr = float(ch((0.01, 0.1, 0.001)))
    s.lr_policy = ch(LR_POLICIES)
    if s.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid"):
        s.gamma = float(ch((0.5, 0.9, 0.1)) if s.lr_policy != "sigmoid" else ch((-0.5, 0.5)))
    if s.lr_policy in ("step", "sigmoid"):
        s.stepsize = int(rng.integers(1, 4))
    if s.lr_policy in ("inv", "poly"):
        s.power = float(ch((0.75, 2.0, 1.0)))
    if s.lr_policy == "multistep":
        s.stepvalue.extend(sorted(set(int(x) for x in rng.integers(1, 5, size=2))))
    s.max_iter = 10
    if s.type in ("SGD", "Nesterov") and rng.random() < 0.8:
        s.momentum = float(ch((0.9, 0.5, 0.0)))
    if s.type == "AdaDelta":
        s.momentum = float(ch((0.95, 0.9)))
        s.base_lr = 1.0
    if s.type == "Adam":
        s.momentum = 0.9
        if rng.random() < 0.5:
            s.momentum2 = float(ch((0.999, 0.99)))
    if s.type == "RMSProp" and rng.random() < 0.5:
        s.rms_decay = float(ch((0.98, 0.9)))
    if s.type in ("AdaGrad", "RMSProp", "AdaDelta", "Adam") and rng.random() < 0.5:
        s.delta = float(ch((1e-6, 1e-8, 1e-4)))
    if rng.random() < 0.6 and decay:
        s.weight_decay = float(ch((0.0005, 0.01, 0.1)))
        if rng.random() < 0.3:
            s.regularization_type = "L1"
    if rng.random() < 0.3:
        s.clip_gradients = float(ch((0.1, 1.0, 0.0)))
    if rng.random() < 0.3:
        s.iter_size = int(rng.integers(2, 4))
    if rng.random() < 0.2:
        s.average_loss = int(rng.integers(1, 4))
    s.display = 0
    s.snapshot_after_train = False
    s.random_seed = 1
    if level or stages:
        s.train_state.level = level
        s.train_state.stage.extend(stages)
    if test_net:
        s.test_iter.append(1)
        s.test_interval = int(rng.integers(1, 3))
        s.test_initialization = bool(rng.random() < 0.5)
    return text_format.MessageToString(s)


def draw_program(seed: int, gen: GenNet | None = None, phase: int | None = None) -> Program:
    """The program for case `seed` (its net drawn too, unless given)."""
    rng = np.random.default_rng([seed, 1])
    solver = rng.random() < 0.45
    if phase is None:
        phase = caffe_pb2.TRAIN if solver or rng.random() < 0.6 else caffe_pb2.TEST
    if gen is None:
        gen = generate_net(np.random.default_rng([seed, 2]), phase, for_solver=solver)
    net = gen.param
    has_rules = any(len(lp.include) or len(lp.exclude) or lp.HasField("phase") for lp in net.layer)
    prog = Program(net_text=text_format.MessageToString(net), phase=phase, level=gen.level, stages=list(gen.stages),
                   inputs=list(gen.inputs), files=list(gen.files), memory_data=gen.memory_data, seed=seed)
    prog.backward = None if rng.random() < 0.15 else ("kwargs" if rng.random() < 0.6 else "write")
    # HDF5Output writes one batch per file: a second forward is an error in both engines
    once = "HDF5Output" in gen.types
    prog.second_round = not once and bool(rng.random() < 0.3)
    if solver and not once:
        # a Data layer in both the train and the test net: this build's DataReader aborts (caffe_facts:
        # data-layer-two-nets)
        prog.test_net = not has_rules and "Data" not in gen.types and rng.random() < 0.2
        # this build's solver decays BatchNorm's statistics (caffe_facts: batchnorm-stats-trained)
        prog.solver_text = draw_solver(rng, gen.level, gen.stages, prog.test_net, decay="BatchNorm" not in gen.types)
        prog.steps = [int(rng.integers(1, 3)) for _ in range(int(rng.integers(1, 4)))]
        if rng.random() < 0.5:
            prog.backward, prog.second_round = None, False
    # not kept: tops whose memory Caffe replaces at each forward (ShareData, set_cpu_data), which a view taken
    # before leaves dangling (caffe_facts: stale-view), and the diff of a Flatten's bottom (ShareDiff in backward)
    stale = stale_view_blobs(net)
    stale_diff = {b for lp in net.layer if lp.type == "Flatten" for b in lp.bottom}
    names = [n for n, _, _ in gen.inputs] + [t for lp in net.layer for t in lp.top if t not in stale]
    param_layers = [lp.name for lp in net.layer if lp.type not in ("Input",)]
    for _ in range(int(rng.integers(0, 4))):
        if names and rng.random() < 0.5:
            name = names[int(rng.integers(len(names)))]
            prog.keep.append(("blob", name, 0, "data" if rng.random() < 0.7 or name in stale_diff else "diff"))
        elif param_layers:
            prog.keep.append(("param", param_layers[int(rng.integers(len(param_layers)))], int(rng.integers(0, 2)),
                              "data" if rng.random() < 0.7 else "diff"))
    prog.write_kept = bool(prog.keep) and rng.random() < 0.5
    return prog
