"""Random invalid nets and solvers: a valid case with one illegal field combination.

Each mutation names the layer and the field it breaks. Caffe must refuse the result (a CHECK or LOG(FATAL)
abort) and caffe_torch must raise its one-line error naming that layer and that field (compare.py); where the
mutation turns out legal for Caffe after all (e.g. a group that happens to divide the channels), the case is
simply compared as a valid one.
"""

from __future__ import annotations

import copy

import numpy as np
from google.protobuf import text_format

from caffe_torch.proto import caffe_pb2

from .program import Program


def _kept(net):
    """The layers without NetStateRules: a mutation of one the net's state drops would vanish with it."""
    return [lp for lp in net.layer if not len(lp.include) and not len(lp.exclude)]


def _layers(net, *types):
    return [lp for lp in _kept(net) if lp.type in types]


def _conv(rng, net):
    lps = _layers(net, "Convolution", "Deconvolution")
    if not lps:
        return None
    lp = lps[int(rng.integers(len(lps)))]
    cp = lp.convolution_param
    k = int(rng.integers(6))
    if k == 0:
        cp.group, cp.num_output = 7, 7
        return lp, "group"
    if k == 1:
        cp.num_output = cp.group * 2 + 1 if cp.group > 1 else 0
        return lp, "num_output"
    if k == 2:
        cp.kernel_h, cp.kernel_w = 1, 1
        if not len(cp.kernel_size):
            cp.kernel_size.append(1)
        return lp, "kernel"
    if k == 3:
        cp.pad_h, cp.pad_w = 0, 0
        if not len(cp.pad):
            cp.pad.append(0)
        return lp, "pad"
    if k == 4:
        cp.ClearField("stride")
        cp.stride.append(0)
        cp.ClearField("stride_h")
        cp.ClearField("stride_w")
        return lp, "stride"
    cp.ClearField("dilation")
    cp.dilation.extend([1] * 7)
    return lp, "dilation"


def _pooling(rng, net):
    lps = _layers(net, "Pooling")
    if not lps:
        return None
    lp = lps[int(rng.integers(len(lps)))]
    pp = lp.pooling_param
    k = int(rng.integers(5))
    if k == 0:
        pp.global_pooling = True
        pp.kernel_size = 2
        return lp, "global_pooling"
    if k == 1:
        pp.ClearField("pad_h"), pp.ClearField("pad_w")
        pp.pad = 3
        pp.ClearField("kernel_h"), pp.ClearField("kernel_w")
        pp.kernel_size = 2
        return lp, "pad"
    if k == 2:
        pp.ClearField("kernel_size")
        pp.kernel_h = 2
        pp.ClearField("kernel_w")
        return lp, "kernel"
    if k == 3:
        pp.pad, pp.pad_h, pp.pad_w = 0, 0, 0
        return lp, "pad"
    pp.ClearField("kernel_size"), pp.ClearField("kernel_h"), pp.ClearField("kernel_w")
    pp.global_pooling = False
    return lp, "kernel"


def _axis(rng, net):
    fields = {"InnerProduct": "inner_product_param", "Concat": "concat_param", "Slice": "slice_param",
              "Softmax": "softmax_param", "Flatten": "flatten_param", "Reduction": "reduction_param",
              "Tile": "tile_param", "Scale": "scale_param", "Bias": "bias_param", "ArgMax": "argmax_param",
              "Crop": "crop_param", "Accuracy": "accuracy_param", "SoftmaxWithLoss": "softmax_param",
              "Reshape": "reshape_param"}
    lps = [lp for lp in _kept(net) if lp.type in fields]
    if not lps:
        return None
    lp = lps[int(rng.integers(len(lps)))]
    msg = getattr(lp, fields[lp.type])
    msg.axis = int(rng.choice((7, -8)))
    if lp.type == "Concat":
        msg.ClearField("concat_dim")
    if lp.type == "Slice":
        msg.ClearField("slice_dim")
    return lp, "axis"


def _counts(rng, net):
    """loss_weight / propagate_down / param specs in a number the layer's tops, bottoms, blobs cannot take."""
    lps = [lp for lp in _kept(net) if lp.type != "Input" and lp.top]
    if not lps:
        return None
    lp = lps[int(rng.integers(len(lps)))]
    k = int(rng.integers(3))
    read = {b for other in net.layer if other is not lp for b in other.bottom}
    # a weighted top another layer reads gets a Split, and Caffe's InsertSplits then clears the layer's
    # loss_weight (the Split's first top carries the weight): any count would pass, so it is no mutation
    if k == 0 and not set(lp.top) & read:
        lp.ClearField("loss_weight")
        lp.loss_weight.extend([1.0] * (len(lp.top) + 1))
        return lp, "loss_weight"
    if k == 1 and lp.bottom:
        lp.ClearField("propagate_down")
        lp.propagate_down.extend([True] * (len(lp.bottom) + 1))
        return lp, "propagate_down"
    for _ in range(len(lp.param), 5):
        lp.param.add()
    return lp, "param"


def _wiring(rng, net):
    """A bottom nothing produces, or a top two layers produce."""
    lps = [lp for lp in _kept(net) if lp.type != "Input"]
    if not lps:
        return None
    lp = lps[int(rng.integers(len(lps)))]
    if lp.bottom and rng.random() < 0.5:
        lp.bottom[int(rng.integers(len(lp.bottom)))] = "nowhere"
        return lp, "nowhere"
    # another layer always in the net (an alternative excluded by a NetStateRule produces nothing), whose top is
    # not already one of lp's (the generator gives such alternatives lp's own tops: no mutation then)
    producers = [x for x in _kept(net) if x.top and x is not lp]
    if not producers or not lp.top:
        return None
    other = producers[int(rng.integers(len(producers)))]
    if other.top[0] in lp.bottom or other.top[0] in lp.top:
        return None
    lp.top[0] = other.top[0]
    return lp, other.top[0]


def _in_place(rng, net):
    """AbsVal, Flatten, Reshape or Split computing in place (Caffe refuses it), on a bottom no other layer reads
    (so that Caffe's InsertSplits keeps it in place), the later readers of its top renamed to follow."""
    readers = {}
    for lp in net.layer:
        for b in lp.bottom:
            readers[b] = readers.get(b, 0) + 1
    lps = [lp for lp in _layers(net, "AbsVal", "Flatten", "Reshape", "Split") if readers.get(lp.bottom[0]) == 1]
    if not lps:
        return None
    lp = lps[int(rng.integers(len(lps)))]
    old, new = lp.top[0], lp.bottom[0]
    lp.top[0] = new
    for other in net.layer:
        if other is not lp:
            other.bottom[:] = [new if b == old else b for b in other.bottom]
    return lp, "place"


def _values(rng, net):
    """A value outside a field's range."""
    cands = []
    for lp in _kept(net):
        if lp.type == "LRN":
            cands.append((lp, "local_size", lambda lp: setattr(lp.lrn_param, "local_size", 4)))
        elif lp.type == "Dropout":
            cands.append((lp, "dropout_ratio", lambda lp: setattr(lp.dropout_param, "dropout_ratio", 1.0)))
        elif lp.type in ("Exp", "Log"):
            cands.append((lp, "base", lambda lp: setattr(getattr(lp, lp.type.lower() + "_param"), "base", -2.0)))
        elif lp.type == "Tile":
            cands.append((lp, "tiles", lambda lp: setattr(lp.tile_param, "tiles", 0)))
        elif lp.type == "ArgMax":
            cands.append((lp, "top_k", lambda lp: setattr(lp.argmax_param, "top_k", 1000)))
        elif lp.type == "Accuracy":
            cands.append((lp, "top_k", lambda lp: setattr(lp.accuracy_param, "top_k", 1000)))
        elif lp.type == "Embed":
            cands.append((lp, "input_dim", lambda lp: setattr(lp.embed_param, "input_dim", 0)))
        elif lp.type == "InnerProduct":
            cands.append((lp, "num_output", lambda lp: lp.inner_product_param.ClearField("num_output")))
        elif lp.type == "Eltwise":
            cands.append((lp, "coeff", lambda lp: (lp.eltwise_param.ClearField("coeff"),
                                                   lp.eltwise_param.coeff.extend([1.0] * (len(lp.bottom) + 1)))))
        elif lp.type == "Slice":
            cands.append((lp, "slice_point", lambda lp: (lp.slice_param.ClearField("slice_point"),
                                                         lp.slice_param.slice_point.extend([2, 1]))))
        elif lp.type == "Reshape":
            cands.append((lp, "shape", lambda lp: (lp.reshape_param.shape.ClearField("dim"),
                                                   lp.reshape_param.shape.dim.extend([-1, -1]))))
        elif lp.type in ("Scale", "Bias") and len(lp.bottom) == 1:
            cands.append((lp, "num_axes", lambda lp: setattr(getattr(lp, lp.type.lower() + "_param"),
                                                             "num_axes", -2)))
        elif lp.type == "Crop":
            cands.append((lp, "offset", lambda lp: (lp.crop_param.ClearField("offset"),
                                                    lp.crop_param.offset.extend([0] * 9))))
        elif lp.type == "MarginInnerProduct":
            cands.append((lp, "num_output", lambda lp: setattr(lp.margin_inner_product_param, "num_output", 0)))
        elif lp.type == "Normalize":
            cands.append((lp, "normalize_type", lambda lp: setattr(lp.normalize_param, "normalize_type", "L3")))
        elif lp.type == "AdditiveAngularMargin":
            cands.append((lp, "margin", lambda lp: setattr(lp.additive_angular_margin_param, "margin", 2.0)))
        elif lp.type == "SPP":
            cands.append((lp, "pyramid_height", lambda lp: setattr(lp.spp_param, "pyramid_height", 0)))
    if not cands:
        return None
    lp, field, apply = cands[int(rng.integers(len(cands)))]
    apply(lp)
    return lp, field


def _rules(rng, net):
    lps = [lp for lp in _kept(net) if lp.type != "Input"]
    if not lps:
        return None
    lp = lps[int(rng.integers(len(lps)))]
    lp.include.add(phase=caffe_pb2.TRAIN)
    lp.exclude.add(phase=caffe_pb2.TEST)
    return lp, "include"


def _shared(rng, net):
    """Two sharers of one param name that set different lr_mult (Caffe: "mismatched lr_mult")."""
    owners = {}
    for lp in _kept(net):
        for i, spec in enumerate(lp.param):
            if spec.name:
                owners.setdefault(spec.name, []).append((lp, i))
    shared = [v for v in owners.values() if len(v) > 1]
    if not shared:
        return None
    pairs = shared[int(rng.integers(len(shared)))]
    (lp0, i0), (lp1, i1) = pairs[0], pairs[1]
    lp0.param[i0].lr_mult = 1.0
    lp1.param[i1].lr_mult = 2.0
    return lp1, "lr_mult"


NET_MUTATIONS = (_conv, _pooling, _axis, _counts, _wiring, _in_place, _values, _rules, _shared)


def _solver(rng, prog: Program):
    s = text_format.Parse(prog.solver_text, caffe_pb2.SolverParameter())
    k = int(rng.integers(5))
    if k == 0:
        s.type = "AdaGrad" if rng.random() < 0.5 else "RMSProp"
        s.momentum = 0.9
        field = "momentum"
    elif k == 1:
        s.type, s.rms_decay, field = "RMSProp", 1.5, "rms_decay"
        s.ClearField("momentum")        # RMSProp refuses any momentum first (seed 420134): break one field only
    elif k == 2:
        s.ClearField("lr_policy")
        field = "lr_policy"
    elif k == 3:
        s.iter_size, field = 0, "iter_size"
    else:
        s.type, field = "Adamax", "type"
    return text_format.MessageToString(s), field


def mutate(rng: np.random.Generator, prog: Program) -> tuple[Program, str, str] | None:
    """(the mutated program, what was broken, the field caffe_torch's error must name), or None."""
    if prog.solver_text and rng.random() < 0.2:
        text, field = _solver(rng, prog)
        p = copy.deepcopy(prog)
        p.solver_text = text
        return p, f"solver {field}", field
    order = list(NET_MUTATIONS)
    rng.shuffle(order)
    for m in order:
        net = prog.net_param()
        got = m(rng, net)
        if got is not None:
            lp, field = got
            p = prog.with_net(net)
            return p, f"{lp.type} '{lp.name}' {m.__name__.strip('_')}: {field}", field
    return None
