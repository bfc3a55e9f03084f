"""Export a Caffe net (prototxt + .caffemodel) to ONNX or TorchScript: `python -m caffe_torch.export --help`.

    from caffe_torch.export import build_net, make_plan, to_onnx, to_torchscript
    net, where = build_net("deploy.prototxt", "weights.caffemodel", "TEST", {"data": (1, 3, 227, 227)})
    plan = make_plan(net, where, dynamic={"data": frozenset({0})})
    onnx.save(to_onnx(plan, opset=17, name=net.name), "model.onnx")

One export rule per layer type (rules_*.py), registered by type string; refused types in refused.py. Needs the
optional packages of requirements-export.txt (onnx; onnxruntime to run the result).

Why ONNX nodes are written here rather than by torch.onnx.export of a module of the caffe_torch layers (tried
with PyTorch 2.13 offline): both of its exporters trace the layers' Python shape arithmetic (Caffe's count(),
the 0/-1 rules, the pooling output sizes) into constants. The TorchScript-based one (dynamo=False, deprecated)
wrote batch 2 into InnerProduct's reshape (GoogLeNet then fails at batch 3); the dynamo one (dynamo=True, needs
onnxscript) specialised the dynamic batch to 2. Written per layer, each Caffe size is computed once by
caffe_torch and only the batch is left to ONNX, the nodes carry the layer names, and the opset is ours to
choose. TorchScript traces the layers' own forward (convert.ExportedNet), where only int() conversions of sizes
could fix the batch, and the rules that need it (@torch_rule) avoid them; tests run both at two batch sizes.
"""

from . import refused, rules_common, rules_fork, rules_neuron, rules_utility, rules_vision  # noqa: F401
from .convert import ExportedNet, Plan, build_net, deploy_net, make_plan, parse_shape, to_onnx, to_torchscript
from .registry import ExportError, export_table

__all__ = ["ExportError", "ExportedNet", "Plan", "build_net", "deploy_net", "export_table", "make_plan", "parse_shape",
           "to_onnx", "to_torchscript"]
