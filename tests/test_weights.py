""".caffemodel files in Caffe's wire format: files assembled byte by byte from the documented field numbers
(new `layer` = 100, legacy V1 `layers` = 2 with blobs = 6, `shape` = 7, legacy num/channels/height/width =
1-4, packed float data = 5) load with the right values; round trip; truncated/corrupt files and mismatches
are clear errors that name the file and the layer."""

import struct

import numpy as np
import pytest
import torch

import caffe_torch as caffe
from caffe_torch.weights import read_caffemodel

# ----------------------------------------------------------------------------- a tiny protobuf encoder


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def f_varint(field: int, n: int) -> bytes:
    return key(field, 0) + varint(n)


def f_bytes(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def f_str(field: int, s: str) -> bytes:
    return f_bytes(field, s.encode())


def f_packed_floats(field: int, values) -> bytes:
    return f_bytes(field, struct.pack(f"<{len(values)}f", *values))


def f_unpacked_floats(field: int, values) -> bytes:
    return b"".join(key(field, 5) + struct.pack("<f", v) for v in values)


def blob_new(shape, values, packed=True) -> bytes:
    """BlobProto with shape (7: BlobShape{dim 1 packed int64}) and data (5)."""
    dims = f_bytes(1, b"".join(varint(d) for d in shape))
    data = f_packed_floats(5, values) if packed else f_unpacked_floats(5, values)
    return f_bytes(7, dims) + data


def blob_legacy(num, channels, height, width, values) -> bytes:
    return (f_varint(1, num) + f_varint(2, channels) + f_varint(3, height) + f_varint(4, width)
            + f_packed_floats(5, values))


def layer_new(name, type_, blobs) -> bytes:
    """LayerParameter: name 1, type 2, blobs 7; NetParameter.layer is field 100."""
    return f_bytes(100, f_str(1, name) + f_str(2, type_) + b"".join(f_bytes(7, b) for b in blobs))


def layer_v1(name, type_enum, blobs) -> bytes:
    """V1LayerParameter: name 4, type 5 (enum), blobs 6; NetParameter.layers is field 2."""
    return f_bytes(2, f_str(4, name) + f_varint(5, type_enum) + b"".join(f_bytes(6, b) for b in blobs))


NET = '''
name: "tiny"
input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" prelu_param { channel_shared: true } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }
'''


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET)
    return caffe.Net(str(path), caffe.TEST)


def values(n, offset=0.0):
    return [offset + 0.25 * i for i in range(n)]


def test_hand_assembled_caffemodel_loads(net, tmp_path):
    conv_w, conv_b = values(2 * 3 * 3 * 3), values(2, 100)
    fc_w, fc_b = values(3 * 8, -3), values(3, 7)
    data = (f_str(1, "tiny")
            + layer_new("data_ignored_by_name", "Input", [])
            + layer_new("conv", "Convolution", [blob_new((2, 3, 3, 3), conv_w), blob_new((2,), conv_b)])
            # a 0-axis blob: Caffe writes it with no shape at all
            + layer_new("prelu", "PReLU", [f_packed_floats(5, [0.5])])
            # unpacked floats must load too (protobuf accepts both encodings)
            + layer_new("fc", "InnerProduct", [blob_new((3, 8), fc_w, packed=False), blob_new((3,), fc_b)])
            + layer_new("not_in_net", "ReLU", []))
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(data)
    net.copy_from(str(path))
    np.testing.assert_array_equal(net.params["conv"][0].data.ravel(), np.float32(conv_w))
    np.testing.assert_array_equal(net.params["conv"][1].data, np.float32(conv_b))
    assert net.params["prelu"][0].data.shape == () and float(net.params["prelu"][0].data) == 0.5
    np.testing.assert_array_equal(net.params["fc"][0].data, np.float32(fc_w).reshape(3, 8))
    np.testing.assert_array_equal(net.params["fc"][1].data, np.float32(fc_b))


def test_legacy_v1_layers_and_4d_blob_shapes(net, tmp_path):
    conv_w, conv_b = values(54, 1), values(2, -1)
    fc_w, fc_b = values(24, 2), values(3, 5)
    # V1 enum values: CONVOLUTION = 4, INNER_PRODUCT = 14; legacy blobs are 4-D, padded with leading 1s
    data = (layer_v1("conv", 4, [blob_legacy(2, 3, 3, 3, conv_w), blob_legacy(1, 1, 1, 2, conv_b)])
            + layer_v1("fc", 14, [blob_legacy(1, 1, 3, 8, fc_w), blob_legacy(1, 1, 1, 3, fc_b)]))
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(data)
    net.copy_from(str(path))
    np.testing.assert_array_equal(net.params["conv"][0].data, np.float32(conv_w).reshape(2, 3, 3, 3))
    np.testing.assert_array_equal(net.params["conv"][1].data, np.float32(conv_b))
    np.testing.assert_array_equal(net.params["fc"][0].data, np.float32(fc_w).reshape(3, 8))
    np.testing.assert_array_equal(net.params["fc"][1].data, np.float32(fc_b))
    bad = tmp_path / "v1bad.caffemodel"
    bad.write_bytes(layer_v1("fc", 14, [blob_legacy(1, 1, 8, 3, fc_w), blob_legacy(1, 1, 1, 3, fc_b)]))
    with pytest.raises(caffe.WeightsError, match="layer 'fc'; shape mismatch"):
        net.copy_from(str(bad))


def test_our_files_are_caffe_wire_format(net, tmp_path):
    path = tmp_path / "ours.caffemodel"
    net.save(str(path))
    raw = path.read_bytes()
    # the bytes of conv's first blob as we would assemble them by hand (fields in number order, as
    # protobuf and Caffe write them: data 5 before shape 7)
    w = net.params["conv"][0].data
    w[...] = np.arange(54).reshape(w.shape) / 8
    net.save(str(path))
    raw = path.read_bytes()
    dims = f_bytes(1, b"".join(varint(d) for d in w.shape))
    assert f_packed_floats(5, w.ravel().tolist()) + f_bytes(7, dims) in raw
    assert f_str(1, "conv") + f_str(2, "Convolution") in raw
    param = read_caffemodel(path)
    assert [lp.name for lp in param.layer] == ["input", "conv", "prelu", "fc"]
    # a 0-axis blob is written without a shape, as Caffe writes it, and reads back
    assert not param.layer[2].blobs[0].HasField("shape")
    path2 = tmp_path / "tiny.prototxt"
    other = caffe.Net(str(path2), str(path), caffe.TRAIN)
    for name in ("conv", "prelu", "fc"):
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_count_and_shape_mismatch_name_the_layer(net, tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(layer_new("fc", "InnerProduct", [blob_new((3, 8), values(24))]))
    with pytest.raises(caffe.WeightsError, match=r"m.caffemodel.*number of blobs for layer 'fc'.*file has 1"):
        net.copy_from(str(path))
    path.write_bytes(layer_new("fc", "InnerProduct", [blob_new((4, 6), values(24)),
                                                      blob_new((3,), values(3))]))
    with pytest.raises(caffe.WeightsError, match=r"layer 'fc'; shape mismatch.*\(4, 6\).*\(3, 8\)"):
        net.copy_from(str(path))
    path.write_bytes(layer_new("fc", "InnerProduct", [blob_new((3, 8), values(23)),
                                                      blob_new((3,), values(3))]))
    with pytest.raises(caffe.WeightsError, match="holds 23 values"):
        net.copy_from(str(path))


def test_truncated_empty_corrupt_and_missing_files(net, tmp_path):
    good = layer_new("fc", "InnerProduct", [blob_new((3, 8), values(24)), blob_new((3,), values(3))])
    path = tmp_path / "t.caffemodel"
    for cut in (len(good) - 1, len(good) // 2, 3):
        path.write_bytes(good[:cut])
        with pytest.raises(caffe.WeightsError, match="t.caffemodel"):
            net.copy_from(str(path))
    path.write_bytes(b"")
    with pytest.raises(caffe.WeightsError, match="empty"):
        net.copy_from(str(path))
    path.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(caffe.WeightsError, match="t.caffemodel"):
        net.copy_from(str(path))
    path.write_bytes(f_str(1, "only a name"))
    with pytest.raises(caffe.WeightsError, match="no layers"):
        net.copy_from(str(path))
    with pytest.raises(caffe.WeightsError, match="no such"):
        net.copy_from(str(tmp_path / "missing.caffemodel"))


def test_float64_net_round_trip(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET)
    a = caffe.Net(str(path), caffe.TEST, dtype=torch.float64)
    a.save(str(tmp_path / "a.caffemodel"))
    b = caffe.Net(str(path), str(tmp_path / "a.caffemodel"), caffe.TEST, dtype=torch.float64)
    np.testing.assert_array_equal(b.params["fc"][0].data, a.params["fc"][0].data.astype(np.float32))


def test_packed_blob_bytes_equal_protobufs_own_encoding():
    """array_to_blob writes the values as packed wire bytes from NumPy: the same bytes protobuf makes from a
    list of floats (empty and 0-axis blobs included), and float64 history exactly (double_data)."""
    import torch

    from caffe_torch.proto import caffe_pb2
    from caffe_torch.weights import array_to_blob, blob_to_array

    rng = np.random.default_rng(0)
    for shape in [(), (0,), (3,), (4, 5, 3, 3), (1000,)]:
        a = np.asarray(rng.standard_normal(shape), dtype=np.float64)
        reference = caffe_pb2.BlobProto()
        if a.ndim:                  # a 0-axis blob has no shape field (as Caffe writes it)
            reference.shape.dim.extend(a.shape)
        reference.data.extend(a.astype(np.float32).ravel().tolist())
        assert array_to_blob(torch.from_numpy(a)).SerializeToString() == reference.SerializeToString()
        exact = array_to_blob(torch.from_numpy(a), keep_double=True)
        assert len(exact.data) == 0 and np.array_equal(blob_to_array(exact), a)


def test_snapshot_wire_pieces_are_the_bytes_of_the_messages():
    """A .caffemodel and a .solverstate written from NumPy memory (net_to_wire, blobs_message) hold the bytes
    protobuf serialises from the messages with their values as lists (float32 and float64 history)."""
    import importlib.util
    from pathlib import Path

    import torch

    from caffe_torch.net import TRAIN, Net
    from caffe_torch.proto import caffe_pb2
    from caffe_torch.weights import blobs_message, net_to_wire

    # the reference: the message built the way of before issue 21 (bench/bench_snapshot.py times both)
    path = Path(__file__).resolve().parent.parent / "bench" / "bench_snapshot.py"
    spec = importlib.util.spec_from_file_location("bench_snapshot", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net = Net("prototxt/demo/ResNet-20_lm.prototxt", TRAIN)
    assert b"".join(net_to_wire(net)) == bench.legacy_net_to_wire(net).SerializeToString()

    history = [torch.randn(3, 2, dtype=torch.float64), torch.zeros(0), torch.randn(4)]
    state = caffe_pb2.SolverState(iter=3, learned_net="x.caffemodel", current_step=1, learned_net_sha256=b"d")
    state.layer_state.add(layer="margin", net="train", counter=7)
    expected = caffe_pb2.SolverState()
    expected.CopyFrom(state)
    for h in history:
        blob = expected.history.add()
        blob.shape.dim.extend(h.shape)
        (blob.double_data if h.dtype == torch.float64 else blob.data).extend(h.numpy().ravel().tolist())
    assert b"".join(blobs_message(state, 3, history, keep_double=True)) == expected.SerializeToString()
