"""The layer protocol and the registry of layer types.

A layer is a `torch.nn.Module` that the net builds from its `LayerParameter`:

    @register("ReLU")
    class ReLU(Layer):
        def __init__(self, param, bottom_shapes, ctx):     # read fields, declare learnable blobs
            super().__init__(param, bottom_shapes, ctx)
            self.negative_slope = param.relu_param.negative_slope   # Caffe default 0 (in the .proto)
        def forward(self, x):                               # torch tensors in, tensor(s) out
            return F.leaky_relu(x, self.negative_slope)

- `bottom_shapes` are the shapes of the bottom blobs when the net is built (tuples of ints); `top_shapes`
  returns the top shapes for given bottom shapes (default: every top has the first bottom's shape), raising
  `self.error(...)` where Caffe's Reshape CHECKs fail. The net calls it to size blobs at construction and on
  `net.reshape()`, and at a forward whose bottom shapes changed (Caffe runs Reshape at every forward), so it must
  not compute anything heavy.
- Learnable blobs ("params" in pycaffe) are declared with `self.add_blob(shape, filler)`, in Caffe's order,
  and read in `forward` as `self.blobs[i]` (never cached: the net may replace a blob by a shared one).
- `forward` receives the bottoms as tensors and returns one tensor or a tuple, one per top. Gradients come
  from autograd; a layer whose Caffe backward is not the derivative of its forward uses a
  `torch.autograd.Function`.
- Layers with state that must survive a snapshot (e.g. an iteration counter) override `get_state` /
  `set_state`; a layer that owns a random generator (Dropout) overrides `get_rng_state` / `set_rng_state`.
"""

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import LayerError

_REGISTRY: dict[str, type["Layer"]] = {}


def register(type_name: str) -> Callable[[type["Layer"]], type["Layer"]]:
    """Class decorator: make `cls` the implementation of prototxt layer type `type_name`."""

    def deco(cls: type["Layer"]) -> type["Layer"]:
        if type_name in _REGISTRY:
            raise ValueError(f"layer type {type_name!r} registered twice ({_REGISTRY[type_name]} and {cls})")
        cls.type_name = type_name
        _REGISTRY[type_name] = cls
        return cls

    return deco


def layer_class(type_name: str) -> type["Layer"]:
    """The class registered for `type_name`; KeyError listing the known types otherwise."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown layer type {type_name!r}; known types: {known}") from None


def known_types() -> list[str]:
    return sorted(_REGISTRY)


class BuildContext:
    """What a layer may use while it is built: dtype, device, phase, the filler generator, error location."""

    def __init__(self, dtype: torch.dtype, device: torch.device, phase: int, generator: torch.Generator,
                 where: str = ""):
        self.dtype = dtype
        self.device = device
        self.phase = phase            # caffe_pb2.TRAIN or caffe_pb2.TEST
        self.generator = generator    # CPU generator; fillers draw on the CPU so CPU and GPU nets match
        self.where = where            # "file:line" of the layer, for error messages


class Layer(nn.Module):
    type_name: str = "?"
    # Caffe gives loss_weight 1 to the first top of layers whose type ends in "Loss".
    is_loss: bool = False
    # A source layer (Input) has no forward of its own: the net fills its tops.
    is_source: bool = False
    # A Split layer (Caffe's InsertSplits): the net may hand its bottom to its readers without running it.
    is_split: bool = False
    # Whether the tops' shapes depend on the bottoms' values or on user code run at every forward (Filter's batch,
    # a Python layer's reshape): the layers below it check their shapes at run time (Net._check_follower), as
    # Caffe's Layer::Forward runs each layer's Reshape; such a layer's own forward checks its bottoms' shapes.
    shapes_from_data: bool = False
    # Per top, whether a forward leaves it as its blob holds it (DummyData's constant tops: Caffe fills them once,
    # so what an in-place layer or a script wrote there stays); empty: the forward gives every top.
    keeps_tops: tuple[bool, ...] = ()
    # Whether the tops share the bottom's data from set-up on, before any forward (Caffe's Reshape of the layer,
    # which Net::Init and Net::Reshape run, calls top->ShareData(bottom): Reshape, a one-bottom Concat, a one-top
    # Slice); the net then makes each top a view of bottom 0 (Split and Flatten share only in their Forward).
    shares_data_at_set_up: bool = False
    # Caffe's label range checks (loss, accuracy and margin layers) read the labels on the host: a sync per
    # forward on a GPU. A training loop that checks its labels on the host before uploading them turns them
    # off (Solver(label_checks=False)); pycaffe calls from scripts keep them.
    check_labels: bool = True
    # False for the types whose Caffe layer CHECKs that no top is its bottom (AbsVal, Flatten, Reshape, Split)
    allows_in_place: bool = True
    # (min, max) number of bottoms and tops; None = no limit.
    num_bottoms: tuple[int, int | None] = (1, 1)
    num_tops: tuple[int, int | None] = (1, 1)
    # Where Caffe's backward aborts (caffe_torch/need_backward.py): bottom indices it refuses to back-propagate
    # to ("all": NOT_IMPLEMENTED for any), whether its Backward is NOT_IMPLEMENTED outright, and the bottoms
    # force_backward leaves alone (Caffe's AllowForceBackward: a loss layer's labels).
    no_backward_to: tuple[int, ...] | str = ()
    backward_not_implemented: bool = False
    force_backward_skips: tuple[int, ...] = ()
    # Bottom indices Caffe's layer reads with Blob's legacy num() / channels() / height() / width() at set-up or in
    # its forward: they CHECK num_axes() <= 4 (blob.hpp), so a bottom of more axes aborts; refused when built.
    legacy_bottoms: tuple[int, ...] = ()
    # A Python layer runs a script's code, which may write any blob through its host view (no version bump): the
    # net's forward memo (below) starts afresh after it.
    runs_user_code: bool = False
    # The net's memo of one forward (a dict the net empties before and after each forward, None outside a net):
    # tensors that several layers derive alike from the same bottoms (the int64 labels; Accuracy's ranks), keyed
    # by the bottoms' identity and version (memo_key; the net hands every layer the same tensor of a blob that
    # needs no gradient, a detached one once per forward). See forward_memo().
    memo: dict | None = None

    def __init__(self, param, bottom_shapes: Sequence[tuple[int, ...]], ctx: BuildContext):
        super().__init__()
        self.name = param.name
        self.param = param
        self.phase = ctx.phase
        self._ctx_dtype = ctx.dtype
        self._ctx_device = ctx.device
        self._where = ctx.where
        self._generator = ctx.generator
        self.blobs = nn.ParameterList()
        # True while the net runs this forward again for its graph only (a TEST net's first backward, a
        # layer-by-layer backward): Caffe's Backward does not run Forward, so a forward that rewrites its params
        # in place (the forks' weight normalisation) must not do it a second time
        self.rerun = False
        self._check_counts(len(param.bottom), len(param.top))
        if not self.allows_in_place and param.bottom and param.bottom[0] in param.top:
            raise self.error(f"does not allow in-place computation (top '{param.bottom[0]}' is its bottom; "
                             "Caffe refuses it)")
        for i in self.legacy_bottoms:
            if i < len(bottom_shapes) and len(bottom_shapes[i]) > 4:
                raise self.error(f"bottom {i} ('{param.bottom[i]}') has shape {tuple(bottom_shapes[i])}: Caffe's "
                                 f"{self.type_name} reads it with the legacy num/channels/height/width accessors, "
                                 "which take at most 4 axes")

    # ---- helpers for subclasses
    def error(self, message: str) -> LayerError:
        return LayerError(self.name, self.type_name, message, self._where)

    def forward_memo(self, *tensors: torch.Tensor) -> dict | None:
        """The net's memo of this forward, where it may hold what is derived from `tensors` (all ordinary tensors,
        not being traced or compiled); None otherwise (compute it)."""
        if self.memo is None or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None
        if any(t.is_inference() for t in tensors):        # no version counter
            return None
        return self.memo

    @staticmethod
    def memo_key(t: torch.Tensor) -> tuple:
        """What a memo entry derived from `t` is keyed by: the tensor it views (a Split's tops are views of its
        bottom), its version (the views' shared counter) and which of its values `t` reads. The entry must hold
        `t` (so that the viewed tensor's id stays its own)."""
        base = t if t._base is None else t._base
        return id(base), t._version, tuple(t.shape), t.stride(), t.storage_offset(), t.dtype

    def _check_counts(self, n_bottom: int, n_top: int) -> None:
        for what, n, (lo, hi) in (("bottom", n_bottom, self.num_bottoms), ("top", n_top, self.num_tops)):
            if n < lo or (hi is not None and n > hi):
                want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
                raise self.error(f"takes {want} {what} blob(s), got {n}")

    def unchanged(self, x: torch.Tensor, j: int = 0) -> torch.Tensor:
        """Top j when it equals bottom j (an identity case): the bottom tensor itself when the layer runs in
        place, else a copy. Caffe's layers write such a top with caffe_copy into the top's own memory, so a
        script writing into one blob's `.data` must not change the other (only Flatten, Reshape, Split, a
        one-bottom Concat, a one-top Slice and Parameter share memory in Caffe)."""
        return x if self.param.top[j] == self.param.bottom[j] else x.clone(memory_format=torch.contiguous_format)

    def add_blob(self, shape: Sequence[int], filler=None, learnable: bool = True) -> nn.Parameter:
        """Declare the next learnable blob, filled by `filler` (a FillerParameter; None = zeros)."""
        from ..fillers import fill

        shape = tuple(int(s) for s in shape)
        data = torch.zeros(shape, dtype=torch.float64)
        if filler is not None:
            try:
                data = fill(filler, shape, self._generator)
            except ValueError as exc:
                raise self.error(str(exc)) from None
        p = nn.Parameter(data.to(dtype=self._ctx_dtype, device=self._ctx_device), requires_grad=learnable)
        self.blobs.append(p)
        return p

    # ---- protocol
    def top_shapes(self, bottom_shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def initial_tops(self) -> list[torch.Tensor] | None:
        """Values the tops hold once the net is built (what Caffe's LayerSetUp writes into them), or None."""
        return None

    def get_state(self) -> int | None:
        """An integer counter to save in a snapshot, or None if the layer has no such state."""
        return None

    def set_state(self, value: int) -> None:
        raise self.error("has no state to restore")

    def get_rng_state(self) -> bytes | None:
        """The state of a random generator the layer owns (saved in a snapshot), or None if it owns none."""
        return None

    def set_rng_state(self, state: bytes) -> None:
        raise self.error("has no random generator state to restore")

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


@contextmanager
def rerunning(layers):
    """Mark `layers` as re-run (Layer.rerun) for the duration: their forwards give the graph of the last forward
    without repeating its side effects on the params."""
    for layer in layers:
        layer.rerun = True
    try:
        yield
    finally:
        for layer in layers:
            layer.rerun = False


def canonical_axis(axis: int, ndim: int, layer: Layer) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -ndim <= axis < ndim:
        raise layer.error(f"axis {axis} out of range for a {ndim}-D blob")
    return axis % ndim


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    n = 1
    for d in shape[start:end]:
        n *= int(d)
    return n
