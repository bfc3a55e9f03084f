"""`type: "Python"` layers: a user's `caffe.Layer` subclass, run on NumPy arrays as pycaffe runs it.

    layer { type: "Python" name: "scale" bottom: "x" top: "y"
            python_param { module: "my_layers" layer: "TimesTen" param_str: "10" } }

    class TimesTen(caffe.Layer):                 # my_layers.py, importable from sys.path
        def setup(self, bottom, top): self.k = float(self.param_str)
        def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)
        def forward(self, bottom, top): top[0].data[...] = self.k * bottom[0].data
        def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = self.k * top[0].diff

As in pycaffe: `setup` runs once when the net is built, `reshape` before every forward, and the layer sees
`self.param_str`, `self.phase` (caffe.TRAIN / caffe.TEST) and its learnable blobs as `self.blobs` (grown with
`self.blobs.add_blob(*shape)`, zero-filled, saved in .caffemodel files and updated by the solver like any
other layer's). `bottom[i]` / `top[i]` have `.data`, `.diff` (NumPy arrays), `.reshape(*shape)`, `.shape`,
`.count` and `num/channels/height/width`.

`python_param.share_in_parallel` is accepted and has no effect: caffe_torch builds one layer object per net,
as Caffe does without multi-GPU sharing.

The user's forward and backward become one `torch.autograd.Function`: autograd calls the user's backward with
the top diffs, and the bottom diffs it writes flow on to earlier layers. The parameter diffs the user writes
go straight into the parameters' gradients (Caffe's blob diffs), accumulating across backward passes only if
the user adds to them (pycaffe's semantics: the diff is the user's to write).
"""

import importlib

import numpy as np
import torch

from ..blob import Blob
from .base import Layer as _TorchLayer
from .base import register


class Layer:
    """pycaffe's `caffe.Layer`: the base class of Python layers. Override setup, reshape, forward, backward."""

    type = "Python"        # what `net.layers[i].type` says, as in pycaffe

    def __init__(self, param=None):
        # pycaffe builds the object itself and sets these; caffe_torch's Python layer sets them too
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = param.phase if param is not None else 0
        self.blobs = _ParamList(None)

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class ArrayBlob:
    """A bottom or top blob as a Python layer sees it: NumPy `.data` and `.diff` of one shape."""

    def __init__(self, data: np.ndarray, diff: np.ndarray | None = None):
        self._data = data
        self._diff = diff

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data[...] = value

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None:
            self._diff = np.zeros_like(self._data)
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        self.diff[...] = value

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if self._data.shape != shape:
            self._data = np.zeros(shape, dtype=self._data.dtype)
            self._diff = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def count(self) -> int:
        return int(self._data.size)

    num = property(lambda self: self.shape[0] if self.shape else 1)
    channels = property(lambda self: self.shape[1] if len(self.shape) > 1 else 1)
    height = property(lambda self: self.shape[2] if len(self.shape) > 2 else 1)
    width = property(lambda self: self.shape[3] if len(self.shape) > 3 else 1)


class _ParamView:
    """`self.blobs[i]` of a Python layer: NumPy views of the layer module's i-th parameter and its gradient.
    On a device NumPy cannot view (not in Blob.zero_copy_devices), host copies that `sync` writes back after
    each call into user code."""

    def __init__(self, module: "PythonLayer", index: int):
        self._module = module
        self._index = index
        self._host: dict[str, np.ndarray] = {}

    def _tensor(self, which: str) -> torch.Tensor:
        p = self._module.blobs[self._index]      # looked up each time: the net may share or replace it
        if which == "data":
            return p.data
        if p.grad is None:
            p.grad = torch.zeros_like(p.data)
        return p.grad

    def _array(self, which: str) -> np.ndarray:
        t = self._tensor(which)
        if t.device.type in Blob.zero_copy_devices:
            return t.numpy()
        host = self._host.get(which)
        if host is None or host.shape != tuple(t.shape):
            host = self._host[which] = t.cpu().numpy()
        return host

    def sync(self) -> None:
        for which, host in self._host.items():
            self._tensor(which).copy_(torch.from_numpy(host))
        self._host.clear()

    data = property(lambda self: self._array("data"), lambda self, v: self._array("data").__setitem__(..., v))
    diff = property(lambda self: self._array("diff"), lambda self, v: self._array("diff").__setitem__(..., v))
    shape = property(lambda self: tuple(self._module.blobs[self._index].shape))
    count = property(lambda self: int(self._module.blobs[self._index].numel()))

    def reshape(self, *shape) -> None:
        raise RuntimeError("caffe_torch: a Python layer's learnable blob cannot be reshaped after add_blob")


class _ParamList:
    """`self.blobs` of a Python layer: a list of parameter views with pycaffe's `add_blob(*shape)`."""

    def __init__(self, module: "PythonLayer | None"):
        self._module = module
        self._views: list[_ParamView] = []

    def add_blob(self, *shape) -> None:
        if self._module is None:
            raise RuntimeError("add_blob: this Python layer is not part of a net")
        self._module.add_blob([int(s) for s in shape])
        self._views.append(_ParamView(self._module, len(self._views)))

    def __getitem__(self, i):
        return self._views[i]

    def __len__(self) -> int:
        return len(self._views)

    def __iter__(self):
        return iter(self._views)

    def sync(self) -> None:
        for v in self._views:
            v.sync()


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    # a private host copy: the user may write into bottoms (Caffe lets it), which must not alter our tensors
    return t.detach().to("cpu", copy=True).numpy()


class _RunPython(torch.autograd.Function):
    """forward(layer module, number of bottoms, *bottoms, *params) -> tops via the user's reshape+forward;
    backward via the user's backward. The params are inputs only so that the tops require grad when a param
    does (Caffe runs a Python layer's backward for its param diffs even when no bottom needs one); the user
    writes their diffs directly."""

    @staticmethod
    def forward(ctx, module: "PythonLayer", n_bottoms: int, *inputs: torch.Tensor):
        bottoms = inputs[:n_bottoms]
        ctx.n_inputs = len(inputs)
        bottom = [ArrayBlob(_as_numpy(b)) for b in bottoms]
        top = module.user_tops()
        module.call_user("reshape", bottom, top)
        module.call_user("forward", bottom, top)
        ctx.module = module
        ctx.bottom_data = [b.data for b in bottom]
        ctx.top_data = [t.data.copy() for t in top]
        like = inputs[0] if inputs else None
        outs = tuple(module.to_tensor(t.data, like) for t in top)
        return outs if len(outs) != 1 else outs[0]

    @staticmethod
    def backward(ctx, *top_diffs):
        module = ctx.module
        top = [ArrayBlob(d.copy(), None if g is None else _as_numpy(g).reshape(d.shape))
               for d, g in zip(ctx.top_data, top_diffs)]
        bottom = [ArrayBlob(d) for d in ctx.bottom_data]
        propagate_down = list(ctx.needs_input_grad[2:2 + len(bottom)])
        module.call_user("backward", top, propagate_down, bottom)
        like = top_diffs[0]
        grads = [module.to_tensor(b.diff, like) if need else None for b, need in zip(bottom, propagate_down)]
        return (None, None, *grads, *[None] * (ctx.n_inputs - len(grads)))


@register("Python")
class PythonLayer(_TorchLayer):
    """Runs `python_param.layer` from `python_param.module` (imported from sys.path)."""

    shapes_from_data = True         # the user's reshape runs at every forward and may give its tops any shape
    runs_user_code = True

    num_bottoms = (0, None)
    num_tops = (0, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both `module` and `layer`")
        try:
            user_module = importlib.import_module(pp.module)
        except ImportError as exc:
            raise self.error(f"cannot import python_param.module '{pp.module}' ({exc}); is its folder on "
                             "sys.path / PYTHONPATH?") from None
        cls = getattr(user_module, pp.layer, None)
        if cls is None:
            raise self.error(f"module '{pp.module}' ({user_module.__file__}) has no class '{pp.layer}'")
        self.user = cls.__new__(cls)
        if isinstance(self.user, Layer):
            Layer.__init__(self.user, param)
        self.user.param_str = pp.param_str
        self.user.phase = ctx.phase
        self.user.blobs = _ParamList(self)
        self._top_arrays: list[ArrayBlob] = [ArrayBlob(np.zeros((0,), dtype=self._numpy_dtype()))
                                             for _ in param.top]
        self.call_user("setup", self._shape_only(bottom_shapes), self._top_arrays)

    # ---- helpers used by _RunPython
    def _numpy_dtype(self):
        return torch.empty((), dtype=self._ctx_dtype).numpy().dtype

    def _shape_only(self, shapes) -> list[ArrayBlob]:
        # bottoms for setup/reshape before any data exists: zeros of the right shape (a broadcast view, so a
        # large blob costs nothing) -- Caffe's blobs hold whatever came before, usually zeros too
        zero = np.zeros((), dtype=self._numpy_dtype())
        return [ArrayBlob(np.broadcast_to(zero, tuple(s))) for s in shapes]

    def user_tops(self) -> list[ArrayBlob]:
        return self._top_arrays

    def call_user(self, method: str, *args) -> None:
        """Call the user's method; an exception keeps its own type (pycaffe raises the user's exception) with
        a note naming the layer."""
        try:
            getattr(self.user, method)(*args)
        except Exception as exc:
            exc.add_note(f"in {type(self.user).__name__}.{method} of Python layer '{self.name}'"
                         + (f" ({self._where})" if self._where else ""))
            exc.caffe_torch_user_code = True      # the net re-raises it unwrapped
            raise
        finally:
            self.user.blobs.sync()

    def to_tensor(self, array: np.ndarray, like: torch.Tensor | None) -> torch.Tensor:
        device = like.device if like is not None else self._ctx_device
        return torch.tensor(np.array(array, dtype=self._numpy_dtype()), device=device)

    # ---- protocol
    def top_shapes(self, bottom_shapes):
        self.call_user("reshape", self._shape_only(bottom_shapes), self._top_arrays)
        return [t.shape for t in self._top_arrays]

    def forward(self, *bottoms):
        return _RunPython.apply(self, len(bottoms), *bottoms, *self.blobs)
