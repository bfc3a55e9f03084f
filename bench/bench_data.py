"""Data-side figures of today's recipe: the audio cache's decode throughput (wav and VoxCeleb2's m4a) and the
training loader's throughput with noise + reverberation augmentation, beside the CPU training step it feeds.

    python bench/bench_data.py [--files 160] [--workers 1 2] [--batch 50] [--frames 300] [--json OUT]

(1) decode: `--files` recordings of `--seconds` s (a few distinct synthetic utterances, copied: decoding cost
    does not depend on which), written as 16-bit wav and as AAC m4a (PyAV, 64 kbps); voxdata.build_cache into
    a fresh folder with each worker count: files/s and hours of audio per second (the figures the build
    logs), and what that makes for VoxCeleb1 (153,516 files, 352 h) and VoxCeleb2 dev (1,092,009 files,
    ~2,360 h) and the cache's size on disk (115.2 MB per hour).
(2) loader: batches of `--batch` crops of `--frames` frames from that cache (voxdata.TrainBatches), in this
    process (one core; torch and scipy single-threaded), without augmentation, with the default
    augmentation (reverberation 0.2, noise 0.6: voxdata.augment) and with both on every example, on the
    synthetic MUSAN / RIR folders of `data_utils.py synth-noise`; then with a DataLoader of `--loader-workers`
    worker processes (the training scripts' --workers).
(3) step: the CPU training step (forward + backward + Caffe SGD update) of the paper's ResNet-20 with the
    VoxCeleb2 classifier (--step-net, default prototxt/vox2/5994/ResNet-20_softmax.prototxt) at `--step-batch`,
    examples/s: the
    loader must stay ahead of it. A GPU step is bench_all.py --device cuda's figure: it needs that many
    examples/s divided by the per-core loader figure in loader cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxdata import build_cache, crop_length, write_wav  # noqa: E402
from voxdata.m4a import write_m4a  # noqa: E402

CORPORA = {"VoxCeleb1": (153_516, 352.0), "VoxCeleb2 dev": (1_092_009, 2360.0)}
MB_PER_HOUR = 16000 * 2 * 3600 / 1e6      # int16 at 16 kHz


@functools.lru_cache(maxsize=4)
def _utterances(seconds: float, distinct: int) -> tuple[np.ndarray, ...]:
    from voxdata.synth import synth_utterance

    return tuple(synth_utterance(9, s, 0, 0, seconds, seconds) for s in range(distinct))


def make_files(folder: str, n: int, seconds: float, fmt: str, distinct: int = 4) -> list[str]:
    utts = _utterances(seconds, distinct)
    write = write_wav if fmt == "wav" else write_m4a
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"id{i % 20:05d}", "video", f"{i:05d}.{fmt}")
        if i < distinct:
            write(p, utts[i])
        else:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            shutil.copyfile(paths[i % distinct], p)
        paths.append(p)
    return paths


def decode_rates(tmp: str, files: int, seconds: float, workers: list[int]) -> list[dict]:
    rows = []
    for fmt in ("wav", "m4a"):
        paths = make_files(os.path.join(tmp, fmt), files, seconds, fmt)
        for w in workers:
            out = os.path.join(tmp, f"cache_{fmt}_{w}")
            s = build_cache(paths, out, progress=False, workers=w).build_stats
            row = {"format": fmt, "workers": w, "files_per_s": s.files_per_s, "audio_hours_per_s": s.audio_hours_per_s,
                   "seconds": s.seconds, "files": s.decoded}
            for name, (_, hours) in CORPORA.items():
                row[f"{name} hours"] = hours / s.audio_hours_per_s / 3600
            rows.append(row)
            shutil.rmtree(out)
    return rows


def loader_rates(tmp: str, batch: int, frames: int, budget: float, loader_workers: int,
                 seconds: float = 8.0) -> tuple[list[dict], str]:
    import torch

    from voxdata import TrainBatches, train_loader
    from voxdata.augment import AugmentConfig, load_augmenter
    from voxdata.synth_noise import make_noise_folders

    torch.set_num_threads(1)
    paths = make_files(os.path.join(tmp, "loader"), 40, seconds, "wav")
    cache = build_cache(paths, os.path.join(tmp, "cache_loader"), progress=False)
    labels = np.arange(len(paths)) % 20
    folders = make_noise_folders(os.path.join(tmp, "noise"))
    both = AugmentConfig(noise_dir=folders["musan"], rir_dir=folders["rirs"])
    configs = {"no augmentation": None, "noise 0.6 + reverberation 0.2 (default)": both,
               "noise 1.0 + reverberation 1.0": AugmentConfig(folders["musan"], folders["rirs"], 1.0, 1.0)}
    rows = []
    for name, config in configs.items():
        aug = load_augmenter(config)[0] if config is not None else None
        ds = TrainBatches(paths, labels, batch_size=batch, frames=frames, seed=0, cache=cache, augmenter=aug)
        ds.batch(0)
        k, t0 = 1, time.perf_counter()
        while time.perf_counter() - t0 < budget:
            ds.batch(k)
            k += 1
        one = batch * (k - 1) / (time.perf_counter() - t0)
        it = iter(train_loader(paths, labels, batch_size=batch, frames=frames, seed=0, cache=cache,
                               num_workers=loader_workers, augmenter=aug, pin_memory=False))
        for _ in range(loader_workers + 1):
            next(it)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < budget:
            next(it)
            n += 1
        many = batch * n / (time.perf_counter() - t0)
        del it
        rows.append({"augmentation": name, "examples_per_s_one_core": one,
                     f"examples_per_s_{loader_workers}_workers": many})
    return rows, f"batch {batch}, {frames} frames ({crop_length(frames)} samples)"


def step_rate(net: Path, batch: int, iters: int) -> float:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_all import _setup, timed_step

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    solver = _setup(net, batch, torch.device("cpu"), None)
    step = timed_step(solver, None)
    step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=160, help="recordings per format (1)")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each recording (1) (VoxCeleb: ~8 s)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cache build worker counts (1)")
    p.add_argument("--batch", type=int, default=50, help="loader batch (2)")
    p.add_argument("--frames", type=int, default=300, help="crop frames (2)")
    p.add_argument("--budget", type=float, default=10.0, help="seconds per loader figure (2)")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers (2)")
    p.add_argument("--step-net", type=Path, default=ROOT / "prototxt" / "vox2" / "5994" / "ResNet-20_softmax.prototxt",
                   help="the net of the CPU training step (3); default %(default)s")
    p.add_argument("--step-batch", type=int, default=4, help="CPU training step batch (3)")
    p.add_argument("--step-iters", type=int, default=2, help="timed CPU training steps (3)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    print(f"bench_data: {cores} usable cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        decode = decode_rates(tmp, args.files, args.seconds, args.workers)
        print("(1) cache build (decode + write), per format and worker count:")
        for r in decode:
            est = ", ".join(f"{name} {r[f'{name} hours']:.1f} h" for name in CORPORA)
            print(f"    {r['format']:3} {r['workers']} workers: {r['files_per_s']:8.1f} files/s "
                  f"{r['audio_hours_per_s']:7.3f} h of audio/s  -> {est}", flush=True)
        for name, (files, hours) in CORPORA.items():
            print(f"    {name}: {files:,} files, {hours:,.0f} h -> cache {hours * MB_PER_HOUR / 1000:,.0f} GB")
        loader, what = loader_rates(tmp, args.batch, args.frames, args.budget, args.loader_workers, args.seconds)
    print(f"(2) training loader from the cache, {what}:")
    for r in loader:
        print(f"    {r['augmentation']:42} {r['examples_per_s_one_core']:8.1f} ex/s on one core, "
              f"{r[f'examples_per_s_{args.loader_workers}_workers']:8.1f} ex/s with {args.loader_workers} "
              "worker processes", flush=True)
    step = step_rate(args.step_net, args.step_batch, args.step_iters)
    print(f"(3) CPU training step, {args.step_net}, batch {args.step_batch}, "
          f"{cores} threads: {step:.2f} examples/s")
    slowest = min(r[f"examples_per_s_{args.loader_workers}_workers"] for r in loader)
    print(f"    loader / step: {slowest / step:.1f} x (the slowest loader configuration with "
          f"{args.loader_workers} workers)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": cores, "decode": decode, "loader": loader,
                                               "loader_setup": what, "cpu_step_examples_per_s": step,
                                               "args": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
