"""Verification speed figures: embedding time per 1,000 utterances with the paper's 50 crops and with one
full-utterance pass, and scoring + metrics (+ AS-Norm) of VoxCeleb1-E's 581,480 trials.

    python bench/bench_verification.py [--net prototxt/ResNet-20_softmax.prototxt] [--utts 2] [--seconds 8.2]
        [--crops 50] [--device cpu|cuda] [--trials lists/list_test_all.txt] [--sections es] [--json OUT]

(e) embedding: random weights (speed does not depend on them), --utts utterances of --seconds of noise
    (VoxCeleb1's average is ~8.2 s), through speaker.evaluate.embed (--crops random crops of the net's
    length, crop-averaged) and speaker.evaluate.embed_full (one pass at full length); seconds per 1,000
    utterances each, interleaved rounds (bench/timing.py), median.
(s) scoring: random 512-D embeddings for every utterance of --trials (default lists/list_test_all.txt when
    `data_utils.py lists` has written it, else a random list of 581,480 trials over 145,375 ids): cosine
    scores, every metric (EER both conventions, minDCF at 0.01 / 0.001 / 0.05), and AS-Norm with a
    speaker-averaged cohort of 1,211 rows, top-300.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))


def _test_net(path: Path, device: str):
    """The TEST net of ``path`` at batch 1, on ``device``, with its fillers' random weights."""
    import caffe_torch as caffe

    if device == "cuda":
        caffe.set_device(0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    return caffe.Net(str(path), caffe.TEST)


def section_e(args, out: dict) -> None:
    import torch
    from timing import interleaved_times

    from speaker.evaluate import embed, embed_full, input_frames

    net = _test_net(Path(args.net), args.device)
    frames = input_frames(net)
    rng = np.random.default_rng(0)
    n = int(round(args.seconds * 16000))
    audio = {f"u{i}": rng.integers(-8000, 8000, n).astype(np.int16) for i in range(args.utts)}
    ids = list(audio)

    def crops_provider(utt, g):
        x = audio[utt]
        starts = g.integers(0, x.size - (160 * (frames - 1) + 401) + 1, args.crops)
        return np.stack([x[s : s + 160 * (frames - 1) + 401] for s in starts])

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    steps = {
        f"{args.crops} crops": lambda: embed(net, ids, crops_provider, rng=0, batch=args.batch, progress=False),
        "full utterance": lambda: embed_full(net, ids, audio.__getitem__, progress=False),
    }
    times = interleaved_times(steps, rounds=args.rounds, warmup=1, sync=sync, alternate=True)
    per_1000 = {k: 1000 * statistics.median(v) / len(ids) for k, v in times.items()}
    ratio = per_1000[f"{args.crops} crops"] / per_1000["full utterance"]
    out["embedding"] = {"net": args.net, "device": args.device, "threads": torch.get_num_threads(),
                        "utterances": len(ids), "seconds_per_utterance": args.seconds, "frames": frames,
                        "crops": args.crops, "seconds_per_1000": per_1000, "ratio_crops_over_full": ratio}
    for k, v in per_1000.items():
        print(f"(e) {k:<16} {v:10.1f} s per 1,000 utterances of {args.seconds:g} s  ({args.net}, {args.device})")
    print(f"(e) ratio {args.crops} crops / full: {ratio:.1f}x")


def _random_trials(rng, n_utts=145375, n_trials=581480, n_spk=1251):
    spk = rng.integers(0, n_spk, n_utts)
    ids = [f"id{10001 + s}/v/{i:06d}.wav" for i, s in enumerate(spk)]
    a = rng.integers(0, n_utts, n_trials)
    b = rng.integers(0, n_utts, n_trials)
    labels = (spk[a] == spk[b]).astype(np.int64)
    labels[: n_trials // 2] = 1  # half target, as the real lists; the pairs' identity does not matter here
    return labels, [(ids[i], ids[j]) for i, j in zip(a, b)], ids


def section_s(args, out: dict) -> None:
    from speaker.metrics import verification_summary
    from speaker.norm import cohort_matrix, normalize_scores
    from speaker.scoring import cosine_score_trials, write_scores

    rng = np.random.default_rng(0)
    trials_path = args.trials or str(ROOT / "lists" / "list_test_all.txt")
    if os.path.isfile(trials_path):
        from voxdata import read_trials

        t = read_trials(trials_path)
        labels, pairs, ids = t.labels, list(zip(t.enrol, t.test)), t.utterances()
        source = trials_path
    else:
        labels, pairs, ids = _random_trials(rng)
        source = "random (581,480 trials over 145,375 ids)"
    emb = rng.normal(size=(len(ids), 512)).astype(np.float32)
    table = dict(zip(ids, emb))
    cohort = cohort_matrix(rng.normal(size=(1211 * 4, 512)), np.repeat(np.arange(1211), 4).astype(str))
    figures = {}
    t0 = time.perf_counter()
    scores = cosine_score_trials(table, pairs)
    figures["cosine scores"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    verification_summary(labels, scores, (0.01, 0.001, 0.05))
    figures["metrics (EER x2, 3 minDCF)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    normed = normalize_scores(scores, pairs, table, cohort, "asnorm", top_n=300)
    figures["AS-Norm (1,211-row cohort, top 300)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    verification_summary(labels, normed, (0.01, 0.001, 0.05))
    figures["metrics of the normalised scores"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        write_scores(os.path.join(d, "scores.txt"), labels, scores, pairs=pairs)
        figures["writing scores.txt"] = time.perf_counter() - t0
    out["scoring"] = {"trials": source, "n_trials": len(pairs), "n_utterances": len(ids), "seconds": figures}
    print(f"(s) {len(pairs):,} trials over {len(ids):,} utterances ({source}):")
    for k, v in figures.items():
        print(f"(s)   {k:<40} {v:7.2f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="es", help="e = embedding, s = scoring (default both)")
    p.add_argument("--net", default=str(ROOT / "prototxt" / "ResNet-20_softmax.prototxt"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--utts", type=int, default=2, help="utterances timed per round (default 2)")
    p.add_argument("--seconds", type=float, default=8.2, help="utterance length in seconds (default 8.2)")
    p.add_argument("--crops", type=int, default=50)
    p.add_argument("--batch", type=int, default=50, help="crops per forward (default 50)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--trials", help="trial list for (s) (default lists/list_test_all.txt if present)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if set(args.sections) - set("es"):
        p.error(f"--sections takes e and/or s, got {args.sections!r}")
    out: dict = {}
    if "e" in args.sections:
        section_e(args, out)
    if "s" in args.sections:
        section_s(args, out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
