"""pycaffe's Blob: `.data` / `.diff` as NumPy arrays over the net's tensors.

On the CPU, `.data` and `.diff` are NumPy views of the tensors themselves (writes land directly). On a GPU,
they are host copies, as in Caffe's SyncedMemory: a copy handed out is remembered, and the net uploads it
before its next device-side operation (forward, backward, update), so that `net.blobs['data'].data[...] = x`
reaches the next forward there too. The caffe_torch-only `.tensor` property reads/replaces the device tensor
itself, without any copy (the training loop's zero-copy path).
"""

import numpy as np
import torch


class _HostSync:
    """The set of host copies handed out since the last device-side operation of one net."""

    def __init__(self):
        self.pending: dict[int, tuple[Blob, str, np.ndarray]] = {}

    def remember(self, blob: "Blob", which: str, array: np.ndarray) -> None:
        self.pending[id(array)] = (blob, which, array)

    def forget(self, blob: "Blob", which: str | None = None) -> None:
        """Drop `blob`'s host copies (all, or only `which`) without uploading them: its tensor was replaced
        (`.tensor = t`, `reshape`), so the copy no longer describes it."""
        for key, (b, w, _) in list(self.pending.items()):
            if b is blob and (which is None or w == which):
                del self.pending[key]
                b._host[w] = None

    def flush(self) -> None:
        """Upload every host copy (the user may have written into it), then forget them."""
        with torch.no_grad():
            for blob, which, array in self.pending.values():
                target = blob._tensor() if which == "data" else blob._grad_tensor(create=True)
                if tuple(target.shape) == array.shape:
                    # detach: the target may be a leaf that requires grad (a force_backward input)
                    target.detach().copy_(torch.from_numpy(array))
                blob._host[which] = None
        self.pending.clear()

    def drop(self) -> None:
        for blob, which, _ in self.pending.values():
            blob._host[which] = None
        self.pending.clear()


class Blob:
    """A named blob of a net (an activation, or a learnable parameter: see `param_blob`)."""

    # Devices whose tensors NumPy can view directly; any other device goes through host copies. (Tests
    # empty it to run the GPU host-copy path on the CPU.)
    zero_copy_devices: tuple[str, ...] = ("cpu",)

    def __init__(self, sync: _HostSync, get, set_, get_grad, set_grad, peek=None):
        self._sync = sync
        self._get, self._set, self._get_grad, self._set_grad = get, set_, get_grad, set_grad
        # `peek` returns the tensor without materialising a storage-less placeholder (for shapes)
        self._peek = peek or get
        self._host: dict[str, np.ndarray | None] = {"data": None, "diff": None}

    # -- tensors
    def _tensor(self) -> torch.Tensor:
        return self._get()

    def _grad_tensor(self, create: bool) -> torch.Tensor | None:
        g = self._get_grad()
        if g is None and create:
            t = self._tensor()
            g = torch.zeros_like(t)
            self._set_grad(g)
        return g

    def _array(self, which: str) -> np.ndarray:
        t = self._tensor() if which == "data" else self._grad_tensor(create=True)
        t = t.detach()
        if t.device.type in self.zero_copy_devices:
            return t.numpy()
        host = self._host[which]
        if host is None or host.shape != tuple(t.shape):
            host = t.to("cpu", copy=True).numpy()
            self._host[which] = host
            self._sync.remember(self, which, host)
        return host

    @property
    def data(self) -> np.ndarray:
        return self._array("data")

    @data.setter
    def data(self, value) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._array("diff")

    @diff.setter
    def diff(self, value) -> None:
        self.diff[...] = value

    @property
    def tensor(self) -> torch.Tensor:
        """The tensor itself (caffe_torch only). Assigning a tensor replaces it: same shape rules as
        `reshape`, moved to the net's device and dtype only if needed (no copy when they already match)."""
        return self._tensor()

    @tensor.setter
    def tensor(self, value: torch.Tensor) -> None:
        cur = self._tensor()
        if value.device != cur.device or value.dtype != cur.dtype:
            value = value.to(device=cur.device, dtype=cur.dtype, non_blocking=True)
        # a host copy handed out before must not be uploaded over the new tensor at the next flush
        self._sync.forget(self, "data")
        self._set(value)

    # -- shape
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._peek().shape)

    @property
    def count(self) -> int:
        return int(self._peek().numel())

    num = property(lambda self: self.shape[0] if self.shape else 1)
    channels = property(lambda self: self.shape[1] if len(self.shape) > 1 else 1)
    height = property(lambda self: self.shape[2] if len(self.shape) > 2 else 1)
    width = property(lambda self: self.shape[3] if len(self.shape) > 3 else 1)

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimension in reshape{shape}")
        cur = self._tensor()
        if tuple(cur.shape) == shape:
            return
        self._sync.forget(self)
        self._host = {"data": None, "diff": None}
        if cur.numel() == int(np.prod(shape)):
            self._set(cur.detach().reshape(shape).clone())
        else:
            self._set(torch.zeros(shape, dtype=cur.dtype, device=cur.device))
        self._set_grad(None)

    def __repr__(self) -> str:
        return f"<Blob shape={self.shape}>"


def param_blob(sync: _HostSync, module, index: int) -> Blob:
    """A Blob over the `index`-th learnable blob of a layer module (looked up each time, so sharing and
    replacing the parameter object is seen)."""

    def get():
        return module.blobs[index].data

    def set_(t):
        p = module.blobs[index]
        if tuple(t.shape) != tuple(p.shape):
            p.data = t
        else:
            p.data.copy_(t)

    def get_grad():
        return module.blobs[index].grad

    def set_grad(g):
        module.blobs[index].grad = g

    return Blob(sync, get, set_, get_grad, set_grad)
