"""From a prototxt + .caffemodel to an export plan (the layers the outputs need, with their shapes), then to an
ONNX graph or a TorchScript module.

1. The net is read as caffe_torch reads it in the exported phase (include/exclude rules applied), the data
   layers replaced by Input layers (their tops become the graph's inputs: shapes from --input, or from the
   layer's own fields for Input / DummyData / MemoryData), and built by caffe_torch with the weights.
2. The outputs (default: the net's outputs, as Caffe defines them) decide which layers are exported: those
   they depend on. Every such layer needs an export rule; one without is refused with one line naming it.
   Layers that no output depends on are listed as left out, never silently.
3. Shapes come from caffe_torch's own shape rules, at the given input shapes and again with each dynamic input
   axis of size d at 2d + 1: the top axes that change are the dynamic ones.
"""

import io
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..errors import CaffeError, LayerError
from ..layers.base import known_types
from ..net import Net, filter_layers, upgrade_inputs
from ..proto import caffe_pb2
from ..prototxt import read_net
from .graph import Graph
from .registry import DATA_LAYERS, ExportError, LayerExport, onnx_rule_for, refusal_error, torch_rule_for

log = logging.getLogger("caffe_torch.export")

_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


@dataclass
class Step:
    """One exported layer: its index in the net, blob names and shapes (see LayerExport)."""

    index: int
    layer: object
    where: str
    bottoms: list[str]
    tops: list[str]
    in_shapes: list[tuple] = field(default_factory=list)
    out_shapes: list[tuple] = field(default_factory=list)
    in_dynamic: list[frozenset] = field(default_factory=list)
    out_dynamic: list[frozenset] = field(default_factory=list)


@dataclass
class Plan:
    net: Net
    inputs: list[str]                       # blob names, in the net's order
    input_shapes: dict[str, tuple]
    input_dynamic: dict[str, frozenset]
    outputs: list[str]
    steps: list[Step]
    left_out: list[tuple[str, str]]         # (layer, type) that no output needs


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'NAME=N,C,H,W' -> (NAME, (N, C, H, W))."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise ExportError(f"--input {text!r}: expected NAME=N,C,H,W (positive integers)")
    return name, shape


def _data_shapes(lp, given: dict[str, tuple], where: str) -> list[tuple]:
    """The shapes of a data layer's tops: --input, else the layer's own fields where they say them."""
    shapes = []
    for i, top in enumerate(lp.top):
        if top in given:
            shapes.append(given[top])
        elif lp.type == "Input" and lp.input_param.shape:
            s = lp.input_param.shape[i if len(lp.input_param.shape) > 1 else 0]
            shapes.append(tuple(int(d) for d in s.dim))
        elif lp.type == "DummyData" and lp.dummy_data_param.shape:
            s = lp.dummy_data_param.shape[i if len(lp.dummy_data_param.shape) > 1 else 0]
            shapes.append(tuple(int(d) for d in s.dim))
        elif lp.type == "MemoryData":
            mp = lp.memory_data_param
            shapes.append((mp.batch_size, mp.channels, mp.height, mp.width) if i == 0 else (mp.batch_size,))
        elif i > 0 and shapes:
            shapes.append((shapes[0][0],))            # a label top: one value per item
        else:
            raise ExportError(f"{where}: layer '{lp.name}' (type {lp.type}): its top '{top}' becomes a graph "
                              f"input; give its shape with --input {top}=N,C,H,W")
    return shapes


def read_for_export(prototxt: str, phase: str, given: dict[str, tuple]):
    """The NetParameter to build (data layers as Input layers) and {layer name: 'file:line'}."""
    net_param, src = read_net(prototxt)
    upgrade_inputs(net_param, src)
    state = caffe_pb2.NetState(phase=_PHASES[phase])
    where = {}
    kept = filter_layers(net_param, state, src)
    unknown = set(given) - {t for _, lp in kept if lp.type in DATA_LAYERS for t in lp.top}
    if unknown:
        raise ExportError(f"--input names {sorted(unknown)}, which no data layer of {prototxt} produces in "
                          f"phase {phase}")
    for file_index, lp in kept:
        w = where[lp.name] = src.where(file_index)
        if lp.type not in known_types():
            raise refusal_error(lp.name, lp.type, w, "caffe_torch does not implement this type (types it "
                                f"implements: {', '.join(known_types())})")
        if lp.type in DATA_LAYERS:
            shapes = _data_shapes(lp, given, w)
            new = caffe_pb2.LayerParameter(name=lp.name, type="Input", top=list(lp.top))
            new.include.extend(lp.include)
            new.exclude.extend(lp.exclude)
            for s in shapes:
                new.input_param.shape.add().dim.extend(s)
            lp.CopyFrom(new)
    return net_param, where


def build_net(prototxt: str, weights: str | None, phase: str = "TEST", inputs: dict | None = None):
    """caffe_torch's net for export (data layers replaced by inputs) with the weights; (net, where)."""
    net_param, where = read_for_export(prototxt, phase, dict(inputs or {}))
    try:
        net = Net(prototxt, phase=_PHASES[phase], net_param=net_param)
    except LayerError as exc:
        message = str(exc).split("): ", 1)[-1]
        raise ExportError(f"{where.get(exc.layer_name, prototxt)}: layer '{exc.layer_name}' (type "
                          f"{exc.layer_type}): {message}") from None
    except CaffeError as exc:
        raise ExportError(str(exc)) from None
    if weights is not None:
        try:
            net.copy_from(weights)
        except (CaffeError, OSError) as exc:
            raise ExportError(str(exc) if str(weights) in str(exc) else f"{weights}: {exc}") from None
        _warn_missing(net, weights)
    return net, where


def _warn_missing(net: Net, weights: str) -> None:
    from ..weights import read_caffemodel

    stored = read_caffemodel(weights)
    have = {lp.name for lp in stored.layer} | {lp.name for lp in stored.layers}
    missing = [n for n in net.params if n not in have]
    if missing:
        log.warning("%s has no weights for layer(s) %s: they keep their fillers' values (as in Caffe)", weights,
                    ", ".join(missing))


def _propagate(net: Net, input_shapes: dict[str, tuple]) -> list[list[tuple] | None]:
    """Top shapes of every layer (caffe_torch's rules) from the input shapes; None where a layer refuses them."""
    shapes = dict(input_shapes)
    result = []
    for layer, name in zip(net.modules, net._layer_names):
        tops = net.top_names[name]
        if layer.is_source:
            out = [shapes[t] for t in tops]
        else:
            bottoms = [shapes.get(b) for b in net.bottom_names[name]]
            out = None
            if all(b is not None for b in bottoms):
                try:
                    out = [tuple(int(d) for d in s) for s in layer.top_shapes(bottoms)]
                except (CaffeError, ValueError, RuntimeError, IndexError):
                    out = None
        result.append(out)
        for j, t in enumerate(tops):
            shapes[t] = out[j] if out is not None else None
    return result


def make_plan(net: Net, where: dict[str, str], outputs: list[str] | None = None,
              dynamic: dict[str, frozenset] | None = None, stop_before: str | None = None) -> Plan:
    """The layers that `outputs` (default: the net's outputs) need, with shapes; `dynamic` gives, per input
    blob, its axes of dynamic size. `stop_before`: build the plan only from layers before this one."""
    names = list(net._layer_names)
    end = names.index(stop_before) if stop_before is not None else len(names)
    outputs = list(outputs or net.outputs)
    for o in outputs:
        if o not in net.blobs:
            raise ExportError(f"--output {o!r}: the net has no such blob (blobs: {', '.join(net.blobs)})")
    # who wrote the version of each blob that each layer reads
    writer: dict[str, int] = {}
    reads: list[list[int | None]] = []
    for i in range(end):
        name = names[i]
        reads.append([writer.get(b) for b in net.bottom_names[name]])
        for t in net.top_names[name]:
            writer[t] = i
    needed: set[int] = set()
    stack = [writer[o] for o in outputs if o in writer]
    missing = [o for o in outputs if o not in writer]
    if missing:
        raise ExportError(f"output blob(s) {missing} are produced only at or after layer '{stop_before}'")
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(j for j in reads[i] if j is not None)
    # the graph inputs: the tops of needed source layers that a needed layer reads or an output names
    read = {b for i in needed for b, j in zip(net.bottom_names[names[i]], reads[i]) if j is not None
            and net.modules[j].is_source} | set(outputs)
    inputs = [t for i in sorted(needed) if net.modules[i].is_source for t in net.top_names[names[i]] if t in read]
    sources = [t for i in range(end) if net.modules[i].is_source for t in net.top_names[names[i]]]
    all_shapes = {t: tuple(net.blobs[t].shape) for t in sources}
    dynamic = {t: frozenset((dynamic or {}).get(t, ())) for t in sources}
    shapes_a = _propagate(net, all_shapes)
    # 2d + 1: a size that no chain of strided layers maps back onto the original's
    grown = {t: tuple(2 * d + 1 if a in dynamic[t] else d for a, d in enumerate(s)) for t, s in all_shapes.items()}
    shapes_b = _propagate(net, grown) if any(dynamic.values()) else shapes_a
    _propagate(net, all_shapes)              # leave shape caches (SPP) at the export's shapes
    input_shapes = {t: all_shapes[t] for t in inputs}
    steps, left_out = [], []
    cur_a: dict[str, tuple] = dict(all_shapes)
    cur_dyn: dict[str, frozenset] = dict(dynamic)
    for i in range(end):
        name, layer = names[i], net.modules[i]
        if i not in needed:
            if not layer.is_source:
                left_out.append((name, layer.type_name))
            continue
        if layer.is_source:
            continue
        step = Step(i, layer, where.get(name, ""), list(net.bottom_names[name]), list(net.top_names[name]))
        if shapes_a[i] is None or shapes_b[i] is None:
            raise refusal_error(name, layer.type_name, step.where, "its output shape cannot follow a dynamic "
                                "input size (it fixes a size the input's dynamic axis changes); export with "
                                "fixed shapes")
        step.in_shapes = [cur_a[b] for b in step.bottoms]
        step.in_dynamic = [cur_dyn[b] for b in step.bottoms]
        step.out_shapes = list(shapes_a[i])
        step.out_dynamic = [frozenset(a for a, (p, q) in enumerate(zip(sa, sb)) if p != q)
                            for sa, sb in zip(shapes_a[i], shapes_b[i])]
        for t, s, d in zip(step.tops, step.out_shapes, step.out_dynamic):
            cur_a[t], cur_dyn[t] = s, d
        steps.append(step)
    return Plan(net, inputs, input_shapes, {t: dynamic[t] for t in inputs}, outputs, steps, left_out)


def deploy_net(plan: Plan) -> "caffe_pb2.NetParameter":
    """What the plan exports as a Caffe deploy net: an Input layer for its inputs (at the export's shapes) and
    the exported layers as they were read (phase rules dropped), the Split layers Caffe inserts left out."""
    layers = []
    inserted: dict[str, str] = {}          # a top of an inserted Split -> the blob it copies
    for step in plan.steps:
        if step.layer.param.type == "Split" and all("_split_" in t for t in step.tops):
            inserted.update({t: inserted.get(step.bottoms[0], step.bottoms[0]) for t in step.tops})
            continue
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(step.layer.param)
        del lp.include[:], lp.exclude[:]
        lp.ClearField("phase")
        lp.bottom[:] = [inserted.get(b, b) for b in lp.bottom]
        layers.append(lp)
    read = {b for lp in layers for b in lp.bottom} | set(plan.outputs)
    param = caffe_pb2.NetParameter(name=plan.net.name)
    inputs = [t for t in plan.inputs if t in read]
    inp = param.layer.add(name="input", type="Input", top=inputs)
    for t in inputs:
        inp.input_param.shape.add().dim.extend(plan.input_shapes[t])
    param.layer.extend(layers)
    return param


def layer_export(g: Graph | None, step: Step, x: list[str], tops: list[str]) -> LayerExport:
    return LayerExport(g, step.layer, step.where, x, step.in_shapes, step.out_shapes, step.in_dynamic,
                       step.out_dynamic, tops)


def emit_steps(g: Graph, steps: list[Step], current: dict[str, str], keep_names: set[str]) -> dict[str, str]:
    """Write the steps' nodes; `current` maps each blob to the ONNX tensor that holds it now (updated and
    returned). A blob's last version gets the blob's name, earlier (in-place) versions `<layer>/<blob>`;
    `keep_names` are names taken already (graph inputs)."""
    last = {}
    for k, step in enumerate(steps):
        for t in step.tops:
            last[t] = k
    for k, step in enumerate(steps):
        name = step.layer.param.name
        tops = [t if last[t] == k and t not in keep_names else f"{name}/{t}" for t in step.tops]
        rule = onnx_rule_for(step.layer.param.type, name, step.where)
        e = layer_export(g, step, [current[b] for b in step.bottoms], tops)
        produced = rule(e)
        if len(produced) != len(step.tops):
            raise AssertionError(f"export rule of {step.layer.param.type} gave {len(produced)} tops for "
                                 f"{len(step.tops)}")
        for t, onnx_name in zip(step.tops, produced):
            current[t] = onnx_name
    return current


def _dims(shape, dyn, blob: str) -> list:
    return [("N" if a == 0 else f"{blob}_{a}") if a in dyn else d for a, d in enumerate(shape)]


def output_name(plan: Plan, blob: str) -> str:
    """The graph output of `blob`: its name, or `<blob>_out` for an input blob that a layer rewrote in place
    (ONNX needs distinct names for the two)."""
    rewritten = blob in plan.inputs and any(blob in step.tops for step in plan.steps)
    return f"{blob}_out" if rewritten else blob


def to_onnx(plan: Plan, opset: int, name: str):
    """The ONNX model of a plan: inputs and outputs named after the Caffe blobs."""
    from onnx import TensorProto, checker

    g = Graph(opset)
    current = OrderedDict()
    for t in plan.inputs:
        g.add_input(t, TensorProto.FLOAT, _dims(plan.input_shapes[t], plan.input_dynamic[t], t))
        current[t] = t
    emit_steps(g, plan.steps, current, set(plan.inputs))
    final = {t: (plan.input_shapes[t], plan.input_dynamic[t]) for t in plan.inputs}
    for step in plan.steps:
        for t, s, d in zip(step.tops, step.out_shapes, step.out_dynamic):
            final[t] = (s, d)
    for o in plan.outputs:
        name = output_name(plan, o)
        if current[o] != name:
            g.op("Identity", [current[o]], name, [name])
        shape, dyn = final[o]
        g.add_output(name, TensorProto.FLOAT, _dims(shape, dyn, o))
    model = g.model(name, doc=f"exported by caffe_torch.export from Caffe net '{name}'")
    checker.check_model(model, full_check=True)
    return model


class ExportedNet(torch.nn.Module):
    """The plan's layers as one torch module (forward(*inputs) -> tuple of outputs), for TorchScript: each layer
    caffe_torch's own module, or its `@torch_rule` TEST-time forward."""

    def __init__(self, plan: Plan):
        super().__init__()
        self.inputs, self.outputs = list(plan.inputs), list(plan.outputs)
        self.wiring = []
        mods = []
        for step in plan.steps:
            make = torch_rule_for(step.layer.param.type)
            mods.append(make(layer_export(None, step, step.bottoms, step.tops)) if make else step.layer)
            self.wiring.append((step.bottoms, step.tops))
        self.steps = torch.nn.ModuleList(mods)

    def forward(self, *inputs):
        blobs = dict(zip(self.inputs, inputs))
        for mod, (bottoms, tops) in zip(self.steps, self.wiring):
            out = mod(*[blobs[b] for b in bottoms])
            if isinstance(out, torch.Tensor):
                out = (out,)
            for t, v in zip(tops, out):
                blobs[t] = v
        return tuple(blobs[o] for o in self.outputs)


def to_torchscript(plan: Plan):
    """torch.jit.trace of ExportedNet at the plan's input shapes (zeros: the trace records operations, not values,
    and 0 is a valid label or id for the layers that check theirs)."""
    import warnings

    module = ExportedNet(plan).eval()
    example = tuple(torch.zeros(plan.input_shapes[t], dtype=plan.net.dtype) for t in plan.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")       # torch.jit's deprecation notices and TracerWarnings
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
        # a copy (the trace shares the net's parameters) whose outputs need no gradient
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        script = torch.jit.load(buffer)
    for p in script.parameters():
        p.requires_grad_(False)
    return script
