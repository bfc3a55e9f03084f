"""Conformance of the data layers, caffe.io, Classifier and Detector: caffe_torch against the real pycaffe build,
on the same small files (made in tmp_path) and arrays, in one process.

Data layers: the tops of three forwards (past the end of the source, so the wrap-around is compared), exactly
(they copy, crop and compute (x - mean) * scale in float32, as Caffe does). Only what is deterministic in Caffe is
compared: TEST phase crops (centre), TRAIN with crop_size equal to the image (offset 0), mirror off, shuffle off;
DummyData's random fillers are compared in shape and in being drawn anew at every forward (the numbers come from
different generators). The project's real build has LMDB and OpenCV (core, imgproc, imgcodecs; caffe_build
patch 0005); on a pycaffe built without them the Data (LMDB) and ImageData / encoded-Datum cases skip, and all of
them are also tested against NumPy references (test_layers_data.py). What the Data layer does to each raw Datum is
also compared directly: Caffe's DataTransformer<float> is run from _caffe.so through a small C++ harness compiled
by the test (crop TEST/TRAIN, mean_file, mean_value, scale, mirror, uint8 and float Datums).

caffe.io: the real module's results for the same arguments, as the build installs it (caffe_build's patch 0006
makes the sdist's io.py run on today's scikit-image: `as_gray` for the removed `as_grey`, and the `resize` import
that `resize_image` needs), so Classifier and Detector run on the real build too.

Skipped when `import caffe` does not give the project's pycaffe build.
"""

import os
import shutil

import h5py
import lmdb
import numpy as np
import pytest
from fp import assert_within
from PIL import Image

os.environ.setdefault("GLOG_minloglevel", "2")

from speaker.engine import try_import_pycaffe  # noqa: E402

# The layer types this module compares with the real build (tests/test_conformance.py counts them as covered);
# ImageData's cases skip on a pycaffe built without OpenCV, which lacks that type.
BUILD_TYPES = frozenset({"DummyData", "MemoryData", "HDF5Data", "HDF5Output", "Data"})
COVERED_TYPES = BUILD_TYPES | {"ImageData"}

caffe, _IMPORT_ERROR = try_import_pycaffe(BUILD_TYPES)

import caffe_torch  # noqa: E402
from caffe_torch import io as cio  # noqa: E402
from caffe_torch.classifier import Classifier  # noqa: E402
from caffe_torch.detector import Detector  # noqa: E402
from caffe_torch.layers.data import set_input_arrays  # noqa: E402
from caffe_torch.proto import caffe_pb2  # noqa: E402

pytestmark = [
    pytest.mark.caffe,
    pytest.mark.skipif(caffe is None, reason=f"real pycaffe not built (run `make caffe`): {_IMPORT_ERROR}"),
]

FORWARDS = 3


@pytest.fixture(autouse=True, scope="module")
def _cpu():
    caffe_torch.set_mode_cpu()
    if caffe is not None:
        caffe.set_mode_cpu()


def both_nets(tmp_path, text_ours, text_theirs=None, phase="TEST"):
    (tmp_path / "ours.prototxt").write_text(text_ours)
    (tmp_path / "theirs.prototxt").write_text(text_theirs if text_theirs is not None else text_ours)
    ours = caffe_torch.Net(str(tmp_path / "ours.prototxt"), getattr(caffe_torch, phase))
    theirs = caffe.Net(str(tmp_path / "theirs.prototxt"), getattr(caffe, phase))
    return ours, theirs


def compare_forwards(ours, theirs, n=FORWARDS, atol=0.0):
    assert list(ours.blobs) == list(theirs.blobs)
    for name in ours.blobs:
        assert ours.blobs[name].shape == tuple(theirs.blobs[name].shape), name
    for _ in range(n):
        ours.forward()
        theirs.forward()
        for name in ours.blobs:
            a, b = ours.blobs[name].data, theirs.blobs[name].data
            assert a.shape == b.shape, f"{name}: {a.shape} vs {b.shape}"
            if atol:
                np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)


# ------------------------------------------------------------------------------------------ DummyData
def test_dummy_data_constant_and_legacy(tmp_path):
    text = """
layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
        data_filler { type: "constant" value: 1.5 } data_filler { type: "constant" value: -2 } } }
layer { name: "e" type: "DummyData" top: "c" dummy_data_param { num: 2 channels: 1 height: 3 width: 2 } }"""
    compare_forwards(*both_nets(tmp_path, text))


def test_dummy_data_random_fillers_refill_in_both(tmp_path):
    text = """layer { name: "d" type: "DummyData" top: "a" dummy_data_param { shape { dim: 3 dim: 5 }
              data_filler { type: "uniform" min: 2 max: 3 } } }"""
    ours, theirs = both_nets(tmp_path, text)
    for net in (ours, theirs):
        first = net.forward()["a"].copy()
        second = net.forward()["a"]
        assert first.shape == second.shape == (3, 5)
        assert not np.array_equal(first, second)
        assert first.min() >= 2 and first.max() <= 3


@pytest.mark.parametrize("filler, stat", [
    ('type: "xavier"', "bound"),                 # uniform in +-sqrt(3 / fan_in), fan_in = count / num = 200
    ('type: "gaussian" mean: 1 std: 0.5', "moments"),
    ('type: "msra" variance_norm: FAN_OUT', "moments"),
])
def test_dummy_data_random_fillers_have_caffes_distribution(tmp_path, filler, stat):
    text = f"""layer {{ name: "d" type: "DummyData" top: "a" dummy_data_param {{ shape {{ dim: 64 dim: 50 dim: 2
               dim: 2 }} data_filler {{ {filler} }} }} }}"""
    ours, theirs = both_nets(tmp_path, text)
    a, b = ours.forward()["a"].astype(np.float64), theirs.forward()["a"].astype(np.float64)
    if stat == "bound":
        bound = np.sqrt(3 / 200)
        assert np.abs(a).max() <= bound * (1 + 1e-6) and np.abs(b).max() <= bound * (1 + 1e-6)
        assert np.abs(a).max() > 0.99 * bound and np.abs(b).max() > 0.99 * bound
    else:
        # 12,800 draws: the means agree within 4 standard errors, the standard deviations within 4 %
        assert abs(a.mean() - b.mean()) < 4 * b.std() * np.sqrt(2 / a.size)
        assert abs(a.std() / b.std() - 1) < 0.04


# ------------------------------------------------------------------------------------------ MemoryData
def test_memory_data(tmp_path):
    text = """layer { name: "m" type: "MemoryData" top: "data" top: "label"
              memory_data_param { batch_size: 2 channels: 2 height: 1 width: 3 } }"""
    ours, theirs = both_nets(tmp_path, text)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 2, 1, 3)).astype(np.float32)
    labels = np.arange(4, dtype=np.float32)
    set_input_arrays(ours, data, labels)
    theirs.set_input_arrays(data, labels)
    compare_forwards(ours, theirs)


# ------------------------------------------------------------------------------------------ HDF5
def test_hdf5_data_two_files(tmp_path):
    rng = np.random.default_rng(1)
    names = []
    for i, rows in enumerate((3, 2)):
        path = tmp_path / f"f{i}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=rng.standard_normal((rows, 2, 3)))
            f.create_dataset("label", data=rng.integers(0, 9, rows).astype(np.int32))
            f.create_dataset("w", data=rng.standard_normal((rows, 4)).astype(np.float32))
        names.append(str(path))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    text = f"""layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" top: "w"
               hdf5_data_param {{ source: "{tmp_path}/list.txt" batch_size: 4 }} }}"""
    compare_forwards(*both_nets(tmp_path, text))


def test_hdf5_output(tmp_path):
    def text(name):
        return f"""
layer {{ name: "m" type: "MemoryData" top: "x" top: "y" memory_data_param {{ batch_size: 3 channels: 2 height: 2
         width: 1 }} }}
layer {{ name: "w" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{tmp_path}/{name}" }} }}
"""
    ours, theirs = both_nets(tmp_path, text("ours.h5"), text("theirs.h5"))
    data = np.random.default_rng(2).standard_normal((3, 2, 2, 1)).astype(np.float32)
    labels = np.array([1, 2, 3], np.float32)
    set_input_arrays(ours, data, labels)
    theirs.set_input_arrays(data, labels)
    ours.forward()
    theirs.forward()
    del theirs                                   # Caffe closes the file in the layer's destructor
    with h5py.File(tmp_path / "ours.h5", "r") as a, h5py.File(tmp_path / "theirs.h5", "r") as b:
        assert sorted(a) == sorted(b) == ["data", "label"]
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            np.testing.assert_array_equal(a[k][()], b[k][()])


# ------------------------------------------------------------------------------------------ Data (LMDB)
def write_lmdb(path, datums):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()


def lmdb_pair(tmp_path, datums):
    """The same database twice: each engine opens its own copy (LMDB forbids one process opening an environment
    twice)."""
    write_lmdb(tmp_path / "ours_db", datums)
    shutil.copytree(tmp_path / "ours_db", tmp_path / "theirs_db")
    return tmp_path / "ours_db", tmp_path / "theirs_db"


def data_text(source, batch, transform, tops=("data", "label")):
    tops = " ".join(f'top: "{t}"' for t in tops)
    return f"""layer {{ name: "d" type: "Data" {tops} data_param {{ source: "{source}" batch_size: {batch}
               backend: LMDB }} transform_param {{ {transform} }} }}"""


def uint8_datums(rng, n, shape):
    return [cio.array_to_datum(rng.integers(0, 256, shape, dtype=np.uint8), label=int(i)) for i in range(n)]


_LMDB_PROBE = """
import sys, lmdb, caffe
from caffe.proto import caffe_pb2
d = sys.argv[1]
env = lmdb.open(d + "/db", map_size=1 << 20)
with env.begin(write=True) as txn:
    txn.put(b"0", caffe_pb2.Datum(channels=1, height=1, width=1, data=b"x").SerializeToString())
env.close()
open(d + "/n.prototxt", "w").write('layer { name: "d" type: "Data" top: "x" data_param { source: "%s/db" '
                                   'batch_size: 1 backend: LMDB } }' % d)
caffe.Net(d + "/n.prototxt", caffe.TEST).forward()
"""


@pytest.fixture(scope="module")
def real_lmdb(tmp_path_factory):
    """Skip unless the real build reads LMDB. Probed in a child process: a build without it (cmake USE_LMDB
    off, as before caffe_build's patch 0005) aborts the process on "Unknown database backend"."""
    import subprocess
    import sys

    where = tmp_path_factory.mktemp("lmdb_probe")
    done = subprocess.run([sys.executable, "-c", _LMDB_PROBE, str(where)], capture_output=True, text=True,
                          env={**os.environ, "GLOG_minloglevel": "2"}, timeout=1800)   # hang guard only
    if done.returncode != 0:
        reason = "Unknown database backend" if "Unknown database backend" in done.stderr else done.stderr[-300:]
        pytest.skip(f"the real Caffe build cannot read LMDB ({reason}): built with USE_LMDB off "
                    "(rebuild it: make caffe)")


def test_data_raw_uint8_mean_file_centre_crop_scale(tmp_path, real_lmdb):
    rng = np.random.default_rng(3)
    ours_db, theirs_db = lmdb_pair(tmp_path, uint8_datums(rng, 5, (3, 6, 7)))
    mean = rng.uniform(0, 255, (1, 3, 6, 7))
    (tmp_path / "mean.binaryproto").write_bytes(cio.array_to_blobproto(mean).SerializeToString())
    transform = f'crop_size: 4 mean_file: "{tmp_path}/mean.binaryproto" scale: 0.0078125'
    compare_forwards(*both_nets(tmp_path, data_text(ours_db, 2, transform), data_text(theirs_db, 2, transform)))


def test_data_raw_float_mean_values_train_full_crop(tmp_path, real_lmdb):
    rng = np.random.default_rng(4)
    datums = [cio.array_to_datum(rng.standard_normal((2, 3, 3)).astype(np.float32), label=i) for i in range(3)]
    ours_db, theirs_db = lmdb_pair(tmp_path, datums)
    # TRAIN: the crop offsets are random in [0, 3 - 3], i.e. 0 in both engines
    transform = "crop_size: 3 mean_value: 0.5 mean_value: -1 scale: 3"
    compare_forwards(*both_nets(tmp_path, data_text(ours_db, 2, transform, tops=("data",)),
                                data_text(theirs_db, 2, transform, tops=("data",)), phase="TRAIN"))


def test_data_single_mean_value_no_crop(tmp_path, real_lmdb):
    rng = np.random.default_rng(5)
    ours_db, theirs_db = lmdb_pair(tmp_path, uint8_datums(rng, 4, (2, 3, 2)))
    compare_forwards(*both_nets(tmp_path, data_text(ours_db, 3, "mean_value: 100"),
                                data_text(theirs_db, 3, "mean_value: 100")))


# ------------------------------------------------------------------------------------------ DataTransformer
# Caffe's DataTransformer<float>, which the Data layer applies to every record, is in _caffe.so (with or
# without LMDB). A few lines of C++ (compiled here against the build's headers and
# linked to the loaded _caffe.so) run it on one serialized Datum.
_HARNESS = r"""
#include <cstring>
#include <vector>
#include "caffe/blob.hpp"
#include "caffe/data_transformer.hpp"
#include "caffe/proto/caffe.pb.h"

extern "C" int caffe_transform(const char* datum_bytes, int datum_len, const char* param_bytes, int param_len,
                               int phase, float* out, int out_capacity, int* shape4) {
  caffe::Datum datum;
  caffe::TransformationParameter param;
  if (!datum.ParseFromArray(datum_bytes, datum_len)) return -1;
  if (!param.ParseFromArray(param_bytes, param_len)) return -2;
  caffe::DataTransformer<float> transformer(param, phase == 0 ? caffe::TRAIN : caffe::TEST);
  transformer.InitRand();
  std::vector<int> shape = transformer.InferBlobShape(datum);
  caffe::Blob<float> blob(shape);
  if (blob.count() > out_capacity) return -3;
  transformer.Transform(datum, &blob);
  for (int i = 0; i < 4; ++i) shape4[i] = i < (int)shape.size() ? shape[i] : 1;
  std::memcpy(out, blob.cpu_data(), sizeof(float) * blob.count());
  return blob.count();
}
"""


@pytest.fixture(scope="module")
def caffe_transform(tmp_path_factory):
    """f(datum, TransformationParameter, phase) -> Caffe's (C, H, W) float32 result; skips without g++ or the
    build's headers."""
    import ctypes
    import subprocess
    from pathlib import Path

    lib_dir = Path(caffe.__file__).resolve().parent                   # .../caffe/python/caffe (_caffe.so)
    prefix = lib_dir.parents[1]                                        # .../caffe (src/, build/)
    includes = [prefix / "src" / "include", prefix / "build" / "include", Path("/usr/include/hdf5/serial")]
    if not shutil.which("g++") or not (includes[1] / "caffe" / "proto" / "caffe.pb.h").exists():
        pytest.skip("needs g++ and the Caffe build tree (src/include, build/include) to run its DataTransformer")
    where = tmp_path_factory.mktemp("transformer")
    (where / "harness.cpp").write_text(_HARNESS)
    cmd = ["g++", "-std=c++14", "-O1", "-fPIC", "-shared", "-DCPU_ONLY", *(f"-I{i}" for i in includes),
           str(where / "harness.cpp"), "-o", str(where / "libharness.so"), str(lib_dir / "_caffe.so"),
           f"-Wl,-rpath,{lib_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)   # hang guard only
    if done.returncode:
        pytest.skip(f"cannot compile the DataTransformer harness: {done.stderr[-400:]}")
    lib = ctypes.CDLL(str(where / "libharness.so"))
    lib.caffe_transform.restype = ctypes.c_int

    def run(datum, param, phase):
        d, p = datum.SerializeToString(), param.SerializeToString()
        out = np.zeros(1 << 16, np.float32)
        shape = np.zeros(4, np.int32)
        n = lib.caffe_transform(d, len(d), p, len(p), 0 if phase == "TRAIN" else 1,
                                out.ctypes.data_as(ctypes.c_void_p), out.size, shape.ctypes.data_as(ctypes.c_void_p))
        assert n > 0, f"harness error {n}"
        return out[:n].reshape(shape[1:]).copy()

    return run


def our_transform(datum, param, phase):
    from caffe_torch.transform import DataTransformer

    transformer = DataTransformer(caffe_pb2.TransformationParameter.FromString(param.SerializeToString()),
                                  getattr(caffe_pb2, phase), caffe_torch.mode.MODE.generator)
    return transformer(cio.datum_to_array(caffe_pb2.Datum.FromString(datum.SerializeToString()))
                       .astype(np.uint8 if datum.data else np.float32))


def transform_cases(tmp_path):
    rng = np.random.default_rng(16)
    mean = rng.uniform(0, 255, (1, 3, 7, 6))
    (tmp_path / "mean.binaryproto").write_bytes(cio.array_to_blobproto(mean).SerializeToString())
    u8 = cio.array_to_datum(rng.integers(0, 256, (3, 7, 6), dtype=np.uint8), 1)
    f32 = cio.array_to_datum(rng.standard_normal((3, 7, 6)).astype(np.float32), 2)
    P = caffe.proto.caffe_pb2.TransformationParameter
    mean_file = str(tmp_path / "mean.binaryproto")
    return [
        ("plain", u8, P(), "TEST"),
        ("scale", u8, P(scale=0.00390625), "TRAIN"),
        ("mean_file centre crop", u8, P(crop_size=4, mean_file=mean_file, scale=0.5), "TEST"),
        ("mean_file TRAIN without crop", u8, P(mean_file=mean_file, scale=2), "TRAIN"),
        ("one mean_value, crop", u8, P(crop_size=5, mean_value=[127.5]), "TEST"),
        ("mean_values", u8, P(mean_value=[10, 20, 30], scale=0.1), "TEST"),
        ("float datum", f32, P(crop_size=3, mean_value=[0.5, -0.5, 1], scale=3), "TEST"),
        ("float datum mean_file", f32, P(mean_file=mean_file), "TEST"),
    ]


def test_data_transformer_deterministic(tmp_path, caffe_transform):
    for name, datum, param, phase in transform_cases(tmp_path):
        theirs = caffe_transform(datum, param, phase)
        ours = our_transform(datum, param, phase)
        assert ours.shape == theirs.shape, name
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


def test_data_transformer_random_crops_and_mirrors_cover_the_same_outcomes(tmp_path, caffe_transform):
    """TRAIN crops and mirror coins come from different generators; both engines must produce the same set of
    outcomes (every window offset, mirrored or not), each a valid transformed window."""
    rng = np.random.default_rng(17)
    datum = cio.array_to_datum(rng.integers(0, 256, (2, 5, 4), dtype=np.uint8), 0)
    param = caffe.proto.caffe_pb2.TransformationParameter(crop_size=3, mirror=True, mean_value=[5, 9], scale=0.5)
    caffe_torch.set_random_seed(3)
    outcomes = [{caffe_transform(datum, param, "TRAIN").tobytes() for _ in range(300)},
                {our_transform(datum, param, "TRAIN").tobytes() for _ in range(300)}]
    assert len(outcomes[0]) == 3 * 2 * 2                 # (5 - 3 + 1) x (4 - 3 + 1) offsets x mirror
    assert outcomes[0] == outcomes[1]


# ------------------------------------------------------------------------------------------ images (OpenCV)
@pytest.fixture(scope="module")
def real_opencv():
    if "ImageData" not in set(caffe.layer_type_list()):
        pytest.skip("the real Caffe build has no OpenCV (no ImageData layer, no encoded Datums): built with "
                    "USE_OPENCV off (rebuild it: make caffe)")


def png_list(tmp_path, n, size, gray):
    rng = np.random.default_rng(14)
    lines = []
    for i in range(n):
        pixels = rng.integers(0, 256, size + (() if gray else (3,)), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png {i * 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")


def image_data_text(tmp_path, batch, params="", transform=""):
    return f"""layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{
               source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: {batch} {params} }}
               transform_param {{ {transform} }} }}"""


@pytest.mark.parametrize("gray", [False, True])
def test_image_data_png(tmp_path, real_opencv, gray):
    png_list(tmp_path, 3, (6, 7), gray)
    params = "is_color: false" if gray else ""
    transform = "crop_size: 4 mean_value: 100 scale: 0.5" if gray else "mean_value: 1 mean_value: 2 mean_value: 3"
    compare_forwards(*both_nets(tmp_path, image_data_text(tmp_path, 2, params, transform)))


def test_image_data_resized(tmp_path, real_opencv):
    """new_height/new_width: OpenCV's bilinear resize; its SIMD path may round a value 1 grey level apart."""
    png_list(tmp_path, 2, (5, 9), gray=False)
    compare_forwards(*both_nets(tmp_path, image_data_text(tmp_path, 2, "new_height: 8 new_width: 6")), atol=1.0)


def test_data_encoded_png(tmp_path, real_lmdb, real_opencv):
    import io

    rng = np.random.default_rng(15)
    datums = []
    for i, shape in enumerate([(4, 5, 3), (4, 5, 3), (4, 5)]):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
        datums.append(caffe_pb2.Datum(encoded=True, data=buf.getvalue(), label=i))
    ours_db, theirs_db = lmdb_pair(tmp_path, datums)
    transform = "force_color: true crop_size: 3"
    compare_forwards(*both_nets(tmp_path, data_text(ours_db, 1, transform), data_text(theirs_db, 1, transform)))


# ------------------------------------------------------------------------------------------ caffe.io
def test_io_protobuf_conversions():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4))
    assert cio.array_to_blobproto(x, diff=-x).SerializeToString() == \
        caffe.io.array_to_blobproto(x, diff=-x).SerializeToString()
    arrays = [x, rng.standard_normal(5), rng.standard_normal((1, 2, 1, 2))]
    s = cio.arraylist_to_blobprotovector_str(arrays)
    assert s == caffe.io.arraylist_to_blobprotovector_str(arrays)
    for a, b in zip(cio.blobprotovector_str_to_arraylist(s), caffe.io.blobprotovector_str_to_arraylist(s)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    legacy = caffe.proto.caffe_pb2.BlobProto(num=1, channels=2, height=2, width=1, data=[1, 2, 3, 4], diff=[4] * 4)
    for diff in (False, True):
        ours = cio.blobproto_to_array(caffe_pb2.BlobProto.FromString(legacy.SerializeToString()), return_diff=diff)
        np.testing.assert_array_equal(ours, caffe.io.blobproto_to_array(legacy, return_diff=diff))
    for arr, label in ((rng.integers(0, 256, (3, 2, 2), dtype=np.uint8), 4), (rng.standard_normal((1, 2, 3)), None)):
        ours, theirs = cio.array_to_datum(arr, label), caffe.io.array_to_datum(arr, label)
        assert ours.SerializeToString() == theirs.SerializeToString()
        a, b = cio.datum_to_array(ours), caffe.io.datum_to_array(theirs)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_io_resize_image(channels, order):
    im = np.random.default_rng(channels * 10 + order).uniform(-2, 7, (9, 7, channels)).astype(np.float32)
    for dims in ((4, 5), (13, 11)):
        a, b = cio.resize_image(im, dims, order), caffe.io.resize_image(im, dims, order)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_io_load_image(tmp_path):
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (5, 6), dtype=np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    for name in ("rgb.png", "gray.png", "rgba.png"):
        for color in (True, False):
            a, b = cio.load_image(str(tmp_path / name), color), caffe.io.load_image(str(tmp_path / name), color)
            assert a.dtype == b.dtype and a.shape == b.shape, (name, color)
            np.testing.assert_array_equal(a, b)


def test_io_oversample():
    rng = np.random.default_rng(8)
    for shape, crop in (((7, 8, 3), (4, 5)), ((10, 9, 1), (5, 5))):
        ims = [rng.uniform(size=shape).astype(np.float32) for _ in range(2)]
        np.testing.assert_array_equal(cio.oversample(ims, crop), caffe.io.oversample(ims, crop))


def test_io_transformer():
    rng = np.random.default_rng(9)
    shape = (2, 3, 5, 4)
    ts = [cio.Transformer({"data": shape}), caffe.io.Transformer({"data": shape})]
    mean = rng.uniform(0, 100, (3, 7, 6))
    for t in ts:
        t.set_transpose("data", (2, 0, 1))
        t.set_channel_swap("data", (2, 1, 0))
        t.set_raw_scale("data", 255)
        t.set_mean("data", mean)
        t.set_input_scale("data", 0.017)
    np.testing.assert_array_equal(ts[0].mean["data"], ts[1].mean["data"])
    for size in ((5, 4), (8, 9)):
        img = rng.uniform(size=size + (3,)).astype(np.float32)
        a, b = ts[0].preprocess("data", img.copy()), ts[1].preprocess("data", img.copy())
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ts[0].deprocess("data", a), ts[1].deprocess("data", b))


DEPLOY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 3 dim: 5 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4
        weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@pytest.fixture
def deploy(tmp_path, monkeypatch):
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    caffe_torch.set_random_seed(11)
    caffe_torch.Net(str(tmp_path / "deploy.prototxt"), caffe_torch.TEST).save(str(tmp_path / "w.caffemodel"))
    if not hasattr(caffe_torch.Net, "forward_all"):     # until caffe_torch.Net has pycaffe's forward_all
        from tests.test_io import forward_all_reference
        monkeypatch.setattr(caffe_torch.Net, "forward_all", forward_all_reference, raising=False)
    return str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel")


def prediction_bound(weights, x_bound, probs):
    """How far two float32 engines' Softmax(InnerProduct(x)) of DEPLOY may lie apart for inputs |x| <= x_bound
    (tests/fp.py): each logit is a k-term sum plus the bias, so within dz = 2 gamma_(k+1) (sum|w| x_bound + |b|)
    of the other engine's; a softmax output moves by at most 2 p max(dz), plus a few roundings of its own."""
    from fp import U32, gamma

    from caffe_torch.weights import blob_to_array, read_caffemodel

    w, b = (blob_to_array(blob) for blob in next(lp for lp in read_caffemodel(weights).layer if lp.name == "ip").blobs)
    w = w.astype(np.float64).reshape(w.shape[0], -1)
    dz = 2 * gamma(w.shape[1] + 1, U32) * (np.abs(w).sum(axis=1) * x_bound + np.abs(b))
    return 2 * np.asarray(probs) * dz.max() + 8 * U32 * np.asarray(probs)


def test_classifier(deploy):
    kw = dict(image_dims=(7, 8), mean=np.array([0.4, 0.5, 0.6]), raw_scale=2.0, channel_swap=(2, 1, 0),
              input_scale=0.5)
    ours, theirs = Classifier(*deploy, **kw), caffe.Classifier(*deploy, **kw)
    rng = np.random.default_rng(10)
    images = [rng.uniform(size=(9, 11, 3)).astype(np.float32) for _ in range(4)]
    x_bound = 0.5 * (2.0 + 0.6)              # input_scale * (raw_scale * max pixel + max mean), pixels in [0, 1)
    for oversample in (False, True):
        a, b = ours.predict(images, oversample), theirs.predict(images, oversample)
        assert a.shape == b.shape == (4, 4)
        assert_within(a, b, prediction_bound(deploy[1], x_bound, b))     # (oversampled: a mean of such)


def test_detector_windows(deploy, tmp_path):
    rng = np.random.default_rng(12)
    Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(tmp_path / "im.png")
    windows = [np.array([0, 0, 6, 5]), np.array([2, 3, 12, 14]), np.array([4, 4, 9, 9])]
    kw = dict(mean=np.array([0.3, 0.2, 0.1]), raw_scale=255.0, channel_swap=(2, 1, 0))
    ours, theirs = Detector(*deploy, **kw), caffe.Detector(*deploy, **kw)
    np.testing.assert_array_equal(ours.crop_dims, theirs.crop_dims)
    a = ours.detect_windows([(str(tmp_path / "im.png"), windows)])
    b = theirs.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in a] == [d["filename"] for d in b]
    theirs_p = np.stack([d["prediction"] for d in b])
    x_bound = 255.0 + 0.3                    # raw_scale * max pixel + max mean, pixels in [0, 1]
    assert_within(np.stack([d["prediction"] for d in a]), theirs_p, prediction_bound(deploy[1], x_bound, theirs_p))

