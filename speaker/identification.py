"""Closed-set identification with the paper's 50-crop protocol (test_identification.py is its CLI): which
utterances (the mode and subset rules), the class of each (the training run's labels JSON, or, for weights
trained elsewhere, the speakers of the list in sorted order, as training numbers them), the pre-flight checks
(every recording, weights covering the net), the crop-averaged forward (speaker.evaluate.identify) and
identification.json."""

from __future__ import annotations

import json
import os
import time

from . import checks
from .engine import engine_for
from .evaluate import NET_NAMES, default_list, guess_run_dir
from .preflight import check_eval_audio, load_test_net

LABEL_NAMES = ("labels.json",)


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


def _labels_json(args, run_dir: str) -> str | None:
    """--labels, else the training run's labels.json beside the weights (or in the folder above), else None:
    weights trained elsewhere, numbered from the list (_labels_from_list)."""
    if args.labels:
        return args.labels
    for folder in (run_dir, os.path.dirname(os.path.abspath(run_dir))):
        path = os.path.join(folder, LABEL_NAMES[0])
        if os.path.isfile(path):
            return path
    return None


def _labels_from_list(iden_split: str, data_root: str, mode: str | None, n_classes: int, net_path: str,
                      score_blob: str) -> dict:
    """The label map of weights without a labels JSON: training's numbering (voxdata.read_iden_split: the
    list's speakers in sorted order; in verification mode without the test speakers), in the mode whose
    speaker count is the classifier's size (--mode: only that one). A size that fits no mode is an error."""
    import voxdata

    counts = {}
    for m in (mode,) if mode else ("identification", "verification"):
        try:
            splits = voxdata.read_iden_split(iden_split, mode=m, data_root=data_root, check_files=False)
        except voxdata.ListFormatError:
            if m == mode or m == "identification":
                raise
            continue          # verification needs test speakers; a list without them is identification only
        counts[m] = len(splits.speakers)
        if counts[m] == n_classes:
            return {"mode": m, "speakers": splits.speakers, "test_speakers": splits.test_speakers}
    found = ", ".join(f"{n} speakers in {m} mode" for m, n in counts.items())
    raise ValueError(f"{net_path}: the classifier {score_blob!r} has {n_classes} classes but {iden_split} has "
                     f"{found}: give the list the net was trained on (--iden-split) or its labels JSON "
                     "(--labels)")


def run(args) -> dict:
    """The whole test: returns (and saves in <out>/identification.json) top-1, top-5, n and the settings.
    Errors are ValueError / KeyError / FileNotFoundError naming the file (the CLI prints them)."""
    from .evaluate import EvalLog, crop_min_samples, find_run_file, identify, input_frames, voxdata_crops_provider

    checks.identification_inputs(args)
    run_dir = args.run_dir or guess_run_dir(args.weights)
    net_path = args.net or find_run_file(run_dir, NET_NAMES, "TEST net prototxt", "--net")
    labels_path = _labels_json(args, run_dir)
    iden_split = args.iden_split or default_list(args.data_root, "iden_split.txt")
    out_dir = args.out or run_dir
    checks.output_folder(args, out_dir)

    with EvalLog(out_dir, "test_identification") as log:
        import voxdata

        t0 = time.time()
        log.info("net %s, weights %s, engine %s, gpu %s", net_path, args.weights, args.engine, args.gpu)
        caffe = engine_for(args.engine, args.gpu)   # EngineError: no CUDA for --gpu N, no pycaffe for --engine caffe
        net = load_test_net(caffe, net_path, args.weights)
        if args.score_blob is None:
            from .evaluate import accuracy_input

            args.score_blob = accuracy_input(net)
        scores = net.blobs[args.score_blob].data
        n_classes = int(scores.reshape(scores.shape[0], -1).shape[1])
        if labels_path is None:
            saved = _labels_from_list(iden_split, args.data_root, args.mode, n_classes, net_path, args.score_blob)
            log.info("no labels JSON: classes = the %d %s-mode speakers of %s in sorted order", n_classes,
                     saved["mode"], iden_split)
        else:
            saved = voxdata.load_labels(labels_path)
            if n_classes != len(saved["speakers"]):
                raise ValueError(f"{net_path}: blob {args.score_blob!r} has {n_classes} classes, "
                                 f"{labels_path} lists {len(saved['speakers'])} speakers")
        mode = args.mode or saved["mode"]
        if saved["mode"] != mode:
            raise ValueError(f"{labels_path}: the net was trained in {saved['mode']!r} mode, not {mode!r}")
        subset = args.subset or ("test" if mode == "identification" else "val")
        if mode == "verification" and subset == "test":
            raise ValueError("--subset test in verification mode: the held-out test speakers have no classes")
        class_of = {k: i for i, k in enumerate(saved["speakers"])}

        log.info("list %s (mode %s, subset %s), labels %s", iden_split, mode, subset,
                 labels_path or "from the list")
        missing_log = os.path.join(out_dir, "missing_files_identification.txt")
        splits = voxdata.read_iden_split(iden_split, mode=mode, data_root=args.data_root, check_files=True,
                                         missing_log=missing_log)
        if splits.missing:
            log.warning("%d listed files are missing (all splits; listed in %s)", len(splits.missing),
                        missing_log)
        utts, labels = _subset_labels(splits, subset, class_of, labels_path or iden_split)
        if not utts:
            raise ValueError(f"{iden_split}: no {subset} utterances found under {splits.wav_dir}")

        frames = input_frames(net, args.data_blob)
        keep = set(check_eval_audio([os.path.join(splits.wav_dir, u) for u in utts], out_dir, "identification",
                                    log, skip_bad=args.skip_bad_audio, progress=not args.no_progress,
                                    min_samples=crop_min_samples(frames, not args.no_augment)))
        utts, labels = map(list, zip(*[(u, c) for u, c in zip(utts, labels)
                                       if os.path.join(splits.wav_dir, u) in keep])) if keep else ([], [])
        if not utts:
            raise ValueError(f"{iden_split}: no usable {subset} utterance under {splits.wav_dir}")
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
            "labels": os.path.abspath(labels_path) if labels_path else None,
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
