"""A small ONNX graph builder: named nodes, float32 initializers, and the few ops whose form changed between
opsets (the Reduce* axes became an input in opset 18) written once.

Tensor names: a Caffe blob keeps its name; a blob rewritten in place gets `<layer>/<blob>` for every version but
the last (see convert.py), and the helper tensors a rule needs are `<layer>/<what>`, so a graph viewer (Netron)
shows the Caffe net's names.
"""

from collections.abc import Sequence

import numpy as np

MIN_OPSET = 13          # Softmax over one axis, Split with sizes as an input, ReduceSum axes as an input
MAX_OPSET = 21
DEFAULT_OPSET = 17      # the embedder's STFT needs 17


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`, ... if taken; added to `taken`."""
    cand, i = name, 0
    while cand in taken:
        i += 1
        cand = f"{name}_{i}"
    taken.add(cand)
    return cand


class Graph:
    """Nodes and initializers of one ONNX graph under construction, for opset `opset`."""

    def __init__(self, opset: int = DEFAULT_OPSET):
        from onnx import helper

        if not MIN_OPSET <= opset <= MAX_OPSET:
            raise ValueError(f"--opset {opset}: the exporter writes opsets {MIN_OPSET} to {MAX_OPSET}")
        self.opset = opset
        self.helper = helper
        self.nodes = []
        self.initializers = []
        self.inputs = []
        self.outputs = []
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._consts: dict[tuple, str] = {}

    # ------------------------------------------------------------------ names and tensors
    def fresh(self, name: str) -> str:
        """`name`, or `name_1`, `name_2`, ... if taken."""
        return _unique(name, self._names)

    def claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"tensor name {name!r} used twice")
        self._names.add(name)
        return name

    def const(self, value, name: str, dtype=np.float32) -> str:
        """An initializer holding `value` (as `dtype`); identical small constants are shared."""
        from onnx import numpy_helper

        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = None
        if array.size <= 16:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        tname = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(array, tname))
        if key is not None:
            self._consts[key] = tname
        return tname

    def ints(self, values: Sequence[int], name: str) -> str:
        return self.const(list(values), name, np.int64)

    def add_input(self, name: str, elem_type, shape) -> None:
        self.claim(name)
        self.inputs.append(self.helper.make_tensor_value_info(name, elem_type, list(shape)))

    def add_output(self, name: str, elem_type, shape) -> None:
        self.outputs.append(self.helper.make_tensor_value_info(name, elem_type, list(shape)))

    # ------------------------------------------------------------------ nodes
    def op(self, op_type: str, inputs: Sequence[str], name: str, outputs: Sequence[str] | int = 1,
           **attrs) -> str | list[str]:
        """Add one node named `name` (made unique); `outputs` are names (claimed as given) or a count (then
        named `name`, `name_1`, ...). Returns the output name (one output) or the list."""
        if isinstance(outputs, int):
            outs = [self.fresh(name) for _ in range(outputs)]
        else:
            outs = [self.claim(o) for o in outputs]
        # node names live in their own namespace; unique too
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=_unique(name, self._node_names),
                                                **attrs))
        return outs[0] if len(outs) == 1 else outs

    def reduce(self, op_type: str, x: str, axes: Sequence[int], name: str, keepdims: bool = True,
               outputs=1) -> str:
        """Reduce{Sum,Mean,Max,L1,L2,SumSquare} over `axes`: axes an attribute before opset 18 (13 for ReduceSum),
        an input from then on."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, [x, self.ints(axes, f"{name}/axes")], name, outputs, keepdims=int(keepdims))
        return self.op(op_type, [x], name, outputs, axes=list(axes), keepdims=int(keepdims))

    def reshape(self, x: str, shape: Sequence[int], name: str, outputs=1) -> str:
        """ONNX Reshape: 0 copies the input's dimension at that index, -1 is inferred."""
        return self.op("Reshape", [x, self.ints(shape, f"{name}/shape")], name, outputs)

    def model(self, name: str, doc: str = ""):
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="caffe_torch.export",
                                  doc_string=doc)
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model
