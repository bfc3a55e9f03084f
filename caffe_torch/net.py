"""caffe.Net: a graph of layers built from a NetParameter, run with PyTorch, behind pycaffe's API.

Construction follows Caffe's Net::Init: legacy `input:` fields become an Input layer named "input"; layers are
filtered by the net state (phase/level/stage against include/exclude rules); each layer is built from its
parameter, its bottoms resolved against the blobs produced so far (a top equal to its bottom is in place);
learnable blobs get their ParamSpec (lr_mult, decay_mult, shared name); tops of loss layers get loss weight 1
unless the prototxt says otherwise.

Forward runs the layers in order on torch tensors. Backward is autograd from the loss tops, seeded with their
loss weights: gradients flow only where a loss depends on them, a blob read by several layers receives the
sum of their gradients (Caffe's implicit Split), and parameters with lr_mult 0 get none (as Caffe's
param_propagate_down).
"""

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import fast as fast_options
from . import layers as _layers  # noqa: F401  (registers the layer types)
from .blob import Blob, _ActivationBlob, _HostSync, clear_param_diff, param_blob, reshaped_memory, share_param_data
from .debug_info import backward_debug_info, forward_debug_info
from .errors import LayerError, PrototxtError
from .fast import FastOptions
from .layers.base import BuildContext, known_types, layer_class, rerunning
from .log import install as install_glog
from .mode import MODE
from .need_backward import plan as backward_plan
from .proto import caffe_pb2
from .prototxt import Source, read_net
from .pycaffe_net import PycaffeNetMixin
from .splits import insert_splits

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


def _state_meets_rule(state, rule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stage for s in rule.stage):
        return False
    return not any(s in state.stage for s in rule.not_stage)


def filter_layers(param, state, src: Source) -> list[tuple[int, "caffe_pb2.LayerParameter"]]:
    """(index in the file, layer) for every layer included in `state` (Caffe's FilterNet)."""
    kept = []
    for i, lp in enumerate(param.layer):
        if lp.include and lp.exclude:
            raise PrototxtError(f"{src.where(i)}: layer '{lp.name}': specify either include or exclude "
                                "rules, not both")
        included = not lp.include
        if any(_state_meets_rule(state, r) for r in lp.exclude):
            included = False
        if any(_state_meets_rule(state, r) for r in lp.include):
            included = True
        if included:
            kept.append((i, lp))
    return kept


def upgrade_inputs(param, src: Source) -> None:
    """Turn legacy `input:` + `input_dim:`/`input_shape` into a leading Input layer named "input"."""
    if not param.input:
        return
    n = len(param.input)
    if param.input_shape and param.input_dim:
        raise PrototxtError(f"{src.path}: give either input_shape or input_dim, not both")
    shapes = []
    if param.input_shape:
        if len(param.input_shape) not in (1, n):
            raise PrototxtError(f"{src.path}: {n} inputs but {len(param.input_shape)} input_shape entries")
        shapes = [list(param.input_shape[i if len(param.input_shape) > 1 else 0].dim) for i in range(n)]
    elif param.input_dim:
        if len(param.input_dim) != 4 * n:
            raise PrototxtError(f"{src.path}: {n} inputs need {4 * n} input_dim values, "
                                f"got {len(param.input_dim)}")
        shapes = [list(param.input_dim[4 * i:4 * i + 4]) for i in range(n)]
    else:
        raise PrototxtError(f"{src.path}: legacy input blobs need input_shape or input_dim")
    layer = caffe_pb2.LayerParameter(name="input", type="Input", top=list(param.input))
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    layers = [layer] + list(param.layer)
    del param.layer[:]
    param.layer.extend(layers)
    del param.input[:], param.input_dim[:], param.input_shape[:]
    src.layer_lines.insert(0, 0)


def upgrade_batch_norm(param) -> None:
    """Caffe's UpgradeNetBatchNorm (upgrade_proto.cpp, run when any net file is read): a BatchNorm with exactly
    three `param` specs (the old definition's `param { lr_mult: 0 }` x3) loses them. Net::Init then sees the
    default lr_mult 1, so the layer needs backward (its tops too), while LayerSetUp's own lr_mult 0 keeps the
    statistics out of the solver (see _setup_params)."""
    for lp in param.layer:
        if lp.type == "BatchNorm" and len(lp.param) == 3:
            del lp.param[:]


class _Learnable:
    """One learnable blob as Caffe's Net::AppendParam keeps it: its lr_mult / decay_mult and whether a ParamSpec
    set them. The owner (first layer naming the param, or an unnamed one) gives its ParamSpec's values; a
    sharer's explicit value must equal one already set, and is taken when none was (so `param { name: "w"
    lr_mult: 0 }` on a sharer freezes an owner that set no lr_mult)."""

    def __init__(self, param: nn.Parameter, name: str, layer: str, spec):
        self.param, self.name, self.layer = param, name, layer
        self.lr, self.decay = spec.lr_mult, spec.decay_mult       # defaults 1, 1 (caffe.proto)
        self.lr_from = layer if spec.HasField("lr_mult") else None
        self.decay_from = layer if spec.HasField("decay_mult") else None

    def share(self, spec, layer: str) -> str | None:
        """Merge a sharer's ParamSpec; the problem (Caffe's CHECK failure) or None."""
        for field, attr in (("lr_mult", "lr"), ("decay_mult", "decay")):
            if not spec.HasField(field):
                continue
            value, set_by = getattr(spec, field), getattr(self, f"{attr}_from")
            if set_by is None:
                setattr(self, attr, value)
                setattr(self, f"{attr}_from", layer)
            elif value != getattr(self, attr):
                return (f"shared param '{spec.name}' has mismatched {field} ({value:g} here, "
                        f"{getattr(self, attr):g} in layer '{set_by}')")
        return None


def _layer_error(exc: Exception, lp, where: str) -> Exception:
    """What a layer's constructor or top_shapes raised, as the net raises it: a Python layer's own exception as
    it is (pycaffe raises it; it names the layer), anything else as a LayerError naming the layer."""
    if getattr(exc, "caffe_torch_user_code", False):
        return exc
    return LayerError(lp.name, lp.type, str(exc), where)


def shape_followers(layers, layer_params) -> frozenset[int]:
    """The layers whose bottoms can change shape from one forward to the next on their own: those reading (through
    any chain of layers) a top of a layer whose top shapes depend on the data or on user code run at every forward
    (Layer.shapes_from_data: Filter's batch, a Python layer's reshape). Split layers pass the property on but are
    not listed (they take any shape)."""
    varying: set[str] = set()
    followers = set()
    for i, (layer, lp) in enumerate(zip(layers, layer_params)):
        follows = any(b in varying for b in lp.bottom)
        if follows and not layer.shapes_from_data and not layer.is_split:
            followers.add(i)
        if follows or layer.shapes_from_data:
            varying.update(lp.top)
    return frozenset(followers)


class Net(PycaffeNetMixin):
    """pycaffe-compatible net. `Net(prototxt, phase)`, `Net(prototxt, weights, phase)`, or keywords
    `weights=`, `level=`, `stages=`; caffe_torch extensions: `dtype=` (default float32), `device=` (default
    from set_mode_cpu/gpu and set_device), `net_param=` (an already parsed NetParameter instead of a file),
    `record_layer_inputs=` (default True; False for a training loop's net that never runs a ranged backward:
    its forwards then keep no per-layer records, see pycaffe_net), `fast=` (caffe_torch.fast.FastOptions:
    channels-last, bf16 autocast, TF32, torch.compile; default none)."""

    def __init__(self, network_file=None, *args, phase=None, weights=None, level=0, stages=None,
                 dtype=torch.float32, device=None, net_param=None, record_layer_inputs=True,
                 fast: FastOptions | None = None):
        if len(args) == 2:            # Net(prototxt, weights, phase)
            weights, phase = args
        elif len(args) == 1:          # Net(prototxt, phase)
            phase = args[0]
        elif args:
            raise TypeError("Net(prototxt, [weights], phase): too many positional arguments")
        if phase not in (TRAIN, TEST):
            raise ValueError("Net needs a phase: caffe.TRAIN or caffe.TEST")
        if net_param is None:
            if network_file is None:
                raise TypeError("Net needs a prototxt file (or net_param=)")
            net_param, src = read_net(network_file)
        else:
            net_param = caffe_pb2.NetParameter.FromString(net_param.SerializeToString())
            src = Source(str(network_file or f"<net {net_param.name}>"),
                         [0] * (len(net_param.layer) + (1 if net_param.input else 0)))
        install_glog()                 # Caffe's log lines on stderr for a script that configured no logging
        self.phase = phase
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else MODE.device()
        self.name = net_param.name
        self._src = src
        self._sync = _HostSync()
        # Caffe's Net(file, phase, level, stages): the file's state, with phase and level replaced by the
        # constructor's and its stages appended
        state = caffe_pb2.NetState()
        state.CopyFrom(net_param.state)
        state.phase = phase
        state.level = int(level)
        state.stage.extend(list(stages or []))
        if len(net_param.layers):
            raise PrototxtError(f"{src.path}: legacy V1 'layers' blocks are not supported in a net "
                                "definition (only when reading weights); upgrade the file to 'layer' "
                                "blocks (Caffe's upgrade_net_proto_text)")
        upgrade_inputs(net_param, src)
        upgrade_batch_norm(net_param)
        self._net_param = net_param
        self._build(net_param, state, src)
        self._init_pycaffe(record_layer_inputs)
        # the speed options, chosen here once (caffe_torch.fast): layer_call is None or f(index, layer, bottoms)
        # that runs layer `index` instead of a plain call (autocast regions, channels-last inputs, layers kept out
        # of a compiled graph); _compiled is None or the compiled layer loop that forward_range and
        # backward_loss use instead of the interpreted one
        self.fast = fast if fast is not None else FastOptions()
        fast_options.prepare(self, self.fast)
        self.layer_call = fast_options.layer_call(self, self.fast)
        self._compiled = fast_options.compiled_layers(self, self.fast)
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------ construction
    def _build(self, net_param, state, src: Source) -> None:
        self._layers = nn.ModuleList()
        self._layer_names: list[str] = []
        self._layer_params: list = []
        self.bottom_names: dict[str, list[str]] = OrderedDict()
        self.top_names: dict[str, list[str]] = OrderedDict()
        self._propagate_down: list[list[bool]] = []
        self._tensors: dict[str, torch.Tensor] = {}
        self._graph_tensors: dict[str, torch.Tensor] = {}     # see _run_layers
        self._blob_leaves: dict[str, torch.Tensor] = {}       # see _run_layers
        self._memo: dict = {}                                  # Layer.memo: emptied before and after each forward
        self._grads: dict[str, torch.Tensor | None] = {}
        self.blobs: dict[str, Blob] = OrderedDict()
        self.params: dict[str, list[Blob]] = OrderedDict()
        self.inputs: list[str] = []
        self._loss_weights: dict[str, float] = OrderedDict()
        self._learnable: list[tuple[nn.Parameter, float, float, str]] = []   # (param, lr, decay, name)
        self._learnable_entries: list[_Learnable] = []
        self._shared_params: dict[str, _Learnable] = {}      # ParamSpec name -> its owner's entry
        self._param_propagate: list[list[bool]] = []         # per layer and blob: Caffe's param_propagate_down
        self._detached_params: dict[int, list[int]] = {}     # layer -> blobs it uses without a diff
        self.force_backward = net_param.force_backward
        # Caffe's debug_info: [Forward] / [Backward] lines per layer (the solver sets it on display iterations)
        self.debug_info = net_param.debug_info
        self._debug_record = None
        # whether forwards record the autograd graph: TRAIN nets and force_backward ones always; a TEST net
        # starts recording only once a script calls its backward (see backward_loss), so that evaluation pays
        # nothing for a backward Caffe would allow but nobody runs
        self.enable_backward = self.phase == TRAIN or self.force_backward
        self._last_forward = None
        self._replaying = False          # _redo_forward_with_graph is running

        # top -> bottom whose data it shares from set-up on (Layer.shares_data_at_set_up); a storage-less top
        # becomes a view of its bottom's memory when read
        self._set_up_source: dict[str, str] = {}
        available: dict[str, None] = OrderedDict()       # blobs not yet consumed, in production order
        shapes: dict[str, tuple[int, ...]] = {}
        names_seen: set[str] = set()
        built_bottoms: list[list[tuple[int, ...]]] = []     # each layer's bottom shapes, checked here

        def unknown_bottom(file_index, lp, blob):
            raise LayerError(lp.name, lp.type, f"unknown bottom blob '{blob}' (not produced by any earlier layer "
                             "in this phase)", src.where(file_index))

        for file_index, lp in insert_splits(filter_layers(net_param, state, src), unknown_bottom):
            where = src.where(file_index)
            if not lp.HasField("phase"):       # Caffe's Net::Init: a layer inherits the net's phase if unset
                lp.phase = state.phase
            if not lp.name:
                raise PrototxtError(f"{where}: a layer has no name")
            if lp.name in names_seen:
                raise PrototxtError(f"{where}: duplicate layer name '{lp.name}'")
            names_seen.add(lp.name)
            try:
                cls = layer_class(lp.type)
            except KeyError:
                # a misspelt type and a type of some other Caffe build look the same here: say both
                raise PrototxtError(f"{where}: layer '{lp.name}' has type '{lp.type}', which caffe_torch does "
                                    "not implement; if a real Caffe build has it, that build runs it (--engine "
                                    f"caffe). Types caffe_torch implements: {', '.join(known_types())}") from None
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise LayerError(lp.name, lp.type, "propagate_down must be given once per bottom", where)
            # Net::AppendTop, before the layer's SetUp
            for j, t in enumerate(lp.top):
                in_place = j < len(lp.bottom) and lp.bottom[j] == t
                if t in shapes and not in_place:
                    raise LayerError(lp.name, lp.type, f"top blob '{t}' produced by multiple sources", where)
            bottom_shapes = [shapes[b] for b in lp.bottom]
            built_bottoms.append(bottom_shapes)
            ctx = BuildContext(self.dtype, self.device, lp.phase, MODE.generator, where)
            try:
                layer = cls(lp, bottom_shapes, ctx)
                top_shapes = layer.top_shapes(bottom_shapes)
            except LayerError:
                raise
            except (ValueError, RuntimeError, IndexError) as exc:
                raise _layer_error(exc, lp, where) from None
            layer.memo = self._memo
            self._layers.append(layer)
            self._layer_names.append(lp.name)
            self._layer_params.append(lp)
            self.bottom_names[lp.name] = list(lp.bottom)
            self.top_names[lp.name] = list(lp.top)
            for b in lp.bottom:
                available.pop(b, None)
            if len(top_shapes) != len(lp.top):
                raise LayerError(lp.name, lp.type, f"gives {len(top_shapes)} top shape(s) for {len(lp.top)} "
                                 "top(s)", where)
            for j, (t, shp) in enumerate(zip(lp.top, top_shapes)):
                if j < len(lp.bottom) and lp.bottom[j] == t and tuple(shp) != tuple(bottom_shapes[j]):
                    # Caffe reshapes the bottom itself, and the next forward reads it at the new shape
                    raise LayerError(lp.name, lp.type, f"computes top '{t}' in place but changes its shape "
                                     f"{tuple(bottom_shapes[j])} -> {tuple(shp)}: give the top another name", where)
                if any(int(d) < 0 for d in shp):    # Caffe: CHECK_GE(shape[i], 0) in Blob::Reshape
                    raise LayerError(lp.name, lp.type, f"top '{t}' would have the negative shape {tuple(shp)} "
                                     f"from bottom shape(s) {bottom_shapes}: the input is too small", where)
                shapes[t] = tuple(shp)
                available[t] = None
                if t not in self._tensors or tuple(self._tensors[t].shape) != tuple(shp):
                    self._tensors[t] = self._placeholder(shp, real=lp.type == "Input")
                if t not in self.blobs:
                    self.blobs[t] = self._activation_blob(t)
            initial = layer.initial_tops()
            if initial is not None:
                for t, value in zip(lp.top, initial):
                    self._tensors[t] = value
            if layer.shares_data_at_set_up and lp.top[0] != lp.bottom[0]:
                # Caffe's Reshape of the layer (run by Net::Init) makes the top share the bottom's data: writes
                # into either show in the other before any forward
                self._set_up_source[lp.top[0]] = lp.bottom[0]
                view = self._shared_view(lp.top[0], materialise=False)
                if view is not None:
                    self._tensors[lp.top[0]] = view
            if lp.type == "Input":
                self.inputs.extend(lp.top)
            self._setup_loss_weights(layer, lp, where)
            self._setup_params(layer, lp, where)
        self.outputs = sorted(available)       # Caffe keeps the leftovers in a std::set: sorted by name
        self._finish_params()
        self._backward_plan = backward_plan(self._layer_params, self._layers, self._loss_weights,
                                            self.force_backward)
        self._producer = {t: i for i, lname in enumerate(self._layer_names) for t in self.top_names[lname]}
        # loss tops that a Split reads (a loss layer whose explicit loss_weight InsertSplits moved to the split,
        # keeping Caffe's default 1 on the layer's own top): the Split's backward overwrites their diff with the sum
        # of its tops', so their own weight counts in the forward's loss but seeds no gradient
        self._split_loss_tops = frozenset(t for t in self._loss_weights for lp in self._layer_params
                                          if lp.type == "Split" and t in lp.bottom)
        # per layer and bottom, whether Caffe's backward gives that bottom a diff (its bottom_need_backward: the
        # prototxt's propagate_down, overridden by force_backward; none where the layer's backward does not run):
        # the forward records no gradient for the others
        self._propagate_down = [list(b) if need else [False] * len(b) for b, need in
                                zip(self._backward_plan.bottom_needs, self._backward_plan.layer_needs)]
        # the bottoms that need backward of layers without tops: Caffe's Silence writes them a zero diff, and an
        # HDF5Output's backward leaves theirs as it is; the layers below then back-propagate that diff (0 times an
        # infinite derivative is NaN there too), so backward_loss seeds them with it ({blob: is Silence's})
        self._topless_bottoms = {b: lp.type == "Silence" for lp, flags in zip(self._layer_params, self._propagate_down)
                                 if not lp.top for b, flag in zip(lp.bottom, flags) if flag}
        # the blobs whose diff a whole backward writes (the others keep theirs: outputs, a non-learning layer's)
        self._diff_written = {b for lp, flags in zip(self._layer_params, self._propagate_down)
                              for b, flag in zip(lp.bottom, flags) if flag}
        # Caffe's Net::Backward runs the layers that need backward (need_backward.py); a net with none does
        # nothing on Backward
        self._needs_backward = any(self._backward_plan.layer_needs)
        # Caffe's Layer::Forward runs the layer's Reshape before its Forward_cpu, every time: a layer whose bottoms
        # changed shape re-derives its tops' shapes there, or aborts on the CHECKs it makes. Here a forward
        # re-checks shapes only where they can have changed (nothing while they do not): below a Filter or a
        # Python layer (_shape_followers, at run time, when their bottoms' shapes differ from those last checked),
        # and after a script gave a blob another shape (_unchecked: the other layers, before the forward)
        self._shape_followers = shape_followers(self._layers, self._layer_params)
        self._checked_bottoms = {i: built_bottoms[i] for i in self._shape_followers}
        self._static_layers = frozenset(
            i for i, layer in enumerate(self._layers)
            if i not in self._shape_followers and not layer.shapes_from_data and not layer.is_source)
        self._unchecked: set[int] = set()

    def _setup_loss_weights(self, layer, lp, where) -> None:
        weights = list(lp.loss_weight)
        if weights and len(weights) != len(lp.top):
            raise LayerError(lp.name, lp.type, "loss_weight must be unspecified or given once per top", where)
        if not weights:
            # Caffe: loss layers (type "...Loss") give their first top loss weight 1 by default
            is_loss = layer.is_loss or lp.type.endswith("Loss")
            weights = [1.0 if (is_loss and i == 0) else 0.0 for i in range(len(lp.top))]
        for top, w in zip(lp.top, weights):
            if w != 0:
                self._loss_weights[top] = float(w)

    def _setup_params(self, layer, lp, where) -> None:
        """Caffe's Net::Init and AppendParam for the layer's learnable blobs: which of them the layer computes a
        diff for (its own ParamSpec's lr_mult != 0, or force_backward), and the blob's lr_mult / decay_mult,
        shared ones (`param { name }`) merged over the owner and its sharers (see _Learnable)."""
        n = len(layer.blobs)
        if len(lp.param) > n:
            raise LayerError(lp.name, lp.type, f"has {n} learnable blob(s) but {len(lp.param)} param specs",
                             where)
        propagate = []
        for i in range(n):
            spec = lp.param[i] if i < len(lp.param) else caffe_pb2.ParamSpec()
            p = layer.blobs[i]
            if not p.requires_grad:
                # blobs a layer never learns (BatchNorm's statistics): Caffe gives them `param { lr_mult: 0 }`
                # and refuses a nonzero one, so the solver neither moves nor decays them
                if spec.HasField("lr_mult") and spec.lr_mult != 0:
                    raise LayerError(lp.name, lp.type, f"blob {i} is not learnable (e.g. BatchNorm "
                                     f"statistics); its lr_mult must be 0, got {spec.lr_mult}", where)
                fixed = caffe_pb2.ParamSpec()
                fixed.CopyFrom(spec)
                fixed.lr_mult = 0
                spec = fixed
            propagate.append(p.requires_grad and (spec.lr_mult != 0 or self.force_backward))
            owner = self._shared_params.get(spec.name) if spec.name else None
            if owner is None:
                entry = _Learnable(p, f"{lp.name}[{i}]", lp.name, spec)
                self._learnable_entries.append(entry)
                if spec.name:
                    self._shared_params[spec.name] = entry
                continue
            if tuple(owner.param.shape) != tuple(p.shape) and not (
                    spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE and owner.param.numel() == p.numel()):
                raise LayerError(lp.name, lp.type, f"shared param '{spec.name}' has shape {tuple(p.shape)} here "
                                 f"but {tuple(owner.param.shape)} in layer '{owner.layer}'", where)
            problem = owner.share(spec, lp.name)
            if problem:
                raise LayerError(lp.name, lp.type, problem, where)
            layer.blobs[i] = owner.param
        self._param_propagate.append(propagate)
        if n:
            self.params[lp.name] = [param_blob(self._sync, layer, i) for i in range(n)]

    def _finish_params(self) -> None:
        """After the last layer: each learnable blob gets a gradient if any layer using it computes one (with
        its merged lr_mult), and a layer that uses it without computing one reads it detached."""
        wanted: dict[int, bool] = {}
        for layer, flags in zip(self._layers, self._param_propagate):
            for p, flag in zip(layer.blobs, flags):
                wanted[id(p)] = wanted.get(id(p), False) or flag
        self._learnable = []
        for e in self._learnable_entries:
            e.param.requires_grad_(e.param.requires_grad and wanted[id(e.param)])
            self._learnable.append((e.param, e.lr, e.decay, e.name))
        self._detached_params = {}
        for i, (layer, flags) in enumerate(zip(self._layers, self._param_propagate)):
            frozen = [j for j, (p, flag) in enumerate(zip(layer.blobs, flags)) if p.requires_grad and not flag]
            if frozen:
                self._detached_params[i] = frozen

    def _placeholder(self, shape, real: bool) -> torch.Tensor:
        """Input blobs get real (zeroed) storage; other blobs a storage-less "meta" tensor of the right
        shape, made real only if someone reads it before a forward has produced it (a ResNet-20 at batch
        50 would otherwise allocate gigabytes that the first forward throws away)."""
        device = self.device if real else torch.device("meta")
        return torch.zeros(shape, dtype=self.dtype, device=device)

    def _materialise(self, name: str) -> torch.Tensor:
        """Blob `name`'s tensor, a storage-less placeholder made real: zeros, as Caffe's freshly allocated blobs,
        or a view of the memory of the bottom whose data it shares from set-up on (see _shared_view)."""
        t = self._tensors[name]
        if t.is_meta:
            view = self._shared_view(name, materialise=True)
            t = self._tensors[name] = view if view is not None else torch.zeros(t.shape, dtype=self.dtype,
                                                                                device=self.device)
        return t

    def _shared_view(self, name: str, materialise: bool) -> torch.Tensor | None:
        """A view, at blob `name`'s shape, of the memory of the bottom it shares data with from set-up on
        (Reshape, one-bottom Concat, one-top Slice: Caffe's ShareData in their Reshape); None for other blobs,
        or where that bottom has no storage yet and `materialise` is False. Only on a device whose `.data` is the
        memory itself (the CPU): elsewhere each blob has its own host copy (blob.py), and the top's, uploaded
        before the next operation, would overwrite what the script wrote through the bottom's; there the top
        shares the bottom's data from the first forward on, as before."""
        source = self._set_up_source.get(name)
        if source is None or self.device.type not in Blob.zero_copy_devices:
            return None
        base = self._materialise(source) if materialise else self._tensors[source]
        shape = self._tensors[name].shape
        if base.is_meta or base.numel() != shape.numel() or not base.is_contiguous() or base.dtype != self.dtype:
            return None
        return base.detach().view(shape)

    def _activation_blob(self, name: str) -> Blob:
        def get():
            return self._materialise(name)

        def set_(t):
            if t.shape != self._tensors[name].shape:
                self._unchecked = set(self._static_layers)      # the next forwards check what they run
            self._tensors[name] = t

        def get_grad():
            g = self._grads.get(name)
            shape = self._tensors[name].shape
            if g is not None and g.shape != shape:
                # the data changed shape (a Filter's batch, a reshaped input): Caffe's Blob::Reshape reshapes the
                # diff with it, in the same memory while it fits, else in new zeroed memory
                g = reshaped_memory(g, shape)
                g = self._grads[name] = g if g is not None else torch.zeros(shape, dtype=self.dtype,
                                                                            device=self.device)
            if g is None and name in self._loss_weights:
                # Caffe writes a loss top's weight into its diff when the net is built (SetLossWeights), and
                # backward reads it from there: until a backward or the script writes it, that is its diff
                t = get()
                g = self._grads[name] = torch.full_like(t, self._loss_weights[name])
            return g

        def set_grad(g):
            self._grads[name] = g

        return _ActivationBlob(self._sync, get, set_, get_grad, set_grad, peek=lambda: self._tensors[name])

    # ------------------------------------------------------------------ pycaffe surface
    @property
    def modules(self) -> nn.ModuleList:
        """The layers as torch modules (caffe_torch only)."""
        return self._layers

    def learnable_params(self) -> list[tuple[nn.Parameter, float, float, str]]:
        """(parameter, lr_mult, decay_mult, 'layer[i]') for each distinct learnable blob (caffe_torch)."""
        return list(self._learnable)

    def _index(self, layer_name: str, what: str) -> int:
        try:
            return self._layer_names.index(layer_name)
        except ValueError:
            raise ValueError(f"{what}: no layer named '{layer_name}' in net '{self.name}'") from None

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs) -> dict[str, np.ndarray]:
        """Run layers `start`..`end` (names; default all) after copying `kwargs` into the input blobs;
        return {output blob: data} (the outputs, or `end`'s tops, plus `blobs`)."""
        start_i = self._index(start, "forward(start=)") if start is not None else 0
        end_i = self._index(end, "forward(end=)") if end is not None else len(self._layers) - 1
        outputs = list(self.top_names[end] if end is not None else self.outputs) + list(blobs or [])
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise ValueError(f"input blob arguments {sorted(kwargs)} do not match net inputs "
                                 f"{self.inputs}")
            for name, value in kwargs.items():
                self._set_input(name, value)
        self.forward_range(start_i, end_i, retain_blob_diffs=True)
        return {name: self.blobs[name].data for name in dict.fromkeys(outputs)}

    def _set_input(self, name: str, value) -> None:
        blob = self.blobs[name]
        if isinstance(value, torch.Tensor):
            if tuple(value.shape) != blob.shape:
                raise ValueError(f"input '{name}' has shape {tuple(value.shape)}, blob has {blob.shape}")
            blob.tensor = value
        else:
            value = np.asarray(value)
            if value.shape[:1] != blob.shape[:1]:
                raise ValueError(f"input '{name}' is not batch sized: {value.shape} vs blob {blob.shape}")
            blob.data[...] = value

    def forward_range(self, start: int, end: int, retain_blob_diffs: bool = False) -> torch.Tensor | None:
        """Run layers start..end (indices, inclusive); return the weighted loss tensor (or None). caffe_torch
        only; `retain_blob_diffs` keeps every blob's gradient for `.diff` after backward (costs memory)."""
        self._sync.flush()
        if not self.enable_backward and self._needs_backward:
            # what redoing this forward with a graph needs, should the script call backward (TEST nets)
            self._last_forward = (start, end, retain_blob_diffs, self.layer_states())
        if start > 0:
            self._materialize_bottoms(start, end)
        if self._unchecked:
            self._check_shapes(start, end)
        self._memo.clear()
        try:
            with fast_options.precision_scope(self.fast):
                if self._compiled is not None:
                    loss = self._compiled.run_layers(start, end, retain_blob_diffs)
                else:
                    loss = self._run_layers(start, end, retain_blob_diffs)
        finally:
            self._memo.clear()
        self._sync.refresh("data")          # kept views of out-of-place results follow (nothing if none kept)
        return loss

    def _check_shapes(self, start: int, end: int) -> None:
        """After a script gave a blob another shape: what the Reshape of each layer start..end not yet checked
        since would do at this forward (Caffe's Layer::Forward), in order and before any layer runs, since the
        shapes follow from the blobs' current ones (the followers of a Filter or Python layer are checked as they
        run). A layer whose Reshape aborts in Caffe raises its LayerError; the tops keep their tensors (the
        forward computes them)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(start, end + 1):
            if i not in self._static_layers:
                continue
            lname = self._layer_names[i]
            bottoms = [shapes[b] if b in shapes else tuple(self._tensors[b].shape) for b in self.bottom_names[lname]]
            for t, shp in zip(self.top_names[lname], self._derive_top_shapes(i, bottoms)):
                shapes[t] = tuple(shp)
            self._unchecked.discard(i)

    def _derive_top_shapes(self, i: int, bottom_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Layer i's top shapes for these bottom shapes (its Caffe Reshape), any problem as its LayerError."""
        layer, lp = self._layers[i], self._layer_params[i]
        try:
            tops = layer.top_shapes(bottom_shapes)
        except LayerError:
            raise
        except (ValueError, RuntimeError, IndexError) as exc:
            raise _layer_error(exc, lp, layer._where) from None
        for t, shp in zip(lp.top, tops):
            if any(int(d) < 0 for d in shp):    # Caffe: CHECK_GE(shape[i], 0) in Blob::Reshape
                raise LayerError(lp.name, lp.type, f"top '{t}' would have the negative shape {tuple(shp)} from "
                                 f"bottom shape(s) {bottom_shapes}: the input is too small", layer._where)
        return tops

    def _check_follower(self, i: int, bottoms: list[torch.Tensor]) -> None:
        """Layer i reads a blob whose shape the data decides (below a Filter or a Python layer): its Caffe
        Reshape, when its bottoms' shapes differ from those it was last checked with."""
        shapes = [tuple(b.shape) for b in bottoms]
        if self._checked_bottoms.get(i) != shapes:
            self._derive_top_shapes(i, shapes)
            self._checked_bottoms[i] = shapes

    def _materialize_bottoms(self, start: int, end: int) -> None:
        """A forward from layer `start` reads blobs that no layer of the range computes: one never computed yet
        (a storage-less placeholder) holds zeros, as Caffe's freshly allocated blobs do."""
        for i in range(start, end + 1):
            for b in self.bottom_names[self._layer_names[i]]:
                self._materialise(b)

    def _run_layers(self, start: int, end: int, retain_blob_diffs: bool) -> torch.Tensor | None:
        """The layer loop of forward_range (what caffe_torch.fast.CompiledLayers compiles). A forward leaves the
        blobs' diffs as they are (Caffe's Forward writes data only): `.diff` shows the last backward's until the
        next one."""
        record = self.enable_backward and torch.is_grad_enabled()
        self._first_version: dict[str, torch.Tensor] = {}
        # the version whose gradient is the blob's diff: its first, or the top of the last layer computing in place
        # on it that gives its bottom no diff (Caffe: that layer's backward leaves the top's diff in the blob)
        self._diff_version: dict[str, torch.Tensor] = {}
        # debug_info: every layer's bottoms and tops, for Caffe's [Forward] / [Backward] lines (debug_info.py)
        debug = [] if self.debug_info else None
        keep = retain_blob_diffs or debug is not None
        detached = self._detached_params
        followers = self._shape_followers
        # the leaves the last forward made to collect a blob's diff: this forward makes new ones, as Caffe's
        # backward writes such a diff anew (autograd would add to the old leaf's .grad, every iteration)
        stale_leaves, self._blob_leaves = self._blob_leaves, {}
        detached_bottoms: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}     # id: (tensor, detached)
        with torch.set_grad_enabled(record):
            for name in self.inputs:
                t = self._tensors[name]
                if t.grad_fn is not None:
                    # what an in-place layer made of the input in the last forward: not part of this one's graph
                    # (its .grad is the last backward's)
                    t = self._tensors[name] = t.detach()
                if record and self.force_backward and t.is_floating_point():
                    t = t.detach().requires_grad_(True)
                    self._tensors[name] = t
                self._first_version[name] = self._diff_version[name] = t
            for i in range(start, end + 1):
                layer = self._layers[i]
                lname = self._layer_names[i]
                if layer.is_source:
                    if debug is not None:        # Caffe's Input layer runs (doing nothing) and is logged
                        debug.append((i, [], [self._tensors[t] for t in self.top_names[lname]]))
                    continue
                if self._replaying and not self.top_names[lname]:
                    continue
                bottoms = []
                for b, prop in zip(self.bottom_names[lname], self._propagate_down[i]):
                    t = self._tensors[b]
                    if prop and record and (not t.requires_grad or stale_leaves.get(b) is t) and \
                            t.is_floating_point():
                        # Caffe gives this bottom a diff though nothing before it learns (a data layer's top under
                        # force_backward, an input with propagate_down: true): a leaf that collects it
                        leaf = self._tensors[b] = self._blob_leaves[b] = t.detach().requires_grad_(True)
                        if self._first_version.get(b) is t:
                            self._first_version[b] = leaf
                        if self._diff_version.get(b) is t:
                            self._diff_version[b] = leaf
                        t = leaf
                    if self._sync.viewed and b in self.top_names[lname] and t.is_floating_point():
                        # in place on a blob a script keeps a view of: after this forward the view's memory gets
                        # the top (blob.py's refresh), so the layer must not hold that memory as its saved input
                        # (Caffe's in-place layers keep what their backward needs, e.g. PReLU's bottom_memory_)
                        clone = t.clone()
                        if not record and self._first_version.get(b) is t:
                            self._first_version[b] = clone     # what a layer-by-layer backward reads (pycaffe_net)
                        t = clone
                    if not prop and t.requires_grad:
                        # one detached tensor per tensor, the same object for every layer reading it (the split
                        # tops of a fan-out included), as a blob that needs no gradient is: the tensor itself
                        # (Layer.memo keys on it)
                        seen = detached_bottoms.get(id(t))
                        if seen is None:
                            seen = detached_bottoms[id(t)] = (t, t.detach())
                        t = seen[1]
                    bottoms.append(t)
                if i in followers:
                    self._check_follower(i, bottoms)
                if layer.is_split and not keep:
                    # implicit fan-out: the readers get the bottom tensor itself (Caffe's split tops share its
                    # data) and autograd sums their gradients; the per-top diffs are not kept, so nothing differs
                    for tname in self.top_names[lname]:
                        self._tensors[tname] = bottoms[0]
                    continue
                if i in detached:
                    out = self._call_detached(layer, detached[i], bottoms)
                else:
                    out = layer(*bottoms) if self.layer_call is None else self.layer_call(i, layer, bottoms)
                if layer.runs_user_code:
                    self._memo.clear()
                if isinstance(out, torch.Tensor):
                    out = (out,)
                if layer.keeps_tops:
                    out = tuple(self._tensors[t].detach() if keep and not self._tensors[t].is_meta else o
                                for t, o, keep in zip(self.top_names[lname], out, layer.keeps_tops))
                for tname, t in zip(self.top_names[lname], out):
                    if tname not in self.bottom_names[lname]:
                        self._first_version[tname] = self._diff_version[tname] = t
                    elif not self._propagate_down[i][self.bottom_names[lname].index(tname)]:
                        self._diff_version[tname] = t
                    self._tensors[tname] = t
                    if record and keep and t.requires_grad:
                        t.retain_grad()
                if debug is not None:
                    debug.append((i, bottoms, out))
                    for t in bottoms:
                        if record and t.requires_grad:
                            t.retain_grad()
        # the blobs' tensors as this forward left them, for backward: a kept view makes the next operation swap
        # a blob's tensor for its (graph-less) memory (caffe_torch/blob.py), and the graph must outlive that
        self._graph_tensors = dict(self._tensors) if record else {}
        loss = self._weighted_sum(self._loss_weights)
        self._loss = loss
        self._debug_record = debug
        if debug is not None:
            forward_debug_info(self, debug)
        return loss

    def _weighted_sum(self, weights: dict[str, float], tensors=None) -> torch.Tensor | None:
        """Caffe's loss: the sum over the tops of (top values summed) x loss weight; None without loss tops.
        `tensors`: the blobs to read (default the net's current tensors)."""
        tensors = self._tensors if tensors is None else tensors
        loss = None
        for name, w in weights.items():
            term = tensors.get(name, self._tensors[name]).sum()
            if w != 1:                          # (x * 1 is x: one op less per step and per backward)
                term = term * w
            loss = term if loss is None else loss + term
        return loss

    @staticmethod
    def _call_detached(layer, indices: list[int], bottoms):
        """Run `layer` reading its blobs `indices` detached: it shares them with a layer that computes their
        diff, but its own ParamSpec has lr_mult 0, so in Caffe it adds nothing to that diff."""
        blobs = {f"blobs.{j}": layer.blobs[j].detach() for j in indices}
        return torch.func.functional_call(layer, blobs, tuple(bottoms))

    def loss_value(self) -> float:
        """The weighted loss of the last forward (Caffe's Net::Forward return value)."""
        return 0.0 if self._loss is None else float(self._loss.detach())

    def refuse_backward(self, start: int = -1, end: int = 0) -> None:
        """Raise what Caffe's Net::Backward aborts on when it runs layers start..end (need_backward.py)."""
        start = len(self._layers) - 1 if start < 0 else start
        for i, why in reversed(self._backward_plan.refusals):
            if end <= i <= start:
                raise LayerError(self._layer_names[i], self._layer_params[i].type, why)

    def backward_loss(self, extra=None, retain_blob_diffs: bool = False) -> None:
        """caffe_torch only: autograd from the last forward's loss tops (and `extra` {blob: diff}). Each loss top
        is seeded with its diff (Caffe's backward reads it there: its loss weight unless the script wrote
        another), or with the diff `extra` gives it."""
        with fast_options.precision_scope(self.fast):
            if self._compiled is not None:
                return self._compiled.backward_loss(extra, retain_blob_diffs)
            return self._backward_loss(extra, retain_blob_diffs)

    def _backward_loss(self, extra, retain_blob_diffs: bool) -> None:
        """backward_loss, interpreted (what a compiled forward's backward runs too: autograd through its graph)."""
        self.refuse_backward()
        self._layer_inputs.clear()          # pycaffe_net's records of the forward go with its graph
        self._sync.flush()
        if extra is None:
            extra = self._output_seeds()
        roots, seeds = [], []
        written = {n: g for n, w in self._loss_weights.items()
                   if (g := self._grads.get(n)) is not None and not bool((g == w).all())}
        if not written and not (extra and set(extra) & set(self._loss_weights)):
            root = self._loss          # every loss top at its loss weight, but those a Split reads (see __init__)
            if self._split_loss_tops and root is not None:
                root = self._weighted_sum({n: w for n, w in self._loss_weights.items()
                                           if n not in self._split_loss_tops}, self._graph_tensors)
            if root is not None and root.requires_grad:
                roots.append(root)
                seeds.append(torch.ones_like(root))
        else:
            for name, w in self._loss_weights.items():
                t = self._graph_tensors.get(name, self._tensors[name])
                if extra and name in extra or not t.requires_grad or name in self._split_loss_tops:
                    continue
                g = written.get(name)
                roots.append(t)
                seeds.append(g.to(t, copy=True) if g is not None and g.shape == t.shape else torch.full_like(t, w))
        for name, diff in (extra or {}).items():
            t = self._graph_tensors.get(name, self._tensors[name])
            roots.append(t)
            # a copy: autograd may hand a seed (or a view of it) on to a param as its .grad, which the update then
            # rewrites; a seed that is a blob's diff or the script's array must not change with it
            seeds.append(torch.as_tensor(np.asarray(diff) if not isinstance(diff, torch.Tensor) else diff,
                                         dtype=t.dtype, device=t.device).reshape(t.shape).clone())
        for name, silenced in self._topless_bottoms.items():
            t = self._graph_tensors.get(name, self._tensors[name])
            kept = None if silenced else self._grads.get(name)
            roots.append(t)
            seeds.append(kept.to(t, copy=True) if kept is not None and kept.shape == t.shape else torch.zeros_like(t))
        roots_seeds = [(r, s) for r, s in zip(roots, seeds) if r.requires_grad]
        if not roots_seeds:
            if self._needs_backward and self._last_forward is not None and torch.is_grad_enabled():
                self._redo_forward_with_graph()
                return self.backward_loss(extra, retain_blob_diffs)
            return          # Caffe: no layer needs backward, Backward computes nothing

        keep = retain_blob_diffs or self._debug_record is not None
        if keep:
            # the diffs this backward replaces are dropped first, so that two sets never live at once
            for name in self._diff_written:
                self._grads.pop(name, None)
        torch.autograd.backward([r for r, _ in roots_seeds], [s for _, s in roots_seeds])
        if keep:
            for name, t in self._diff_version.items():
                if t.grad is not None:
                    self._grads[name] = t.grad
        if self._debug_record is not None:
            backward_debug_info(self, self._debug_record)
            self._debug_record = None
        self._sync.refresh("diff")

    def _output_seeds(self) -> dict[str, torch.Tensor]:
        """The diffs Caffe's Net::Backward reads from the outputs whose layer it runs (need_backward.py): what a
        script left there, zeros if nothing (the layer's backward runs all the same). Loss tops apart:
        backward_loss seeds them."""
        seeds = {}
        for name in self.outputs:
            i = self._producer.get(name)
            if name in self._loss_weights or i is None or not self._backward_plan.layer_needs[i]:
                continue
            g = self._grads.get(name)
            seeds[name] = g if g is not None else torch.zeros_like(self._tensors[name])
        return seeds

    def _redo_forward_with_graph(self) -> None:
        """A TEST net's first backward: record from now on, and redo the last forward with a graph (from the
        layer counters it started with; layers without bottoms (sources) keep the tops they gave)."""
        start, end, retain, states = self._last_forward
        self.enable_backward = True
        self._last_forward = None
        self.set_layer_states(states)
        while start <= end and not self.bottom_names[self._layer_names[start]]:
            start += 1
        # layers without tops (HDF5Output, Silence) add nothing to the graph, and an HDF5Output must not write the
        # batch a second time
        self._replaying = True
        try:
            with rerunning(self._layers[start:end + 1]):
                self.forward_range(start, end, retain)
        finally:
            self._replaying = False

    def clear_param_diffs(self) -> None:
        """Caffe's Net::ClearParamDiffs (caffe_torch only; the solver calls it at the start of each step): every
        learnable blob's diff becomes zero, and a host copy of it read since is not uploaded."""
        for p, *_ in self._learnable:
            clear_param_diff(self._sync, p)

    def reshape(self) -> None:
        """Propagate the input blobs' shapes through the net (after `blob.reshape`)."""
        self._sync.flush()
        shapes = {n: tuple(self._tensors[n].shape) for n in self.inputs}
        for i, (layer, lname) in enumerate(zip(self._layers, self._layer_names)):
            if layer.is_source:
                # Caffe's InputLayer::Reshape does nothing: its tops keep the shapes the user gave them
                for t in self.top_names[lname]:
                    shapes[t] = tuple(self._tensors[t].shape)
                continue
            bottom_shapes = [shapes[b] for b in self.bottom_names[lname]]
            for t, shp in zip(self.top_names[lname], self._derive_top_shapes(i, bottom_shapes)):
                shapes[t] = tuple(shp)
                if tuple(self._tensors[t].shape) != tuple(shp):
                    bottom = self._tensors[self.bottom_names[lname][0]] if layer.is_split else None
                    if bottom is not None and not bottom.is_meta and tuple(bottom.shape) == tuple(shp):
                        # a Split top keeps sharing its bottom's data (Caffe's ShareData), also for a forward
                        # that starts after the Split
                        self._tensors[t] = bottom.detach().view_as(bottom)
                    else:
                        self._tensors[t] = self._placeholder(shp, real=t in self.inputs)
                        # a Reshape's, one-bottom Concat's, one-top Slice's top shares its bottom's data again
                        view = self._shared_view(t, materialise=False)
                        if view is not None:
                            self._tensors[t] = view
                    self._grads.pop(t, None)
        self._unchecked.clear()          # every layer's shapes checked (the Net::Reshape Caffe runs)

    def share_with(self, other: "Net") -> None:
        """Use `other`'s learnable blobs' data for every same-named layer (Caffe's ShareTrainedLayersWith:
        ShareData, so each net keeps its own diffs: a backward of this net leaves `other`'s diffs alone)."""
        # one group: an operation of either net uploads a host copy of a shared blob read through the other
        self._sync.join(other._sync)
        mine = dict(zip(self._layer_names, self._layers))
        for lname, src_layer in zip(other._layer_names, other._layers):
            dst = mine.get(lname)
            if dst is None or not len(src_layer.blobs):
                continue
            if len(dst.blobs) != len(src_layer.blobs):
                raise ValueError(f"share_with: layer '{lname}' has {len(dst.blobs)} blobs here and "
                                 f"{len(src_layer.blobs)} in the source net")
            for i, p in enumerate(src_layer.blobs):
                if tuple(dst.blobs[i].shape) != tuple(p.shape):
                    raise ValueError(f"share_with: layer '{lname}' blob {i} shape {tuple(dst.blobs[i].shape)}"
                                     f" != {tuple(p.shape)}")
                if dst.blobs[i] is not p:
                    share_param_data(dst.blobs[i], p)

    def copy_from(self, path) -> None:
        """Copy blobs from a .caffemodel into same-named layers (Caffe's CopyTrainedLayersFrom)."""
        from .weights import copy_weights, read_caffemodel

        self._sync.flush()
        copy_weights(self, read_caffemodel(path), str(path))

    def save(self, path) -> None:
        """Write the net's weights as a binary .caffemodel (atomically)."""
        from .weights import net_to_wire, write_proto_atomic

        self._sync.flush()
        write_proto_atomic(net_to_wire(self), path)

    # ------------------------------------------------------------------ layer state (snapshots)
    def layer_states(self) -> dict[str, int]:
        return {n: s for n, m in zip(self._layer_names, self._layers) if (s := m.get_state()) is not None}

    def set_layer_states(self, states: dict[str, int]) -> None:
        mine = dict(zip(self._layer_names, self._layers))
        for name, value in states.items():
            if name not in mine:
                raise ValueError(f"snapshot has state for layer '{name}', which net '{self.name}' lacks")
            mine[name].set_state(int(value))

    def layer_rng_states(self) -> dict[str, bytes]:
        """{layer: state of its own random generator} (Dropout's masks), saved in a .solverstate."""
        return {n: s for n, m in zip(self._layer_names, self._layers) if (s := m.get_rng_state()) is not None}

    def set_layer_rng_states(self, states: dict[str, bytes]) -> None:
        mine = dict(zip(self._layer_names, self._layers))
        for name, value in states.items():
            if name not in mine:
                raise ValueError(f"snapshot has a generator state for layer '{name}', which net '{self.name}' "
                                 "lacks")
            mine[name].set_rng_state(value)

    def __repr__(self) -> str:
        return f"<caffe_torch.Net '{self.name}' phase={'TRAIN' if self.phase == TRAIN else 'TEST'} " \
               f"{len(self._layers)} layers on {self.device}>"
