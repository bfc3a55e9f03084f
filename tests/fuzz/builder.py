"""The state of a net being generated: its blobs (shape, value kind), inputs, layers, and the helpers the layer
makers (tests/fuzz/makers/) draw with. See netgen.py for the whole."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe_torch.proto import caffe_pb2

FLOAT_KINDS = ("normal", "zeros", "int", "positive", "prob", "cos")


@dataclass
class BlobInfo:
    name: str
    shape: tuple[int, ...]
    kind: str = "normal"           # an input kind of caffe_facts.make_array; layer outputs are "normal" or finer
    producer: str = ""             # layer name ("" for a net input)
    terminal: bool = False         # not to be used as a bottom (shape not modelled, or value not meaningful)
    dynamic: bool = False          # first axis decided at forward time (Filter): single-bottom consumers only
    shared: bool = False           # Caffe's top shares another blob's memory (SHARING_TYPES): never in place

    @property
    def is_float(self) -> bool:
        return self.kind in FLOAT_KINDS and not self.terminal

    @property
    def label_classes(self) -> int | None:
        return int(self.kind.split(":")[1]) if self.kind.startswith("label:") else None


# Layers whose tops share memory with their bottom, a param or a data buffer in Caffe (ShareData, set_cpu_data):
# a layer computing in place on such a top writes through to the bottom (and the other tops), which caffe_torch
# does not reproduce (caffe_facts: in-place-on-shared-top); the generator does not compute in place on them.
# Caffe's Backward of these writes the bottom diff whatever propagate_down says (caffe_facts QUIRKS:
# ignores-propagate-down): the generator gives them no propagate_down
IGNORES_PROPAGATE_DOWN = {"BatchNorm", "Softmax", "MVN", "Im2col", "Flatten"}
SHARING_TYPES = {"Split", "Flatten", "Reshape", "Parameter", "MemoryData", "Data", "ImageData"}


class NetGen:
    def __init__(self, rng: np.random.Generator, phase: int, *, for_solver: bool, max_layers: int = 8):
        self.rng = rng
        self.phase = phase
        self.for_solver = for_solver
        self.max_layers = max_layers
        self.layers: list[caffe_pb2.LayerParameter] = []
        self.inputs: list[tuple[str, tuple[int, ...], str]] = []
        self.blobs: dict[str, BlobInfo] = {}        # name -> current version (in-place layers replace it)
        self.uses: dict[str, int] = {}               # name -> consumers so far
        self.files: list[tuple] = []
        self.fatal_backward: dict[str, set[int] | str] = {}
        self.memory_data = None
        self.source_layers: list[caffe_pb2.LayerParameter] = []   # data layers, placed first
        self.n = 0
        self.batch = int(rng.integers(1, 4))
        self.force_backward = bool(rng.random() < 0.3)
        self.types: set[str] = set()
        self.shared: dict[str, list[tuple[str, int]]] = {}   # param name -> [(layer type, blob index)]

    # ------------------------------------------------------------------ helpers
    def uid(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def bias_term(self, param) -> int:
        """`bias_term: false` in 3 layers of 10 (Caffe's default is true): the layer's number of blobs."""
        if self.chance(0.3):
            param.bias_term = False
            return 1
        return 2

    def choice(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def shape(self, ndim: int | None = None, lo: int = 1, hi: int = 4, batch: bool = True) -> tuple[int, ...]:
        ndim = ndim if ndim is not None else int(self.rng.integers(2, 5))
        dims = [int(self.rng.integers(lo, hi + 1)) for _ in range(ndim)]
        if batch and ndim:
            dims[0] = self.batch
        return tuple(dims)

    def new_input(self, shape: tuple[int, ...], kind: str = "normal") -> BlobInfo:
        name = self.uid("in")
        self.inputs.append((name, tuple(shape), kind))
        b = BlobInfo(name, tuple(shape), kind)
        self.blobs[name] = b
        return b

    def label_input(self, shape: tuple[int, ...], classes: int, ignore: bool = False) -> BlobInfo:
        """A label blob of `shape` with values in [0, classes): an existing one when one fits (fan-out)."""
        for b in self.blobs.values():
            c = b.label_classes
            if c is not None and c <= classes and b.shape == tuple(shape) and (":ignore" in b.kind) == ignore \
                    and self.chance(0.7):
                return b
        return self.new_input(shape, f"label:{classes}" + (":ignore" if ignore else ""))

    def floats(self, pred=lambda b: True, multi: bool = False, scalar: bool = False) -> list[BlobInfo]:
        return [b for b in self.blobs.values() if b.is_float and (scalar or b.shape) and pred(b)
                and not (multi and b.dynamic)]

    def pick(self, pred=lambda b: True, make=None, kinds=None, multi: bool = False,
             scalar: bool = False) -> BlobInfo:
        """An existing float blob satisfying `pred` (the newest more often), else a new input from `make()`.
        0-axis blobs (loss tops) only where `scalar`."""
        cands = [b for b in self.floats(pred, multi, scalar) if kinds is None or b.kind in kinds]
        if cands and not self.chance(0.15):
            weights = np.arange(1, len(cands) + 1, dtype=float) ** 2
            return cands[int(self.rng.choice(len(cands), p=weights / weights.sum()))]
        kind = self.choice(kinds) if kinds else self.choice(("normal", "normal", "normal", "zeros", "int"))
        for _ in range(100):
            shape = make() if make is not None else self.shape()
            if pred(BlobInfo("", tuple(shape), kind)):
                break
        return self.new_input(shape, kind)

    def layer(self, type_: str, bottoms: list[BlobInfo], tops: list[tuple[str | None, tuple, str]],
              in_place: bool = False, source: bool = False, name: str | None = None) -> caffe_pb2.LayerParameter:
        """Add a layer; tops are (name or None for a fresh one, shape, kind). With `in_place` the first top is
        the first bottom's name."""
        lp = caffe_pb2.LayerParameter(name=name or self.uid(type_.lower()[:4]), type=type_)
        lp.bottom.extend(b.name for b in bottoms)
        for b in bottoms:
            self.uses[b.name] = self.uses.get(b.name, 0) + 1
        for i, (tname, shape, kind) in enumerate(tops):
            if i == 0 and in_place:
                tname = bottoms[0].name
                self.uses[tname] = 0            # a new version of the blob, read by no one yet
            tname = tname or self.uid("b")
            lp.top.append(tname)
            shared = type_ in SHARING_TYPES or (type_, len(bottoms), len(tops)) in (("Concat", 1, 1),
                                                                                   ("Slice", 1, 1))
            self.blobs[tname] = BlobInfo(tname, tuple(shape), kind, producer=lp.name,
                                         terminal=kind == "terminal", shared=shared)
        (self.source_layers if source else self.layers).append(lp)
        self.types.add(type_)
        return lp

    def in_place_ok(self, b: BlobInfo) -> bool:
        """In place only on a float blob (never a label someone else reads as a label) that no other layer
        has read yet: Caffe's InsertSplits gives a blob read twice a Split, renaming the bottoms, and an
        in-place layer among its readers then produces the blob a second time (an abort)."""
        return b.is_float and not b.shared and not self.uses.get(b.name) and self.chance(0.3)

    def fatal(self, lp, which) -> None:
        self.fatal_backward[lp.name] = which

    def filler(self, fp, positive: bool = False) -> None:
        """A random filler (the fuzz overwrites every param with its own values, but the filler fields must
        parse and pass Caffe's checks in both engines)."""
        kind = self.choice(("constant", "uniform", "gaussian", "xavier", "msra", None))
        if kind is None:
            return
        fp.type = kind
        if kind == "constant":
            fp.value = float(self.rng.uniform(0.5, 1.5) if positive else self.rng.normal())
        elif kind == "uniform":
            fp.min, fp.max = (0.5, 1.5) if positive else (-1.0, 1.0)
        elif kind == "gaussian":
            fp.std = 0.1

    def share(self, lp, n_blobs: int) -> None:
        """`param { ... }` specs: multipliers, and names shared with an earlier layer of the same type whose
        blobs have the same shapes (the caller guarantees that through `key`)."""
        for i in range(n_blobs):
            if not self.chance(0.4):
                if len(lp.param) == i and i < n_blobs - 1 and self.chance(0.5):
                    lp.param.add()          # an empty spec, then later ones
                continue
            while len(lp.param) < i:
                lp.param.add()
            spec = lp.param.add() if len(lp.param) == i else lp.param[i]
            if self.chance(0.5):
                spec.lr_mult = float(self.choice((0.0, 0.5, 1.0, 2.0)))
            if self.chance(0.5):
                spec.decay_mult = float(self.choice((0.0, 1.0, 2.0)))

    def share_names(self, lp, key: str, n_blobs: int) -> None:
        """Name the blobs of `lp` so that a later layer with the same `key` (type + blob shapes) shares them,
        or share an earlier one's. lr_mult/decay_mult on the sharer: unset, equal to the owner's, or set where
        the owner left them unset (Caffe's AppendParam rules decide; a conflicting value is an invalid net)."""
        owners = self.shared.get(key)
        if owners and self.chance(0.6):
            owner = owners[0]
            for i in range(n_blobs):
                while len(lp.param) <= i:
                    lp.param.add()
                lp.param[i].name = owner.param[i].name if i < len(owner.param) and owner.param[i].name else ""
                ospec = owner.param[i] if i < len(owner.param) else caffe_pb2.ParamSpec()
                for f in ("lr_mult", "decay_mult"):
                    if ospec.HasField(f):
                        if self.chance(0.5):
                            setattr(lp.param[i], f, getattr(ospec, f))
                        else:
                            lp.param[i].ClearField(f)
                    elif self.chance(0.5):
                        setattr(lp.param[i], f, float(self.choice((0.0, 1.0, 2.0))))
                    else:
                        lp.param[i].ClearField(f)
            return
        if self.chance(0.3):
            for i in range(n_blobs):
                while len(lp.param) <= i:
                    lp.param.add()
                lp.param[i].name = f"{lp.name}_w{i}"
            self.shared.setdefault(key, []).append(lp)
