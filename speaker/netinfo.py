"""What the scripts read off a net (before or after building it) and off a weights file, written once:
the data input's geometry, the blob the Accuracy layer scores, the smallest input the net accepts, and which
learnable layers a .caffemodel leaves at their fillers."""

from __future__ import annotations

from pathlib import Path

SPECTROGRAM_BINS = 257


def data_geometry(dims, where: str) -> tuple[int, int, int]:
    """(batch, frames, frequency bins) of a data input of shape N x 1 x frames x 257; ValueError otherwise."""
    dims = [int(d) for d in dims]
    if len(dims) != 4 or dims[1] != 1:
        raise ValueError(f"{where}: the data input must be N x 1 x frames x {SPECTROGRAM_BINS}, got {dims}")
    if dims[3] != SPECTROGRAM_BINS:
        raise ValueError(f"{where}: the data input has {dims[3]} frequency bins; the spectrogram has "
                         f"{SPECTROGRAM_BINS}")
    return dims[0], dims[2], dims[3]


def param_input_dims(net_param, blob: str = "data") -> list[int] | None:
    """The declared shape of input `blob`: an Input layer's top, or the legacy input:/input_shape fields."""
    for lp in net_param.layer:
        if lp.type == "Input" and blob in lp.top:
            shapes = list(lp.input_param.shape)
            if len(shapes) not in (1, len(lp.top)):
                raise ValueError(f"Input layer '{lp.name}' has {len(shapes)} input_param shapes for {len(lp.top)} "
                                 "tops: give input_param { shape { dim: N dim: 1 dim: frames dim: 257 } } (one "
                                 "shape for all tops, or one per top)")
            shape = shapes[list(lp.top).index(blob)] if len(shapes) > 1 else shapes[0]
            return list(shape.dim)
    if blob in net_param.input:
        i = list(net_param.input).index(blob)
        return list(net_param.input_shape[i].dim) if net_param.input_shape \
            else list(net_param.input_dim[4 * i:4 * i + 4])
    return None


def accuracy_input(layers) -> str:
    """The blob the first Accuracy layer reads (the class scores); layers = [(type, bottoms)] in net order
    (see param_layers / net_layers)."""
    for layer_type, bottoms in layers:
        if layer_type == "Accuracy":
            return bottoms[0]
    raise ValueError("the net has no Accuracy layer; cannot tell which blob holds the class scores")


def param_layers(net_param) -> list[tuple[str, list[str]]]:
    return [(lp.type, list(lp.bottom)) for lp in net_param.layer]


def net_layers(net) -> list[tuple[str, list[str]]]:
    """(type, bottoms) of a built pycaffe-API net."""
    return [(layer.type, list(net.bottom_names[name])) for name, layer in zip(net._layer_names, net.layers)]


def split_source(net, blob: str) -> str:
    """The blob that `blob` is a Split top of (Caffe's InsertSplits names it <blob>_<layer>_<i>_split_<k>), or
    `blob` itself: the name the prototxt gives the data."""
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == "Split" and blob in net.top_names[name]:
            return split_source(net, net.bottom_names[name][0])
    return blob


def smallest_frames(net_param, start: int = 1, phase: str = "TRAIN", limit: int = 4096) -> int | None:
    """The smallest frame count >= start (time axis of 'data') for which the net builds: doubling, then
    bisection, over caffe_torch builds at batch 1 (the net failed at start - 1, or start is 1); None when it
    does not build even at `limit` (then the problem is not the input size)."""
    import caffe_torch

    def builds(frames: int) -> bool:
        p = type(net_param)()
        p.CopyFrom(net_param)
        for lp in p.layer:
            if lp.type == "Input":
                for shape in lp.input_param.shape:
                    shape.dim[0] = 1
                if "data" in lp.top:
                    shapes = lp.input_param.shape
                    shapes[list(lp.top).index("data") if len(shapes) > 1 else 0].dim[2] = frames
        try:
            caffe_torch.Net(None, getattr(caffe_torch, phase), net_param=p, device="cpu")
            return True
        except Exception:  # a probe: any failure to build means "not at this size"
            return False

    lo = hi = max(1, start)          # builds(lo - 1) is False or lo == 1; grow hi until it builds
    while not builds(hi):
        if hi >= limit:
            return None
        lo, hi = hi + 1, min(2 * hi, limit)
    while lo < hi:                   # builds(hi) holds; find the smallest such
        mid = (lo + hi) // 2
        if builds(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def missing_layers(net, weights) -> list[str]:
    """The layers with parameters in `net` (net.params) that the .caffemodel `weights` holds no blobs for:
    after copy_from they keep their fillers (Caffe's rule: copy by name, skip the rest silently)."""
    return weights_fit(net, weights)[0]


def weights_fit(net, weights) -> tuple[list[str], list[str]]:
    """(the learnable layers of `net` the .caffemodel holds no blobs for, one line per layer whose blobs do not
    fit: another count or shape), read off the file with caffe_torch's reader for either engine, so that real
    Caffe's copy_from is never reached with a misfit (it aborts the process)."""
    from caffe_torch.weights import blob_shape, has_legacy_shape, read_caffemodel, source_layers

    present = {name: blobs for name, blobs in source_layers(read_caffemodel(Path(weights))) if blobs}
    missing = [name for name in net.params if name not in present]
    misfits = []
    for name, params in net.params.items():
        blobs = present.get(name)
        if blobs is None:
            continue
        if len(blobs) != len(params):
            misfits.append(f"layer '{name}': {len(blobs)} blobs in the file, {len(params)} in the net")
            continue
        for i, (bp, target) in enumerate(zip(blobs, params)):
            shape, want = blob_shape(bp), tuple(target.data.shape)
            if not has_legacy_shape(bp) and shape != want:     # (legacy 4-D shapes: the engine's own rule)
                misfits.append(f"layer '{name}' blob {i}: shape {shape} in the file, {want} in the net")
    return missing, misfits
