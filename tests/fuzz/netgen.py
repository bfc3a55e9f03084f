"""Random valid nets: a DAG of registered layer types with parameters inside Caffe's legal ranges.

The generator keeps the blobs made so far with their shapes and value kinds (tests/caffe_facts.py's input kinds:
"normal", "positive", "prob", "cos", "label:C", ...) and adds one layer at a time: a type drawn uniformly from
LAYER_MAKERS, bottoms drawn from the blobs that fit it (an older blob makes a fan-out, Caffe's implicit Split;
the same blob name as top makes the layer in place) or a new net input when none fits. Every maker computes its
tops' shapes itself from Caffe's formulas (never from caffe_torch, the engine under test), so a net the
generator believes valid and Caffe refuses is a generator bug or a Caffe check caffe_torch lacks; the differential
run tells which.

Beyond the layers' own fields the generator draws what a net can say about its layers: `loss_weight` on any
tops, `propagate_down`, `param { name lr_mult decay_mult }` sharing between layers of the same kind (every
combination of the multipliers set on owner and sharers), a layer-level `phase`, include/exclude NetStateRules
(layers the state keeps and layers it drops, some producing the same blob names), `force_backward`, and the
three ways to declare inputs (Input layers, legacy `input` + `input_shape`, legacy `input_dim`).

What makes Caffe abort on purpose (a backward that is NOT_IMPLEMENTED, a bottom it cannot back-propagate to) is
recorded per layer in `GenNet.fatal_backward` so that the program drawn for the net knows whether its backward
is expected to be refused; see program.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from caffe_torch.proto import caffe_pb2

from ..caffe_facts import NOT_IN_BUILD

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


@dataclass
class GenNet:
    """A generated net: the NetParameter, the net inputs (name, shape, kind) to feed, files the data layers
    read ((kind, path, payload) recipes, materialised by the worker), and what Caffe refuses to back-propagate."""

    param: caffe_pb2.NetParameter
    inputs: list[tuple[str, tuple[int, ...], str]]
    files: list[tuple] = field(default_factory=list)
    # layer name -> bottom indices whose back-propagation Caffe aborts on ("all" = the layer has no backward)
    fatal_backward: dict[str, set[int] | str] = field(default_factory=dict)
    memory_data: tuple[tuple[int, ...], int] | None = None   # MemoryData (data shape, label classes)
    level: int = 0
    stages: tuple[str, ...] = ()
    types: set[str] = field(default_factory=set)


# Layers whose tops share memory with their bottom, a param or a data buffer in Caffe (ShareData, set_cpu_data):
# a layer computing in place on such a top writes through to the bottom (and the other tops), which caffe_torch
# does not reproduce (caffe_facts: in-place-on-shared-top); the generator does not compute in place on them.
SHARING_TYPES = {"Split", "Flatten", "Reshape", "Parameter", "MemoryData", "Data", "ImageData"}


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def pool_out(size: int, k: int, s: int, p: int) -> int:
    """Caffe's PoolingLayer::Reshape: ceil, then the last window must start inside the image (or its left pad)."""
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


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


# ---------------------------------------------------------------------------------------------- layer makers
# Each maker adds one layer of its type to `g` (or returns False when it cannot). They encode Caffe's legal
# ranges: a field outside them is the invalid-net generator's business (invalid.py).

def _neuron(type_: str, fill=None, out_kind: str = "normal", in_kinds=None, in_place: bool = True,
            min_ndim: int = 0):
    def make(g: NetGen) -> bool:
        b = g.pick(lambda b: len(b.shape) >= min_ndim, kinds=in_kinds, scalar=min_ndim == 0)
        ip = in_place and g.in_place_ok(b)
        lp = g.layer(type_, [b], [(None, b.shape, out_kind)], in_place=ip)
        if fill:
            fill(g, lp, b)
        return True
    return make


def _engine(g, msg):
    if g.chance(0.2):
        msg.engine = g.choice((0, 1))     # DEFAULT or CAFFE (CUDNN is refused by the CPU-only build)


def _relu(g, lp, b):
    if g.chance(0.5):
        lp.relu_param.negative_slope = float(g.choice((0.0, 0.1, 0.5, -0.2)))
    _engine(g, lp.relu_param)


def _elu(g, lp, b):
    if g.chance(0.5):
        lp.elu_param.alpha = float(g.choice((0.5, 1.0, 2.0)))


def _exp(g, lp, b):
    ep = lp.exp_param
    if g.chance(0.5):
        ep.base = float(g.choice((-1.0, 2.0, 0.5, 10.0)))
    if g.chance(0.5):
        ep.scale = float(g.choice((0.5, -0.5, 1.0, 0.0)))
    if g.chance(0.5):
        ep.shift = float(g.choice((0.0, 0.5, -1.0)))


def _log(g, lp, b):
    p = lp.log_param
    if g.chance(0.5):
        p.base = float(g.choice((-1.0, 2.0, 10.0)))
    if g.chance(0.5):
        p.scale = float(g.choice((1.0, 2.0, 0.5)))
    if g.chance(0.5):
        p.shift = float(g.choice((0.0, 0.5, 1.0)))


def _power(g, lp, b):
    p = lp.power_param
    positive = b.kind in ("positive", "prob")
    powers = (1.0, 2.0, 3.0, 0.0) + ((0.5, -1.0, 1.5) if positive else ())
    if g.chance(0.8):
        p.power = float(g.choice(powers))
    if g.chance(0.5):
        p.scale = float(g.choice((1.0, 2.0, 0.5) if positive else (1.0, 2.0, -1.0, 0.0)))
    if g.chance(0.5) and not (positive and p.power != int(p.power)):
        p.shift = float(g.choice((0.0, 1.0, -0.5)))
    elif positive and g.chance(0.5):
        p.shift = 0.5


def _threshold(g, lp, b):
    if g.chance(0.7):
        lp.threshold_param.threshold = float(g.choice((0.0, 0.5, -0.3, 1.0)))
    g.fatal(lp, "all")


def _sigmoid(g, lp, b):
    _engine(g, lp.sigmoid_param)


def _tanh(g, lp, b):
    _engine(g, lp.tanh_param)


def _prelu(g, lp, b):
    if g.chance(0.4):
        lp.prelu_param.channel_shared = True
    if g.chance(0.3):
        g.filler(lp.prelu_param.filler)
    g.share(lp, 1)
    c = 1 if lp.prelu_param.channel_shared else b.shape[1]
    g.share_names(lp, f"PReLU{c}", 1)


def _dropout(g, lp, b):
    # TRAIN masks come from each engine's own generator: only TEST (any ratio) or ratio 0 is deterministic
    deterministic_phase = g.phase == caffe_pb2.TEST
    if g.chance(0.3):
        lp.phase = caffe_pb2.TEST
        deterministic_phase = True
    lp.dropout_param.dropout_ratio = float(g.choice((0.0, 0.3, 0.5))) if deterministic_phase else 0.0


def make_dropout(g):
    return _neuron("Dropout", _dropout)(g)


def make_softmax(g: NetGen) -> bool:
    b = g.pick()
    lp = g.layer("Softmax", [b], [(None, b.shape, "prob")], in_place=g.in_place_ok(b))
    if g.chance(0.5):
        lp.softmax_param.axis = int(g.rng.integers(-len(b.shape), len(b.shape)))
    _engine(g, lp.softmax_param)
    return True


def make_batchnorm(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2 and math.prod(b.shape) // b.shape[1] > 1)
    lp = g.layer("BatchNorm", [b], [(None, b.shape, "normal")], in_place=g.in_place_ok(b))
    p = lp.batch_norm_param
    if g.chance(0.3):
        p.use_global_stats = g.chance(0.5)
    if g.chance(0.3):
        p.moving_average_fraction = float(g.choice((0.9, 0.5, 0.999)))
    if g.chance(0.3):
        p.eps = float(g.choice((1e-3, 1e-5, 0.1)))
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    if g.chance(0.2):   # older prototxts carry these (Caffe 1.0's upgrade drops them)
        for _ in range(3):
            lp.param.add().lr_mult = 0
    return True


def make_bias_or_scale(type_: str):
    def make(g: NetGen) -> bool:
        b = g.pick(lambda b: len(b.shape) >= 1)
        nd = len(b.shape)
        axis = int(g.rng.integers(0, nd)) if g.chance(0.5) else min(1, nd - 1)
        num_axes = int(g.rng.integers(-1, nd - axis + 1))
        end = nd if num_axes == -1 else axis + num_axes
        pshape = b.shape[axis:end]
        bottoms = [b]
        two = g.chance(0.3)
        if two:
            # the second bottom's shape says which axes; axis counts in the first bottom
            ax2 = axis
            s = g.pick(lambda x: x.shape == pshape, make=lambda: pshape, multi=True) if pshape else None
            if s is None:
                return False
            bottoms.append(s)
        lp = g.layer(type_, bottoms, [(None, b.shape, "normal")], in_place=g.in_place_ok(b))
        msg = lp.scale_param if type_ == "Scale" else lp.bias_param
        if two:
            if ax2 != 1 or g.chance(0.3):
                msg.axis = ax2 - nd if g.chance(0.3) else ax2
        else:
            if axis != 1 or g.chance(0.3):
                msg.axis = axis - nd if g.chance(0.3) and axis > 0 else axis
            if num_axes != 1 or g.chance(0.3):
                msg.num_axes = num_axes
            g.filler(msg.filler)
        n_blobs = 0 if two else 1
        if type_ == "Scale" and g.chance(0.4):
            msg.bias_term = True
            n_blobs += 1
            if g.chance(0.3):
                g.filler(msg.bias_filler)
        if n_blobs:
            g.share(lp, n_blobs)
            if not two:
                g.share_names(lp, f"{type_}{pshape}{n_blobs}", n_blobs)
        return True
    return make


def make_inner_product(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 1)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd)) if g.chance(0.3) else min(1, nd - 1)
    if axis == 0 and nd > 1 and g.chance(0.7):
        axis = 1
    n_out = int(g.rng.integers(1, 5))
    lp = g.layer("InnerProduct", [b], [(None, b.shape[:axis] + (n_out,), "normal")])
    p = lp.inner_product_param
    p.num_output = n_out
    if axis != 1 or g.chance(0.2):
        p.axis = axis - nd if g.chance(0.4) else axis
    nb = 2
    if g.chance(0.3):
        p.bias_term = False
        nb = 1
    if g.chance(0.3):
        p.transpose = True
    if g.chance(0.15):
        p.normalize = True
    g.filler(p.weight_filler)
    g.share(lp, nb)
    g.share_names(lp, f"IP{math.prod(b.shape[axis:])}-{n_out}-{nb}-{p.transpose}", nb)
    return True


def _spatial_pick(g, min_axes=3, max_axes=4, min_size=1):
    def pred(b):
        return min_axes <= len(b.shape) <= max_axes and all(s >= min_size for s in b.shape[2:])
    return g.pick(pred, make=lambda: (g.batch, int(g.rng.integers(1, 4)))
                  + tuple(int(g.rng.integers(max(min_size, 2), 7)) for _ in range(max(2, min_axes - 2)
                          if max_axes >= 4 else min_axes - 2)))


def _conv_geometry(g: NetGen, spatial: tuple[int, ...], deconv: bool, msg, kernel_only: bool = False):
    """Draw kernel/stride/pad/dilation for `spatial` (all legal); write them into `msg` in one of Caffe's
    spellings (repeated per axis, one value for all, or the _h/_w fields for 2-D); return the output sizes."""
    n = len(spatial)
    while True:
        k = [int(g.rng.integers(1, 4)) for _ in range(n)]
        s = [int(g.rng.integers(1, 3)) for _ in range(n)]
        p = [int(g.rng.integers(0, 2)) for _ in range(n)]
        d = [int(g.rng.integers(1, 3)) if g.chance(0.3) else 1 for _ in range(n)]
        if g.chance(0.5):       # one value for every axis
            k, s, p, d = [k[0]] * n, [s[0]] * n, [p[0]] * n, [d[0]] * n
        if deconv:
            out = [s_ * (x - 1) + d_ * (k_ - 1) + 1 - 2 * p_ for x, k_, s_, p_, d_ in zip(spatial, k, s, p, d)]
        else:
            out = [_conv_out(x, k_, s_, p_, d_) for x, k_, s_, p_, d_ in zip(spatial, k, s, p, d)]
        if all(o >= 1 for o in out):
            break
    hw = n == 2 and g.chance(0.3)
    if hw and (g.chance(0.5) or k[0] != k[1]):
        msg.kernel_h, msg.kernel_w = k
    elif len(set(k)) == 1 and g.chance(0.7):
        msg.kernel_size.append(k[0])
    else:
        msg.kernel_size.extend(k)
    for name, vals, default in (("stride", s, 1), ("pad", p, 0)):
        if all(v == default for v in vals) and g.chance(0.6):
            continue
        if hw and g.chance(0.5):
            setattr(msg, f"{name}_h", vals[0])
            setattr(msg, f"{name}_w", vals[1])
        elif len(set(vals)) == 1 and g.chance(0.7):
            getattr(msg, name).append(vals[0])
        else:
            getattr(msg, name).extend(vals)
    if any(x != 1 for x in d) or g.chance(0.1):
        if len(set(d)) == 1:
            msg.dilation.append(d[0])
        else:
            msg.dilation.extend(d)
    return out, k


def make_conv(type_: str):
    def make(g: NetGen) -> bool:
        nd_choice = g.chance(0.15)
        if nd_choice:     # N-D: 1 or 3 spatial axes
            b = g.pick(lambda b: len(b.shape) in (3, 5) and all(s >= 1 for s in b.shape),
                       make=lambda: (g.batch, int(g.rng.integers(1, 4))) + tuple(
                           int(g.rng.integers(2, 5)) for _ in range(g.choice((1, 3)))))
        else:
            b = _spatial_pick(g, 4, 4)
        lp = caffe_pb2.LayerParameter()
        cp = lp.convolution_param
        axis = 1
        if g.chance(0.1) and len(b.shape) >= 4:
            axis = 2 if len(b.shape) >= 5 or g.chance(0.5) else 1
        c_in = b.shape[axis]
        spatial = b.shape[axis + 1:]
        if not spatial:
            return False
        out, k = _conv_geometry(g, spatial, type_ == "Deconvolution", cp)
        groups = [x for x in (1, 2, 3) if c_in % x == 0]
        group = g.choice(groups) if g.chance(0.3) else 1
        n_out = group * int(g.rng.integers(1, 3))
        cp.num_output = n_out
        if group != 1:
            cp.group = group
        if axis != 1:
            cp.axis = axis if g.chance(0.5) else axis - len(b.shape)
        nb = 2
        if g.chance(0.3):
            cp.bias_term = False
            nb = 1
        if g.chance(0.1):
            cp.force_nd_im2col = True
        _engine(g, cp)
        g.filler(cp.weight_filler)
        # several bottoms: each of the same shape gives its own top
        bottoms = [b]
        if g.chance(0.15):
            bottoms.append(g.pick(lambda x: x.shape == b.shape, make=lambda: b.shape, multi=True))
        top_shape = b.shape[:axis] + (n_out,) + tuple(out)
        made = g.layer(type_, bottoms, [(None, top_shape, "normal") for _ in bottoms])
        made.convolution_param.CopyFrom(cp)
        g.share(made, nb)
        wshape = (c_in, n_out // group) if type_ == "Deconvolution" else (n_out, c_in // group)
        g.share_names(made, f"{type_}{wshape}{tuple(k)}{nb}", nb)
        return True
    return make


def make_im2col(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    lp = g.layer("Im2col", [b], [(None, (), "normal")])
    out, k = _conv_geometry(g, b.shape[2:], False, lp.convolution_param)
    g.blobs[lp.top[0]].shape = (b.shape[0], b.shape[1] * math.prod(k)) + tuple(out)
    return True


def make_pooling(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    h, w = b.shape[2:]
    lp = caffe_pb2.LayerParameter()
    pp = lp.pooling_param
    pool = g.choice((0, 1))     # MAX, AVE (STOCHASTIC has no CPU implementation in Caffe)
    if pool or g.chance(0.3):
        pp.pool = pool
    if g.chance(0.15):
        pp.global_pooling = True
        kh, kw, sh, sw, ph, pw = h, w, 1, 1, 0, 0
    else:
        while True:
            kh, kw = int(g.rng.integers(1, min(h, 3) + 1 + 1)), int(g.rng.integers(1, min(w, 3) + 1 + 1))
            if g.chance(0.6):
                kw = kh
            sh, sw = int(g.rng.integers(1, 3)), int(g.rng.integers(1, 3))
            if g.chance(0.6):
                sw = sh
            ph, pw = int(g.rng.integers(0, kh)), int(g.rng.integers(0, kw))
            if g.chance(0.6):
                pw = ph = min(ph, pw)
            if kh <= h + 2 * ph and kw <= w + 2 * pw:
                break
        if kh == kw and g.chance(0.7):
            pp.kernel_size = kh
        else:
            pp.kernel_h, pp.kernel_w = kh, kw
        if sh == sw and (sh != 1 or g.chance(0.3)) and g.chance(0.7):
            pp.stride = sh
        elif (sh, sw) != (1, 1) or g.chance(0.2):
            pp.stride_h, pp.stride_w = sh, sw
        if ph == pw and (ph or g.chance(0.3)) and g.chance(0.7):
            pp.pad = ph
        elif (ph, pw) != (0, 0) or g.chance(0.2):
            pp.pad_h, pp.pad_w = ph, pw
    _engine(g, pp)
    top = (b.shape[0], b.shape[1], pool_out(h, kh, sh, ph), pool_out(w, kw, sw, pw))
    tops = [(None, top, "normal")]
    if pool == 0 and g.chance(0.2):
        tops.append((None, top, "terminal"))     # the argmax mask
    made = g.layer("Pooling", [b], tops)
    made.pooling_param.CopyFrom(pp)
    return True


def make_spp(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    h, w = b.shape[2:]
    heights = []
    for ph in (1, 2, 3):
        ok, total = True, 0
        for lvl in range(ph):
            bins = 2 ** lvl
            sizes = []
            for x in (h, w):
                k = math.ceil(x / bins)
                p = (k * bins - x + 1) // 2
                if p >= k:
                    ok = False
                sizes.append(pool_out(x, k, k, p))
            total += b.shape[1] * sizes[0] * sizes[1]
        if ok:
            heights.append((ph, total))
    ph, total = g.choice(heights)
    lp = g.layer("SPP", [b], [(None, (b.shape[0], total), "normal")])
    lp.spp_param.pyramid_height = ph
    if g.chance(0.5):
        lp.spp_param.pool = g.choice((0, 1))
    return True


def make_lrn(g: NetGen) -> bool:
    b = _spatial_pick(g, 4, 4)
    # never in place: BVLC's LRN computes garbage in place (caffe_facts: LRN_IN_PLACE)
    lp = g.layer("LRN", [b], [(None, b.shape, "normal")])
    p = lp.lrn_param
    if g.chance(0.6):
        p.local_size = int(g.choice((1, 3, 5)))
    if g.chance(0.5):
        p.alpha = float(g.choice((1.0, 0.5, 0.01)))
    if g.chance(0.5):
        p.beta = float(g.choice((0.75, 0.5, 1.0)))
    if g.chance(0.4):
        p.k = float(g.choice((1.0, 2.0)))
    if g.chance(0.4):
        p.norm_region = 1
    _engine(g, p)
    return True


def make_mvn(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2 and math.prod(b.shape[2:]) >= 1)
    lp = caffe_pb2.LayerParameter()
    p = lp.mvn_param
    if g.chance(0.4):
        p.normalize_variance = False
    if g.chance(0.4):
        p.across_channels = True
    if g.chance(0.3):
        p.eps = float(g.choice((1e-3, 0.1)))
    # in place only without normalize_variance (caffe_facts: MVN_IN_PLACE_VARIANCE)
    ip = not p.normalize_variance and g.in_place_ok(b)
    made = g.layer("MVN", [b], [(None, b.shape, "normal")], in_place=ip)
    made.mvn_param.CopyFrom(p)
    return True


def make_normalize(g: NetGen) -> bool:
    b = g.pick(lambda b: 2 <= len(b.shape) <= 4)
    legacy = tuple(b.shape) + (1,) * (4 - len(b.shape))
    tops = [(None, legacy, "normal")]
    two = g.chance(0.4)
    if two:
        tops.append((None, (legacy[0], 1, legacy[2], legacy[3]), "normal"))
    lp = g.layer("Normalize", [b], tops, in_place=len(b.shape) == 4 and g.in_place_ok(b))
    if g.chance(0.5):
        lp.normalize_param.normalize_type = g.choice(("L2", "L1"))
    if two and g.chance(0.5):
        lp.normalize_param.bp_norm = True
    return True


def make_eltwise(g: NetGen) -> bool:
    a = g.pick(multi=True)
    n = int(g.rng.integers(2, 4))
    bottoms = [a] + [g.pick(lambda x: x.shape == a.shape, make=lambda: a.shape, multi=True) for _ in range(n - 1)]
    # never in place: Caffe's SUM and MAX clear the top before reading bottom 0 (caffe_facts: eltwise-in-place)
    lp = g.layer("Eltwise", bottoms, [(None, a.shape, "normal")])
    op = g.choice((0, 1, 2))
    if op != 1 or g.chance(0.3):
        lp.eltwise_param.operation = op
    if op == 1 and g.chance(0.4):
        lp.eltwise_param.coeff.extend(float(g.choice((1.0, -1.0, 0.5, 2.0))) for _ in bottoms)
    if op == 0 and g.chance(0.3):
        lp.eltwise_param.stable_prod_grad = False
    return True


def make_concat(g: NetGen) -> bool:
    a = g.pick(multi=True)
    nd = len(a.shape)
    axis = int(g.rng.integers(0, nd))
    n = int(g.rng.integers(1, 4))
    bottoms = [a]
    for _ in range(n - 1):
        def same_but_axis(x, axis=axis):
            return len(x.shape) == nd and all(x.shape[i] == a.shape[i] for i in range(nd) if i != axis)
        bottoms.append(g.pick(same_but_axis, multi=True, make=lambda axis=axis: tuple(
            int(g.rng.integers(1, 4)) if i == axis else a.shape[i] for i in range(nd))))
    top = tuple(sum(x.shape[axis] for x in bottoms) if i == axis else a.shape[i] for i in range(nd))
    lp = g.layer("Concat", bottoms, [(None, top, "normal")])
    if axis != 1 or g.chance(0.2):
        if g.chance(0.15) and axis >= 0:
            lp.concat_param.concat_dim = axis            # the legacy spelling
        else:
            lp.concat_param.axis = axis - nd if g.chance(0.4) else axis
    return True


def make_slice(g: NetGen) -> bool:
    b = g.pick(lambda b: max(b.shape) >= 2)
    nd = len(b.shape)
    axes = [i for i in range(nd) if b.shape[i] >= 2]
    axis = g.choice(axes)
    size = b.shape[axis]
    if g.chance(0.5):
        n = int(g.rng.integers(2, size + 1))
        points = sorted(int(x) for x in g.rng.choice(np.arange(1, size), size=n - 1, replace=False))
        bounds = [0] + points + [size]
        sizes = [bounds[i + 1] - bounds[i] for i in range(n)]
    else:
        divs = [d for d in range(1, size + 1) if size % d == 0]
        n = g.choice(divs)
        points = []
        sizes = [size // n] * n
    tops = [(None, tuple(s if i == axis else b.shape[i] for i in range(nd)), b.kind if b.kind in FLOAT_KINDS
             else "normal") for s in sizes]
    lp = g.layer("Slice", [b], tops)
    sp = lp.slice_param
    if points:
        sp.slice_point.extend(points)
    if axis != 1 or g.chance(0.2):
        if g.chance(0.15):
            sp.slice_dim = axis
        else:
            sp.axis = axis - nd if g.chance(0.4) else axis
    return True


def make_split(g: NetGen) -> bool:
    b = g.pick()
    n = int(g.rng.integers(1, 4))
    g.layer("Split", [b], [(None, b.shape, b.kind if b.kind in FLOAT_KINDS else "normal") for _ in range(n)])
    return True


def make_flatten(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 1)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    end = int(g.rng.integers(axis, nd))
    top = b.shape[:axis] + (math.prod(b.shape[axis:end + 1]),) + b.shape[end + 1:]
    lp = g.layer("Flatten", [b], [(None, top, b.kind if b.kind in FLOAT_KINDS else "normal")])
    if axis != 1 or g.chance(0.3):
        lp.flatten_param.axis = axis - nd if g.chance(0.3) else axis
    if end != nd - 1 or g.chance(0.3):
        lp.flatten_param.end_axis = end - nd if g.chance(0.5) else end
    return True


def make_reshape(g: NetGen) -> bool:
    b = g.pick()
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd + 1))
    num_axes = int(g.rng.integers(0, nd - axis + 1)) if g.chance(0.5) else -1
    end = nd if num_axes == -1 else axis + num_axes
    part = b.shape[axis:end]
    total = math.prod(part)
    # a new shape for `part`: some dims copied (0), at most one inferred (-1), others explicit
    new = []
    rest = total
    k = int(g.rng.integers(0, 3)) + (1 if total > 1 else 0)
    for i in range(k):
        if i < len(part) and rest % part[i] == 0 and g.chance(0.3):
            new.append((0, part[i]))
            rest //= part[i]
            continue
        divs = [d for d in range(1, rest + 1) if rest % d == 0]
        d = g.choice(divs)
        new.append((d, d))
        rest //= d
    if rest != 1 or g.chance(0.3):
        if any(v == 0 for v, _ in new) and g.chance(0.5) or not new:
            new.append((-1, rest))
        else:
            new.append((rest, rest))
    # a copy (0) must stand at an index inside `part`; redo the ones that do not
    new = [(v if v != 0 or i < len(part) else real, real) for i, (v, real) in enumerate(new)]
    if math.prod(r for _, r in new) != total:
        return False
    top = b.shape[:axis] + tuple(r for _, r in new) + b.shape[end:]
    lp = g.layer("Reshape", [b], [(None, top, b.kind if b.kind in FLOAT_KINDS else "normal")])
    rp = lp.reshape_param
    rp.shape.dim.extend(v for v, _ in new)
    if axis != 0 or g.chance(0.2):
        rp.axis = axis - nd - 1 if g.chance(0.3) and axis <= nd else axis
    if num_axes != -1 or g.chance(0.2):
        rp.num_axes = num_axes
    return True


def make_crop(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2, multi=True)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    ref_shape = tuple(b.shape[i] if i < axis else int(g.rng.integers(1, b.shape[i] + 1)) for i in range(nd))
    ref = g.pick(lambda x: len(x.shape) == nd and all(x.shape[i] <= b.shape[i] for i in range(axis, nd)),
                 make=lambda: ref_shape, multi=True)
    offsets = [int(g.rng.integers(0, b.shape[i] - ref.shape[i] + 1)) for i in range(axis, nd)]
    one = len(set(offsets)) == 1 or g.chance(0.3)
    if one:
        o = min(b.shape[i] - ref.shape[i] for i in range(axis, nd))
        offsets = [int(g.rng.integers(0, o + 1))] * (nd - axis)
    top = b.shape[:axis] + ref.shape[axis:]
    lp = g.layer("Crop", [b, ref], [(None, top, "normal")])
    cp = lp.crop_param
    if axis != 2 or g.chance(0.2):
        cp.axis = axis - nd if g.chance(0.3) else axis
    if any(offsets) or g.chance(0.3):
        cp.offset.extend(offsets[:1] if one else offsets)
    return True


def make_tile(g: NetGen) -> bool:
    b = g.pick()
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    tiles = int(g.rng.integers(1, 4))
    top = tuple(s * tiles if i == axis else s for i, s in enumerate(b.shape))
    lp = g.layer("Tile", [b], [(None, top, "normal")])
    lp.tile_param.tiles = tiles
    if axis != 1 or g.chance(0.2):
        lp.tile_param.axis = axis - nd if g.chance(0.4) else axis
    return True


def make_reduction(g: NetGen) -> bool:
    b = g.pick()
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd))
    lp = g.layer("Reduction", [b], [(None, b.shape[:axis], "normal")])
    rp = lp.reduction_param
    op = g.choice((1, 2, 3, 4))
    if op != 1 or g.chance(0.3):
        rp.operation = op
    if axis != 0 or g.chance(0.3):
        rp.axis = axis - nd if g.chance(0.4) else axis
    if g.chance(0.4):
        rp.coeff = float(g.choice((0.5, 2.0, -1.0)))
    return True


def make_argmax(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    nd = len(b.shape)
    p = caffe_pb2.ArgMaxParameter()
    if g.chance(0.5):
        axis = int(g.rng.integers(0, nd))
        p.axis = axis - nd if g.chance(0.4) else axis
        k = int(g.rng.integers(1, b.shape[axis] + 1))
        top = tuple(k if i == axis else s for i, s in enumerate(b.shape))
    else:
        k = int(g.rng.integers(1, math.prod(b.shape[1:]) + 1))
        top = (b.shape[0], 1, k) + (1,) * (nd - 3)
    if k != 1 or g.chance(0.3):
        p.top_k = k
    if g.chance(0.4):
        p.out_max_val = True
        if not p.HasField("axis"):
            top = (top[0], 2) + top[2:]
    lp = g.layer("ArgMax", [b], [(None, top, "terminal")])
    lp.argmax_param.CopyFrom(p)
    g.fatal(lp, "all")
    return True


def make_accuracy(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd)) if g.chance(0.3) else 1
    classes = b.shape[axis]
    lshape = b.shape[:axis] + b.shape[axis + 1:]
    ignore = g.chance(0.3)
    label = g.label_input(lshape if lshape else (1,), classes, ignore)
    tops = [(None, (), "terminal")]
    if g.chance(0.3):
        tops.append((None, (classes,), "terminal"))
    lp = g.layer("Accuracy", [b, label], tops)
    ap = lp.accuracy_param
    if axis != 1:
        ap.axis = axis - nd if g.chance(0.4) else axis
    if g.chance(0.5):
        ap.top_k = int(g.rng.integers(1, classes + 1))
    if ignore:
        ap.ignore_label = -1
    g.fatal(lp, "all")
    return True


def make_embed(g: NetGen) -> bool:
    k = int(g.rng.integers(1, 6))
    idx = g.label_input(g.shape(int(g.rng.integers(1, 3))), k)
    n_out = int(g.rng.integers(1, 4))
    lp = g.layer("Embed", [idx], [(None, idx.shape + (n_out,), "normal")])
    ep = lp.embed_param
    ep.num_output, ep.input_dim = n_out, k
    nb = 2
    if g.chance(0.3):
        ep.bias_term = False
        nb = 1
    g.filler(ep.weight_filler)
    g.share(lp, nb)
    g.share_names(lp, f"Embed{k}-{n_out}-{nb}", nb)
    g.fatal(lp, {0})
    return True


def make_batch_reindex(g: NetGen) -> bool:
    b = g.pick(multi=True)
    n = int(g.rng.integers(1, 5))
    idx = g.label_input((n,), b.shape[0])
    g.fatal(g.layer("BatchReindex", [b, idx], [(None, (n,) + b.shape[1:], "normal")]), {1})
    return True


def make_filter(g: NetGen) -> bool:
    a = g.pick(multi=True)
    bottoms = [a]
    if g.chance(0.4):
        bottoms.append(g.pick(lambda x: x.shape[:1] == a.shape[:1], make=lambda: (a.shape[0],) + g.shape()[1:],
                              multi=True))
    sel_shape = (a.shape[0],) + ((1,) * int(g.rng.integers(0, 3)))
    sel = g.new_input(sel_shape, "binary1")
    lp = g.layer("Filter", bottoms + [sel], [(None, x.shape, "normal") for x in bottoms])
    for t in lp.top:
        g.blobs[t].dynamic = True
    g.fatal(lp, {len(bottoms)})
    return True


def make_silence(g: NetGen) -> bool:
    n = int(g.rng.integers(1, 3))
    bottoms = [g.pick() for _ in range(n)]
    if len({b.name for b in bottoms}) != len(bottoms):
        bottoms = bottoms[:1]
    g.layer("Silence", bottoms, [])
    return True


def make_parameter(g: NetGen) -> bool:
    shape = g.shape(int(g.rng.integers(1, 4)), batch=False)
    lp = g.layer("Parameter", [], [(None, shape, "normal")])
    lp.parameter_param.shape.dim.extend(shape)
    g.share(lp, 1)
    g.share_names(lp, f"Parameter{shape}", 1)
    return True


def make_prelu(g):
    return _neuron("PReLU", _prelu, min_ndim=2)(g)


# ---- losses
def _loss_weight(g, lp, n_tops=1):
    if g.chance(0.3):
        lp.loss_weight.extend(float(g.choice((1.0, 2.0, 0.5, 0.0))) for _ in range(n_tops))


def make_softmax_loss(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    nd = len(b.shape)
    axis = int(g.rng.integers(0, nd)) if g.chance(0.2) else 1
    classes = b.shape[axis]
    lshape = b.shape[:axis] + b.shape[axis + 1:]
    ignore = g.chance(0.3)
    label = g.label_input(lshape if lshape else (1,), classes, ignore)
    lp = g.layer("SoftmaxWithLoss", [b, label], [(None, (), "normal")])
    if axis != 1:
        lp.softmax_param.axis = axis - nd if g.chance(0.4) else axis
    lossp = lp.loss_param
    if ignore:
        lossp.ignore_label = -1
    if g.chance(0.4):
        lossp.normalization = g.choice((0, 1, 2, 3))
    elif g.chance(0.2):
        lossp.normalize = g.chance(0.5)
    _loss_weight(g, lp)
    return True


def make_euclidean(g: NetGen) -> bool:
    a = g.pick(multi=True)
    b = g.pick(lambda x: math.prod(x.shape) == math.prod(a.shape) and x.shape[:1] == a.shape[:1],
               make=lambda: a.shape, multi=True)
    lp = g.layer("EuclideanLoss", [a, b], [(None, (), "normal")])
    _loss_weight(g, lp)
    return True


def make_sigmoid_ce(g: NetGen) -> bool:
    a = g.pick(multi=True)
    t = g.new_input(a.shape, g.choice(("prob", "label:2")))
    lp = g.layer("SigmoidCrossEntropyLoss", [a, t], [(None, (), "normal")])
    _loss_weight(g, lp)
    g.fatal(lp, set())      # target: LossLayer does not force it
    return True


def make_contrastive(g: NetGen) -> bool:
    a = g.pick(lambda b: len(b.shape) in (2, 4) and all(s == 1 for s in b.shape[2:]), multi=True,
               make=lambda: (g.batch, int(g.rng.integers(1, 4))))
    b = g.pick(lambda x: x.shape == a.shape, make=lambda: a.shape, multi=True)
    sim = g.label_input((a.shape[0],) + ((1, 1, 1) if g.chance(0.5) else ()), 2)
    lp = g.layer("ContrastiveLoss", [a, b, sim], [(None, (), "normal")])
    cp = lp.contrastive_loss_param
    if g.chance(0.4):
        cp.margin = float(g.choice((0.5, 2.0, 3.0)))
    if g.chance(0.3):
        cp.legacy_version = True
    _loss_weight(g, lp)
    return True


def make_hinge(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    label = g.label_input((b.shape[0],), math.prod(b.shape[1:]))
    lp = g.layer("HingeLoss", [b, label], [(None, (), "normal")])
    if g.chance(0.5):
        lp.hinge_loss_param.norm = g.choice((1, 2))
    _loss_weight(g, lp)
    return True


def make_multinomial(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2, kinds=("prob",))
    label = g.label_input((b.shape[0],) + b.shape[2:], b.shape[1]) if len(b.shape) > 2 and \
        math.prod(b.shape[2:]) > 1 else g.label_input((b.shape[0],), b.shape[1])
    if math.prod(b.shape[2:]) != 1:
        return False
    lp = g.layer("MultinomialLogisticLoss", [b, label], [(None, (), "normal")])
    _loss_weight(g, lp)
    return True


def make_infogain(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2 and math.prod(b.shape[2:]) == 1, kinds=("prob",),
               make=lambda: (g.batch, int(g.rng.integers(2, 5))))
    c = b.shape[1]
    label = g.label_input((b.shape[0],), c)
    bottoms = [b, label]
    if g.chance(0.6):
        bottoms.append(g.new_input((1, 1, c, c), "prob"))
        lp = g.layer("InfogainLoss", bottoms, [(None, (), "normal")])
        g.fatal(lp, {2})
    else:
        lp = g.layer("InfogainLoss", bottoms, [(None, (), "normal")])
        name = f"{lp.name}_H.binaryproto"
        g.files.append(("binaryproto", name, (1, 1, c, c), int(g.rng.integers(1 << 30))))
        lp.infogain_loss_param.source = name
    _loss_weight(g, lp)
    return True


# ---- fork layers
def make_margin_ip(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) >= 2)
    n_out = int(g.rng.integers(2, 6))
    label = g.label_input((b.shape[0],) if g.chance(0.7) else (b.shape[0], 1, 1, 1), n_out)
    tops = [(None, (b.shape[0], n_out), "normal")]
    if g.chance(0.5):
        tops.append((None, (1,), "terminal"))
    lp = g.layer("MarginInnerProduct", [b, label], tops)
    field_name = "margin_inner_product_param_happynear" if g.chance(0.1) else "margin_inner_product_param"
    p = getattr(lp, field_name)
    p.num_output = n_out
    if g.chance(0.8):
        p.type = g.choice((0, 1, 2, 3))
    for f, vals in (("base", (0.0, 1.0, 5.0, 1000.0)), ("gamma", (0.0, 0.12, 0.5)), ("power", (1.0, 2.0)),
                    ("lambda_min", (0.0, 1.0, 5.0)), ("iteration", (0, 3, 100))):
        if g.chance(0.5):
            setattr(p, f, g.choice(vals))
    g.filler(p.weight_filler)
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    g.share(lp, 1)
    g.fatal(lp, set())       # label: not differentiable; Caffe's MarginInnerProduct never writes its diff
    return True


def make_label_specific_add(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) == 2, make=lambda: (g.batch, int(g.rng.integers(2, 5))))
    label = g.label_input((b.shape[0],), b.shape[1])
    tops = [(None, b.shape, "normal")]
    if g.chance(0.3):
        tops.append((None, (1,), "terminal"))
    lp = g.layer("LabelSpecificAdd", [b, label], tops, in_place=g.in_place_ok(b))
    p = lp.label_specific_add_param
    if g.chance(0.5):
        p.bias = float(g.choice((-0.35, -0.5, 0.2)))
    else:
        p.bias_base, p.bias_gamma, p.bias_power = -0.5, 0.1, 1.0
        p.bias_min, p.bias_max = -0.45, -0.2
        if g.chance(0.5):
            p.iteration = int(g.rng.integers(0, 5))
    if g.chance(0.3):
        p.transform_test = True
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    g.fatal(lp, set())
    return True


def make_aam(g: NetGen) -> bool:
    b = g.pick(lambda b: len(b.shape) == 2, kinds=("cos",), make=lambda: (g.batch, int(g.rng.integers(2, 5))))
    label = g.label_input((b.shape[0],), b.shape[1])
    lp = g.layer("AdditiveAngularMargin", [b, label], [(None, b.shape, "normal")], in_place=g.in_place_ok(b))
    p = lp.additive_angular_margin_param
    if g.chance(0.6):
        p.margin = float(g.choice((0.0, 0.2, 0.5, 1.2)))
    if g.chance(0.4):
        p.easy_margin = g.chance(0.5)
    if g.chance(0.2):
        lp.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
    g.fatal(lp, set())
    return True


# ---- recurrent
def make_recurrent(type_: str):
    def make(g: NetGen) -> bool:
        t = int(g.rng.integers(1, 4))
        n = g.batch
        x = g.pick(lambda b: len(b.shape) >= 3 and b.shape[:2] == (t, n) and len(b.shape) <= 4,
                   make=lambda: (t, n) + g.shape(int(g.rng.integers(1, 3)), batch=False), multi=True)
        cont = g.new_input((t, n), "cont")
        h = int(g.rng.integers(1, 4))
        bottoms = [x, cont]
        if g.chance(0.3):
            bottoms.append(g.pick(lambda b: b.shape[:1] == (n,) and len(b.shape) >= 2, multi=True,
                                  make=lambda: (n,) + g.shape(int(g.rng.integers(1, 3)), batch=False)))
        expose = g.chance(0.3)
        tops = [(None, (t, n, h), "normal")]
        if expose:
            for _ in range(2 if type_ == "LSTM" else 1):
                bottoms.append(g.new_input((1, n, h), "normal"))
                tops.append((None, (1, n, h), "normal"))
        lp = g.layer(type_, bottoms, tops)
        rp = lp.recurrent_param
        rp.num_output = h
        if expose:
            rp.expose_hidden = True
        g.filler(rp.weight_filler)
        g.fatal(lp, set())
        return True
    return make


def make_lstm_unit(g: NetGen) -> bool:
    n, d = g.batch, int(g.rng.integers(1, 4))
    c = g.pick(lambda b: b.shape == (1, n, d), make=lambda: (1, n, d), multi=True)
    x = g.pick(lambda b: b.shape == (1, n, 4 * d), make=lambda: (1, n, 4 * d), multi=True)
    cont = g.new_input((1, n), "cont")
    lp = g.layer("LSTMUnit", [c, x, cont], [(None, (1, n, d), "normal"), (None, (1, n, d), "normal")])
    g.fatal(lp, set())
    return True


# ---- data layers (placed before every other layer)
def make_dummy_data(g: NetGen) -> bool:
    n = int(g.rng.integers(1, 3))
    lp = g.layer("DummyData", [], [(None, (), "normal") for _ in range(n)], source=True)
    p = lp.dummy_data_param
    legacy = g.chance(0.3)
    for t in lp.top:
        shape = g.shape(4 if legacy else None)
        if legacy:
            p.num.append(shape[0])
            p.channels.append(shape[1])
            p.height.append(shape[2])
            p.width.append(shape[3])
        else:
            p.shape.add().dim.extend(shape)
        g.blobs[t].shape = shape
    fills = 1 if g.chance(0.5) else n
    for _ in range(fills):
        if g.chance(0.8):      # random fillers draw from each engine's own generator: constants only
            p.data_filler.add(type="constant", value=float(g.rng.normal()))
    return True


def make_memory_data(g: NetGen) -> bool:
    if g.memory_data is not None:
        return False
    shape = (g.batch,) + g.shape(3, batch=False)
    classes = int(g.rng.integers(2, 5))
    lp = g.layer("MemoryData", [], [(None, shape, "normal"), (None, (g.batch, 1, 1, 1), f"label:{classes}")],
                 source=True)
    p = lp.memory_data_param
    p.batch_size, p.channels, p.height, p.width = shape
    g.memory_data = (shape, classes)
    return True


def make_hdf5_data(g: NetGen) -> bool:
    batch = g.batch
    n_tops = int(g.rng.integers(1, 3))
    shapes = [g.shape(int(g.rng.integers(2, 4)), batch=False)[1:] for _ in range(n_tops)]
    lp = g.layer("HDF5Data", [], [(None, (batch,) + s, "normal") for s in shapes], source=True)
    rows = [int(g.rng.integers(1, 4)) for _ in range(int(g.rng.integers(1, 3)))]
    files = []
    for i, r in enumerate(rows):
        name = f"{lp.name}_{i}.h5"
        files.append(name)
        g.files.append(("hdf5", name, {t: (r,) + s for t, s in zip(lp.top, shapes)}, int(g.rng.integers(1 << 30))))
    g.files.append(("text", f"{lp.name}.txt", "\n".join(files) + "\n"))
    lp.hdf5_data_param.source = f"{lp.name}.txt"
    lp.hdf5_data_param.batch_size = batch
    return True


def make_image_data(g: NetGen) -> bool:
    gray = g.chance(0.5)
    h, w = int(g.rng.integers(2, 6)), int(g.rng.integers(2, 6))
    n_img = int(g.rng.integers(1, 4))
    c = 1 if gray else 3
    lp = g.layer("ImageData", [], [(None, (g.batch, c, h, w), "normal"), (None, (g.batch,), "label:3")],
                 source=True)
    p = lp.image_data_param
    g.files.append(("images", f"{lp.name}.txt", (n_img, h, w, gray), int(g.rng.integers(1 << 30))))
    p.source = f"{lp.name}.txt"
    p.batch_size = g.batch
    if gray:
        p.is_color = False
    tp = lp.transform_param
    if g.chance(0.4):
        tp.scale = 0.01
    if g.chance(0.4):
        tp.mean_value.extend([100.0] * (1 if gray or g.chance(0.5) else 3))
    if g.chance(0.3) and min(h, w) > 1:
        # TEST crops the centre; TRAIN a random place, unless the crop is the whole image
        crop = min(h, w) if g.phase == caffe_pb2.TRAIN else int(g.rng.integers(1, min(h, w) + 1))
        if g.phase == caffe_pb2.TRAIN and h != w:
            crop = 0
        if crop:
            tp.crop_size = crop
            g.blobs[lp.top[0]].shape = (g.batch, c, crop, crop)
    return True


def make_data(g: NetGen) -> bool:
    c, h, w = int(g.rng.integers(1, 4)), int(g.rng.integers(1, 5)), int(g.rng.integers(1, 5))
    n_items = int(g.rng.integers(1, 5))
    lp = g.layer("Data", [], [(None, (g.batch, c, h, w), "normal"), (None, (g.batch,), "label:4")],
                 source=True)
    dp = lp.data_param
    db = f"{lp.name}_lmdb"
    g.files.append(("lmdb", db, (n_items, c, h, w, g.chance(0.3)), int(g.rng.integers(1 << 30))))
    dp.source, dp.batch_size, dp.backend = db, g.batch, caffe_pb2.DataParameter.LMDB
    tp = lp.transform_param
    if g.chance(0.4):
        tp.scale = 0.5
    if g.chance(0.4):
        tp.mean_value.append(10.0)
    return True


def make_python(g: NetGen) -> bool:
    b = g.pick()
    kind = g.choice(("LearnedScale", "TwoTops", "SumAll"))
    if kind == "TwoTops":
        tops = [(None, b.shape, "normal"), (None, b.shape, "normal")]
    elif kind == "SumAll":
        tops = [(None, (1,), "normal")]
    else:
        tops = [(None, b.shape, "normal")]
    lp = g.layer("Python", [b], tops)
    pp = lp.python_param
    pp.module, pp.layer = "tests.fuzz.pylayers", kind
    if g.chance(0.5):
        pp.param_str = g.choice(("0.5", "2", "-1"))
    if kind == "LearnedScale":
        g.share(lp, 1)
    return True


def make_hdf5_output(g: NetGen) -> bool:
    a = g.pick(multi=True)
    b = g.pick(lambda x: x.shape[:1] == a.shape[:1], make=lambda: (a.shape[0],) + g.shape()[1:], multi=True)
    lp = g.layer("HDF5Output", [a, b], [])
    lp.hdf5_output_param.file_name = f"{lp.name}.h5"
    return True


LAYER_MAKERS = {
    "AbsVal": _neuron("AbsVal", in_place=False), "BNLL": _neuron("BNLL"), "ELU": _neuron("ELU", _elu),
    "Exp": _neuron("Exp", _exp, out_kind="positive"),
    "Log": _neuron("Log", _log, in_kinds=("positive", "prob")),
    "Power": _neuron("Power", _power),
    "ReLU": _neuron("ReLU", _relu), "PReLU": make_prelu,
    "Sigmoid": _neuron("Sigmoid", _sigmoid, out_kind="prob"), "TanH": _neuron("TanH", _tanh, out_kind="cos"),
    "Threshold": _neuron("Threshold", _threshold, out_kind="terminal"),
    "Dropout": make_dropout, "Softmax": make_softmax, "BatchNorm": make_batchnorm,
    "Bias": make_bias_or_scale("Bias"), "Scale": make_bias_or_scale("Scale"),
    "InnerProduct": make_inner_product, "Convolution": make_conv("Convolution"),
    "Deconvolution": make_conv("Deconvolution"), "Im2col": make_im2col, "Pooling": make_pooling, "SPP": make_spp,
    "LRN": make_lrn, "MVN": make_mvn, "Normalize": make_normalize, "Eltwise": make_eltwise,
    "Concat": make_concat, "Slice": make_slice, "Split": make_split, "Flatten": make_flatten,
    "Reshape": make_reshape, "Crop": make_crop, "Tile": make_tile, "Reduction": make_reduction,
    "ArgMax": make_argmax, "Accuracy": make_accuracy, "Embed": make_embed, "BatchReindex": make_batch_reindex,
    "Filter": make_filter, "Silence": make_silence, "Parameter": make_parameter,
    "SoftmaxWithLoss": make_softmax_loss, "EuclideanLoss": make_euclidean,
    "SigmoidCrossEntropyLoss": make_sigmoid_ce, "ContrastiveLoss": make_contrastive, "HingeLoss": make_hinge,
    "MultinomialLogisticLoss": make_multinomial, "InfogainLoss": make_infogain,
    "MarginInnerProduct": make_margin_ip, "LabelSpecificAdd": make_label_specific_add,
    "AdditiveAngularMargin": make_aam, "RNN": make_recurrent("RNN"), "LSTM": make_recurrent("LSTM"),
    "LSTMUnit": make_lstm_unit, "DummyData": make_dummy_data, "MemoryData": make_memory_data,
    "HDF5Data": make_hdf5_data, "ImageData": make_image_data, "Data": make_data, "Python": make_python,
    "HDF5Output": make_hdf5_output,
}
# Input is in every net (or its legacy spellings); the types the real build lacks are not generated.
GENERATED_TYPES = sorted(LAYER_MAKERS) + ["Input"]
SOURCE_TYPES = {"DummyData", "MemoryData", "HDF5Data", "ImageData", "Data"}
assert not set(LAYER_MAKERS) & set(NOT_IN_BUILD)


# ---------------------------------------------------------------------------------------------- assembly
STAGES = ("a", "b")


def _rule_met(rule, phase: int, level: int, stages) -> bool:
    """Caffe's Net::StateMeetsRule (the generator's own copy: it decides which layers it may wire together)."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def _random_rule(g: NetGen, want: bool, level: int, stages) -> caffe_pb2.NetStateRule:
    """A NetStateRule that the state (g.phase, level, stages) meets (want) or not."""
    for _ in range(100):
        r = caffe_pb2.NetStateRule()
        if g.chance(0.5):
            r.phase = g.choice((caffe_pb2.TRAIN, caffe_pb2.TEST))
        if g.chance(0.3):
            r.min_level = int(g.rng.integers(-1, 3))
        if g.chance(0.3):
            r.max_level = int(g.rng.integers(-1, 3))
        if g.chance(0.3):
            r.stage.append(g.choice(STAGES))
        if g.chance(0.2):
            r.not_stage.append(g.choice(STAGES))
        if _rule_met(r, g.phase, level, stages) == want:
            return r
    r = caffe_pb2.NetStateRule(phase=g.phase if want else 1 - g.phase)
    return r


def generate_net(rng: np.random.Generator, phase: int, *, for_solver: bool,
                 types: list[str] | None = None) -> GenNet:
    """A random valid net of 1..8 layers (types drawn from `types`, default all generated ones), inputs
    first."""
    g = NetGen(rng, phase, for_solver=for_solver)
    level = int(rng.integers(0, 3)) if g.chance(0.3) else 0
    stages = tuple(s for s in STAGES if g.chance(0.3))
    pool = list(types or LAYER_MAKERS)
    n_layers = int(rng.integers(1, g.max_layers + 1))
    # most nets start from one float input, so later layers can fan out from it
    if g.chance(0.8):
        g.new_input(g.shape(), g.choice(("normal", "normal", "zeros", "int", "positive")))
    tries = 0
    while len(g.layers) + len(g.source_layers) < n_layers and tries < 4 * n_layers:
        tries += 1
        type_ = g.choice(pool)
        if type_ == "MemoryData" and (g.memory_data is not None or for_solver and g.chance(0.5)):
            continue
        LAYER_MAKERS[type_](g)
    body = g.layers
    # loss_weight on tops of other layers, propagate_down on bottoms
    in_place_later = [{lp.top[0] for lp in body[i + 1:] if lp.bottom and lp.top and lp.top[0] == lp.bottom[0]}
                      for i in range(len(body))]
    for i, lp in enumerate(body):
        if lp.type in ("Silence", "HDF5Output") or not lp.top:
            continue
        # a loss weight counts as a reader for InsertSplits: not on a blob a later layer reads in place
        if not lp.loss_weight and g.chance(0.15) and lp.name not in g.fatal_backward and \
                not set(lp.top) & in_place_later[i]:
            lp.loss_weight.extend(float(g.choice((0.0, 1.0, 0.5, 2.0))) for _ in lp.top)
        if lp.bottom and g.chance(0.15):
            fatal = g.fatal_backward.get(lp.name, set())
            if fatal != "all":
                lp.propagate_down.extend(g.chance(0.5) and i not in fatal for i in range(len(lp.bottom)))
    # inputs: one Input layer, several, or the legacy net-level fields
    net = caffe_pb2.NetParameter(name=f"fuzz{int(rng.integers(1 << 16))}")
    style = g.choice(("layer", "layer", "layers", "input_shape", "input_dim"))
    if style == "input_dim" and not all(len(s) == 4 for _, s, _ in g.inputs):
        style = "input_shape"
    if g.memory_data is not None:     # pycaffe's set_input_arrays wants MemoryData first
        g.source_layers.sort(key=lambda lp: lp.type != "MemoryData")
        if style in ("input_shape", "input_dim"):
            style = "layer"
    if g.inputs and style in ("input_shape", "input_dim"):
        for name, shape, _ in g.inputs:
            net.input.append(name)
            if style == "input_dim":
                net.input_dim.extend(shape)
            else:
                net.input_shape.add().dim.extend(shape)
        inputs_layers = []
    else:
        groups = [g.inputs] if style == "layer" else [[x] for x in g.inputs]
        inputs_layers = []
        for i, grp in enumerate(x for x in groups if x):
            lp = caffe_pb2.LayerParameter(name=f"input{i}", type="Input", top=[n for n, _, _ in grp])
            shapes = [s for _, s, _ in grp]
            if len(set(shapes)) == 1 and len(shapes) > 1 and g.chance(0.5):
                shapes = shapes[:1]             # one shape for all tops
            for s in shapes:
                lp.input_param.shape.add().dim.extend(s)
            inputs_layers.append(lp)
    layers = g.source_layers + inputs_layers + body
    file_stage = g.choice(STAGES) if g.chance(0.1) else None    # a stage the prototxt's own `state` gives
    if file_stage is not None:
        net.state.stage.append(file_stage)
        stages = tuple(dict.fromkeys(stages + (file_stage,)))
    # NetStateRules: included layers with rules the state meets, decoys the state drops (some producing the
    # same top as a kept layer)
    final = []
    for lp in layers:
        if lp.type != "MemoryData" and g.chance(0.1):
            lp.include.append(_random_rule(g, True, level, stages))
        elif lp.type != "MemoryData" and g.chance(0.05):
            lp.exclude.append(_random_rule(g, False, level, stages))
        if lp.type not in ("Input", "MemoryData") and g.chance(0.08) and lp.top:
            decoy = caffe_pb2.LayerParameter()
            decoy.CopyFrom(lp)
            decoy.name = lp.name + "_other"
            del decoy.include[:]
            del decoy.exclude[:]
            if g.chance(0.5):
                decoy.include.append(_random_rule(g, False, level, stages))
            else:
                decoy.exclude.append(_random_rule(g, True, level, stages))
            final.append(decoy)
        final.append(lp)
    net.layer.extend(final)
    if g.force_backward:
        net.force_backward = True
    return GenNet(net, g.inputs, g.files, g.fatal_backward, g.memory_data, level,
                  tuple(s for s in stages if s not in net.state.stage), g.types | {"Input"} if g.inputs else g.types)
