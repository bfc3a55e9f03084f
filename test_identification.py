#!/usr/bin/env python
"""Closed-set speaker identification with the paper's 50-crop protocol: top-1 / top-5 accuracy.

For each test utterance: N random augmented crops -> pooled feature (res4_3p) averaged over the crops ->
the rest of the net once -> classifier scores (fc6). The logic is in speaker.evaluate; this is the CLI.

Which utterances:
  --mode identification: split 3 of iden_split (the test split; 8,251 utterances of 1,251 speakers);
  --mode verification:   split 2 (validation) of the 1,211 training speakers, the only utterances of those
                         speakers the net never trained on (the 40 test speakers are not in its classifier).
  --subset overrides that choice (test | val).
Class indices come from the labels JSON written by training (speaker keys in classifier order), never from
re-deriving them here; --mode defaults to the mode recorded there.

File defaults (explicit rules):
  --run-dir:    the folder of --weights (its parent when that folder is snapshots/).
  --net:        <run-dir>/test.prototxt, deploy.prototxt or net.prototxt (the training run's copy of its
                net; its TEST phase is used), also looked up in run-dir's parent.
  --labels:     <run-dir>/labels.json (also looked up in run-dir's parent).
  --iden-split: <data-root>/iden_split.txt when that file exists, else lists/iden_split.txt next to this
                script.
  --out:        <run-dir>.
Outputs in --out: identification.json, test_identification.log, missing_files_identification.txt (only if
files are missing; missing files are counted and reported, the rest is evaluated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# engine_for imports the engine (caffe_torch or pycaffe) only when called: runs without a net need none
from speaker.engine import engine_for as load_engine
from speaker.evaluate import NET_NAMES, default_list, guess_run_dir

LABEL_NAMES = ("labels.json",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module docstring for the default-file rules."
    )
    p.add_argument("--weights", required=True, help="trained .caffemodel")
    p.add_argument("--net", help="TEST-phase net prototxt (default: see above)")
    p.add_argument("--run-dir", help="training run directory (default: the folder of --weights)")
    p.add_argument("--labels", help="labels JSON saved by training (default: <run-dir>/labels.json)")
    p.add_argument("--data-root", required=True,
                   help="VoxCeleb1 root (wavs under <data-root>/wav, or in it for the 2017 layout)")
    p.add_argument("--iden-split", help="iden_split.txt (default: <data-root>/iden_split.txt if present, "
                   "else lists/iden_split.txt)")
    p.add_argument("--mode", choices=("identification", "verification"),
                   help="how the net was trained (default: the mode in the labels JSON)")
    p.add_argument("--subset", choices=("test", "val"),
                   help="utterances to test (default: test for identification, val for verification)")
    p.add_argument("--crops", type=int, default=50, help="random crops per utterance (default 50)")
    p.add_argument("--batch", type=int, default=50, help="crops per forward pass (default 50)")
    p.add_argument("--head-batch", type=int, default=64,
                   help="utterances per forward of the layers after pooling (default 64)")
    p.add_argument("--no-augment", action="store_true",
                   help="crops without repetition/time reversal (the paper tests WITH augmentation)")
    p.add_argument("--seed", type=int, default=0, help="crop seed (default 0)")
    p.add_argument("--gpu", type=int, default=None,
                   help="GPU id, -1 = CPU (default: $SGE_GPU, else 0 with CUDA, else CPU)")
    p.add_argument("--engine", choices=("torch", "caffe"), default="torch",
                   help="caffe_torch (torch, default) or real pycaffe (caffe)")
    p.add_argument("--cache", help="voxdata wav cache folder (keys: absolute wav paths)")
    p.add_argument("--data-blob", default="data")
    p.add_argument("--pool-blob", default="res4_3p")
    p.add_argument("--score-blob", help="class-score blob (default: the blob the net's Accuracy layers read)")
    p.add_argument("--out", help="output folder (default: the run dir)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _subset_labels(splits, subset, class_of: dict[str, int], labels_path: str):
    """Paths and classifier indices of the chosen subset; a speaker unknown to the labels JSON is an error."""
    uttset = splits.test if subset == "test" else splits.val
    keys = splits.test_speakers if subset == "test" else splits.speakers
    unknown = sorted({keys[i] for i in uttset.labels if keys[i] not in class_of})
    if unknown:
        raise ValueError(
            f"{labels_path}: {len(unknown)} speakers of the {subset} set are not in the classifier "
            f"(first: {unknown[0]}); the labels JSON does not match this list or mode"
        )
    return list(uttset.paths), [class_of[keys[i]] for i in uttset.labels]


def run(args) -> dict:
    from speaker.evaluate import EvalLog, find_run_file, identify, input_frames, voxdata_crops_provider

    run_dir = args.run_dir or guess_run_dir(args.weights)
    net_path = args.net or find_run_file(run_dir, NET_NAMES, "TEST net prototxt", "--net")
    labels_path = args.labels or find_run_file(run_dir, LABEL_NAMES, "labels JSON", "--labels")
    iden_split = args.iden_split or default_list(args.data_root, "iden_split.txt")
    out_dir = args.out or run_dir
    for flag, value in (("--crops", args.crops), ("--batch", args.batch), ("--head-batch", args.head_batch)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")

    with EvalLog(out_dir, "test_identification") as log:
        import voxdata

        t0 = time.time()
        saved = voxdata.load_labels(labels_path)
        mode = args.mode or saved["mode"]
        if saved["mode"] != mode:
            raise ValueError(f"{labels_path}: the net was trained in {saved['mode']!r} mode, not {mode!r}")
        subset = args.subset or ("test" if mode == "identification" else "val")
        if mode == "verification" and subset == "test":
            raise ValueError("--subset test in verification mode: the held-out test speakers have no classes")
        class_of = {k: i for i, k in enumerate(saved["speakers"])}

        log.info("net %s, weights %s, engine %s, gpu %s", net_path, args.weights, args.engine, args.gpu)
        log.info("list %s (mode %s, subset %s), labels %s", iden_split, mode, subset, labels_path)
        missing_log = os.path.join(out_dir, "missing_files_identification.txt")
        splits = voxdata.read_iden_split(iden_split, mode=mode, data_root=args.data_root, check_files=True,
                                         missing_log=missing_log)
        if splits.missing:
            log.warning("%d listed files are missing (all splits; listed in %s)", len(splits.missing),
                        missing_log)
        utts, labels = _subset_labels(splits, subset, class_of, labels_path)
        if not utts:
            raise ValueError(f"{iden_split}: no {subset} utterances found under {splits.wav_dir}")

        caffe = load_engine(args.engine, args.gpu)
        net = caffe.Net(net_path, args.weights, caffe.TEST)
        if args.score_blob is None:
            from speaker.evaluate import accuracy_input

            args.score_blob = accuracy_input(net)
        n_classes = int(net.blobs[args.score_blob].data.reshape(net.blobs[args.score_blob].data.shape[0], -1)
                        .shape[1])
        if n_classes != len(saved["speakers"]):
            raise ValueError(f"{net_path}: blob {args.score_blob!r} has {n_classes} classes, "
                             f"{labels_path} lists {len(saved['speakers'])} speakers")
        frames = input_frames(net, args.data_blob)
        provider = voxdata_crops_provider(utts, splits.wav_dir, args.crops, frames, args.seed,
                                          augment=not args.no_augment, cache=args.cache)
        log.info("%d utterances x %d crops of %d frames, batch %d", len(utts), args.crops, frames, args.batch)
        res = identify(net, utts, labels, provider, batch=args.batch, head_batch=args.head_batch,
                       data_blob=args.data_blob, pool_blob=args.pool_blob, score_blob=args.score_blob,
                       progress=not args.no_progress)
        result = {
            **res,
            "mode": mode,
            "subset": subset,
            "n_missing_files": len(splits.missing),
            "crops": args.crops,
            "augment": not args.no_augment,
            "seed": args.seed,
            "net": os.path.abspath(net_path),
            "weights": os.path.abspath(args.weights),
            "labels": os.path.abspath(labels_path),
            "iden_split": os.path.abspath(iden_split),
            "engine": args.engine,
            "seconds": round(time.time() - t0, 1),
        }
        json_path = os.path.join(out_dir, "identification.json")
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        log.info("%-8s %10s", "metric", "value")
        log.info("%-8s %10.4f", "top-1", result["top1"])
        log.info("%-8s %10.4f", "top-5", result["top5"])
        log.info("%-8s %10d", "n", result["n"])
        log.info("saved %s", json_path)
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"test_identification.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
