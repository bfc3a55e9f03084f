"""Caffe's `debug_info` lines (Net::ForwardDebugInfo, BackwardDebugInfo and the summary of Net::Backward).

With `debug_info: true` in a solver (every display iteration of the train net, every forward of a test net) or
in a net prototxt, Caffe logs, per layer and in order, the mean absolute value of what it just computed:
    [Forward] Layer <layer>, top blob <blob> data: <mean |x|>
    [Forward] Layer <layer>, param blob <ParamSpec name, or index> data: <mean |w|>
    [Backward] Layer <layer>, bottom blob <blob> diff: <mean |dx|>       (bottoms that need backward)
    [Backward] Layer <layer>, param blob <index> diff: <mean |dw|>       (params the layer computes a diff for)
    [Backward] All net params (data, diff): L1 norm = (<sum |w|>, <sum |dw|>); L2 norm = (<...>, <...>)
the last one at ERROR level after a whole-net backward (the only one a release build of BVLC's fork that
turns the others into DLOGs still prints). Caffe 1.0 never calls its Net::UpdateDebugInfo, so there are no
[Update] lines. Numbers are printed as C++'s default stream does (6 significant digits).

caffe_torch computes the whole backward in one autograd pass, so the [Backward] lines are written after it, in
Caffe's order, from the gradient each layer's bottoms received; a param shared by several layers shows its
diff summed over all of them (Caffe shows the running sum as each layer adds its part).
"""

import logging

import torch

log = logging.getLogger("caffe_torch.net")


def _mean_abs(t: torch.Tensor | None, like: torch.Tensor) -> float:
    if t is None or like.numel() == 0:
        return 0.0
    return float(t.detach().double().abs().sum()) / like.numel()


def _param_display_name(net, layer_index: int, k: int) -> str:
    specs = net._layer_params[layer_index].param
    return specs[k].name if k < len(specs) and specs[k].name else str(k)


def forward_debug_info(net, record) -> None:
    """record: [(layer index, bottom tensors, top tensors)] of the forward just run."""
    for i, _, tops in record:
        lname = net._layer_names[i]
        for name, t in zip(net.top_names[lname], tops):
            log.info("    [Forward] Layer %s, top blob %s data: %.6g", lname, name, _mean_abs(t, t))
        for k, p in enumerate(net._layers[i].blobs):
            log.info("    [Forward] Layer %s, param blob %s data: %.6g", lname, _param_display_name(net, i, k),
                     _mean_abs(p, p))


def backward_debug_info(net, record) -> None:
    """After the autograd backward of the forward that made `record` (its tensors kept their gradients)."""
    for i, bottoms, tops in reversed(record):
        if not any(t.grad is not None for t in tops):
            continue                    # Caffe: the layer does not contribute to the loss, no Backward
        lname = net._layer_names[i]
        for name, t in zip(net.bottom_names[lname], bottoms):
            if t.requires_grad and t.grad is not None:
                log.info("    [Backward] Layer %s, bottom blob %s diff: %.6g", lname, name, _mean_abs(t.grad, t))
        for k, (p, propagate) in enumerate(zip(net._layers[i].blobs, net._param_propagate[i])):
            if propagate:
                log.info("    [Backward] Layer %s, param blob %d diff: %.6g", lname, k, _mean_abs(p.grad, p))
    params = [p for p, *_ in net.learnable_params()]
    l1_data = sum(float(p.detach().double().abs().sum()) for p in params)
    l1_diff = sum(float(p.grad.double().abs().sum()) for p in params if p.grad is not None)
    l2_data = sum(float((p.detach().double() ** 2).sum()) for p in params) ** 0.5
    l2_diff = sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None) ** 0.5
    log.error("    [Backward] All net params (data, diff): L1 norm = (%.6g, %.6g); L2 norm = (%.6g, %.6g)",
              l1_data, l1_diff, l2_data, l2_diff)
