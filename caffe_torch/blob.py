"""pycaffe's Blob: `.data` / `.diff` as NumPy arrays over the blob's memory, with Caffe's memory model.

In pycaffe, `blob.data` / `blob.diff` are no-copy NumPy views of the blob's host memory (`mutable_cpu_data()`):
an array a script keeps follows the blob, and what it writes reaches the next forward/backward. Our layers
compute out of place (each forward makes new tensors), so a blob's tensor is not a fixed piece of memory. The
model here:

- Each blob has, per side (data, diff), a `_Memory`: the persistent host tensor that views are taken of ("the
  memory"), the set of views handed out (each view hangs off a small anchor object tracked by a weak
  reference, so a view derived from it, `a[0]`, keeps it alive too), and a head, as Caffe's SyncedMemory.
- On the CPU (a device in `Blob.zero_copy_devices`) the memory is the tensor itself whenever no view is held:
  `.data` re-points the memory at the current tensor, no copy. While a view is held, the net keeps it live: at
  the start of every operation (forward, backward, update) the blob's tensor *is* the memory (so writes
  through the view are what the layers read), and after a forward/backward the new out-of-place results are
  copied into it. The net keeps the viewed memories in a set (`_HostSync.viewed`); when it is empty (the
  training loop's `.tensor` fast path, nothing kept) an operation pays one emptiness test and nothing else.
  Parameters: `.data` is a view of the parameter tensor itself (the solver updates it in place); `.diff` a
  view of its `.grad`, which is kept in place (zeroed, accumulated into, overwritten by the update) while a
  diff view is held, and dropped (`None`, torch's cheapest) when none is.
- On a GPU (any other device) the memory is a host copy with Caffe's SyncedMemory heads: `head == DEVICE`
  (the tensor is newest), `HOST` (a view was handed out: pycaffe's `.data` is `mutable_cpu_data`, so the
  host copy may have been written and is authoritative). `.data` copies device->host only when the head is
  at the device, then moves it to the host; the next operation of any net that shares the memory uploads it
  (host->device) and moves the head back. An activation's or input's data is then SYNCED (Caffe's state:
  host and device equal) until its tensor is replaced or changed: a `.data` read of an input blob after a
  forward copies nothing back (the canonical `blob.data[...] = x; net.forward()` loop uploads only). A kept
  view therefore shows new values after the next `.data` / `.diff` read, as in pycaffe on a GPU. Clearing the
  parameter diffs at the start of a solver step (Caffe's `ClearParamDiffs`, a `mutable_gpu_diff`) moves the
  diff's head to the device without uploading: a diff read after a step never leaks into the next one. A
  parameter's memory lives on the parameter itself, so layers that share it (`param { name }`) have one host
  copy; nets that share weights (`share_with`, a solver's test nets: Caffe's ShareData) share the data
  memory and keep their own diffs (`share_param_data`), and share one `_HostSync` (the set of memories whose
  head is at the host).
- The caffe_torch-only `.tensor` property reads/replaces the tensor itself, without any copy (the training
  loop's zero-copy path); assigning it while a view is held copies the value into the memory too. On the
  CPU the memory is whatever tensor the blob had when the view was taken, so a view kept of a blob whose
  tensor you assigned (or of a layer's top that is its bottom unchanged) aliases that tensor, and later
  values are copied into it: keep either views or your own tensors, not both.
- In place: a layer computing in place on a viewed blob reads a copy of it, since the memory receives its
  top after the forward (Caffe's in-place layers keep what their backward needs themselves). Limit: writes
  through a kept view between a forward and its backward reach the backward only for blobs the forward read
  from memory (inputs that no layer computes in place).
"""

import weakref

import numpy as np
import torch

DEVICE, HOST = "device", "host"


def reshaped_memory(t: torch.Tensor, shape) -> torch.Tensor | None:
    """The memory `t` as Caffe's Blob::Reshape leaves it for a new `shape`: the same memory, its first values,
    while the new count fits in what it holds (a kept view then still aliases it); None where Caffe would
    allocate anew."""
    t = t.detach()
    shape = torch.Size(shape)
    capacity = t.untyped_storage().nbytes() // t.element_size()
    if t.storage_offset() != 0 or not t.is_contiguous() or shape.numel() > capacity:
        return None
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), 0, shape)


class _Anchor:
    """What a handed-out array hangs off: NumPy keeps it alive for as long as any view derived from it."""

    __slots__ = ("__array_interface__", "_array", "__weakref__")

    def __init__(self, array: np.ndarray):
        self._array = array
        self.__array_interface__ = array.__array_interface__


class _Memory:
    """One side (data or diff) of a blob: the host tensor views are taken of, its views, its head."""

    __slots__ = ("host", "anchors", "head", "synced", "__weakref__")

    def __init__(self):
        self.host: torch.Tensor | None = None
        self.anchors: weakref.WeakSet = weakref.WeakSet()
        self.head = DEVICE
        # SyncedMemory's SYNCED state (host-copy path): (weak reference to the device tensor, its version) when
        # the host copy equals that tensor (after an upload or a download); a read then copies nothing
        self.synced: tuple | None = None

    def viewed(self) -> bool:
        return len(self.anchors) > 0

    def view(self) -> np.ndarray:
        anchor = _Anchor(self.host.detach().numpy())
        self.anchors.add(anchor)
        return np.asarray(anchor)


class _HostSync:
    """The memories of a group of nets that share parameters: those viewed on a zero-copy device (kept live
    across operations) and those whose head is at the host (uploaded before the next operation)."""

    def __init__(self):
        self.viewed: dict[int, tuple[Blob, str, _Memory]] = {}
        self.pending: dict[int, tuple[Blob, str, _Memory]] = {}
        self.members: list[_HostSync] = [self]

    def join(self, other: "_HostSync") -> None:
        """Make self and other one group (nets that share parameters): one pending set for all."""
        if self.viewed is other.viewed:
            return
        other.viewed.update(self.viewed)
        other.pending.update(self.pending)
        members = other.members + self.members
        for m in members:
            m.viewed, m.pending, m.members = other.viewed, other.pending, members

    def watch(self, blob: "Blob", which: str, mem: _Memory) -> None:
        self.viewed[id(mem)] = (blob, which, mem)

    def to_host(self, blob: "Blob", which: str, mem: _Memory) -> None:
        mem.head = HOST
        self.pending[id(mem)] = (blob, which, mem)

    def to_device(self, mem: _Memory) -> None:
        """The device side was written without reading the host copy (a new tensor was assigned, the diffs
        cleared): the host copy is no longer authoritative and is not uploaded."""
        mem.head = DEVICE
        mem.synced = None
        self.pending.pop(id(mem), None)

    def flush(self) -> None:
        """Before an operation: upload host-head memories; make viewed memories the blobs' tensors."""
        if self.pending:
            with torch.no_grad():
                for blob, which, mem in self.pending.values():
                    blob._upload(which, mem)
                    mem.head = DEVICE
                    blob._mark_synced(which, mem)
            self.pending.clear()
        if self.viewed:
            for key, (blob, which, mem) in list(self.viewed.items()):
                if not mem.viewed():
                    del self.viewed[key]
                else:
                    blob._adopt_memory(which, mem)

    def refresh(self, which: str) -> None:
        """After an operation that replaced tensors out of place: copy `which` (data or diff) of every viewed
        blob into its memory, so kept views show the new values."""
        if self.viewed:
            with torch.no_grad():
                for key, (blob, w, mem) in list(self.viewed.items()):
                    if not mem.viewed():
                        del self.viewed[key]
                    elif w == which:
                        blob._refresh(which, mem)


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
        self._mem = {"data": _Memory(), "diff": _Memory()}

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

    def _memory(self, which: str) -> _Memory:
        return self._mem[which]

    def _current(self, which: str) -> torch.Tensor:
        if which == "diff":
            return self._grad_tensor(create=True)       # a gradient does not require grad itself
        return self._tensor().detach()

    def _follows_tensor(self, which: str) -> bool:
        """Zero-copy path: is the memory always the tensor itself (a parameter's data, updated in place), so
        that nothing needs to be kept live?"""
        return False

    def _array(self, which: str) -> np.ndarray:
        mem = self._memory(which)
        t = self._current(which)
        if t.device.type in self.zero_copy_devices:
            follows = self._follows_tensor(which)
            if mem.host is None or not mem.viewed() or mem.host.shape != t.shape or \
                    (follows and mem.host.data_ptr() != t.data_ptr()):
                # nothing kept (or a new shape): the memory is the tensor itself, no copy
                mem.host = t
            if not follows:
                self._sync.watch(self, which, mem)
            return mem.view()
        # host-copy path (Caffe's mutable_cpu_data): download only if the device side is newer
        if mem.host is None or mem.host.shape != t.shape:
            mem.host = torch.empty(t.shape, dtype=t.dtype)
            mem.head, mem.synced = DEVICE, None
        if mem.head == DEVICE and not self._in_sync(which, mem):
            self._download(which, mem, t)
        self._sync.to_host(self, which, mem)
        return mem.view()

    def _download(self, which: str, mem: _Memory, t: torch.Tensor) -> None:
        """Device tensor `t` -> host copy (host-copy path, blocking); they are SYNCED afterwards."""
        mem.host.copy_(t.detach())
        self._mark_synced(which, mem)

    def _mark_synced(self, which: str, mem: _Memory) -> None:
        """Host copy and device tensor are equal now (after an upload or a download): SYNCED, for the blobs
        whose device tensor can be recognised later (activations' and inputs' data: see _ActivationBlob)."""

    def _in_sync(self, which: str, mem: _Memory) -> bool:
        return False

    def _upload(self, which: str, mem: _Memory) -> None:
        """Host copy -> device tensor (host-copy path), before an operation."""
        t = self._tensor() if which == "data" else self._grad_tensor(create=True)
        if t.shape == mem.host.shape:
            # through .data: the target may be a leaf that requires grad (a force_backward input) or saved
            # by autograd for the coming backward (which then reads the written values, as Caffe's would)
            t.data.copy_(mem.host)

    def _adopt_memory(self, which: str, mem: _Memory) -> None:
        """Zero-copy path, before an operation: the viewed memory becomes the blob's tensor or its diff
        (activations), so that what a script wrote through a kept view is what the layers read."""

    def _refresh(self, which: str, mem: _Memory) -> None:
        """Zero-copy path, after an operation: copy the new tensor into the viewed memory."""
        t = self._tensor() if which == "data" else self._get_grad()
        if t is None or t is mem.host:
            return
        t = t.detach()
        if t.shape != mem.host.shape:
            # a new shape (a Filter's batch): the kept memory follows while the new count fits (Caffe's Reshape)
            # (beyond it Caffe allocates anew, and the kept view is left with the old memory)
            kept = reshaped_memory(mem.host, t.shape)
            if kept is None:
                return
            mem.host = kept
        if t.data_ptr() != mem.host.data_ptr():
            # through .data: the memory may be saved by autograd (an input); its version counter stays
            mem.host.data.copy_(t)

    # read-only properties, as pycaffe's: write into them (`blob.data[...] = x`), never assign them
    @property
    def data(self) -> np.ndarray:
        return self._array("data")

    @property
    def diff(self) -> np.ndarray:
        return self._array("diff")

    @property
    def tensor(self) -> torch.Tensor:
        """The tensor itself (caffe_torch only). Assigning a tensor replaces it: same shape rules as
        `reshape`, moved to the net's device and dtype only if needed (no copy when they already match)."""
        return self._tensor()

    @tensor.setter
    def tensor(self, value: torch.Tensor) -> None:
        cur = self._tensor()
        if value.device != cur.device or value.dtype != cur.dtype:
            # host-to-device may overlap; device-to-host must block (the host tensor is read at once)
            value = value.to(device=cur.device, dtype=cur.dtype, non_blocking=cur.device.type != "cpu")
        mem = self._memory("data")
        # a host copy handed out before must not be uploaded over the new tensor at the next flush
        self._sync.to_device(mem)
        self._set(value)
        if mem.viewed() and value.device.type in self.zero_copy_devices and mem.host.shape == value.shape:
            with torch.no_grad():
                mem.host.data.copy_(value)          # kept views show the assigned value

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
        # a new shape is new memory: kept views (and host copies) no longer describe the blob
        for which in ("data", "diff"):
            self._sync.to_device(self._memory(which))
            self._sync.viewed.pop(id(self._memory(which)), None)
        self._mem = {"data": _Memory(), "diff": _Memory()}
        if cur.numel() == int(np.prod(shape)):
            self._set(cur.detach().reshape(shape).clone())
        else:
            self._set(torch.zeros(shape, dtype=cur.dtype, device=cur.device))
        self._set_grad(None)

    def __repr__(self) -> str:
        return f"<Blob shape={self.shape}>"


class _ActivationBlob(Blob):
    def _current(self, which: str) -> torch.Tensor:
        t = self._tensor() if which == "data" else self._grad_tensor(create=True)
        if not t.is_contiguous():
            # pycaffe hands out C-ordered arrays only: a strided result (a layer's view, a channels_last
            # activation) is replaced by a C-ordered copy, which is then the blob's memory
            t = t.contiguous()
            (self._set if which == "data" else self._set_grad)(t)
        return t.detach()

    def _adopt_memory(self, which: str, mem: _Memory) -> None:
        t = self._peek()
        if which == "data":
            if t is not mem.host and t.shape == mem.host.shape:
                self._set(mem.host)
        elif self._get_grad() is not mem.host and t.shape == mem.host.shape:
            # a backward that replaced the diff copied it into the memory (refresh); the memory is the diff again
            self._set_grad(mem.host)

    # SYNCED: an activation's (or input's) data tensor is replaced by every forward that computes it, and
    # changed in place only through its version counter; the same tensor at the same version is unchanged
    def _mark_synced(self, which: str, mem: _Memory) -> None:
        if which == "data":
            t = self._peek()
            mem.synced = (weakref.ref(t), t._version)

    def _in_sync(self, which: str, mem: _Memory) -> bool:
        if which != "data" or mem.synced is None:
            return False
        ref, version = mem.synced
        t = self._peek()
        return ref() is t and t._version == version


class _ParamBlob(Blob):
    """A learnable blob: its memory hangs off the parameter (one per parameter, however many nets share it).
    On the CPU `.data` is the parameter itself, so there is nothing to keep live; `.diff` is its `.grad`,
    kept in place while viewed (see `clear_param_diff`, `set_param_diff`)."""

    def __init__(self, sync, module, index, get, set_, get_grad, set_grad):
        super().__init__(sync, get, set_, get_grad, set_grad)
        self._module, self._index = module, index

    def _memory(self, which: str) -> _Memory:
        return param_memory(self._module.blobs[self._index], which)

    def _follows_tensor(self, which: str) -> bool:
        return which == "data"

    def _refresh(self, which: str, mem: _Memory) -> None:
        # the data is the parameter itself; the diff is .grad, kept in place: if something replaced it,
        # copy the new gradient into the kept one and put that back
        g = self._get_grad()
        if which == "diff" and g is not mem.host and mem.host is not None:
            if g is not None and g.shape == mem.host.shape:
                mem.host.copy_(g)
            self._set_grad(mem.host)


def param_memory(p: torch.Tensor, which: str) -> _Memory:
    """The memory of side `which` of parameter `p`, created on first use (it lives on the parameter, as
    Caffe's SyncedMemory lives in the Blob that nets share)."""
    mems = p.__dict__.get("_caffe_memory")
    if mems is None:
        mems = p._caffe_memory = {"data": _Memory(), "diff": _Memory()}
    return mems[which]


def share_param_data(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Caffe's Blob::ShareData between the parameters of two nets (ShareTrainedLayersWith): `dst` uses `src`'s
    storage and its data memory (one host copy), and keeps its own diff."""
    with torch.no_grad():
        dst.data = src.data
    mems = dst.__dict__.get("_caffe_memory")
    diff = mems["diff"] if mems is not None else _Memory()
    dst._caffe_memory = {"data": param_memory(src, "data"), "diff": diff}


def clear_param_diff(sync: _HostSync, p: torch.Tensor) -> None:
    """Caffe's ClearParamDiffs for one parameter (`mutable_*_diff` + zero): a host copy of the diff is
    dropped, not uploaded; a kept diff view on the CPU is zeroed in place (it is `.grad`), else `.grad` is
    dropped (None: torch accumulates into a fresh one)."""
    mem = p.__dict__.get("_caffe_memory", {}).get("diff")
    if mem is None:
        p.grad = None
        return
    sync.to_device(mem)
    if mem.viewed() and p.grad is not None and p.grad is mem.host:
        p.grad.zero_()
    else:
        p.grad = None


def set_param_diff(p: torch.Tensor, value: torch.Tensor) -> None:
    """`p.grad = value`, in place when a diff view of `p` is kept on the CPU (so the view shows it)."""
    mem = p.__dict__.get("_caffe_memory", {}).get("diff")
    if mem is not None and mem.viewed() and p.grad is not None and p.grad is mem.host:
        p.grad.copy_(value)
    else:
        p.grad = value
        if mem is not None:
            mem.head = DEVICE


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

    return _ParamBlob(sync, module, index, get, set_, get_grad, set_grad)
