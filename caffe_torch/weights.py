"""Binary .caffemodel and .solverstate files: Caffe's wire format, read and written with our caffe_pb2.

Since our caffe.proto numbers every field as Caffe does, protobuf's own (de)serialisation is the Caffe
format; this module adds the rules around it: legacy V1 `layers` and 4-D legacy blob shapes, copying by layer
name with Caffe's errors, and atomic writes (temp file + rename) so a crash never leaves a half snapshot.
"""

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError

from .errors import WeightsError
from .proto import caffe_pb2


class WireChunks(list):
    """A message already serialised, as a list of bytes-like pieces in order (protobuf's wire format): the
    pieces may be NumPy memory itself (a snapshot's blobs), so no serialised copy of the whole is made."""


def write_proto_atomic(message, path) -> None:
    """Serialise `message` (or write WireChunks) to `path` via a temporary file in the same directory and an
    atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pieces = message if isinstance(message, WireChunks) else [message.SerializeToString()]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it what open() would (0666 less the umask), as Caffe's files
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_proto(path, message, what: str):
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read {what}: {exc}") from None
    if not data:
        raise WeightsError(f"{path}: empty {what} file")
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not a valid {what} (truncated or corrupt: {exc})") from None
    return message


def read_caffemodel(path) -> "caffe_pb2.NetParameter":
    param = _read_proto(path, caffe_pb2.NetParameter(), ".caffemodel")
    if not len(param.layer) and not len(param.layers):
        raise WeightsError(f"{path}: not a valid .caffemodel (it parses, but holds no layers)")
    if len(param.layer) and len(param.layers):
        raise WeightsError(f"{path}: holds both 'layer' and legacy V1 'layers' fields (Caffe refuses it)")
    return param


def read_solverstate(path) -> "caffe_pb2.SolverState":
    return _read_proto(path, caffe_pb2.SolverState(), ".solverstate")


def file_sha256(path) -> bytes:
    """SHA-256 digest of a file's bytes (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def solverstate_weights(state_file, state: "caffe_pb2.SolverState | None" = None) -> Path | None:
    """The .caffemodel of a .solverstate: the file `learned_net` names, taken from the .solverstate's own
    folder whatever folder `learned_net` gives (Caffe writes the path the snapshot_prefix gave, often absolute:
    a run moved or copied elsewhere would otherwise restore the weights of whatever run now lives there).
    When the state carries the digest caffe_torch writes (learned_net_sha256), the file must match it. None for
    a state without learned_net (Caffe then keeps the net's weights). WeightsError names the files otherwise."""
    state_file = Path(state_file)
    state = read_solverstate(state_file) if state is None else state
    if not state.HasField("learned_net"):
        return None
    model = state_file.parent / Path(state.learned_net).name
    if not model.is_file():
        raise WeightsError(f"{state_file}: its weights {model} are missing (a snapshot's .caffemodel must stay "
                           f"beside its .solverstate; the state names {state.learned_net})")
    if state.HasField("learned_net_sha256"):
        try:
            digest = file_sha256(model)
        except OSError as exc:
            raise WeightsError(f"{model}: cannot read .caffemodel: {exc.strerror or exc}") from None
        if digest != state.learned_net_sha256:
            raise WeightsError(f"{model} is not the .caffemodel {state_file.name} was written with (its SHA-256 "
                               "differs: overwritten by another run, or an interrupted snapshot)")
    return model


# ---------------------------------------------------------------------- blobs

def has_legacy_shape(blob: "caffe_pb2.BlobProto") -> bool:
    """Caffe's rule: any of num/channels/height/width present means the legacy 4-D shape is used."""
    return any(blob.HasField(f) for f in ("num", "channels", "height", "width"))


def blob_shape(blob: "caffe_pb2.BlobProto") -> tuple[int, ...]:
    """The blob's shape: the legacy (num, channels, height, width) if any of them is present (as Caffe's
    Blob::FromProto), else `shape.dim` (empty for a 0-axis blob, which Caffe writes without `shape`)."""
    if has_legacy_shape(blob):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def blob_to_array(blob: "caffe_pb2.BlobProto", where: str = "") -> np.ndarray:
    shape = blob_shape(blob)
    if len(blob.double_data):
        data = np.asarray(blob.double_data, dtype=np.float64)
    else:
        data = np.asarray(blob.data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise WeightsError(f"{where}: blob of shape {shape} holds {data.size} values (corrupt file)")
    return data.reshape(shape)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# BlobProto's packed repeated fields (caffe.proto): data = 5 (float), double_data = 8 (double)
_PACKED_FIELDS = {np.float32: 5, np.float64: 8}


def _host_array(array, keep_double: bool) -> np.ndarray:
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if not (keep_double and a.dtype == np.float64):
        a = a.astype(np.float32, copy=False)
    # np.asarray(order="C"), not np.ascontiguousarray: the latter turns a 0-axis blob into shape (1,)
    return np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")


def _blob_pieces(array, keep_double: bool = False) -> list:
    """A BlobProto's wire bytes, in field-number order as protobuf writes them: float `data` (5) then `shape`
    (7), or `shape` then `double_data` (8) for a float64 array with `keep_double` (Blob<double>::ToProto, an
    exact round trip). The values are the array's own memory (NumPy), never a list of Python floats."""
    a = _host_array(array, keep_double)
    shape = caffe_pb2.BlobProto()
    if a.ndim:              # Caffe writes a 0-axis blob with no `shape` field at all
        shape.shape.dim.extend(int(d) for d in a.shape)
    values = memoryview(a).cast("B")
    number = _PACKED_FIELDS[a.dtype.type]
    field = [_varint(number << 3 | 2) + _varint(len(values)), values] if len(values) else []
    return field + [shape.SerializeToString()] if number < 7 else [shape.SerializeToString()] + field


def array_to_blob(array, blob: "caffe_pb2.BlobProto | None" = None, *,
                  keep_double: bool = False) -> "caffe_pb2.BlobProto":
    """The array as a BlobProto (float `data`; with `keep_double`, a float64 array as `double_data`), parsed
    from its wire bytes (_blob_pieces) by protobuf in C."""
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    blob.MergeFromString(b"".join(_blob_pieces(array, keep_double)))
    return blob


def _field(number: int, pieces: list) -> list:
    """A length-delimited field (a sub-message) of the given pieces."""
    return [_varint(number << 3 | 2) + _varint(sum(len(p) for p in pieces)), *pieces]


def _around(message, number: int, fields: list) -> list:
    """The pieces of `message` (which holds nothing in field `number`) with `fields` put where field `number`
    goes: its fields numbered below, the given ones, its fields numbered above."""
    head, tail = type(message)(), type(message)()
    head.CopyFrom(message)
    tail.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        (tail if descriptor.number < number else head).ClearField(descriptor.name)
    return [head.SerializeToString(), *fields, tail.SerializeToString()]


def blobs_message(message, number: int, arrays, keep_double: bool = False) -> WireChunks:
    """`message` with `arrays` as its repeated BlobProto field `number` (e.g. a SolverState's history), as
    WireChunks: the bytes SerializeToString would give, without building the blobs' values in protobuf."""
    return WireChunks(_around(message, number, [piece for a in arrays
                                                for piece in _field(number, _blob_pieces(a, keep_double))]))


def _legacy_equal(target_shape: tuple[int, ...], blob: "caffe_pb2.BlobProto") -> bool:
    # Caffe's Blob::ShapeEquals for a legacy proto: the target padded to 4 axes with leading 1s.
    if len(target_shape) > 4:
        return False
    padded = (1,) * (4 - len(target_shape)) + tuple(target_shape)
    return padded == (blob.num, blob.channels, blob.height, blob.width)


# ---------------------------------------------------------------------- nets

def source_layers(net_param) -> list[tuple[str, list]]:
    """(layer name, blobs) of every layer of a weights file, new-style `layer` or legacy V1 `layers`."""
    out = [(lp.name, list(lp.blobs)) for lp in net_param.layer]
    out += [(lp.name, list(lp.blobs)) for lp in net_param.layers]
    return out


def copy_weights(net, net_param, path: str = "") -> None:
    """Caffe's CopyTrainedLayersFrom: same-named layers get the file's blobs; count or shape mismatch is an
    error; layers absent from the file keep their fillers; file layers absent from the net are ignored."""
    mine = dict(zip(net._layer_names, net._layers))
    for name, blobs in source_layers(net_param):
        layer = mine.get(name)
        if layer is None:
            continue
        if len(blobs) != len(layer.blobs):
            raise WeightsError(f"{path}: incompatible number of blobs for layer '{name}': the file has "
                               f"{len(blobs)}, the net has {len(layer.blobs)}")
        for i, bp in enumerate(blobs):
            target = layer.blobs[i]
            tshape = tuple(target.shape)
            ok = _legacy_equal(tshape, bp) if has_legacy_shape(bp) else blob_shape(bp) == tshape
            if not ok:
                raise WeightsError(f"{path}: cannot copy param {i} weights from layer '{name}'; shape "
                                   f"mismatch. Source param shape is {blob_shape(bp)}; target param shape is "
                                   f"{tshape}. "
                                   "To learn this layer's parameters from scratch rather than copying from a "
                                   "saved net, rename the layer.")
            values = blob_to_array(bp, f"{path}: layer '{name}' blob {i}").reshape(tshape)
            with torch.no_grad():
                # np.array, not np.ascontiguousarray: the latter turns a 0-axis blob into shape (1,)
                target.copy_(torch.from_numpy(np.array(values, order="C")).to(target.dtype))


def net_to_wire(net) -> WireChunks:
    """The net as Caffe's Net::ToProto writes it (the layer definitions with their blobs), as WireChunks."""
    layers = []
    for lp, layer in zip(net._layer_params, net._layers):
        definition = caffe_pb2.LayerParameter()
        definition.CopyFrom(lp)
        del definition.blobs[:]
        layers += _field(100, blobs_message(definition, 7, layer.blobs))    # NetParameter.layer = 100
    return WireChunks(_around(caffe_pb2.NetParameter(name=net.name), 100, layers))
