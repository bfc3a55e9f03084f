#!/usr/bin/env python
"""Speaker verification: EER and minDCF (P_target 0.01 and 0.001) of cosine-scored embeddings.

Three ways in:
  net mode (default): embed every utterance of the trial list with the paper's 50-crop protocol (fc5 of the
      crop-averaged res4_3p), save them, score the trials by cosine similarity;
  --embeddings FILE:  score from a saved embeddings.npz (arrays `ids`, `embeddings`), no net;
  --scores FILE:      evaluate an existing `label score [path1 path2]` file, no net, no audio.
--all-pairs (net / embeddings modes) also scores every pair of the trial list's utterances with one matrix
product (VoxCeleb1 test: 4,874 utterances -> 11.9 M pairs; same speaker = same first path component).
The logic is in speaker.evaluate / scoring / metrics / plots; this is the CLI.

File defaults (explicit rules):
  --run-dir: the folder of --weights (its parent when that folder is snapshots/).
  --net:     <run-dir>/test.prototxt, deploy.prototxt or net.prototxt (the training run's copy of its net;
             its TEST phase is used), also looked up in run-dir's parent.
  --trials:  <data-root>/veri_test.txt when that exists, else lists/veri_test.txt next to this script.
  --out:     the run dir in net mode, else the folder of the --scores / --embeddings file.
Outputs in --out: verification.json, test_verification.log, embeddings.npz (net mode), scores.txt
(`label score path1 path2` per trial), score_hist.png, roc.png, det.png (all_pairs_*.png with --all-pairs),
missing_files_verification.txt if trial files are missing (those trials are dropped, counted, reported).
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module docstring for the default-file rules."
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--scores", help="evaluate this 'label score [path1 path2]' file (no net needed)")
    src.add_argument("--embeddings", help="score trials from this embeddings.npz (no net needed)")
    src.add_argument("--weights", help="trained .caffemodel (net mode)")
    p.add_argument("--net", help="TEST-phase net prototxt (default: see above)")
    p.add_argument("--run-dir", help="training run directory (default: the folder of --weights)")
    p.add_argument("--data-root", help="VoxCeleb1 root (wav files under <data-root>/wav or it)")
    p.add_argument("--trials", help="trial list '<0|1> <path1> <path2>' (default: <data-root>/veri_test.txt "
                   "if present, else lists/veri_test.txt)")
    p.add_argument("--all-pairs", action="store_true", help="also score every pair of the trials' utterances")
    p.add_argument("--p-target", type=float, action="append",
                   help="P_target of a minDCF (repeatable; default 0.01 and 0.001)")
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
    p.add_argument("--embed-blob", default="fc5")
    p.add_argument("--bins", type=int, default=100, help="histogram bins (default 100)")
    p.add_argument("--out", help="output folder (see the default rule above)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _speaker_of(utt: str) -> str:
    return utt.replace("\\", "/").split("/", 1)[0]


def evaluate_scores(labels, scores, out_dir: str, prefix: str, title: str, p_targets, bins: int) -> dict:
    """Metrics and the three figures of one score list; returns the JSON-ready summary."""
    from speaker import plots
    from speaker.metrics import verification_summary

    summary = verification_summary(labels, scores, p_targets)
    summary["figures"] = {
        "score_hist": plots.score_histogram(labels, scores, os.path.join(out_dir, f"{prefix}score_hist.png"),
                                            bins=bins, title=title),
        "roc": plots.roc_plot(labels, scores, os.path.join(out_dir, f"{prefix}roc.png"), title=title),
        "det": plots.det_plot(labels, scores, os.path.join(out_dir, f"{prefix}det.png"), title=title),
    }
    return summary


def _table(rows: list[tuple[str, dict]], p_targets) -> list[str]:
    """Results table: one row per score list, columns named EER, EER(orig), minDCF(p) for each p."""
    dcf_names = [f"minDCF({p:g})" for p in p_targets]
    head = f"{'scores':<14} {'trials':>10} {'EER':>9} {'EER(orig)':>10} " + " ".join(
        f"{n:>14}" for n in dcf_names
    )
    lines = [head]
    for name, s in rows:
        dcfs = " ".join(f"{s['min_dcf'][f'{p:g}']:>14.4f}" for p in p_targets)
        eer, orig = 100 * s["eer"], 100 * s["eer_original"]
        lines.append(f"{name:<14} {s['n']:>10d} {eer:>7.3f} % {orig:>8.3f} % {dcfs}")
    return lines


def _embed_with_net(args, utts: list[str], wav_dir: str, log):
    from speaker.evaluate import embed, find_run_file, input_frames, voxdata_crops_provider

    run_dir = args.run_dir or guess_run_dir(args.weights)
    net_path = args.net or find_run_file(run_dir, NET_NAMES, "TEST net prototxt", "--net")
    log.info("net %s, weights %s, engine %s, gpu %s", net_path, args.weights, args.engine, args.gpu)
    caffe = load_engine(args.engine, args.gpu)
    from speaker.preflight import check_eval_audio, load_test_net

    check_eval_audio([os.path.join(wav_dir, u) for u in utts], os.path.dirname(net_path), "verification", log)
    net = load_test_net(caffe, net_path, args.weights)
    frames = input_frames(net, args.data_blob)
    provider = voxdata_crops_provider(utts, wav_dir, args.crops, frames, args.seed,
                                      augment=not args.no_augment, cache=args.cache)
    log.info("embedding %d utterances x %d crops of %d frames, batch %d", len(utts), args.crops, frames,
             args.batch)
    return embed(net, utts, provider, batch=args.batch, head_batch=args.head_batch, data_blob=args.data_blob,
                 pool_blob=args.pool_blob, embed_blob=args.embed_blob, progress=not args.no_progress)


def run(args) -> dict:
    import numpy as np

    from speaker.evaluate import EvalLog
    from speaker.scoring import all_pairs_scores, cosine_score_trials, read_score_file, write_scores

    p_targets = tuple(args.p_target or (0.01, 0.001))
    for flag, value in (("--crops", args.crops), ("--batch", args.batch), ("--head-batch", args.head_batch),
                        ("--bins", args.bins)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not (args.scores or args.embeddings or args.weights):
        raise ValueError("give one of --weights (net mode), --embeddings FILE or --scores FILE")
    if args.scores and args.all_pairs:
        raise ValueError("--all-pairs needs embeddings (net mode or --embeddings), not --scores")
    source = args.scores or args.embeddings
    out_dir = args.out or (os.path.dirname(os.path.abspath(source)) if source
                           else args.run_dir or guess_run_dir(args.weights))
    result: dict = {"p_targets": list(p_targets)}
    t0 = time.time()
    with EvalLog(out_dir, "test_verification") as log:
        rows = []
        if args.scores:
            # Existing scores: nothing but metrics and figures.
            labels, scores = read_score_file(args.scores)
            log.info("scores %s: %d trials", args.scores, labels.shape[0])
            result["source"] = {"scores": os.path.abspath(args.scores)}
            name = os.path.basename(args.scores)
            result["trials"] = evaluate_scores(labels, scores, out_dir, "", name, p_targets, args.bins)
            rows.append((name, result["trials"]))
        else:
            import voxdata

            if not args.embeddings and args.data_root is None and args.trials is None:
                raise ValueError("net mode needs --data-root (audio) or --trials next to the audio")
            trials_path = args.trials or default_list(args.data_root, "veri_test.txt")
            missing_log = os.path.join(out_dir, "missing_files_verification.txt")
            trials = voxdata.read_trials(trials_path, data_root=args.data_root,
                                         check_files=not args.embeddings, missing_log=missing_log)
            if trials.missing:
                log.warning("%d utterances of %s are missing; their trials are dropped (listed in %s)",
                            len(trials.missing), trials_path, missing_log)
            if len(trials) == 0:
                raise ValueError(f"{trials_path}: no trial left whose files exist under {trials.wav_dir}")
            utts = trials.utterances()
            log.info("trials %s: %d trials over %d utterances", trials_path, len(trials), len(utts))
            if args.embeddings:
                with np.load(args.embeddings, allow_pickle=False) as z:
                    if "ids" not in z or "embeddings" not in z:
                        raise ValueError(f"{args.embeddings}: needs arrays 'ids' and 'embeddings'")
                    ids, emb = [str(u) for u in z["ids"]], np.asarray(z["embeddings"], dtype=np.float32)
                result["source"] = {"embeddings": os.path.abspath(args.embeddings)}
            else:
                ids, emb = _embed_with_net(args, utts, trials.wav_dir, log)
                emb_path = os.path.join(out_dir, "embeddings.npz")
                np.savez(emb_path, ids=np.asarray(ids), embeddings=emb)
                log.info("saved %s (%d x %d)", emb_path, *emb.shape)
                result["source"] = {"weights": os.path.abspath(args.weights), "embeddings": emb_path}
            result["source"].update(trials=os.path.abspath(trials_path), n_missing_files=len(trials.missing),
                                    crops=args.crops, augment=not args.no_augment, seed=args.seed)
            table = {u: emb[i] for i, u in enumerate(ids)}
            scores = cosine_score_trials(table, zip(trials.enrol, trials.test))
            write_scores(os.path.join(out_dir, "scores.txt"), trials.labels, scores,
                         pairs=list(zip(trials.enrol, trials.test)))
            name = os.path.basename(trials_path)
            result["trials"] = evaluate_scores(trials.labels, scores, out_dir, "", name, p_targets, args.bins)
            rows.append((name, result["trials"]))
            if args.all_pairs:
                # Only the trial list's utterances, in the embeddings' order; same speaker = same first
                # path component (speaker id, or name in the 2017 layout).
                row_of = {u: i for i, u in enumerate(ids)}
                idx = [row_of[u] for u in utts]  # every trial utterance was scored above, so all present
                ap_scores, ap_labels = all_pairs_scores(emb[idx], [_speaker_of(u) for u in utts])
                log.info("all pairs: %d utterances -> %d pairs", len(utts), ap_scores.shape[0])
                result["all_pairs"] = evaluate_scores(
                    ap_labels, ap_scores, out_dir, "all_pairs_", "all pairs", p_targets, args.bins
                )
                rows.append(("all pairs", result["all_pairs"]))
        result["seconds"] = round(time.time() - t0, 1)
        json_path = os.path.join(out_dir, "verification.json")
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        for line in _table(rows, p_targets):
            log.info("%s", line)
        log.info("saved %s and figures in %s", json_path, out_dir)
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"test_verification.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
