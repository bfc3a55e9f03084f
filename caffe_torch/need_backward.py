"""Which layers Caffe's Net::Backward runs, and on which bottoms (Net::Init's need-backward rules), and the
backward passes Caffe refuses.

Forward pass over the layers (net.cpp, Net::Init):
  a layer needs backward if a bottom blob does, or one of its params has lr_mult != 0 (the ParamSpec's,
  default 1); its tops then need backward. A bottom's flag is its blob's, or the layer's `propagate_down` entry
  when the prototxt gives them.
Backward pass (from the last layer):
  a layer contributes to the loss when a top has a loss weight or feeds a layer that contributes; one that does
  not, or whose tops all feed only bottoms that skip back-propagation, needs no backward and gives its bottoms
  none.
force_backward: every layer needs backward and every bottom does too, except those the layer's
AllowForceBackward refuses (a loss layer's labels).

Net::Backward then calls Backward on each layer that needs it, with its bottoms' flags as propagate_down, and
some of Caffe's layers abort there: a backward that is NOT_IMPLEMENTED (Threshold, ArgMax; Accuracy for any
bottom) or a CHECK against back-propagating to an index or label bottom (Embed, BatchReindex, Filter, the loss
layers' labels, the recurrent layers' sequence markers). A layer class says which with two attributes:
    no_backward_to: bottom indices Caffe aborts on (negative from the end), or "all" (NOT_IMPLEMENTED for any)
    backward_not_implemented: True when Caffe aborts whenever the layer's backward runs
and, for AllowForceBackward, `force_backward_skips`: bottom indices force_backward leaves alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BackwardPlan:
    layer_needs: list[bool]               # per layer: Net::Backward calls its Backward
    bottom_needs: list[list[bool]]        # per layer and bottom: its propagate_down in that call
    refusals: list[tuple[int, str]]       # (layer index, why Caffe aborts when it runs that layer's backward)


def _resolve(indices, n: int) -> set[int]:
    if indices == "all":
        return set(range(n))
    return {i % n for i in indices if -n <= i < n}


def plan(layer_params, modules, loss_weights: dict[str, float], force_backward: bool) -> BackwardPlan:
    """`layer_params` and `modules`: the net's layers in order (LayerParameter, Layer module); `loss_weights`:
    {top: weight} for the tops with a nonzero loss weight."""
    blob_needs: dict[str, bool] = {}
    layer_needs, bottom_needs = [], []
    for lp, module in zip(layer_params, modules):
        bottoms = [blob_needs.get(b, False) for b in lp.bottom]
        need = any(bottoms)
        if len(lp.propagate_down):
            bottoms = [bool(p) for p in lp.propagate_down]
        n_blobs = len(module.blobs)
        need |= any((lp.param[i].lr_mult if i < len(lp.param) else 1.0) != 0 for i in range(n_blobs))
        for t in lp.top:
            if need:
                blob_needs[t] = True
            else:
                blob_needs.setdefault(t, False)
        layer_needs.append(need)
        bottom_needs.append(bottoms)
    under_loss: set[str] = set()
    skip: set[str] = set()
    for i in range(len(layer_params) - 1, -1, -1):
        lp = layer_params[i]
        contributes = any(loss_weights.get(t, 0.0) != 0 or t in under_loss for t in lp.top)
        skipped = all(t in skip for t in lp.top)
        if layer_needs[i] and skipped:
            layer_needs[i] = False
            bottom_needs[i] = [False] * len(lp.bottom)
        if not contributes:
            layer_needs[i] = False
        for j, b in enumerate(lp.bottom):
            if contributes:
                under_loss.add(b)
            else:
                bottom_needs[i][j] = False
            if not bottom_needs[i][j]:
                skip.add(b)
    if force_backward:
        for i, (lp, module) in enumerate(zip(layer_params, modules)):
            layer_needs[i] = True
            skips = _resolve(getattr(module, "force_backward_skips", ()), len(lp.bottom))
            bottom_needs[i] = [need or j not in skips for j, need in enumerate(bottom_needs[i])]
    refusals = []
    for i, (lp, module) in enumerate(zip(layer_params, modules)):
        if not layer_needs[i]:
            continue
        if getattr(module, "backward_not_implemented", False):
            refusals.append((i, "has no backward in Caffe (NOT_IMPLEMENTED), and Caffe's Net::Backward runs it "
                                "here (it feeds a loss, or force_backward is set)"))
            continue
        refused = _resolve(getattr(module, "no_backward_to", ()), len(lp.bottom))
        bad = [j for j in sorted(refused) if bottom_needs[i][j]]
        if bad:
            names = ", ".join(f"{j} ('{lp.bottom[j]}')" for j in bad)
            refusals.append((i, f"Caffe cannot back-propagate to bottom {names}, and its Net::Backward asks for "
                                "it here (force_backward, or propagate_down: true); set propagate_down: false "
                                "for it"))
    return BackwardPlan(layer_needs, bottom_needs, refusals)
