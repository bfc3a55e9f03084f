"""caffe_torch: Caffe prototxt nets and solvers on PyTorch, behind pycaffe's API.

    import caffe_torch as caffe
    caffe.set_mode_gpu(); caffe.set_device(0)
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = x
    out = net.forward()
"""

from .errors import CaffeError, LayerError, PrototxtError, WeightsError
from .layers import known_types, layer_class, register
from .mode import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .net import TEST, TRAIN, Net
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

__all__ = [
    "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "CaffeError", "LayerError", "NesterovSolver", "Net",
    "PrototxtError", "RMSPropSolver", "SGDSolver", "TEST", "TRAIN", "WeightsError", "caffe_pb2",
    "get_solver", "known_types", "layer_class", "register", "set_device", "set_mode_cpu", "set_mode_gpu",
    "set_random_seed",
]

# pycaffe exposes the generated protobuf module as caffe.proto.caffe_pb2; `from caffe_torch.proto import
# caffe_pb2` works the same here.

