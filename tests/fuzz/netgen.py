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
recorded per layer in `GenNet.fatal_backward`: no extra loss weight is put on such a layer (its backward would
abort); force_backward nets still meet them, and both engines must then refuse the backward alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from caffe_torch.proto import caffe_pb2

from .builder import IGNORES_PROPAGATE_DOWN, NetGen
from .makers import LAYER_MAKERS


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
        # nor on an in-place top (Caffe's in-place backward overwrites the weight it keeps in the diff:
        # caffe_facts QUIRKS in-place-loss-weight)
        in_place = lp.bottom and lp.top[0] == lp.bottom[0]
        if not lp.loss_weight and g.chance(0.15) and lp.name not in g.fatal_backward and not in_place and \
                not set(lp.top) & in_place_later[i]:
            lp.loss_weight.extend(float(g.choice((0.0, 1.0, 0.5, 2.0))) for _ in lp.top)
        if lp.bottom and lp.type not in IGNORES_PROPAGATE_DOWN and g.chance(0.15):
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
