"""Data layers and the DataTransformer against NumPy references of Caffe's documented semantics (the real
build is compared in test_conformance_data.py)."""

import h5py
import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

import caffe_torch
from caffe_torch.errors import CaffeError
from caffe_torch.layers.data import set_input_arrays
from caffe_torch.proto import caffe_pb2
from caffe_torch.transform import resize_linear


def make_net(tmp_path, text, phase=caffe_torch.TEST, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return caffe_torch.Net(str(path), phase)


def layer(type_, tops, body, name="d"):
    tops = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {tops} {body} }}\n'


# ------------------------------------------------------------------------------------------ DummyData
def test_dummy_data_constant_and_refilled_gaussian(tmp_path):
    caffe_torch.set_random_seed(3)
    net = make_net(tmp_path, layer("DummyData", ["a", "b"], """dummy_data_param {
        shape { dim: 2 dim: 3 } shape { dim: 400 }
        data_filler { type: "constant" value: 1.5 } data_filler { type: "gaussian" std: 2 } }"""))
    first = {k: v.copy() for k, v in net.forward().items()}
    second = net.forward()
    np.testing.assert_array_equal(first["a"], np.full((2, 3), 1.5, np.float32))
    np.testing.assert_array_equal(second["a"], first["a"])
    assert second["b"].shape == (400,)
    assert not np.array_equal(first["b"], second["b"])          # non-constant fillers refill every forward
    assert abs(second["b"].std() - 2) < 0.3 and abs(second["b"].mean()) < 0.3


def test_dummy_data_constant_top_keeps_what_was_written_there(tmp_path):
    """Caffe's DummyDataLayer fills a constant top once (LayerSetUp) and its Forward leaves it alone: what an
    in-place layer or the script wrote into the blob is what the next forward starts from (real pycaffe gives
    3, 6, 14, 28 here); a non-constant top is refilled."""
    net = make_net(tmp_path, layer("DummyData", ["a", "g"], """dummy_data_param {
        shape { dim: 2 dim: 3 } shape { dim: 2 }
        data_filler { type: "constant" value: 1.5 } data_filler { type: "gaussian" std: 1 } }""") +
        'layer { name: "p" type: "Power" bottom: "a" top: "a" power_param { scale: 2 } }\n'
        'layer { name: "q" type: "Power" bottom: "g" top: "g" power_param { shift: 100 } }\n')
    net.forward()
    np.testing.assert_array_equal(net.blobs["a"].data, np.full((2, 3), 3, np.float32))
    net.forward()
    np.testing.assert_array_equal(net.blobs["a"].data, np.full((2, 3), 6, np.float32))
    assert np.abs(net.blobs["g"].data - 100).max() < 50     # refilled, then shifted once (not twice: 200)
    net.blobs["a"].data[...] = 7
    net.forward()
    np.testing.assert_array_equal(net.blobs["a"].data, np.full((2, 3), 14, np.float32))
    net.forward(start="p")
    np.testing.assert_array_equal(net.blobs["a"].data, np.full((2, 3), 28, np.float32))


def test_dummy_data_legacy_dims_and_default_zero(tmp_path):
    net = make_net(tmp_path, layer("DummyData", ["a", "b"], """dummy_data_param {
        num: 2 channels: 3 channels: 1 height: 4 width: 5 }"""))
    out = net.forward()
    assert out["a"].shape == (2, 3, 4, 5) and out["b"].shape == (2, 1, 4, 5)
    assert not out["a"].any() and not out["b"].any()


@pytest.mark.parametrize("body, message", [
    ('dummy_data_param { shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1 }', "both shape and legacy"),
    ('dummy_data_param { shape { dim: 2 } shape { dim: 3 } shape { dim: 4 } }', "specify 'shape' once"),
    ('dummy_data_param { shape { dim: 2 } data_filler {} data_filler {} data_filler {} }', "data fillers"),
])
def test_dummy_data_errors_name_the_layer(tmp_path, body, message):
    with pytest.raises(CaffeError, match=message) as exc:
        make_net(tmp_path, layer("DummyData", ["a", "b"], body))
    assert "net.prototxt:1" in str(exc.value) and "'d'" in str(exc.value)


# ------------------------------------------------------------------------------------------ MemoryData
MEMORY = layer("MemoryData", ["data", "label"], "memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }")


def test_memory_data_batches_in_order_and_wraps(tmp_path):
    net = make_net(tmp_path, MEMORY)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([5, 6, 7, 8], dtype=np.float32)
    set_input_arrays(net, data, labels)
    for start in (0, 2, 0):
        out = net.forward()
        np.testing.assert_array_equal(out["data"], data[start:start + 2])
        np.testing.assert_array_equal(out["label"], labels[start:start + 2].reshape(2, 1, 1, 1))
    # the arrays are kept, not copied (pycaffe keeps a reference): later writes show at the next pass
    data[2:] = -1
    np.testing.assert_array_equal(net.forward()["data"], np.full((2, 1, 2, 3), -1, np.float32))


def test_memory_data_warns_that_transform_param_is_not_applied(tmp_path):
    net = make_net(tmp_path, MEMORY.replace("memory_data_param", "transform_param { scale: 2 } memory_data_param"))
    data = np.ones((2, 1, 2, 3), np.float32)
    with pytest.warns(UserWarning, match=r"net.prototxt:1.*does not transform array data"):
        set_input_arrays(net, data, np.zeros(2, np.float32))
    np.testing.assert_array_equal(net.forward()["data"], data)


def test_memory_data_needs_arrays_and_checks_them(tmp_path):
    net = make_net(tmp_path, MEMORY)
    with pytest.raises(CaffeError, match="set_input_arrays"):
        net.forward()
    good = np.zeros((4, 1, 2, 3), np.float32)
    labels = np.zeros(4, np.float32)
    with pytest.raises(RuntimeError, match="float32"):
        set_input_arrays(net, good.astype(np.float64), labels)
    with pytest.raises(RuntimeError, match="wrong number of width"):
        set_input_arrays(net, np.zeros((4, 1, 2, 2), np.float32), labels)
    with pytest.raises(RuntimeError, match="multiple of batch size"):
        set_input_arrays(net, good[:3], labels[:3])
    with pytest.raises(RuntimeError, match="same first dimension"):
        set_input_arrays(net, good, labels[:2])
    with pytest.raises(RuntimeError, match="C contiguous"):
        set_input_arrays(net, np.zeros((4, 3, 2, 1), np.float32).transpose(0, 3, 2, 1), labels)
    other = make_net(tmp_path, layer("DummyData", ["x"], "dummy_data_param { shape { dim: 1 } }", name="x") + MEMORY,
                     name="o")
    with pytest.raises(RuntimeError, match="first layer is a MemoryDataLayer"):
        set_input_arrays(other, good, labels)


# ------------------------------------------------------------------------------------------ HDF5
def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)


def test_hdf5_data_reads_files_in_order_and_wraps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 2, 2))
    b = rng.standard_normal((2, 2, 2))
    write_h5("a.h5", data=a, label=np.arange(3, dtype=np.int32))
    write_h5("b.h5", data=b, label=np.arange(10, 12, dtype=np.int32))
    (tmp_path / "list.txt").write_text("a.h5\n  b.h5\n")
    net = make_net(tmp_path, layer("HDF5Data", ["data", "label"],
                                   'hdf5_data_param { source: "list.txt" batch_size: 4 }'))
    assert net.blobs["data"].shape == (4, 2, 2) and net.blobs["label"].shape == (4,)
    rows = np.concatenate([a, b])
    labels = np.array([0, 1, 2, 10, 11], np.float32)
    order = np.arange(12) % 5
    for k in range(3):
        out = net.forward()
        idx = order[4 * k:4 * k + 4]
        np.testing.assert_array_equal(out["data"], rows[idx].astype(np.float32))
        np.testing.assert_array_equal(out["label"], labels[idx])


def test_hdf5_data_shuffle_is_a_permutation_per_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5("a.h5", data=np.arange(6, dtype=np.float64)[:, None])
    (tmp_path / "list.txt").write_text("a.h5\n")
    caffe_torch.set_random_seed(1)
    net = make_net(tmp_path, layer("HDF5Data", ["data"], 'hdf5_data_param { source: "list.txt" batch_size: 3 '
                                                         'shuffle: true }'))
    seen = [net.forward()["data"].ravel().copy() for _ in range(4)]
    passes = [np.concatenate(seen[:2]), np.concatenate(seen[2:])]
    for p in passes:
        assert sorted(p) == list(range(6))
    assert any(not np.array_equal(p, np.arange(6)) for p in passes)


def test_hdf5_data_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5("a.h5", data=np.zeros((2, 1)))
    (tmp_path / "list.txt").write_text("a.h5\n")
    with pytest.raises(CaffeError, match=r"net.prototxt:1.*no dataset 'label'"):
        make_net(tmp_path, layer("HDF5Data", ["data", "label"], 'hdf5_data_param { source: "list.txt" batch_size: 1 }'))
    with pytest.raises(CaffeError, match="failed to open source file"):
        make_net(tmp_path, layer("HDF5Data", ["data"], 'hdf5_data_param { source: "nope.txt" batch_size: 1 }'))
    with pytest.raises(CaffeError, match="does not transform"):
        make_net(tmp_path, layer("HDF5Data", ["data"], 'hdf5_data_param { source: "list.txt" batch_size: 1 } '
                                                      'transform_param { scale: 2 }'))


def test_hdf5_output_writes_legacy_4d_float32_once(tmp_path):
    out_file = tmp_path / "out.h5"
    text = layer("DummyData", ["x", "y"], """dummy_data_param { shape { dim: 3 dim: 2 } shape { dim: 3 }
                 data_filler { type: "uniform" } }""") + \
        f'layer {{ name: "w" type: "HDF5Output" bottom: "x" bottom: "y" ' \
        f'hdf5_output_param {{ file_name: "{out_file}" }} }}'
    net = make_net(tmp_path, text)
    out = net.forward(blobs=["x", "y"])
    with h5py.File(out_file, "r") as f:
        assert f["data"].dtype == np.float32 and f["data"].shape == (3, 2, 1, 1)
        np.testing.assert_array_equal(f["data"][()].reshape(3, 2), out["x"])
        np.testing.assert_array_equal(f["label"][()].reshape(3), out["y"])
    with pytest.raises(CaffeError, match="one batch per file"):
        net.forward()


# ------------------------------------------------------------------------------------------ images
def save_png(path, rgb):
    Image.fromarray(rgb).save(path)


def reference_resize(hwc, height, width):
    """Bilinear resampling with OpenCV's half-pixel centres and edge clamping, in float64, rounded."""
    def taps(src, dst):
        f = (np.arange(dst) + 0.5) * src / dst - 0.5
        f = np.clip(f, 0, src - 1)
        i0 = np.floor(f).astype(int)
        i1 = np.minimum(i0 + 1, src - 1)
        return i0, i1, f - i0
    y0, y1, fy = taps(hwc.shape[0], height)
    x0, x1, fx = taps(hwc.shape[1], width)
    x = hwc.astype(np.float64)
    rows = x[:, x0] * (1 - fx)[None, :, None] + x[:, x1] * fx[None, :, None]
    return np.rint(rows[y0] * (1 - fy)[:, None, None] + rows[y1] * fy[:, None, None])


@pytest.mark.parametrize("src, dst", [((5, 7), (9, 4)), ((8, 8), (3, 5)), ((4, 6), (8, 12))])
def test_resize_linear_matches_float_bilinear_within_one_level(src, dst):
    rng = np.random.default_rng(sum(src + dst))
    img = rng.integers(0, 256, size=src + (3,), dtype=np.uint8)
    ours = resize_linear(img, *dst)
    assert ours.shape == dst + (3,) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - reference_resize(img, *dst)).max() <= 1
    np.testing.assert_array_equal(resize_linear(img, *src), img)


def image_list(tmp_path, n=4, size=(6, 7), gray=False):
    rng = np.random.default_rng(7)
    images = []
    lines = []
    for i in range(n):
        rgb = rng.integers(0, 256, size=size + (() if gray else (3,)), dtype=np.uint8)
        save_png(tmp_path / f"im{i}.png", rgb)
        images.append(rgb)
        lines.append(f"im{i}.png {10 + i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return images


def test_image_data_bgr_order_mean_scale_and_labels(tmp_path):
    images = image_list(tmp_path)
    net = make_net(tmp_path, layer("ImageData", ["data", "label"], f"""image_data_param {{
        source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 3 }}
        transform_param {{ mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 }}"""))
    assert net.blobs["data"].shape == (3, 3, 6, 7)
    mean = np.array([10, 20, 30], np.float32)[:, None, None]
    for k in range(2):
        out = net.forward()
        idx = [(3 * k + j) % 4 for j in range(3)]
        want = [(im[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) - mean) * np.float32(0.5)
                for im in (images[i] for i in idx)]
        np.testing.assert_array_equal(out["data"], np.stack(want))
        np.testing.assert_array_equal(out["label"], np.array([10 + i for i in idx], np.float32))


def test_image_data_gray_resize_and_centre_crop(tmp_path):
    images = image_list(tmp_path, n=2, size=(5, 6), gray=True)
    net = make_net(tmp_path, layer("ImageData", ["data", "label"], f"""image_data_param {{
        source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 2 is_color: false
        new_height: 9 new_width: 8 }} transform_param {{ crop_size: 4 }}"""))
    out = net.forward()
    assert out["data"].shape == (2, 1, 4, 4)
    for got, im in zip(out["data"], images):
        resized = reference_resize(im[:, :, None], 9, 8)[:, :, 0]
        # TEST phase: the centre window, offsets ((9 - 4) // 2, (8 - 4) // 2)
        assert np.abs(got[0] - resized[2:6, 2:6]).max() <= 1


def test_image_data_train_crop_and_mirror_are_windows_of_the_image(tmp_path):
    images = image_list(tmp_path, n=1, size=(6, 7), gray=True)
    caffe_torch.set_random_seed(5)
    net = make_net(tmp_path, layer("ImageData", ["data", "label"], f"""image_data_param {{
        source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 1 is_color: false }}
        transform_param {{ crop_size: 3 mirror: true }}"""), phase=caffe_torch.TRAIN)
    im = images[0].astype(np.float32)
    windows = {(y, x, m) for y in range(4) for x in range(5) for m in (0, 1)}
    seen = set()
    for _ in range(60):
        got = net.forward()["data"][0, 0]
        match = [(y, x, m) for (y, x, m) in windows
                 if np.array_equal(got, im[y:y + 3, x:x + 3][:, ::-1] if m else im[y:y + 3, x:x + 3])]
        assert match, "a TRAIN crop must be a (possibly mirrored) 3 x 3 window of the image"
        seen.add(match[0])
    assert len(seen) > 10 and {m for _, _, m in seen} == {0, 1}


def test_image_data_shuffle_and_list_errors(tmp_path):
    image_list(tmp_path, n=4)
    caffe_torch.set_random_seed(2)
    net = make_net(tmp_path, layer("ImageData", ["data", "label"], f"""image_data_param {{
        source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 4 shuffle: true }}"""))
    labels = [sorted(net.forward()["label"].tolist()) for _ in range(3)]
    assert all(lab == [10, 11, 12, 13] for lab in labels)
    (tmp_path / "bad.txt").write_text("im0.png 1\nim1.png\n")
    with pytest.raises(CaffeError, match=r"bad.txt:2: expected 'path label'"):
        make_net(tmp_path, layer("ImageData", ["data", "label"], f"""image_data_param {{
            source: "{tmp_path}/bad.txt" root_folder: "{tmp_path}/" }}"""))
    (tmp_path / "missing.txt").write_text("nothere.png 1\n")
    with pytest.raises(CaffeError, match="could not open or find file"):
        make_net(tmp_path, layer("ImageData", ["data", "label"], f"""image_data_param {{
            source: "{tmp_path}/missing.txt" root_folder: "{tmp_path}/" }}"""))


# ------------------------------------------------------------------------------------------ Data (LMDB)
def write_lmdb(path, datums):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()


def raw_datum(arr, label):
    d = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2], label=label)
    if arr.dtype == np.uint8:
        d.data = arr.tobytes()
    else:
        d.float_data.extend(arr.ravel().tolist())
    return d


def data_layer(tmp_path, source, batch, transform="", tops=("data", "label"), backend="LMDB"):
    return layer("Data", tops, f'data_param {{ source: "{source}" batch_size: {batch} backend: {backend} }} '
                               f"transform_param {{ {transform} }}")


def write_mean(path, mean):
    blob = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    blob.data.extend(mean.ravel().tolist())
    path.write_bytes(blob.SerializeToString())


def test_data_lmdb_raw_uint8_mean_file_centre_crop_wraps(tmp_path):
    rng = np.random.default_rng(4)
    arrs = [rng.integers(0, 256, size=(2, 5, 6), dtype=np.uint8) for _ in range(3)]
    write_lmdb(tmp_path / "db", [raw_datum(a, i) for i, a in enumerate(arrs)])
    mean = rng.uniform(0, 255, size=(2, 5, 6)).astype(np.float32)
    write_mean(tmp_path / "mean.binaryproto", mean)
    net = make_net(tmp_path, data_layer(tmp_path, tmp_path / "db", 2,
                                        f'crop_size: 3 mean_file: "{tmp_path}/mean.binaryproto" scale: 0.25'))
    assert net.blobs["data"].shape == (2, 2, 3, 3) and net.blobs["label"].shape == (2,)
    # centre: ((5 - 3) // 2, (6 - 3) // 2) = (1, 1); the mean file's window at the same place
    want = [(a.astype(np.float32)[:, 1:4, 1:4] - mean[:, 1:4, 1:4]) * np.float32(0.25) for a in arrs]
    seq = [0, 1, 2, 0, 1, 2]
    for k in range(3):
        out = net.forward()
        np.testing.assert_array_equal(out["data"], np.stack([want[i] for i in seq[2 * k:2 * k + 2]]))
        np.testing.assert_array_equal(out["label"], np.array(seq[2 * k:2 * k + 2], np.float32))


def test_two_nets_read_one_lmdb_independently(tmp_path):
    """A TRAIN and a TEST net (or any two) may read the same database: each keeps its own position."""
    arrs = [np.full((1, 1, 1), i, np.uint8) for i in range(3)]
    write_lmdb(tmp_path / "db", [raw_datum(a, i) for i, a in enumerate(arrs)])
    text = data_layer(tmp_path, tmp_path / "db", 2)
    first, second = make_net(tmp_path, text, name="a"), make_net(tmp_path, text, name="b")
    np.testing.assert_array_equal(first.forward()["label"], [0, 1])
    np.testing.assert_array_equal(first.forward()["label"], [2, 0])
    np.testing.assert_array_equal(second.forward()["label"], [0, 1])


def test_data_lmdb_float_datum_and_single_top(tmp_path):
    rng = np.random.default_rng(5)
    arrs = [rng.standard_normal((3, 2, 2)).astype(np.float32) for _ in range(2)]
    write_lmdb(tmp_path / "db", [raw_datum(a, 0) for a in arrs])
    net = make_net(tmp_path, data_layer(tmp_path, tmp_path / "db", 2, "mean_value: 1 mean_value: 2 mean_value: 3",
                                        tops=("data",)))
    mean = np.array([1, 2, 3], np.float32)[:, None, None]
    np.testing.assert_array_equal(net.forward()["data"], np.stack([a - mean for a in arrs]))


@pytest.mark.parametrize("force", ["", "force_gray: true", "force_color: true"])
def test_data_lmdb_encoded_png(tmp_path, force):
    import io

    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    d = caffe_pb2.Datum(encoded=True, data=buf.getvalue(), label=3)
    write_lmdb(tmp_path / "db", [d])
    net = make_net(tmp_path, data_layer(tmp_path, tmp_path / "db", 1, force))
    got = net.forward()["data"][0]
    bgr = rgb[:, :, ::-1].astype(np.float64)
    if force == "force_gray: true":
        # OpenCV's BGR2GRAY: 0.114 B + 0.587 G + 0.299 R, rounded
        gray = bgr[:, :, 0] * 0.114 + bgr[:, :, 1] * 0.587 + bgr[:, :, 2] * 0.299
        assert got.shape == (1, 4, 5) and np.abs(got[0] - np.rint(gray)).max() <= 1
    else:
        np.testing.assert_array_equal(got, bgr.transpose(2, 0, 1))


def test_data_leveldb_and_windowdata_are_refused_clearly(tmp_path):
    with pytest.raises(CaffeError, match=r"net.prototxt:1: layer 'd' \(type Data\).*LEVELDB.*--engine caffe"):
        make_net(tmp_path, data_layer(tmp_path, tmp_path / "db", 1, backend="LEVELDB"))
    with pytest.raises(CaffeError, match=r"net.prototxt:1.*'w'.*WindowData"):
        make_net(tmp_path, layer("WindowData", ["data", "label"], 'window_data_param { source: "x" }', name="w"))


def test_data_bad_record_names_the_database_and_key(tmp_path):
    good = raw_datum(np.zeros((1, 2, 2), np.uint8), 0)
    short = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")
    write_lmdb(tmp_path / "db", [good, short])
    net = make_net(tmp_path, data_layer(tmp_path, tmp_path / "db", 2))
    with pytest.raises(CaffeError, match=r"db: key b'00000001': Datum of shape \(1, 2, 2\) holds 3 values"):
        net.forward()


def test_data_deprecated_transform_fields_are_refused(tmp_path):
    write_lmdb(tmp_path / "db", [raw_datum(np.zeros((1, 2, 2), np.uint8), 0)])
    text = layer("Data", ["data"], f'data_param {{ source: "{tmp_path}/db" batch_size: 1 backend: LMDB crop_size: 1 }}')
    with pytest.raises(CaffeError, match="put them in transform_param"):
        make_net(tmp_path, text)


def test_data_layer_tops_feed_the_next_layer_and_a_solver_step(tmp_path):
    """A data layer is an ordinary (bottomless) layer of the graph: its tops reach the layers after it and
    training runs through it."""
    rng = np.random.default_rng(8)
    write_lmdb(tmp_path / "db", [raw_datum(rng.standard_normal((1, 2, 2)).astype(np.float32), i % 2)
                                 for i in range(4)])
    net_text = data_layer(tmp_path, tmp_path / "db", 2) + """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2
        weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }"""
    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path}/net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                              f'max_iter: 3 solver_mode: CPU display: 0 snapshot_after_train: false')
    solver = caffe_torch.SGDSolver(str(tmp_path / "solver.prototxt"))
    before = solver.net.params["ip"][0].data.copy()
    solver.step(3)
    assert not np.array_equal(before, solver.net.params["ip"][0].data)
    assert np.isfinite(solver.net.blobs["loss"].data).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tops_follow_the_net_dtype(tmp_path, dtype):
    write_lmdb(tmp_path / "db", [raw_datum(np.ones((1, 2, 2), np.uint8), 1)])
    (tmp_path / "n.prototxt").write_text(data_layer(tmp_path, tmp_path / "db", 1))
    net = caffe_torch.Net(str(tmp_path / "n.prototxt"), caffe_torch.TEST, dtype=dtype)
    net.forward()
    assert net.blobs["data"].tensor.dtype == dtype and net.blobs["label"].tensor.dtype == dtype


DEVICE = "cuda"    # the device-side path; the test itself runs on any device name given here


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tops_on_the_gpu_equal_the_cpu_ones(tmp_path):
    rng = np.random.default_rng(9)
    write_lmdb(tmp_path / "db", [raw_datum(rng.integers(0, 256, (2, 3, 3), dtype=np.uint8), i) for i in range(3)])
    memory = MEMORY.replace('"d"', '"m"').replace('"data"', '"x"').replace('"label"', '"y"')
    text = data_layer(tmp_path, tmp_path / "db", 2, "mean_value: 7 scale: 0.5") + memory
    (tmp_path / "n.prototxt").write_text(text)
    arrays = (rng.standard_normal((4, 1, 2, 3)).astype(np.float32), np.arange(4, dtype=np.float32))
    nets = [caffe_torch.Net(str(tmp_path / "n.prototxt"), caffe_torch.TEST, device=d) for d in ("cpu", DEVICE)]
    for net in nets:
        net.modules[1].reset(arrays[0], arrays[1].reshape(4, 1, 1, 1))
    for _ in range(2):
        cpu, gpu = (net.forward() for net in nets)
        assert all(nets[1].blobs[k].tensor.device.type == DEVICE for k in ("data", "label", "x", "y"))
        for k in cpu:
            np.testing.assert_array_equal(cpu[k], gpu[k])


def test_decoding_and_resize_match_opencv_when_installed():
    """Where OpenCV's Python module is installed (it is not a dependency), the images the data layers see must
    be OpenCV's, bit for bit: cv::imdecode in its three modes and cv::resize INTER_LINEAR."""
    cv2 = pytest.importorskip("cv2")
    import io

    from caffe_torch.transform import decode_bytes

    rng = np.random.default_rng(10)
    for mode, shape, fmt in [("RGB", (9, 11, 3), "PNG"), ("L", (9, 11), "PNG"), ("RGBA", (9, 11, 4), "PNG"),
                             ("P", (9, 11, 3), "PNG"), ("RGB", (16, 20, 3), "JPEG"), ("L", (16, 20), "JPEG"),
                             ("RGB", (9, 11, 3), "BMP")]:
        buf = io.BytesIO()
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)
        exif = image.getexif()
        exif[0x0112] = 6                     # EXIF orientation "rotate 90": OpenCV turns the image upright
        image.save(buf, format=fmt, **({"exif": exif.tobytes()} if fmt in ("PNG", "JPEG") else {}))
        data = buf.getvalue()
        for flag, color in ((cv2.IMREAD_UNCHANGED, None), (cv2.IMREAD_COLOR, True), (cv2.IMREAD_GRAYSCALE, False)):
            want = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            np.testing.assert_array_equal(decode_bytes(data, color), want.reshape(want.shape[:2] + (-1,)),
                                          err_msg=f"{fmt} {mode} flag {flag}")
    for _ in range(50):
        (h, w), (hh, ww) = rng.integers(1, 40, 2), rng.integers(1, 40, 2)
        img = rng.integers(0, 256, (h, w, int(rng.choice([1, 3, 4]))), dtype=np.uint8)
        want = cv2.resize(img, (int(ww), int(hh)), interpolation=cv2.INTER_LINEAR).reshape(hh, ww, -1)
        np.testing.assert_array_equal(resize_linear(img, int(hh), int(ww)), want)
