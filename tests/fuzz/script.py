"""The pycaffe program of a fuzz case (program.py), run by a worker with `caffe` = either engine.

Only pycaffe's own API is used, so the same code runs on real pycaffe and on caffe_torch; `net_kwargs` carries
caffe_torch's dtype= for its float64 reference run. Each stage's observations go to `emit(stage, obs)` as soon as
the stage is done, so that what came before a Caffe abort is kept.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from ..caffe_facts import make_array, random_param
from .program import Program


def _rng(seed: int, *names) -> np.random.Generator:
    return np.random.default_rng([seed] + [zlib.crc32(str(n).encode()) for n in names])


def materialise(files, caffe_pb2, where: Path) -> None:
    """Write the files the data layers read (recipes from netgen) into `where`."""
    for recipe in files:
        kind, name = recipe[0], recipe[1]
        path = where / name
        if kind == "text":
            path.write_text(recipe[2])
        elif kind == "hdf5":
            import h5py

            rng = _rng(recipe[3], name)
            with h5py.File(path, "w") as f:
                for dset, shape in recipe[2].items():
                    f.create_dataset(dset, data=rng.standard_normal(tuple(shape)).astype(np.float32))
        elif kind == "binaryproto":
            h = _rng(recipe[3], name).uniform(0.0, 1.0, size=tuple(recipe[2])).astype(np.float32)
            blob = caffe_pb2.BlobProto()
            blob.shape.dim.extend(h.shape)
            blob.data.extend(h.ravel().tolist())
            path.write_bytes(blob.SerializeToString())
        elif kind == "images":
            from PIL import Image

            n, h, w, gray = recipe[2]
            rng = _rng(recipe[3], name)
            lines = []
            for i in range(n):
                pixels = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(where / f"{name}_{i}.png")
                lines.append(f"{name}_{i}.png {i % 3}")
            path.write_text("\n".join(lines) + "\n")
        elif kind == "lmdb":
            import lmdb

            n, c, h, w, floats = recipe[2]
            rng = _rng(recipe[3], name)
            env = lmdb.open(str(path), map_size=1 << 22)
            with env.begin(write=True) as txn:
                for i in range(n):
                    d = caffe_pb2.Datum(channels=c, height=h, width=w, label=i % 4)
                    if floats:
                        d.float_data.extend(rng.standard_normal(c * h * w).astype(np.float32).tolist())
                    else:
                        d.data = rng.integers(0, 256, c * h * w, dtype=np.uint8).tobytes()
                    txn.put(f"{i:08d}".encode(), d.SerializeToString())
            env.close()
        else:
            raise ValueError(f"unknown file recipe {kind!r}")


def _observe(net, obs: dict, prefix: str) -> None:
    obs[f"{prefix}names/blobs"] = np.array(list(net.blobs), dtype=str)
    obs[f"{prefix}names/layers"] = np.array(list(net._layer_names), dtype=str)
    obs[f"{prefix}names/inputs"] = np.array(list(net.inputs), dtype=str)
    obs[f"{prefix}names/outputs"] = np.array(list(net.outputs), dtype=str)
    for name, blob in net.blobs.items():
        obs[f"{prefix}blob/data/{name}"] = np.array(blob.data, copy=True)
        obs[f"{prefix}blob/diff/{name}"] = np.array(blob.diff, copy=True)
    for layer, blobs in net.params.items():
        for i, b in enumerate(blobs):
            obs[f"{prefix}param/data/{layer}/{i}"] = np.array(b.data, copy=True)
            obs[f"{prefix}param/diff/{layer}/{i}"] = np.array(b.diff, copy=True)


def _feed(net, prog: Program, round_: int) -> None:
    for name, _shape, kind in prog.inputs:
        if name in net.blobs:
            blob = net.blobs[name]
            blob.data[...] = make_array(kind, tuple(blob.data.shape), _rng(prog.seed, "input", name, round_))


def _fill_params(net, seed: int) -> None:
    for layer, blobs in net.params.items():
        ltype = net.layers[list(net._layer_names).index(layer)].type
        rng = _rng(seed, "param", layer)
        bn_scale = float(rng.uniform(0.5, 3.0))
        for i, b in enumerate(blobs):
            b.data[...] = random_param(ltype, i, tuple(b.data.shape), rng, bn_scale)


def _memory_data(caffe, net, prog: Program) -> None:
    if prog.memory_data is None or not len(net.layers) or net.layers[0].type != "MemoryData":
        return
    shape, classes = prog.memory_data
    rng = _rng(prog.seed, "memory_data")
    data = rng.standard_normal((2 * shape[0],) + tuple(shape[1:])).astype(np.float32)
    labels = rng.integers(0, classes, 2 * shape[0]).astype(np.float32)
    net._fuzz_arrays = (data, labels)          # Caffe keeps pointers into them: they must stay alive
    net.set_input_arrays(data, labels)


def _top_diffs(net, prog: Program, round_: int) -> dict:
    """A diff for every output (pycaffe's backward(**diffs) wants exactly the outputs): random ones, except that
    a loss top mostly gets its loss weight (what Caffe's forward leaves in its diff)."""
    weights = {}
    for lp in prog.net_param().layer:
        ws = list(lp.loss_weight) or [1.0 if lp.type.endswith("Loss") and i == 0 else 0.0
                                      for i in range(len(lp.top))]
        weights.update({t: w for t, w in zip(lp.top, ws) if w})
    rng = _rng(prog.seed, "topdiff", round_)
    diffs = {}
    for t in net.outputs:
        shape = net.blobs[t].data.shape
        if t in weights and rng.random() < 0.7:
            diffs[t] = np.full(shape, weights[t], np.float32)
        else:
            diffs[t] = rng.standard_normal(shape).astype(np.float32)
    return diffs


def run_program(caffe, prog: Program, workdir: Path, emit, net_kwargs=None) -> None:
    """Run `prog` with the engine module `caffe` in `workdir` (the data layers' files are made there and the
    working directory is set to it, as the prototxt names them relatively). Raises what the engine raises."""
    net_kwargs = net_kwargs or {}
    workdir.mkdir(parents=True, exist_ok=True)
    materialise(prog.files, caffe.proto.caffe_pb2, workdir)
    os.chdir(workdir)
    (workdir / "net.prototxt").write_text(prog.net_text)
    caffe.set_random_seed(prog.seed % (1 << 31))
    solver = test_net = None
    if prog.solver_text is not None:
        (workdir / "solver.prototxt").write_text(f'net: "{workdir / "net.prototxt"}"\n' + prog.solver_text)
        solver = caffe.get_solver(str(workdir / "solver.prototxt"), **net_kwargs)
        net = solver.net
        if prog.test_net:
            test_net = solver.test_nets[0]
    else:
        phase = caffe.TRAIN if prog.phase == 0 else caffe.TEST
        net = caffe.Net(str(workdir / "net.prototxt"), phase, level=prog.level, stages=list(prog.stages),
                        **net_kwargs)
    _fill_params(net, prog.seed)
    if test_net is not None:
        # its blobs are its own until the first test shares the train net's (Caffe's ShareTrainedLayersWith in
        # Solver::Test): filled otherwise, they would hold each engine's own filler draws
        _fill_params(test_net, prog.seed)
    _memory_data(caffe, net, prog)
    if test_net is not None:
        _memory_data(caffe, test_net, prog)
    kept = []
    for what, name, index, field in prog.keep:
        holder = net.blobs.get(name) if what == "blob" else (
            net.params[name][index] if name in net.params and index < len(net.params[name]) else None)
        if holder is not None:
            kept.append((f"{what}/{field}/{name}/{index}", getattr(holder, field)))
    obs = {}
    _observe(net, obs, "")
    emit("build", obs)

    def observe_kept(obs):
        for key, arr in kept:
            obs[f"kept/{key}"] = np.array(arr, copy=True)

    rounds = 2 if prog.second_round else 1
    for r in range(rounds if prog.backward is not None or prog.second_round else 1):
        _feed(net, prog, r)
        outs = net.forward()
        obs = {f"forward/{k}": np.array(v, copy=True) for k, v in outs.items()}
        _observe(net, obs, "")
        observe_kept(obs)
        emit(f"fwd{r}", obs)
        if prog.backward is None:
            continue
        diffs = _top_diffs(net, prog, r)
        # pycaffe's backward(**diffs) checks the batch size as diff.shape[0] (an IndexError for a 0-axis loss
        # top: caffe_facts QUIRKS pycaffe-scalar-kwargs): such nets write the diffs instead
        if prog.backward == "write" or any(d.ndim == 0 for d in diffs.values()):
            for t, d in diffs.items():
                net.blobs[t].diff[...] = d
            net.backward()
        else:
            net.backward(**diffs)
        obs = {}
        _observe(net, obs, "")
        observe_kept(obs)
        emit(f"bwd{r}", obs)
    for r, k in enumerate(prog.steps):
        _feed(net, prog, 10 + r)
        if test_net is not None:
            _feed(test_net, prog, 20 + r)
        solver.step(k)
        obs = {"iter": np.array(solver.iter)}
        _observe(net, obs, "")
        if test_net is not None:
            _observe(test_net, obs, "test/")
        observe_kept(obs)
        emit(f"step{r + 1}", obs)
        if prog.write_kept:
            for key, arr in kept:
                if "/data/" in key:
                    arr[...] = arr * np.float32(0.5)
