"""Makers of the source layers (DummyData, MemoryData, HDF5Data, ImageData, Data: placed before every other layer,
their files made by the worker from recipes), HDF5Output, Python layers, and the recurrent ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from caffe_torch.proto import caffe_pb2

if TYPE_CHECKING:
    from ..builder import NetGen


def make_dummy_data(g: NetGen) -> bool:
    n = int(g.rng.integers(1, 3))
    lp = g.layer("DummyData", [], [(None, (), "normal") for _ in range(n)], source=True)
    p = lp.dummy_data_param
    legacy = g.chance(0.3)
    for t in lp.top:
        shape = g.shape(4 if legacy else None)
        if legacy:
            p.num.append(shape[0])
            p.channels.append(shape[1])
            p.height.append(shape[2])
            p.width.append(shape[3])
        else:
            p.shape.add().dim.extend(shape)
        g.blobs[t].shape = shape
    fills = 1 if g.chance(0.5) else n
    for _ in range(fills):
        if g.chance(0.8):      # random fillers draw from each engine's own generator: constants only
            p.data_filler.add(type="constant", value=float(g.rng.normal()))
    return True


def make_memory_data(g: NetGen) -> bool:
    if g.memory_data is not None:
        return False
    shape = (g.batch,) + g.shape(3, batch=False)
    classes = int(g.rng.integers(2, 5))
    lp = g.layer("MemoryData", [], [(None, shape, "normal"), (None, (g.batch, 1, 1, 1), f"label:{classes}")],
                 source=True)
    p = lp.memory_data_param
    p.batch_size, p.channels, p.height, p.width = shape
    g.memory_data = (shape, classes)
    return True


def make_hdf5_data(g: NetGen) -> bool:
    batch = g.batch
    n_tops = int(g.rng.integers(1, 3))
    shapes = [g.shape(int(g.rng.integers(2, 4)), batch=False)[1:] for _ in range(n_tops)]
    lp = g.layer("HDF5Data", [], [(None, (batch,) + s, "normal") for s in shapes], source=True)
    rows = [int(g.rng.integers(1, 4)) for _ in range(int(g.rng.integers(1, 3)))]
    files = []
    for i, r in enumerate(rows):
        name = f"{lp.name}_{i}.h5"
        files.append(name)
        g.files.append(("hdf5", name, {t: (r,) + s for t, s in zip(lp.top, shapes)}, int(g.rng.integers(1 << 30))))
    g.files.append(("text", f"{lp.name}.txt", "\n".join(files) + "\n"))
    lp.hdf5_data_param.source = f"{lp.name}.txt"
    lp.hdf5_data_param.batch_size = batch
    return True


def make_image_data(g: NetGen) -> bool:
    gray = g.chance(0.5)
    h, w = int(g.rng.integers(2, 6)), int(g.rng.integers(2, 6))
    n_img = int(g.rng.integers(1, 4))
    c = 1 if gray else 3
    lp = g.layer("ImageData", [], [(None, (g.batch, c, h, w), "normal"), (None, (g.batch,), "label:3")],
                 source=True)
    p = lp.image_data_param
    g.files.append(("images", f"{lp.name}.txt", (n_img, h, w, gray), int(g.rng.integers(1 << 30))))
    p.source = f"{lp.name}.txt"
    p.batch_size = g.batch
    if gray:
        p.is_color = False
    tp = lp.transform_param
    if g.chance(0.4):
        tp.scale = 0.01
    if g.chance(0.4):
        tp.mean_value.extend([100.0] * (1 if gray or g.chance(0.5) else 3))
    if g.chance(0.3) and min(h, w) > 1:
        # TEST crops the centre; TRAIN a random place, unless the crop is the whole image
        crop = min(h, w) if g.phase == caffe_pb2.TRAIN else int(g.rng.integers(1, min(h, w) + 1))
        if g.phase == caffe_pb2.TRAIN and h != w:
            crop = 0
        if crop:
            tp.crop_size = crop
            g.blobs[lp.top[0]].shape = (g.batch, c, crop, crop)
    return True


def make_data(g: NetGen) -> bool:
    c, h, w = int(g.rng.integers(1, 4)), int(g.rng.integers(1, 5)), int(g.rng.integers(1, 5))
    n_items = int(g.rng.integers(1, 5))
    lp = g.layer("Data", [], [(None, (g.batch, c, h, w), "normal"), (None, (g.batch,), "label:4")],
                 source=True)
    dp = lp.data_param
    db = f"{lp.name}_lmdb"
    g.files.append(("lmdb", db, (n_items, c, h, w, g.chance(0.3)), int(g.rng.integers(1 << 30))))
    dp.source, dp.batch_size, dp.backend = db, g.batch, caffe_pb2.DataParameter.LMDB
    tp = lp.transform_param
    if g.chance(0.4):
        tp.scale = 0.5
    if g.chance(0.4):
        tp.mean_value.append(10.0)
    return True


def make_hdf5_output(g: NetGen) -> bool:
    a = g.pick(multi=True)
    b = g.pick(lambda x: x.shape[:1] == a.shape[:1], make=lambda: (a.shape[0],) + g.shape()[1:], multi=True)
    lp = g.layer("HDF5Output", [a, b], [])
    lp.hdf5_output_param.file_name = f"{lp.name}.h5"
    return True


def make_python(g: NetGen) -> bool:
    b = g.pick()
    kind = g.choice(("LearnedScale", "TwoTops", "SumAll"))
    if kind == "TwoTops":
        tops = [(None, b.shape, "normal"), (None, b.shape, "normal")]
    elif kind == "SumAll":
        tops = [(None, (1,), "normal")]
    else:
        tops = [(None, b.shape, "normal")]
    lp = g.layer("Python", [b], tops)
    pp = lp.python_param
    pp.module, pp.layer = "tests.fuzz.pylayers", kind
    if g.chance(0.5):
        pp.param_str = g.choice(("0.5", "2", "-1"))
    if kind == "LearnedScale":
        g.share(lp, 1)
    return True


def make_recurrent(type_: str):
    def make(g: NetGen) -> bool:
        t = int(g.rng.integers(1, 4))
        n = g.batch
        x = g.pick(lambda b: len(b.shape) >= 3 and b.shape[:2] == (t, n) and len(b.shape) <= 4,
                   make=lambda: (t, n) + g.shape(int(g.rng.integers(1, 3)), batch=False), multi=True)
        cont = g.new_input((t, n), "cont")
        h = int(g.rng.integers(1, 4))
        bottoms = [x, cont]
        if g.chance(0.3):
            bottoms.append(g.pick(lambda b: b.shape[:1] == (n,) and len(b.shape) >= 2, multi=True,
                                  make=lambda: (n,) + g.shape(int(g.rng.integers(1, 3)), batch=False)))
        expose = g.chance(0.3)
        tops = [(None, (t, n, h), "normal")]
        if expose:
            for _ in range(2 if type_ == "LSTM" else 1):
                bottoms.append(g.new_input((1, n, h), "normal"))
                tops.append((None, (1, n, h), "normal"))
        lp = g.layer(type_, bottoms, tops)
        rp = lp.recurrent_param
        rp.num_output = h
        if expose:
            rp.expose_hidden = True
        g.filler(rp.weight_filler)
        g.fatal(lp, set())
        return True
    return make


def make_lstm_unit(g: NetGen) -> bool:
    n, d = g.batch, int(g.rng.integers(1, 4))
    c = g.pick(lambda b: b.shape == (1, n, d), make=lambda: (1, n, d), multi=True)
    x = g.pick(lambda b: b.shape == (1, n, 4 * d), make=lambda: (1, n, 4 * d), multi=True)
    cont = g.new_input((1, n), "cont")
    lp = g.layer("LSTMUnit", [c, x, cont], [(None, (1, n, d), "normal"), (None, (1, n, d), "normal")])
    g.fatal(lp, set())
    return True
