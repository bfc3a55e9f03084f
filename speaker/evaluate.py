"""The paper's multi-crop test protocol on any pycaffe-API net (caffe_torch or real pycaffe).

Per utterance (the paper, arXiv 1807.08312):
  1. ``crops_provider(path, rng)`` draws the random augmented crops, int16 (n_crops, L) (voxdata's job);
  2. spectrogram -> (n_crops, 1, frames, 257) float32, run the net up to the pooling layer in chunks of
     ``batch`` crops and collect the pooled feature (n_crops, 512, 1, 17) ("res4_3p");
  3. average it over the crops -> (512, 1, 17);
  4. run the rest of the net (fc5, fc6, ...) once on the average.
Step 4 is batched over up to ``head_batch`` utterances: the averages are written into the pooled blob and
the net is run from the first layer that reads it.

Only the pycaffe surface is used: ``net.blobs[name].data`` / ``.reshape``, ``net.reshape()``,
``net.forward(start=LAYER, end=LAYER)``, ``net._layer_names``, ``net.bottom_names``, ``net.top_names`` and
``net.inputs``. The training net's TEST phase works as is (its ``Input`` layer's ``label`` blob is resized
along with ``data``; loss and accuracy layers then run on zero labels and are ignored).
Inputs are written into ``net.blobs[...].data`` rather than passed as ``forward`` keyword
arguments, because pycaffe only accepts keyword blobs that are exactly the net's inputs (the pooled blob is
not one) and ``start``/``end`` are LAYER names, not blob names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from speaker.metrics import topk_accuracy

__all__ = [
    "EvalLog",
    "crop_averaged_forward",
    "embed",
    "embed_full",
    "full_utterance_forward",
    "NET_NAMES",
    "default_list",
    "find_run_file",
    "guess_run_dir",
    "head_layer",
    "identify",
    "input_frames",
    "pool_layer",
    "voxdata_audio_provider",
    "voxdata_crops_provider",
]

CropsProvider = Callable[[str, np.random.Generator], np.ndarray]


def _spectrogram(crops):
    # Imported here so that importing speaker.evaluate does not need voxdata (scoring-only tools).
    from voxdata.frontend import spectrogram

    return spectrogram(crops)


def _names(net) -> list[str]:
    return [str(n) for n in net._layer_names]


def pool_layer(net, pool_blob: str = "res4_3p") -> str:
    """Name of the layer that produces ``pool_blob`` (tops it without also reading it, i.e. not in place)."""
    for name in _names(net):
        if pool_blob in net.top_names[name] and pool_blob not in net.bottom_names[name]:
            return name
    raise ValueError(f"no layer of the net produces blob {pool_blob!r} (layers: {_names(net)})")


def head_layer(net, pool_blob: str = "res4_3p") -> str:
    """Name of the first layer after the pooling layer that reads ``pool_blob``: where step 4 starts.

    An in-place layer on the pooled blob (e.g. TEST-phase Dropout) counts; it then runs on the average.
    Layers between the producer and that consumer would be skipped by a forward starting there, so they
    are an error rather than a silent change of the net.
    """
    names = _names(net)
    producer = names.index(pool_layer(net, pool_blob))
    for i in range(producer + 1, len(names)):
        if pool_blob in net.bottom_names[names[i]]:
            if i != producer + 1:
                skipped = names[producer + 1 : i]
                raise ValueError(
                    f"layers {skipped} sit between {names[producer]!r} (produces {pool_blob!r}) and its "
                    f"first consumer {names[i]!r}; the crop-averaging protocol cannot skip them"
                )
            return names[i]
    raise ValueError(
        f"no layer reads blob {pool_blob!r} after {names[producer]!r}; nothing to run on the average"
    )


def _input_blobs(net, data_blob: str) -> list[str]:
    """The blobs a forward from the first layer starts from: ``net.inputs`` (legacy ``input:`` fields) and
    the tops of layers without bottoms (``Input`` layers; real pycaffe leaves ``net.inputs`` empty then)."""
    names = list(getattr(net, "inputs", None) or [])
    for layer in _names(net):
        if not net.bottom_names[layer]:
            names += [t for t in net.top_names[layer] if t not in names]
    if data_blob not in names:
        names.append(data_blob)
    return names


def _device_spectrogram(net, crops: np.ndarray):
    """(n, 1, frames, 257) float32 spectrograms of int16 crops (n, L), computed on the net's device
    (voxdata.spectrogram_torch, in float32 as the training step computes them: only the int16 samples cross
    the bus)."""
    import torch

    from voxdata.frontend import spectrogram_torch

    x = torch.from_numpy(np.ascontiguousarray(crops)).to(net.device, non_blocking=True)
    return spectrogram_torch(x)[:, None]


def _set_batch(net, data_blob: str, n: int, sample_shape: tuple[int, ...] | None = None) -> None:
    """Reshape the net's input blobs to batch ``n`` (and the data blob to ``sample_shape``) and propagate.

    Every input gets the new batch size: e.g. the training net's ``label`` input feeds Accuracy and loss
    layers, which CHECK that its batch matches. Those other inputs are zeroed (a valid class index) since
    their content is never used here. No-op when nothing changes (pycaffe reshapes are cheap, not free).
    """
    changed = []
    for name in _input_blobs(net, data_blob):
        shape = tuple(net.blobs[name].shape)          # (not .data: on a GPU that would copy it to the host)
        rest = sample_shape if (name == data_blob and sample_shape is not None) else shape[1:]
        new = (n, *rest)
        if shape != new:
            net.blobs[name].reshape(*new)
            changed.append(name)
    if changed:
        net.reshape()
        for name in changed:
            if name != data_blob:
                net.blobs[name].data[...] = 0


def _run_head(net, data_blob: str, net_sample: tuple[int, ...], pool_blob: str, start: str,
              pending: list[np.ndarray], results: dict[str, list[np.ndarray]]) -> None:
    """The rest of the net once for a batch of pooled features: the shapes follow from the data blob, so it is
    reshaped to len(pending) samples, the pooled blob is overwritten with `pending` (each (C, H, W)) and the
    net runs from `start`, the first layer that reads it; each output blob's rows are appended to `results`
    (copied out of the blob: a later forward overwrites it) and `pending` is emptied."""
    _set_batch(net, data_blob, len(pending), net_sample)
    net.blobs[pool_blob].data[...] = np.stack(pending)
    net.forward(start=start)
    for b in results:
        out = np.asarray(net.blobs[b].data)
        results[b].append(out.reshape(out.shape[0], -1).astype(np.float32, copy=True))
    pending.clear()


def crop_averaged_forward(
    net,
    utterances: Sequence[str],
    crops_provider: CropsProvider,
    out_blobs: Sequence[str],
    rng: np.random.Generator | int | None = None,
    batch: int = 50,
    head_batch: int = 64,
    data_blob: str = "data",
    pool_blob: str = "res4_3p",
    progress: bool = True,
    desc: str = "utterances",
    on_device: bool | None = None,
) -> dict[str, np.ndarray]:
    """Run the multi-crop protocol on every utterance; returns ``{blob: (N, ...) float32}`` for ``out_blobs``.

    ``rng`` (a Generator, or a seed for one) is passed to ``crops_provider`` for every utterance in order,
    so a seed fixes every crop. ``batch`` = crops per forward up to the pooling layer; ``head_batch`` =
    utterances per forward of the rest of the net. ``on_device`` (default: for a caffe_torch net) computes
    the spectrograms on the net's device and keeps every result there until the end (one read back for the
    whole run, none per batch); else NumPy spectrograms go in and results come out through the blobs' data.
    """
    if batch < 1 or head_batch < 1:
        raise ValueError(f"batch and head_batch must be >= 1, got {batch} and {head_batch}")
    if len(utterances) == 0:
        raise ValueError("no utterances to evaluate")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    end = pool_layer(net, pool_blob)
    start = head_layer(net, pool_blob)
    for b in out_blobs:
        if b not in net.blobs:
            raise ValueError(f"net has no blob {b!r} (blobs: {list(net.blobs)})")
    net_sample = tuple(net.blobs[data_blob].shape[1:])  # (1, frames, 257) from the prototxt
    run = _DeviceRun(net, data_blob, pool_blob, end, start, out_blobs) if (
        hasattr(net, "forward_range") if on_device is None else on_device) else None
    results: dict[str, list] = {b: [] for b in out_blobs}
    pending: list = []  # crop-averaged pooled features, each (C, H, W)

    def run_head() -> None:
        # Step 4 on the pending averages
        if run is not None:
            run.head(net_sample, pending, results)
        else:
            _run_head(net, data_blob, net_sample, pool_blob, start, pending, results)

    for path in tqdm(utterances, desc=desc, unit="utt", disable=not progress):
        crops = np.asarray(crops_provider(path, rng))
        if crops.ndim != 2 or crops.shape[0] < 1:
            raise ValueError(
                f"{path}: crops_provider must return (n_crops, L) crops, got shape {crops.shape}"
            )
        # (n_crops, 1, frames, 257) float32
        spec = _device_spectrogram(net, crops) if run is not None else _spectrogram(crops)[:, None]
        if tuple(spec.shape[1:]) != net_sample:
            raise ValueError(
                f"{path}: crops of {crops.shape[1]} samples give inputs {tuple(spec.shape[1:])}, but the net's "
                f"{data_blob!r} blob takes {net_sample} per sample"
            )
        pooled_sum = None
        for s in range(0, spec.shape[0], batch):
            chunk = spec[s : s + batch]
            _set_batch(net, data_blob, chunk.shape[0], net_sample)
            if run is not None:
                part = run.pooled_sum(chunk)
            else:
                net.blobs[data_blob].data[...] = chunk
                net.forward(end=end)
                part = np.asarray(net.blobs[pool_blob].data, dtype=np.float64).sum(axis=0)  # (C, H, W)
            pooled_sum = part if pooled_sum is None else pooled_sum + part
        average = pooled_sum / spec.shape[0]
        pending.append(average.float() if run is not None else average.astype(np.float32))
        if len(pending) == head_batch:
            run_head()
    if pending:
        run_head()
    if run is not None:
        return run.read(results)
    return {b: np.concatenate(v) for b, v in results.items()}


class _DeviceRun:
    """crop_averaged_forward's steps on a caffe_torch net's device: the blobs' tensors in and out, float64 crop
    sums there, nothing read back until `read`. The Accuracy and loss layers of a training prototxt read the
    zeros _set_batch wrote as labels: their label checks (a read each) are off while it runs."""

    def __init__(self, net, data_blob, pool_blob, end, start, out_blobs):
        names = list(net._layer_names)
        self.net, self.data_blob, self.pool_blob = net, data_blob, pool_blob
        self.end, self.start, self.last = names.index(end), names.index(start), len(names) - 1
        self.out_blobs = out_blobs

    def pooled_sum(self, chunk):
        """The sum over the chunk's crops of the pooled blob, (C, H, W) float64."""
        import torch

        self.net.blobs[self.data_blob].tensor = chunk
        with _labels_unchecked(self.net):
            self.net.forward_range(0, self.end)
        return self.net.blobs[self.pool_blob].tensor.detach().to(torch.float64).sum(dim=0)

    def head(self, net_sample, pending: list, results: dict) -> None:
        import torch

        _set_batch(self.net, self.data_blob, len(pending), net_sample)
        self.net.blobs[self.pool_blob].tensor = torch.stack(pending)
        with _labels_unchecked(self.net):
            self.net.forward_range(self.start, self.last)
        for b in results:
            out = self.net.blobs[b].tensor.detach()
            results[b].append(out.reshape(out.shape[0], -1).to(torch.float32).clone())
        pending.clear()

    def read(self, results: dict) -> dict[str, np.ndarray]:
        """Every result in one read from the device."""
        import torch

        from caffe_torch.opcount import host_array

        if not results:
            return {}
        widths = [v[0].shape[1] for v in results.values()]
        flat = host_array(torch.cat([torch.cat(v) for v in results.values()], dim=1))
        return dict(zip(results, np.split(flat, np.cumsum(widths)[:-1], axis=1)))


@contextlib.contextmanager
def _labels_unchecked(net):
    saved = [layer.check_labels for layer in net.modules]
    for layer in net.modules:
        layer.check_labels = False
    try:
        yield
    finally:
        for layer, check in zip(net.modules, saved):
            layer.check_labels = check


def identify(
    net,
    utterances: Sequence[str],
    labels,
    crops_provider: CropsProvider,
    rng: np.random.Generator | int | None = None,
    batch: int = 50,
    head_batch: int = 64,
    data_blob: str = "data",
    pool_blob: str = "res4_3p",
    score_blob: str = "fc6",
    progress: bool = True,
) -> dict:
    """Closed-set identification: top-1 / top-5 accuracy of ``score_blob`` on crop-averaged features.

    ``labels``: (N,) class indices in the classifier's order (from the labels JSON saved by training).
    Returns ``{"top1": float, "top5": float, "n": int}``; ties are ranked as Caffe 1.0's Accuracy layer.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(utterances),):
        raise ValueError(f"{len(utterances)} utterances but labels of shape {labels.shape}")
    out = crop_averaged_forward(
        net, utterances, crops_provider, [score_blob], rng=rng, batch=batch, head_batch=head_batch,
        data_blob=data_blob, pool_blob=pool_blob, progress=progress, desc="identification",
    )
    scores = out[score_blob]  # (N, classes)
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, min(5, scores.shape[1])),
        "n": int(labels.shape[0]),
    }


def embed(
    net,
    utterances: Sequence[str],
    crops_provider: CropsProvider,
    rng: np.random.Generator | int | None = None,
    batch: int = 50,
    head_batch: int = 64,
    data_blob: str = "data",
    pool_blob: str = "res4_3p",
    embed_blob: str = "fc5",
    progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """Embeddings for verification: ``(ids, (N, D) float32)``, ``ids`` = the utterances in input order.

    The embedding is ``embed_blob`` (fc5) of the crop-averaged pooled feature; not normalised here (cosine
    scoring normalises).
    """
    utterances = list(utterances)
    out = crop_averaged_forward(
        net, utterances, crops_provider, [embed_blob], rng=rng, batch=batch, head_batch=head_batch,
        data_blob=data_blob, pool_blob=pool_blob, progress=progress, desc="embedding",
    )
    return utterances, out[embed_blob]


# ---- full-utterance protocol (what today's toolkits do; NOT the paper's 50 crops) ----

AudioProvider = Callable[[str], np.ndarray]


def _trunk_end(net, pool_blob: str) -> tuple[str, str]:
    """(the last layer before the pooling layer, the blob the pooling layer reads): where the trunk ends."""
    names = _names(net)
    pool = pool_layer(net, pool_blob)
    i = names.index(pool)
    if i == 0:
        raise ValueError(f"the pooling layer {pool!r} is the net's first layer: there is no trunk to run")
    return names[i - 1], net.bottom_names[pool][0]


def _chunk_bounds(frames: int, max_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [a, b) splitting ``frames`` into the fewest equal chunks of at most ``max_frames``."""
    n = -(-frames // max_frames)
    edges = np.linspace(0, frames, n + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def full_utterance_forward(
    net,
    utterances: Sequence[str],
    audio_provider: AudioProvider,
    out_blobs: Sequence[str],
    max_frames: int = 6000,
    head_batch: int = 64,
    data_blob: str = "data",
    pool_blob: str = "res4_3p",
    progress: bool = True,
    desc: str = "utterances",
) -> dict[str, np.ndarray]:
    """Each utterance once at its whole length; returns ``{blob: (N, ...) float32}`` for ``out_blobs``.

    The nets end in average pooling over all time steps of a fixed-length crop, so for a whole utterance
    the trunk (every layer before the pooling layer) runs on its full spectrogram (1, 1, frames, 257) and
    its output (1, C, H, W) is averaged over all H time steps -> (C, 1, W), which is what ``pool_blob``
    holds for a crop; the head then runs on that, batched as in the crop protocol. An utterance longer than
    ``max_frames`` is cut into the fewest equal chunks of at most ``max_frames`` frames (each chunk's
    spectrogram starts at its own first frame; the conv edges at the cut differ from an uncut run); the
    average weights every trunk time step equally. An utterance shorter than the net's crop is repeated
    up to the crop length (VoxCeleb1 has none: its utterances are >= 4 s, the paper's crop 3 s).
    """
    from voxdata.frontend import crop_length, num_frames

    if head_batch < 1:
        raise ValueError(f"head_batch must be >= 1, got {head_batch}")
    if len(utterances) == 0:
        raise ValueError("no utterances to evaluate")
    net_sample = tuple(net.blobs[data_blob].data.shape[1:])  # (1, frames, 257) from the prototxt
    net_frames = int(net_sample[1])
    if max_frames < 2 * net_frames:
        raise ValueError(f"max_frames must be >= twice the net's {net_frames} frames (so that no chunk is "
                         f"shorter than a crop), got {max_frames}")
    trunk_end, trunk_blob = _trunk_end(net, pool_blob)
    start = head_layer(net, pool_blob)
    for b in out_blobs:
        if b not in net.blobs:
            raise ValueError(f"net has no blob {b!r} (blobs: {list(net.blobs)})")
    min_len = crop_length(net_frames)
    results: dict[str, list[np.ndarray]] = {b: [] for b in out_blobs}
    pending: list[np.ndarray] = []  # time-averaged trunk outputs, each (C, 1, W)

    def run_head() -> None:
        _run_head(net, data_blob, net_sample, pool_blob, start, pending, results)

    for utt in tqdm(utterances, desc=desc, unit="utt", disable=not progress):
        x = np.asarray(audio_provider(utt)).reshape(-1)
        if x.size == 0:
            raise ValueError(f"{utt}: empty audio")
        if x.size < min_len:
            x = np.resize(x, min_len)  # repeated cyclically up to one crop
        total, steps = None, 0
        for a, b in _chunk_bounds(num_frames(x.size), max_frames):
            seg = x[160 * a : 160 * (b - 1) + 401]  # the samples of frames a..b-1 (25 ms windows, 10 ms hop)
            # (1, 1, b - a, 257); a caffe_torch net's front end is the crop protocol's (on its device)
            spec = (_device_spectrogram(net, seg[None]).cpu().numpy() if hasattr(net, "forward_range")
                    else _spectrogram(seg[None])[:, None])
            # Only the data blob is reshaped, not the net: the layers after the pooling layer (fc5) cannot
            # take a longer input, and a forward reshapes each layer it runs (Caffe's Layer::Forward does).
            blob = net.blobs[data_blob]
            if tuple(blob.data.shape) != spec.shape:
                blob.reshape(*spec.shape)
            blob.data[...] = spec
            net.forward(end=trunk_end)
            t = np.asarray(net.blobs[trunk_blob].data, dtype=np.float64)[0]  # (C, H, W)
            total = t.sum(axis=1) if total is None else total + t.sum(axis=1)
            steps += t.shape[1]
        pending.append((total / steps)[:, None, :].astype(np.float32))  # (C, 1, W)
        if len(pending) == head_batch:
            run_head()
    if pending:
        run_head()
    _set_batch(net, data_blob, 1, net_sample)  # leave the net at its prototxt geometry
    return {b: np.concatenate(v) for b, v in results.items()}


def embed_full(
    net,
    utterances: Sequence[str],
    audio_provider: AudioProvider,
    max_frames: int = 6000,
    head_batch: int = 64,
    data_blob: str = "data",
    pool_blob: str = "res4_3p",
    embed_blob: str = "fc5",
    progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """Full-utterance embeddings ``(ids, (N, D) float32)``: ``embed_blob`` of the whole-utterance average."""
    utterances = list(utterances)
    out = full_utterance_forward(net, utterances, audio_provider, [embed_blob], max_frames=max_frames,
                                 head_batch=head_batch, data_blob=data_blob, pool_blob=pool_blob,
                                 progress=progress, desc="embedding (full)")
    return utterances, out[embed_blob]


# ---- glue for the test scripts (test_identification.py, test_verification.py) ----


def voxdata_crops_provider(
    ids: Sequence[str],
    wav_dir: str,
    n_crops: int,
    frames: int,
    seed: int,
    augment: bool = True,
    cache=None,
) -> CropsProvider:
    """A ``crops_provider`` over voxdata's evaluation crops (``voxdata.EvalCrops``).

    voxdata seeds the crops of utterance i from (seed, i), i = position in ``ids``, so they do not depend
    on evaluation order; the ``rng`` argument of the provider is therefore unused. ``ids`` are paths
    relative to ``wav_dir`` (the keys of the trial / split lists); files are read from ``wav_dir/id``
    (or from ``cache``, a voxdata WavCache folder keyed by those absolute paths).
    """
    from voxdata import EvalCrops

    paths = [os.path.join(wav_dir, u) for u in ids]
    # without augmentation a crop never repeats a recording (the original's trainNoAug rule): a recording
    # shorter than a crop is a CropError (the scripts' pre-flight refuses it first, see crop_min_samples)
    crops = EvalCrops(paths, n_crops=n_crops, frames=frames, seed=seed, augment=augment, repeat_short=False,
                      cache=cache)
    index = {u: i for i, u in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError("utterance ids are not unique")

    def provider(utt: str, rng=None) -> np.ndarray:
        return crops.crops(index[utt])  # (n_crops, L) int16

    return provider


def crop_min_samples(frames: int, augment: bool) -> int:
    """The shortest recording the crop protocol takes: any with augmentation (a crop wraps around the
    repeated recording), one crop of `frames` frames without (--no-augment: no repetition)."""
    from voxdata.frontend import crop_length

    return 1 if augment else crop_length(frames)


def voxdata_audio_provider(wav_dir: str, cache=None) -> AudioProvider:
    """An ``audio_provider`` for the full-utterance protocol: utterance id -> int16 (L,) samples of
    ``wav_dir/id`` (or from ``cache``, a voxdata WavCache folder keyed by those absolute paths)."""
    from voxdata import WavCache, read_wav

    read = read_wav if cache is None else (cache if isinstance(cache, WavCache) else WavCache(cache)).get

    def provider(utt: str) -> np.ndarray:
        return read(os.path.join(wav_dir, utt))

    return provider


def accuracy_input(net) -> str:
    """The blob the net's first Accuracy layer reads: its class scores (fc6, fc6_12, ... by loss)."""
    from .netinfo import accuracy_input as first_accuracy_input
    from .netinfo import net_layers, split_source

    try:
        return split_source(net, first_accuracy_input(net_layers(net)))
    except ValueError:
        raise ValueError("the net has no Accuracy layer: give --score-blob") from None


def input_frames(net, data_blob: str = "data") -> int:
    """Frames per crop the net takes: the time axis of its (N, 1, frames, 257) input blob."""
    from .netinfo import data_geometry

    if data_blob not in net.blobs:
        raise ValueError(f"net has no input blob {data_blob!r} (blobs: {list(net.blobs)})")
    return data_geometry(net.blobs[data_blob].data.shape, f"input blob {data_blob!r}")[1]


# The TEST-phase net of a training run: the run directory's copy of its net (test.prototxt / deploy.prototxt
# when a user adds one).
NET_NAMES = ("test.prototxt", "deploy.prototxt", "net.prototxt")
REPO_LISTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lists")


def guess_run_dir(weights: str) -> str:
    """The training run directory of a .caffemodel: its folder, or that folder's parent when the weights
    sit in the run's ``snapshots/`` subfolder (the parent then holds labels.json and net.prototxt)."""
    folder = os.path.dirname(os.path.abspath(weights))
    parent = os.path.dirname(folder)
    if os.path.basename(folder) == "snapshots" and os.path.isfile(os.path.join(parent, "labels.json")):
        return parent
    return folder


def default_list(data_root: str | None, name: str) -> str:
    """``<data-root>/<name>`` when it exists, else the project's ``lists/<name>``."""
    if data_root is not None:
        cand = os.path.join(data_root, name)
        if os.path.isfile(cand):
            return cand
    return os.path.join(REPO_LISTS, name)


def find_run_file(run_dir: str, names: Sequence[str], what: str, flag: str) -> str:
    """The first of ``names`` found in ``run_dir`` or its parent (snapshots may live in a subfolder).

    The error says where it looked and which flag gives the file explicitly.
    """
    looked = []
    for folder in (run_dir, os.path.dirname(os.path.abspath(run_dir))):
        for name in names:
            p = os.path.join(folder, name)
            looked.append(p)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"no {what} found (looked for {', '.join(looked)}); give it with {flag}")


class EvalLog:
    """A script's log: INFO lines to stdout and to ``<out_dir>/<name>.log``, voxdata's warnings included.

    Use as a context manager; the handlers are removed on exit, so nothing global outlives the run.
    """

    def __init__(self, out_dir: str, name: str):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, f"{name}.log")
        self.logger = logging.getLogger(name)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        self._file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self._file.setFormatter(fmt)
        self._console = logging.StreamHandler(sys.stdout)
        self._console.setFormatter(logging.Formatter("%(message)s"))
        self._data_logger = logging.getLogger("voxdata")

    def __enter__(self):
        self._saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self._file)
        self.logger.addHandler(self._console)
        self._data_logger.addHandler(self._file)
        return self.logger

    def __exit__(self, *exc):
        self.logger.removeHandler(self._file)
        self.logger.removeHandler(self._console)
        self._data_logger.removeHandler(self._file)
        self.logger.setLevel(self._saved[0])
        self.logger.propagate = self._saved[1]
        self._file.close()
        return False
