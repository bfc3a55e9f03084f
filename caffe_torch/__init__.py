"""caffe_torch: Caffe prototxt nets and solvers on PyTorch, behind pycaffe's API.

    import caffe_torch as caffe
    caffe.set_mode_gpu(); caffe.set_device(0)
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = x
    out = net.forward()

It is pycaffe's API throughout: `caffe_torch.NetSpec`, `layers` (L), `params` (P), `to_proto`, `Layer` (the
base of `type: "Python"` layers), `layer_type_list()`, `io`, `Classifier`, `Detector`, `draw` (import
caffe_torch.draw). `python -m caffe_torch script.py` runs an unmodified pycaffe script with `import caffe`
bound to this package (see __main__.py).
"""

import importlib

from . import layers
from .errors import CaffeError, LayerError, PrototxtError, WeightsError
from .layers import known_types, layer_class, register
from .layers.python import Layer
from .mode import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .net import TEST, TRAIN, Net
from .net_spec import NetSpec, params, to_proto
from .proto import caffe_pb2
from .solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
)

# The version of Caffe whose Python API this reproduces (pycaffe's caffe.__version__ of BVLC Caffe 1.0).
__version__ = "1.0.0"

__all__ = [
    "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "CaffeError", "Layer", "LayerError", "NesterovSolver",
    "Net", "NetSpec", "PrototxtError", "RMSPropSolver", "SGDSolver", "TEST", "TRAIN", "WeightsError",
    "__version__", "caffe_pb2", "get_solver", "known_types", "layer_class", "layer_type_list", "layers",
    "params", "register", "set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed", "to_proto",
]


def layer_type_list() -> list[str]:
    """The layer types this engine runs (pycaffe's caffe.layer_type_list())."""
    return known_types()


# Modules written separately (caffe.io, caffe.Classifier, caffe.Detector): imported on first use, so that a
# missing optional dependency of one of them does not stop `import caffe_torch`.
_LAZY = {"io": ("io", None), "Classifier": ("classifier", "Classifier"), "Detector": ("detector", "Detector")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    try:
        module = importlib.import_module(f".{module_name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module_name}":
            raise
        raise AttributeError(f"caffe_torch.{name} is not available in this tree (no caffe_torch/"
                             f"{module_name}.py)") from None
    return module if attr is None else getattr(module, attr)

# pycaffe exposes the generated protobuf module as caffe.proto.caffe_pb2; `from caffe_torch.proto import
# caffe_pb2` works the same here.

