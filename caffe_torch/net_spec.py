"""pycaffe's NetSpec: write a net in Python and get its NetParameter (`caffe.NetSpec`, `caffe.layers`,
`caffe.params`, `caffe.to_proto`), with pycaffe's behaviour:

    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[8, 1, 28, 28]), dict(dim=[8])], ntop=2)
    n.ip = L.InnerProduct(n.data, num_output=10, weight_filler=dict(type="xavier"))
    n.relu = L.ReLU(n.ip, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu, n.label)
    print(n.to_proto())

- `L.<Type>(*bottoms, **fields)` is a layer of that type; it returns its one top, a tuple of `ntop` tops, or
  the layer itself when `ntop=0`. `in_place=True` makes the tops the bottoms.
- A keyword is a field of the type's own `<type>_param` message (e.g. `num_output` of `inner_product_param`)
  if that message has it; a keyword ending in "param" (`param=`, `include=`, `transform_param=`, ...) or any
  other LayerParameter field (`loss_weight=`, `propagate_down=`) goes to the LayerParameter itself. Values: a
  dict is a message, a list a repeated field (a list of dicts: repeated messages), and a scalar given to a
  repeated field is a one-element list.
- Names: a top assigned to a NetSpec attribute is named after it, and so is the layer (after its first
  top); anything else gets `<Type><k>` with a counter per type, in the order `to_proto` meets it.
- `P.<Type>.<CONSTANT>` is the enum value of `<Type>Parameter` (e.g. `P.Pooling.MAX`).

The attribute names (`Top.fn`, `Top.n`, `Function.type_name/inputs/params/ntop/in_place/tops`) are pycaffe's,
so code that walks a spec (BVLC's coord_map) sees the same objects.
"""

from collections import Counter, OrderedDict

from .proto import caffe_pb2


def _type_to_param_field() -> dict[str, str]:
    """{layer type: LayerParameter field prefix}, from the message type of every `*_param` field, e.g.
    "Convolution" -> "convolution" (ConvolutionParameter) and "Pooling" -> "pooling"."""
    mapping = {}
    for fd in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if fd.name.endswith("_param") and fd.message_type is not None:
            type_name = fd.message_type.name
            if type_name.endswith("Parameter"):
                mapping[type_name[:-len("Parameter")]] = fd.name[:-len("_param")]
    return mapping


_PARAM_FIELD = _type_to_param_field()


def assign_proto(message, name: str, value) -> None:
    """Set field `name` of `message` from a Python value (dict = message, list = repeated, scalar given to a
    repeated field = one-element list). AttributeError when the message has no such field."""
    field = getattr(message, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                sub = field.add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            assign_proto(field, k, v)
    else:
        setattr(message, name, value)


class Top:
    """One output blob of a layer: output `n` of Function `fn`."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer this top needs."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its bottoms (Tops) and its fields; `ntop` and `in_place` are taken out of the
    fields (they say how many tops, and whether they are the bottoms)."""

    def __init__(self, type_name: str, inputs, params: dict):
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, i) for i in range(self.ntop))

    def _auto_name(self, autonames: Counter) -> str:
        autonames[self.type_name] += 1
        return f"{self.type_name}{autonames[self.type_name]}"

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            names[top] = top.fn._auto_name(autonames)
        return names[top]

    def _layer_name(self, names: dict, autonames: Counter) -> str:
        # a layer is named after its first top; a layer without tops gets its own counter name
        if self not in names:
            names[self] = self._top_name(self.tops[0], names, autonames) if self.ntop > 0 \
                else self._auto_name(autonames)
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)          # bottoms first: the layer order is a topological one
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._layer_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer, key: str, value) -> None:
        if not key.endswith("param") and self.type_name in _PARAM_FIELD:
            try:
                assign_proto(getattr(layer, _PARAM_FIELD[self.type_name] + "_param"), key, value)
                return
            except AttributeError:
                pass          # not a field of the type's own message: a LayerParameter field (loss_weight, ...)
        assign_proto(layer, key, value)


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """The NetParameter of every layer the given tops need, with automatic names."""
    layers: OrderedDict = OrderedDict()
    names: dict = {}
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (or items) by name; `to_proto()` writes the layers they need, the
    assigned tops and their layers named after the attributes."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.__dict__["tops"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getitem__(self, name: str):
        return self.tops[name]

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {top: name for name, top in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`layers.<Type>(*bottoms, **fields)`: a layer of that type (see the module docstring)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def make(*bottoms, **fields):
            fn = Function(type_name, bottoms, fields)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops

        return make


class _EnumValues:
    def __init__(self, message_name: str):
        self._message = getattr(caffe_pb2, message_name)

    def __getattr__(self, constant: str):
        return getattr(self._message, constant)


class Parameters:
    """`params.<Type>.<CONSTANT>`: the enum constant of `<Type>Parameter`, e.g. `params.Pooling.MAX`."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _EnumValues(type_name + "Parameter")


layers = Layers()
params = Parameters()
