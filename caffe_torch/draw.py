"""Draw a NetParameter as a graph (pycaffe's caffe.draw): layers as boxes, blobs as octagons.

    from caffe_torch import draw
    draw.draw_net_to_file(net_param, "net.png", rankdir="LR", phase=caffe_pb2.TRAIN)

Same functions and drawing as pycaffe: get_pydot_graph, draw_net (image bytes), draw_net_to_file (format
from the file's extension), get_layer_label, get_edge_label, get_layer_lr_mult, choose_color_by_layertype.
Rendering needs Graphviz's `dot` program; without it a clear RuntimeError says so. The extensions ".dot"
and ".raw" write the graph's DOT text, which needs no Graphviz.
"""

import pydot

from .proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}   # in-place layers
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
_LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def choose_color_by_layertype(layer_type: str) -> str:
    return _LAYER_COLORS.get(layer_type, LAYER_STYLE_DEFAULT["fillcolor"])


def get_edge_label(layer) -> str:
    """The label of a layer's top edges: batch size of Data, num_output of convolutions and InnerProduct."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer) -> tuple[float, float]:
    """(weights, bias) lr_mult of a Convolution, Deconvolution or InnerProduct layer (1 where not given)."""
    if layer.type not in _LEARNING_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    if len(layer.param) > 2:
        raise ValueError(f"layer '{layer.name}' has {len(layer.param)} param specs; expected at most 2")
    mults = [p.lr_mult for p in layer.param] + [1.0] * (2 - len(layer.param))
    return mults[0], mults[1]


def _first(values, default):
    """The first value of a repeated field (Caffe's convolution sizes), or its default when empty."""
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir: str, display_lrm: bool = False) -> str:
    """The quoted node label: name, (type), kernel/stride/pad of convolutions and pooling, lr mults."""
    sep = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        parts.append(f"({layer.type} {method})")
    else:
        parts.append(f"({layer.type})")
    if layer.type == "Pooling":
        pp = layer.pooling_param
        parts.append(sep.join([f"kernel size: {pp.kernel_size}", f"stride: {pp.stride}", f"pad: {pp.pad}"]))
    elif layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        parts.append(sep.join([f"kernel size: {_first(cp.kernel_size, 1)}", f"stride: {_first(cp.stride, 1)}",
                               f"pad: {_first(cp.pad, 0)}"]))
    if display_lrm and layer.type in _LEARNING_TYPES:
        w, b = get_layer_lr_mult(layer)
        if w or b:
            parts.append(f"lr mult: {w:.1f}, {b:.1f}")
    return '"' + sep.join(parts) + '"'


def _in_phase(layer, phase) -> bool:
    """pycaffe's draw filter: only the phase of include/exclude rules counts."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    included = not len(layer.include) or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(caffe_net, rankdir: str, label_edges: bool = True, phase=None,
                    display_lrm: bool = False) -> pydot.Dot:
    """The pydot graph of a NetParameter (layers of `phase` only, when given)."""
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, pydot.Node] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in caffe_net.layer:
        if not _in_phase(layer, phase):
            continue
        key = f"{layer.name}_{layer.type}"
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = NEURON_LAYER_STYLE if in_place \
            else dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        nodes[key] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", key, '""'))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((key, top + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def draw_net(caffe_net, rankdir: str, ext: str = "png", phase=None, display_lrm: bool = False) -> bytes:
    """The drawing as bytes in format `ext` (png, svg, pdf, ...; dot / raw: the DOT text)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in ("dot", "raw"):
        return graph.to_string().encode()
    try:
        return graph.create(format=ext)
    except FileNotFoundError as exc:
        raise RuntimeError(f"drawing a net as {ext!r} needs Graphviz's `dot` program, which is not installed "
                           f"({exc}); install Graphviz (e.g. apt-get install graphviz), or write a .dot file "
                           "and render it elsewhere") from None


def draw_net_to_file(caffe_net, filename: str, rankdir: str = "LR", phase=None, display_lrm: bool = False) -> None:
    """Draw into `filename`, in the format its extension names."""
    ext = str(filename).rsplit(".", 1)[-1]
    image = draw_net(caffe_net, rankdir, ext, phase, display_lrm)     # before opening: a failure leaves no file
    with open(filename, "wb") as f:
        f.write(image)
