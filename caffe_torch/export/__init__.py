"""Export a Caffe net (prototxt + .caffemodel) to ONNX or TorchScript: `python -m caffe_torch.export --help`.

    from caffe_torch.export import build_net, make_plan, to_onnx, to_torchscript
    net, where = build_net("deploy.prototxt", "weights.caffemodel", "TEST", {"data": (1, 3, 227, 227)})
    plan = make_plan(net, where, dynamic={"data": frozenset({0})})
    onnx.save(to_onnx(plan, opset=17, name=net.name), "model.onnx")

One export rule per layer type (rules_*.py), registered by type string; refused types in refused.py. Needs the
optional packages of requirements-export.txt (onnx; onnxruntime to run the result).
"""

from . import refused, rules_common, rules_fork, rules_neuron, rules_utility, rules_vision  # noqa: F401
from .convert import ExportedNet, Plan, build_net, deploy_net, make_plan, parse_shape, to_onnx, to_torchscript
from .registry import ExportError, export_table

__all__ = ["ExportError", "ExportedNet", "Plan", "build_net", "deploy_net", "export_table", "make_plan", "parse_shape",
           "to_onnx", "to_torchscript"]
