"""Counting what a piece of code asks of the device, on any device (the CPU included): every aten operation
that reaches the dispatcher (each one a kernel launch on a GPU) and the host syncs among them.

    with OpCounter() as count:
        solver.step(20)
    count.ops, count.syncs          # aten ops, aten._local_scalar_dense calls (item(), float(t), bool(t))

A host sync is a read of a device value by Python (`.item()`, `float(t)`, `bool(t)`, `if t:`): on a GPU it
waits for every queued kernel. Each reaches the dispatcher as `aten._local_scalar_dense`, also on the CPU, so
a CPU test counts the syncs a GPU run would pay. (Reads that bypass the dispatcher on the CPU, `.numpy()` and
`.tolist()` of a CPU tensor, are not counted: the training step and the evaluation loop make none of a device
tensor; blob host copies are counted by the tests with `Blob.zero_copy_devices = ()`.)
"""

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SCALAR_READ = torch.ops.aten._local_scalar_dense.default


class OpCounter(TorchDispatchMode):
    """A dispatch mode that counts aten ops (`ops`), host syncs (`syncs`) and ops by name (`by_name`)."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.by_name: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.by_name[func.__name__] += 1
        if func is _SCALAR_READ:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def host_array(t: torch.Tensor):
    """`t` as a NumPy array on the host: one device-to-host copy, one sync, however many values (so read them
    all at once). On the CPU the copy bypasses the dispatcher, so the OpCounters that are active count it
    here: a CPU test sees the sync a GPU run pays."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    for mode in _get_current_dispatch_mode_stack():
        if isinstance(mode, OpCounter):
            mode.syncs += 1
    return t.detach().cpu().numpy()


def host_values(t: torch.Tensor) -> list[float]:
    """The values of `t` as Python floats (host_array: one sync)."""
    return host_array(t).reshape(-1).tolist()
