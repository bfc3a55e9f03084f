"""Shrinking a failing case: drop program steps, layers and fields while the same divergence remains.

A candidate is kept when it still shows an unexplained divergence of the same signature (stage kind, what, and
for refusals which engine refused), so the result is a small net that fails for the reason the big one did.
Greedy passes, repeated until a pass changes nothing or `max_runs` candidates have been run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from caffe_torch.proto import caffe_pb2

from .compare import Divergence
from .program import Program


def signature(divs: list[Divergence]) -> tuple | None:
    """What makes a failure "the same": the first unexplained divergence's stage kind and kind."""
    for d in divs:
        if not d.cls:
            kind = d.stage.rstrip("0123456789")
            return kind, d.what, d.detail.split(";")[0][:24] if d.what == "refusal" else ""
    return None


def _drop_unused_inputs(net: caffe_pb2.NetParameter, prog: Program) -> tuple[caffe_pb2.NetParameter, list]:
    used = {b for lp in net.layer for b in lp.bottom}
    inputs = [(n, s, k) for n, s, k in prog.inputs if n in used]
    keep = {n for n, _, _ in inputs}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for lp in net.layer:
        if lp.type == "Input":
            tops = [t for t in lp.top if t in keep]
            if not tops:
                continue
            new = copy.deepcopy(lp)
            shapes = list(lp.input_param.shape)
            del new.top[:], new.input_param.shape[:]
            new.top.extend(tops)
            if len(shapes) == 1:
                new.input_param.shape.add().CopyFrom(shapes[0])
            else:
                for t, s in zip(lp.top, shapes):
                    if t in keep:
                        new.input_param.shape.add().CopyFrom(s)
            out.layer.append(new)
        else:
            out.layer.append(lp)
    if net.input:
        del out.input[:], out.input_shape[:], out.input_dim[:]
        for i, name in enumerate(net.input):
            if name in keep:
                out.input.append(name)
                if net.input_shape:
                    out.input_shape.add().CopyFrom(net.input_shape[i if len(net.input_shape) > 1 else 0])
                else:
                    out.input_dim.extend(net.input_dim[4 * i:4 * i + 4])
    return out, inputs


def _without_layer(net: caffe_pb2.NetParameter, index: int) -> caffe_pb2.NetParameter:
    """Layer `index` removed, and every later layer that reads a blob only it produced (recursively)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    produced = set(net.input)
    gone = set()
    for i, lp in enumerate(net.layer):
        if i == index or any(b not in produced for b in lp.bottom):
            gone |= {t for t in lp.top if t not in produced}
            continue
        produced |= set(lp.top)
        out.layer.append(lp)
    return out


def _field_variants(net: caffe_pb2.NetParameter):
    """Nets with one field cleared: a layer's field, a field inside one of its *_param messages, or a net's."""
    for f, _ in net.ListFields():
        if f.name in ("force_backward", "state", "debug_info"):
            v = caffe_pb2.NetParameter()
            v.CopyFrom(net)
            v.ClearField(f.name)
            yield v
    for i, lp in enumerate(net.layer):
        for f, value in lp.ListFields():
            if f.name in ("name", "type", "bottom", "top", "input_param"):
                continue
            v = caffe_pb2.NetParameter()
            v.CopyFrom(net)
            v.layer[i].ClearField(f.name)
            yield v
            if f.message_type is not None and not f.is_repeated:
                for sub, _ in value.ListFields():
                    v = caffe_pb2.NetParameter()
                    v.CopyFrom(net)
                    getattr(v.layer[i], f.name).ClearField(sub.name)
                    yield v


def _program_variants(prog: Program):
    if prog.steps:
        yield _replace(prog, steps=[], solver_text=None, test_net=False)
        if len(prog.steps) > 1:
            yield _replace(prog, steps=prog.steps[:-1])
        if any(k > 1 for k in prog.steps):
            yield _replace(prog, steps=[1] * len(prog.steps))
    if prog.test_net:
        yield _replace(prog, test_net=False)
    if prog.second_round:
        yield _replace(prog, second_round=False)
    if prog.backward is not None:
        yield _replace(prog, backward=None)
    if prog.backward == "write":
        yield _replace(prog, backward="kwargs")
    if prog.keep:
        yield _replace(prog, keep=[], write_kept=False)
        for i in range(len(prog.keep)):
            yield _replace(prog, keep=prog.keep[:i] + prog.keep[i + 1:])
    if prog.write_kept:
        yield _replace(prog, write_kept=False)
    if prog.solver_text:
        from google.protobuf import text_format

        s = text_format.Parse(prog.solver_text, caffe_pb2.SolverParameter())
        for f, _ in s.ListFields():
            if f.name in ("type", "base_lr", "lr_policy", "max_iter", "display", "snapshot_after_train",
                          "random_seed", "test_iter", "test_interval"):
                continue
            v = caffe_pb2.SolverParameter()
            v.CopyFrom(s)
            v.ClearField(f.name)
            yield _replace(prog, solver_text=text_format.MessageToString(v))


def _layer_variants(prog: Program):
    net = prog.net_param()
    for i in reversed(range(len(net.layer))):
        if net.layer[i].type != "Input":
            smaller, inputs = _drop_unused_inputs(_without_layer(net, i), prog)
            cand = prog.with_net(smaller)
            cand.inputs = inputs
            yield cand


def _replace(prog: Program, **kw) -> Program:
    p = copy.deepcopy(prog)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def shrink(prog: Program, run: Callable[[Program], list[Divergence]], max_runs: int = 300,
           progress: Callable[[str], None] | None = None) -> tuple[Program, list[Divergence]]:
    """The smallest program found that `run` still fails with the signature of `prog`'s failure."""
    divs = run(prog)
    want = signature(divs)
    if want is None:
        return prog, divs
    runs = 1
    best, best_divs = prog, divs
    tried = set()

    def accept(cand: Program) -> bool:
        nonlocal best, best_divs, runs
        key = (cand.net_text, cand.to_json())
        if runs >= max_runs or key in tried:
            return False
        tried.add(key)
        runs += 1
        try:
            cand_divs = run(cand)
        except ValueError:
            return False
        if signature(cand_divs) == want:
            best, best_divs = cand, cand_divs
            if progress:
                progress(f"shrunk to {len(cand.net_param().layer)} layers")
            return True
        return False

    changed = True
    while changed and runs < max_runs:
        changed = False
        for variants in (_program_variants(best), _layer_variants(best),
                         (best.with_net(v) for v in _field_variants(best.net_param()))):
            for cand in variants:
                if runs >= max_runs:
                    break
                if accept(cand):
                    changed = True
                    break
            if changed:
                break
    return best, best_divs
