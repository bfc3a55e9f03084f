"""Front-end and loader throughput.

Spectrograms/s of: the batched NumPy/SciPy front end (voxdata.spectrogram), the batched PyTorch front end
(voxdata.spectrogram_torch) on the CPU and, when present, the GPU, and two per-crop NumPy formulations
(one crop at a time, vectorised over frames as the original scripts did; and frame by frame straight
from the formula). Then the training loader's sustained examples/s from wav files with 1, 2 and 4 workers.

    python bench/bench_frontend.py [--batch 50] [--frames 300] [--seconds 3] [--workers 1 2 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import rate  # noqa: E402
from voxdata import crop_length, spectrogram, spectrogram_torch, train_loader, write_wav  # noqa: E402


def per_crop_vectorised(x: np.ndarray) -> np.ndarray:
    """One crop (L,) -> (F, 257), NumPy float64, frames gathered with an index array (original style)."""
    x = x.astype(np.float64)
    x = x - x.mean()
    y = np.append(x[0], x[1:] - 0.97 * x[:-1])
    frames = math.ceil(abs(len(x) - 400) / 160)
    y = np.append(y, np.zeros(frames * 160 + 400 - len(y)))
    idx = np.arange(400)[None, :] + 160 * np.arange(frames)[:, None]
    s = np.abs(np.fft.rfft(y[idx] * np.hamming(400), 512))
    return ((s - s.mean(axis=0)) / s.std(axis=0)).astype(np.float32)


def per_crop_frame_loop(x: np.ndarray) -> np.ndarray:
    """One crop, one frame at a time (the formula as written)."""
    x = x.astype(np.float64)
    x = x - x.mean()
    y = np.append(x[0], x[1:] - 0.97 * x[:-1])
    frames = math.ceil(abs(len(x) - 400) / 160)
    y = np.append(y, np.zeros(frames * 160 + 400 - len(y)))
    w = np.hamming(400)
    s = np.stack([np.abs(np.fft.rfft(y[t * 160 : t * 160 + 400] * w, 512)) for t in range(frames)])
    return ((s - s.mean(axis=0)) / s.std(axis=0)).astype(np.float32)


_rate = rate   # the name bench_all.py imports (the timer itself is bench/timing.py's rate)


def bench_frontend(batch: int, length: int, seconds: float) -> list[dict]:
    import torch

    rng = np.random.default_rng(0)
    crops = rng.integers(-32768, 32768, size=(batch, length)).astype(np.int16)
    rows = [
        {"name": "numpy batched (CPU)", "per_s": _rate(lambda: spectrogram(crops), batch, seconds)},
        {
            "name": "per-crop numpy, vectorised frames",
            "per_s": _rate(lambda: [per_crop_vectorised(c) for c in crops[:10]], 10, seconds),
        },
        {
            "name": "per-crop numpy, frame loop",
            "per_s": _rate(lambda: [per_crop_frame_loop(c) for c in crops[:4]], 4, seconds),
        },
    ]
    t = torch.from_numpy(crops)
    rows.append(
        {
            "name": f"torch batched (CPU, {torch.get_num_threads()} threads)",
            "per_s": _rate(lambda: spectrogram_torch(t), batch, seconds),
        }
    )
    if torch.cuda.is_available():
        tg = t.cuda()
        rows.append(
            {
                "name": f"torch batched (GPU {torch.cuda.get_device_name()})",
                "per_s": _rate(lambda: spectrogram_torch(tg), batch, seconds, torch.cuda.synchronize),
            }
        )
        # what the training step does: int16 crops from pinned memory to the GPU, then the spectrogram
        tp = t.pin_memory()
        rows.append(
            {
                "name": "torch GPU incl. int16 host->device copy",
                "per_s": _rate(
                    lambda: spectrogram_torch(tp.cuda(non_blocking=True)),
                    batch,
                    seconds,
                    torch.cuda.synchronize,
                ),
            }
        )
    base = next(r["per_s"] for r in rows if r["name"].startswith("per-crop numpy, vectorised"))
    for r in rows:
        r["speedup_vs_per_crop"] = r["per_s"] / base
    return rows


def _make_wavs(folder: str, n: int, seed: int = 0) -> list[str]:
    """n recordings of 4-10 s (VoxCeleb-like lengths) of filtered noise, 16 kHz int16."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        x = rng.standard_normal(int(rng.uniform(4, 10) * 16000))
        x = np.cumsum(x) * 0.1 + x  # some low-frequency weight, like speech
        p = os.path.join(folder, f"id{10001 + i % 20}", "vid", f"{i:05d}.wav")
        write_wav(p, np.clip(x * 2000 / x.std(), -32768, 32767).astype(np.int16))
        paths.append(p)
    return paths


def bench_loader(paths, batch: int, length: int, workers: list[int], batches: int) -> list[dict]:
    labels = np.arange(len(paths)) % 20
    rows = []
    for w in workers:
        loader = train_loader(paths, labels, batch_size=batch, length=length, seed=0, num_workers=w)
        it = iter(loader)
        for _ in range(max(2, w)):  # warm-up: start the workers, fill the pipeline once
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        dt = time.perf_counter() - t0
        rows.append({"name": f"loader from wav, {w} worker(s)", "per_s": batches * batch / dt})
        del it, loader
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=50, help="crops per batch")
    p.add_argument("--frames", type=int, default=300, help="spectrogram frames (crop = 160*(frames-1)+401)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per front-end measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="loader worker counts")
    p.add_argument("--loader-batches", type=int, default=30, help="batches timed per worker count")
    p.add_argument("--files", type=int, default=200, help="wav files written for the loader benchmark")
    p.add_argument(
        "--wav-dir", default=None, help="use these wav files (recursively) instead of writing some"
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    import torch

    length = crop_length(args.frames)
    print(
        f"front end: batch {args.batch}, crop {length} samples -> {args.frames} x 257; "
        f"{os.cpu_count()} CPUs; torch {torch.__version__}"
    )
    rows = bench_frontend(args.batch, length, args.seconds)
    print(f"{'front end':48s} {'spectrograms/s':>15s} {'x per-crop':>11s}")
    for r in rows:
        print(f"{r['name']:48s} {r['per_s']:15.1f} {r['speedup_vs_per_crop']:11.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.wav_dir:
            paths = sorted(
                os.path.join(d, f) for d, _, fs in os.walk(args.wav_dir) for f in fs if f.endswith(".wav")
            )
        else:
            paths = _make_wavs(tmp, args.files)
        lrows = bench_loader(paths, args.batch, length, args.workers, args.loader_batches)
    head = f"loader (batch {args.batch}, {len(paths)} files)"
    print(f"{head:48s} {'examples/s':>15s}")
    for r in lrows:
        print(f"{r['name']:48s} {r['per_s']:15.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "batch": args.batch,
                    "length": length,
                    "frontend": rows,
                    "loader": lrows,
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
