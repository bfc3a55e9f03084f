"""Data layers: DummyData, MemoryData, HDF5Data, HDF5Output, ImageData, Data (LMDB). The Data layer's LevelDB
backend is refused with an error that says `--engine caffe` runs it (WindowData is not registered: the net's
error for types caffe_torch does not implement names it).

A data layer has no bottoms and produces its tops at every forward (it is not a `Layer.is_source`: the net calls
its `forward()` like any other layer's, with no arguments). It reads its source as Caffe does, one batch per
forward, in order, wrapping round at the end; labels are float tops as in Caffe. Random choices (shuffles, TRAIN
crops, mirror coins, non-constant DummyData fillers) draw from the net's generator (caffe.set_random_seed), so
they are reproducible but are not Caffe's own random stream. Paths in prototxt fields are relative to the
current directory, as in Caffe.
"""

import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from ..proto import caffe_pb2
from ..transform import DataTransformer, TransformError, decode_bytes, read_image, resize_linear
from .base import Layer, register

_DEPRECATED_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# A data layer's forward reads files and moves cursors: it always runs eagerly, also inside a torch.compile'd
# net forward (caffe_torch.fast), so that its side effects happen exactly once per forward.
_eager = torch.compiler.disable


class _DataLayer(Layer):
    """Shared by the data layers: no bottoms; tops made from NumPy arrays on the net's device and dtype."""

    num_bottoms = (0, 0)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=self._ctx_device, dtype=self._ctx_dtype)

    def _transformer(self, param, deprecated_in=None) -> DataTransformer:
        """The layer's DataTransformer. Fields of `deprecated_in` (data_param/image_data_param) that Caffe
        reads only from V1 `layers` blocks are refused rather than ignored as Caffe does."""
        if deprecated_in is not None:
            given = [f for f in _DEPRECATED_TRANSFORM_FIELDS if deprecated_in.HasField(f)]
            if given:
                raise self.error(f"{', '.join(given)} in {type(deprecated_in).__name__} are deprecated and "
                                 "Caffe ignores them in `layer` blocks; put them in transform_param")
        try:
            return DataTransformer(param.transform_param, self.phase, self._generator)
        except TransformError as exc:
            raise self.error(str(exc)) from None

    def _no_transform(self) -> None:
        if self.param.HasField("transform_param"):
            raise self.error("does not transform data (remove transform_param)")

    def _source(self, path: str, what: str = "source") -> Path:
        if not path:
            raise self.error(f"{what} must be set")
        return Path(path)


# ------------------------------------------------------------------------------------------ DummyData
@register("DummyData")
class DummyData(_DataLayer):
    """Tops filled by data_filler (default constant 0): constant fillers once, at construction (a forward then
    leaves the top as its blob holds it: keeps_tops); any other filler anew at every forward (Caffe's refill
    rule)."""

    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        dp = param.dummy_data_param
        n_top = len(param.top)
        if len(dp.data_filler) not in (0, 1, n_top):
            raise self.error(f"number of data fillers must be 0, 1 or the number of tops ({n_top}); "
                             f"got {len(dp.data_filler)}")
        legacy = [dp.num, dp.channels, dp.height, dp.width]
        if any(len(f) for f in legacy):
            if len(dp.shape):
                raise self.error("both shape and legacy num/channels/height/width were specified")
            for name, values in zip(("num", "channels", "height", "width"), legacy):
                if len(values) not in (1, n_top):
                    raise self.error(f"specify '{name}' once or once per top ({n_top}); got {len(values)}")
            self.shapes = [tuple(int(v[0] if len(v) == 1 else v[i]) for v in legacy) for i in range(n_top)]
        else:
            if len(dp.shape) not in (1, n_top):
                raise self.error(f"specify 'shape' once or once per top ({n_top}); got {len(dp.shape)}")
            self.shapes = [tuple(int(d) for d in dp.shape[0 if len(dp.shape) == 1 else i].dim)
                           for i in range(n_top)]
        fillers = list(dp.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(n_top)]
        self.constant = [self._fill(i) if f.type == "constant" else None for i, f in enumerate(self.fillers)]
        self.keeps_tops = tuple(c is not None for c in self.constant)

    def _fill(self, i: int) -> torch.Tensor:
        from ..fillers import fill

        try:
            data = fill(self.fillers[i], self.shapes[i], self._generator)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        return data.to(device=self._ctx_device, dtype=self._ctx_dtype)

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def initial_tops(self):
        # Caffe's LayerSetUp runs one forward that fills the constant tops only (the others stay zero)
        return [c.clone() if c is not None else torch.zeros(s, dtype=self._ctx_dtype, device=self._ctx_device)
                for c, s in zip(self.constant, self.shapes)]

    @_eager
    def forward(self):
        tops = tuple(c.clone() if c is not None else self._fill(i) for i, c in enumerate(self.constant))
        return tops[0] if len(tops) == 1 else tops


# ------------------------------------------------------------------------------------------ MemoryData
@register("MemoryData")
class MemoryData(_DataLayer):
    """Batches from arrays handed over by `net.set_input_arrays(data, labels)` (no transformation, as in
    Caffe's Reset). The tops view the arrays (CPU, float32 net): writing into them reaches the arrays, as in
    Caffe. After a forward the label top is (batch, 1, 1, 1), as Caffe reshapes it."""

    num_tops = (2, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        mp = param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = \
            int(mp.batch_size), int(mp.channels), int(mp.height), int(mp.width)
        if self.batch_size * self.channels * self.height * self.width <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and positive in "
                             "memory_data_param")
        self.data: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.pos = 0

    def top_shapes(self, bottom_shapes):
        return [(self.batch_size, self.channels, self.height, self.width), (self.batch_size,)]

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Caffe's MemoryDataLayer::Reset: `data` (N, C, H, W) and `labels` (N, 1, 1, 1), N a multiple of the
        batch size; reading restarts at row 0."""
        if data.shape[0] % self.batch_size:
            raise self.error(f"n ({data.shape[0]}) must be a multiple of batch size ({self.batch_size})")
        if self.param.HasField("transform_param"):
            warnings.warn(str(self.error("does not transform array data (its transform_param is ignored, as in "
                                         "Caffe's MemoryDataLayer::Reset)")), stacklevel=3)
        self.data, self.labels, self.pos = data, labels, 0

    @_eager
    def forward(self):
        if self.data is None:
            raise self.error("MemoryDataLayer needs to be initialized by calling Reset "
                             "(net.set_input_arrays(data, labels))")
        rows = slice(self.pos, self.pos + self.batch_size)
        self.pos = (self.pos + self.batch_size) % self.data.shape[0]
        return self._tensor(self.data[rows]), self._tensor(self.labels[rows].reshape(self.batch_size, 1, 1, 1))


def _check_array(arr, name: str, dims: tuple[int, int, int]) -> None:
    """pycaffe's CheckContiguousArray (raises RuntimeError as it does)."""
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous:
        raise RuntimeError(f"{name} must be C contiguous")
    if arr.ndim != 4:
        raise RuntimeError(f"{name} must be 4-d")
    if arr.dtype != np.float32:
        raise RuntimeError(f"{name} must be float32")
    for axis, what in zip(range(1, 4), ("channels", "height", "width")):
        if arr.shape[axis] != dims[axis - 1]:
            raise RuntimeError(f"{name} has wrong number of {what}")


def set_input_arrays(net, data: np.ndarray, labels: np.ndarray) -> None:
    """pycaffe's `Net.set_input_arrays(data, labels)`: hand (N, C, H, W) float32 data and N labels ((N,) or
    (N, 1, 1, 1), float32, C-contiguous) to the net's first layer, which must be a MemoryData layer. The arrays
    are kept, not copied (as pycaffe does). Attach as `Net.set_input_arrays = set_input_arrays`."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        labels = np.ascontiguousarray(labels[:, None, None, None])
    layer = net.modules[0] if len(net.modules) else None
    if not isinstance(layer, MemoryData):
        raise RuntimeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
    _check_array(data, "data array", (layer.channels, layer.height, layer.width))
    _check_array(labels, "labels array", (1, 1, 1))
    if data.shape[0] != labels.shape[0]:
        raise RuntimeError("data and labels must have the same first dimension")
    if data.shape[0] % layer.batch_size:
        raise RuntimeError("first dimensions of input arrays must be a multiple of batch size")
    layer.reset(data, labels)


# ------------------------------------------------------------------------------------------ HDF5
@register("HDF5Data")
class HDF5Data(_DataLayer):
    """Rows of the datasets named by the tops, from the .h5 files listed (whitespace-separated) in `source`;
    one file in memory at a time; on reaching a file's end, the next file (shuffle: files and rows in a new
    random order at each pass, as Caffe)."""

    num_tops = (1, None)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self._no_transform()
        hp = param.hdf5_data_param
        self.batch_size = int(hp.batch_size)
        if self.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        self.shuffle = hp.shuffle                                   # default false
        source = self._source(hp.source)
        try:
            self.files = source.read_text().split()
        except OSError as exc:
            raise self.error(f"failed to open source file {source}: {exc}") from None
        if not self.files:
            raise self.error(f"must have at least 1 HDF5 filename listed in {source}")
        self.file_order = self._permutation(len(self.files))
        self.current_file = 0
        self._load(self.files[self.file_order[0]])
        self.shapes = [(self.batch_size,) + a.shape[1:] for a in self.arrays]

    def _permutation(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self._generator).tolist() if self.shuffle else list(range(n))

    def _load(self, filename: str) -> None:
        import h5py

        arrays = []
        try:
            with h5py.File(filename, "r") as f:
                for name in self.param.top:
                    if name not in f:
                        raise self.error(f"HDF5 file {filename} has no dataset '{name}' (one per top)")
                    ds = f[name]
                    if ds.dtype.kind not in "fiub":
                        raise self.error(f"dataset '{name}' in {filename} has type {ds.dtype}; "
                                         "Caffe reads only float and integer data")
                    if ds.ndim < 1:
                        raise self.error(f"dataset '{name}' in {filename} must have at least 1 axis")
                    arrays.append(np.asarray(ds[()], dtype=np.float64))
        except OSError as exc:
            raise self.error(f"failed opening HDF5 file {filename}: {exc}") from None
        rows = arrays[0].shape[0]
        for name, a in zip(self.param.top, arrays):
            if a.shape[0] != rows:
                raise self.error(f"dataset '{name}' in {filename} has {a.shape[0]} rows, "
                                 f"'{self.param.top[0]}' has {rows}")
        if rows == 0:
            raise self.error(f"HDF5 file {filename} has no rows")
        self.arrays = arrays
        self.rows = self._permutation(rows)
        self.current_row = 0

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    @_eager
    def forward(self):
        picked = []
        for _ in range(self.batch_size):
            if self.current_row == len(self.rows):
                if len(self.files) > 1:
                    self.current_file += 1
                    if self.current_file == len(self.files):
                        self.current_file = 0
                        if self.shuffle:
                            self.file_order = self._permutation(len(self.files))
                    self._load(self.files[self.file_order[self.current_file]])
                    for name, a, shape in zip(self.param.top, self.arrays, self.shapes):
                        if a.shape[1:] != shape[1:]:
                            raise self.error(f"dataset '{name}' has rows of shape {a.shape[1:]} in "
                                             f"{self.files[self.file_order[self.current_file]]}, "
                                             f"{shape[1:]} in the first file")
                else:
                    self.current_row = 0
                    if self.shuffle:
                        self.rows = self._permutation(len(self.rows))
            picked.append([a[self.rows[self.current_row]] for a in self.arrays])
            self.current_row += 1
        tops = tuple(self._tensor(np.stack([p[j] for p in picked])) for j in range(len(self.arrays)))
        return tops[0] if len(tops) == 1 else tops


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes its two bottoms to `file_name` as float32 datasets "data" and "label", each in Caffe's legacy
    4-D shape (num, channels, height, width). The file is created (truncated) when the net is built. Caffe
    writes one batch per file: a second forward fails there (the datasets exist), and here too, clearly."""

    num_bottoms = (2, 2)
    num_tops = (0, 0)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        import h5py

        self.file_name = param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name must be set")
        for s in bottom_shapes:
            if len(s) > 4:
                raise self.error(f"bottom of shape {tuple(s)}: Caffe's HDF5Output takes at most 4 axes")
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as exc:
            raise self.error(f"failed to open HDF5 file {self.file_name}: {exc}") from None
        self.written = False

    def top_shapes(self, bottom_shapes):
        return []

    @staticmethod
    def _legacy4(a: np.ndarray) -> np.ndarray:
        shape = tuple(a.shape) + (1,) * (4 - a.ndim)
        return a.reshape(shape)

    @_eager
    def forward(self, data, label):
        import h5py

        if data.shape[0] != label.shape[0]:
            raise self.error(f"data and label must have the same batch size ({data.shape[0]} vs {label.shape[0]})")
        if self.written:
            raise self.error(f"Caffe's HDF5Output writes one batch per file: {self.file_name} already holds "
                             "'data' and 'label' (failed to make float dataset)")
        with h5py.File(self.file_name, "a") as f:
            for name, t in (("data", data), ("label", label)):
                f.create_dataset(name, data=self._legacy4(t.detach().to("cpu", torch.float32).numpy()))
        self.written = True
        return ()


# ------------------------------------------------------------------------------------------ ImageData
def _add_to_batch(layer, images: list[np.ndarray], chw: np.ndarray, where: str, hint: str) -> None:
    """Append the transformed (C, H, W) image to the batch being assembled; an image the transformer refuses,
    or of another size than the batch's first, is an error naming `where` (a file, or an LMDB key)."""
    try:
        images.append(layer.transformer(chw))
    except TransformError as exc:
        raise layer.error(f"{where}: {exc}") from None
    if images[-1].shape != images[0].shape:
        raise layer.error(f"{where} gives a {images[-1].shape} image in a batch of {images[0].shape} ({hint})")


@register("ImageData")
class ImageData(_DataLayer):
    """Images listed in `source` as `path label` lines (the label after the last space), read from
    root_folder + path as OpenCV would (BGR, or gray with is_color: false), resized to new_height x new_width
    (both or neither) with OpenCV's bilinear rule, transformed by transform_param. shuffle: a new random order
    at construction and at each pass. Tops: data (batch, C, H, W), label (batch,)."""

    num_tops = (2, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.image_data_param
        self.transformer = self._transformer(param, ip)
        self.batch_size = int(ip.batch_size)                          # default 1
        if self.batch_size <= 0:
            raise self.error("positive batch size required")
        self.new_height, self.new_width = int(ip.new_height), int(ip.new_width)   # default 0 (no resize)
        if (self.new_height > 0) != (self.new_width > 0):
            raise self.error("new_height and new_width must be set at the same time")
        self.is_color = ip.is_color                                    # default true
        self.root = ip.root_folder                                     # default ""
        self.shuffle = ip.shuffle                                      # default false
        source = self._source(ip.source)
        self.lines = self._read_list(source)
        if self.shuffle:
            self._shuffle()
        self.pos = 0
        if ip.rand_skip:
            self.pos = int(torch.randint(int(ip.rand_skip), (1,), generator=self._generator))
            if self.pos >= len(self.lines):
                raise self.error(f"not enough images ({len(self.lines)}) to skip {self.pos}")
        c, h, w = self.transformer.shape(*self._read(self.pos).shape)
        self.shapes = [(self.batch_size, c, h, w), (self.batch_size,)]

    def _read_list(self, source: Path) -> list[tuple[str, int]]:
        try:
            text = source.read_text()
        except OSError as exc:
            raise self.error(f"cannot open image list {source}: {exc}") from None
        lines = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            path, sep, label = line.rpartition(" ")
            try:
                if not sep:
                    raise ValueError
                lines.append((path, int(label)))
            except ValueError:
                raise self.error(f"{source}:{number}: expected 'path label', got {line!r}") from None
        if not lines:
            raise self.error(f"image list {source} is empty")
        return lines

    def _shuffle(self) -> None:
        order = torch.randperm(len(self.lines), generator=self._generator).tolist()
        self.lines = [self.lines[i] for i in order]

    def _read(self, index: int) -> np.ndarray:
        """The image of list entry `index` as uint8 (C, H, W), resized if asked."""
        path = self.root + self.lines[index][0]
        try:
            hwc = read_image(path, self.is_color)
        except TransformError as exc:
            raise self.error(str(exc)) from None
        if self.new_height > 0:
            hwc = resize_linear(hwc, self.new_height, self.new_width)
        return hwc.transpose(2, 0, 1)

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    @_eager
    def forward(self):
        images, labels = [], []
        for _ in range(self.batch_size):
            _add_to_batch(self, images, self._read(self.pos), self.root + self.lines[self.pos][0],
                          "set new_height/new_width or crop_size")
            labels.append(self.lines[self.pos][1])
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0
                if self.shuffle:
                    self._shuffle()
        return self._tensor(np.stack(images)), self._tensor(np.asarray(labels, dtype=np.float64))


# ------------------------------------------------------------------------------------------ Data (LMDB)
# LMDB refuses to open one environment twice in a process, yet a solver's TRAIN and TEST nets (or two nets of a
# script) may read the same database: the layers share one read-only Environment per path, each with its own
# read transaction and cursor. Weak values: the environment closes when the last layer using it goes.
_OPEN_LMDB: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()

@register("Data")
class Data(_DataLayer):
    """Datum records from an LMDB database (data_param.backend: LMDB), in key order, wrapping round at the
    end; raw (uint8 `data` or `float_data`) or encoded (an image file's bytes, decoded as OpenCV would:
    force_color / force_gray or the image's own channels); transformed by transform_param. Tops: data
    (batch, C, H, W) with the shape of each batch's first record, and optionally label (batch,)."""

    num_tops = (1, 2)

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        dp = param.data_param
        if dp.backend != caffe_pb2.DataParameter.LMDB:
            raise self.error("data_param.backend is LEVELDB (the default when backend is not given): "
                             "caffe_torch reads only LMDB; `--engine caffe` runs it (on a Caffe built with "
                             "LevelDB), or convert the database to LMDB and set backend: LMDB")
        self.transformer = self._transformer(param, dp)
        self.batch_size = int(dp.batch_size)
        if self.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        self.source = str(self._source(dp.source))
        self._open()
        if dp.rand_skip:
            for _ in range(int(torch.randint(int(dp.rand_skip), (1,), generator=self._generator))):
                self._next_value()
        first = self._decode(self.cursor.value(), self.cursor.key())
        c, h, w = self.transformer.shape(*first[0].shape)
        self.shapes = [(self.batch_size, c, h, w), (self.batch_size,)][: len(param.top)]

    def _open(self) -> None:
        import lmdb

        path = Path(self.source)
        key = str(path.resolve())
        try:
            self.env = _OPEN_LMDB.get(key)
            if self.env is None:
                self.env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir(),
                                     max_readers=126)
                _OPEN_LMDB[key] = self.env
            self.txn = self.env.begin(buffers=False)
        except lmdb.Error as exc:
            raise self.error(f"cannot open LMDB database {self.source}: {exc}") from None
        self.cursor = self.txn.cursor()
        if not self.cursor.first():
            raise self.error(f"LMDB database {self.source} is empty")

    def _next_value(self) -> tuple[bytes, bytes]:
        """(key, value) of the current record; the cursor moves on (to the first record after the last)."""
        key, value = self.cursor.key(), self.cursor.value()
        if not self.cursor.next():
            self.cursor.first()
        return key, value

    def _decode(self, value: bytes, key: bytes) -> tuple[np.ndarray, int]:
        """A serialized Datum -> ((C, H, W) uint8 or float32, label)."""
        datum = caffe_pb2.Datum()
        try:
            datum.ParseFromString(value)
        except Exception as exc:  # protobuf's DecodeError
            raise self.error(f"{self.source}: record at key {key!r} is not a Datum ({exc})") from None
        if datum.encoded:
            try:
                chw = decode_bytes(datum.data, self.transformer.color).transpose(2, 0, 1)
            except TransformError as exc:
                raise self.error(f"{self.source}: key {key!r}: {exc}") from None
            return chw, datum.label
        shape = (datum.channels, datum.height, datum.width)
        n = int(np.prod(shape))
        if len(datum.data):
            values = np.frombuffer(datum.data, dtype=np.uint8)
        else:
            values = np.asarray(datum.float_data, dtype=np.float32)
        if values.size != n or n == 0:
            raise self.error(f"{self.source}: key {key!r}: Datum of shape {shape} holds "
                             f"{values.size} values")
        return values.reshape(shape), datum.label

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    @_eager
    def forward(self):
        images, labels = [], []
        for _ in range(self.batch_size):
            key, value = self._next_value()
            chw, label = self._decode(value, key)
            _add_to_batch(self, images, chw, f"{self.source}: key {key!r}",
                          "records of one batch must have one size")
            labels.append(label)
        data = self._tensor(np.stack(images))
        if len(self.param.top) == 1:
            return data
        return data, self._tensor(np.asarray(labels, dtype=np.float64))

