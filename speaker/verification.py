"""test_verification.py's work: embed, score, normalise, measure and draw; every result names its protocol.

Sources (one per run): a net (``--weights``: embed every utterance the trial lists need, once, resumably),
saved embeddings (``--embeddings``), or a ``label score`` file (``--scores``). ``--compare RUN_DIR...``
draws the DET curves of earlier runs on one plot, alone or after a run. ``--make-cohort OUT.npz`` embeds
training speakers' utterances (the cohort of S-Norm / AS-Norm) with the same protocol as the trials.

Every row of every table and JSON carries its trial list (file, VoxCeleb1-O/E/H or custom, trials, sha256
prefix), its normalisation and the cost model (P_target, C_miss, C_fa, minDCF normalised by
min(C_miss P_target, C_fa (1 - P_target)), the NIST convention).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from speaker import checks
from speaker.evaluate import NET_NAMES, EvalLog, default_list, guess_run_dir

__all__ = ["make_cohort", "run"]

# Protocol fields that must agree between the trials' embeddings and the cohort's.
COHORT_MUST_MATCH = ("mode", "crops", "augment", "frames", "max_frames", "embed_blob", "pool_blob", "weights_sha256")


def _sha256(path: str) -> str:
    from speaker.trial_lists import file_sha256

    return file_sha256(path)


# ---------------------------------------------------------------- embedding with a net


class _NetEmbedder:
    """The net of --weights and the chosen protocol: 50 (--crops) random crops, or 'full' utterances."""

    def __init__(self, args, load_engine: Callable, log):
        from speaker.evaluate import find_run_file, input_frames

        self.args = args
        run_dir = args.run_dir or guess_run_dir(args.weights)
        self.net_path = args.net or find_run_file(run_dir, NET_NAMES, "TEST net prototxt", "--net")
        log.info("net %s, weights %s, engine %s, gpu %s", self.net_path, args.weights, args.engine, args.gpu)
        from speaker.preflight import load_test_net

        caffe = load_engine(args.engine, args.gpu)
        # refuses a missing --weights, or one that leaves any layer of the net at its fillers
        self.net = load_test_net(caffe, self.net_path, args.weights)
        self.frames = input_frames(self.net, args.data_blob)
        if args.embed_blob not in self.net.blobs:
            raise ValueError(f"{self.net_path}: no blob {args.embed_blob!r} (--embed-blob) in the net")
        self.dim = int(np.prod(self.net.blobs[args.embed_blob].data.shape[1:]))   # the embedding size
        if args.crops == "full" and (args.no_augment or args.seed):
            log.info("--crops full: each utterance as it is; --no-augment and --seed do not apply")

    def protocol(self) -> dict:
        a = self.args
        full = a.crops == "full"
        return {
            "mode": "full" if full else "crops",
            "crops": None if full else int(a.crops),
            "augment": None if full else not a.no_augment,
            "seed": None if full else a.seed,
            "frames": self.frames,
            "max_frames": a.max_frames if full else None,
            "embed_blob": a.embed_blob,
            "pool_blob": a.pool_blob,
            "weights": os.path.abspath(a.weights),
            "weights_sha256": _sha256(a.weights)[:16],
            "net": os.path.abspath(self.net_path),
            "engine": a.engine,
        }

    def embed_all(self, ids: list[str], wav_dir: str, out_npz: str, log, speakers=None) -> np.ndarray:
        """Embed ``ids`` (relative to ``wav_dir``), resumably (``out_npz`` + '.partial/'), save ``out_npz``."""
        from speaker.embed_store import EmbedStore, save_embeddings
        from speaker.evaluate import crop_min_samples, embed, embed_full, voxdata_audio_provider, voxdata_crops_provider
        from speaker.preflight import check_eval_audio

        a = self.args
        # every recording checked once (cached) before any is embedded: all problems reported together
        shortest = 1 if a.crops == "full" else crop_min_samples(self.frames, not a.no_augment)
        check_eval_audio([os.path.join(wav_dir, u) for u in ids], os.path.dirname(os.path.abspath(out_npz)),
                         "verification", log, min_samples=shortest)
        protocol = self.protocol()
        store = EmbedStore(out_npz + ".partial", ids, protocol)
        if a.crops == "full":
            audio = voxdata_audio_provider(wav_dir, cache=a.cache)

            def embed_fn(part):
                return embed_full(self.net, part, audio, max_frames=a.max_frames, head_batch=a.head_batch,
                                  data_blob=a.data_blob, pool_blob=a.pool_blob, embed_blob=a.embed_blob,
                                  progress=not a.no_progress)[1]
            log.info("embedding %d utterances, each once at full length (chunks of <= %d frames)", len(ids),
                     a.max_frames)
        else:
            # crops of utterance i are seeded by (seed, i): i = its position in ids, whichever run embeds it
            provider = voxdata_crops_provider(ids, wav_dir, int(a.crops), self.frames, a.seed,
                                              augment=not a.no_augment, cache=a.cache)

            def embed_fn(part):
                return embed(self.net, part, provider, batch=a.batch, head_batch=a.head_batch,
                             data_blob=a.data_blob, pool_blob=a.pool_blob, embed_blob=a.embed_blob,
                             progress=not a.no_progress)[1]
            log.info("embedding %d utterances x %s crops of %d frames, batch %d", len(ids), a.crops, self.frames,
                     a.batch)
        t0 = time.time()
        emb = store.run(embed_fn, chunk=a.save_every,
                        progress=lambda done, n: log.info("embedded %d / %d utterances (%.0f s)", done, n,
                                                          time.time() - t0))
        save_embeddings(out_npz, ids, emb, protocol, speakers=speakers)
        store.remove()
        log.info("saved %s (%d x %d)", out_npz, *emb.shape)
        return emb


# ---------------------------------------------------------------- scoring and figures


def _row_summary(labels, scores, out_dir, prefix, title, info, norm, cost, bins, pairs=None,
                 write: bool = True) -> dict:
    from speaker import plots
    from speaker.metrics import verification_summary
    from speaker.scoring import write_scores

    summary = verification_summary(labels, scores, cost["p_targets"], cost["c_miss"], cost["c_fa"])
    if write:
        summary["scores_file"] = write_scores(os.path.join(out_dir, f"{prefix}scores.txt"), labels, scores,
                                              pairs=pairs)
    summary.update(
        trial_list=info,
        norm=norm,
        cost=cost,
        figures={
            "score_hist": plots.score_histogram(labels, scores, os.path.join(out_dir, f"{prefix}score_hist.png"),
                                                bins=bins, title=title),
            "roc": plots.roc_plot(labels, scores, os.path.join(out_dir, f"{prefix}roc.png"), title=title),
            "det": plots.det_plot(labels, scores, os.path.join(out_dir, f"{prefix}det.png"), title=title),
        },
    )
    return summary


def _table(rows: Sequence[dict], p_targets) -> list[str]:
    """One line per (list, normalisation): list file, known name, trials, sha256 prefix, norm, metrics."""
    dcf_names = [f"minDCF({p:g})" for p in p_targets]
    head = (f"{'list':<22} {'name':<12} {'trials':>9} {'sha256':<12} {'norm':<7} {'EER':>9} {'EER(orig)':>10} "
            + " ".join(f"{n:>14}" for n in dcf_names))
    lines = [head]
    for s in rows:
        info = s["trial_list"]
        dcfs = " ".join(f"{s['min_dcf'][f'{p:g}']:>14.4f}" for p in p_targets)
        eer, orig = 100 * s["eer"], 100 * s["eer_original"]
        lines.append(f"{info['file']:<22} {info['name']:<12} {s['n']:>9d} {info['sha256_prefix']:<12} "
                     f"{s['norm']:<7} {eer:>7.3f} % {orig:>8.3f} % {dcfs}")
    return lines


def _load_cohort(args, trial_protocol: dict, dim: int, made_by: str, log):
    """The cohort matrix of --cohort and its description; refused when it was made otherwise than the trials'
    embeddings (another size, or another protocol when both record one)."""
    from speaker.embed_store import load_embeddings
    from speaker.norm import cohort_matrix

    ids, emb, protocol, speakers = load_embeddings(args.cohort)
    checks.cohort_size(args.cohort, emb.shape[1], dim, made_by)
    if args.cohort_mode == "speaker" and speakers is None:
        from speaker.scoring import speaker_of

        speakers = [speaker_of(u) for u in ids]
    if protocol and trial_protocol:
        diffs = [f"{k}: trials {trial_protocol.get(k)!r}, cohort {protocol.get(k)!r}" for k in COHORT_MUST_MATCH
                 if trial_protocol.get(k) != protocol.get(k)]
        if diffs:
            raise ValueError(f"{args.cohort}: the cohort was embedded with another protocol than the trials "
                             f"({'; '.join(diffs)}); make it with --make-cohort and the same options")
    else:
        log.warning("%s or the trials' embeddings record no protocol: cannot check they were made alike",
                    args.cohort)
    cohort = cohort_matrix(emb, speakers, args.cohort_mode)
    log.info("cohort %s: %d embeddings -> %d %s rows", args.cohort, len(ids), cohort.shape[0],
             "speaker-averaged" if args.cohort_mode == "speaker" else "utterance")
    return cohort, {"file": os.path.abspath(args.cohort), "mode": args.cohort_mode, "rows": int(cohort.shape[0]),
                    "embeddings": len(ids), "sha256_prefix": _sha256(args.cohort)[:12]}


def _projection(ids, emb, utts, out_dir, args, log) -> dict:
    """PCA and t-SNE PNGs of the first list's utterances, whole speakers up to --projection-max points."""
    from speaker import plots
    from speaker.scoring import speaker_of

    row = {u: i for i, u in enumerate(ids)}
    by_spk: dict[str, list[str]] = {}
    for u in utts:
        by_spk.setdefault(speaker_of(u), []).append(u)
    chosen: list[str] = []
    for spk in sorted(by_spk):
        if chosen and len(chosen) + len(by_spk[spk]) > args.projection_max:
            break
        chosen += by_spk[spk]
    x = emb[[row[u] for u in chosen]]
    spk = [speaker_of(u) for u in chosen]
    n_spk = len(set(spk))
    log.info("projection of %d embeddings of %d speakers (PCA, t-SNE)", len(chosen), n_spk)
    return {m: plots.embedding_projection(x, spk, os.path.join(out_dir, f"projection_{m}.png"), method=m,
                                          seed=args.seed,
                                          title=f"{m.upper()}: {len(chosen):,} test embeddings, {n_spk} speakers")
            for m in ("pca", "tsne")}


def _compare(run_dirs: Sequence[str], out_dir: str, log, current: Sequence[dict] = ()) -> dict:
    """DET curves of every row of every run (and of this run's ``current`` rows) on one plot
    (det_compare.png), with a log line each naming its list."""
    from speaker import plots
    from speaker.scoring import read_score_file

    runs = []
    for run in run_dirs:
        path = os.path.join(run, "verification.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--compare {run}: no verification.json there")
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        runs.append((run, res.get("results") or [res["trials"]]))
    if current:
        runs.append((out_dir, current))
    curves, rows = [], []
    for run, entries in runs:
        for e in entries:
            scores_file = e.get("scores_file") or os.path.join(run, "scores.txt")
            labels, scores = read_score_file(scores_file)
            info = e.get("trial_list", {})
            name = f"{os.path.basename(os.path.normpath(run))}: {info.get('file', os.path.basename(scores_file))}"
            if e.get("norm", "none") != "none":
                name += f" {e['norm']}"
            curves.append((name, labels, scores))
            rows.append({"run": os.path.abspath(run), "name": name, "eer": e["eer"], "min_dcf": e["min_dcf"],
                         "trial_list": info, "norm": e.get("norm", "none"), "cost": e.get("cost")})
            log.info("compare %-50s EER %7.3f %%  list %s (%s trials, sha256 %s)", name, 100 * e["eer"],
                     info.get("file", "?"), info.get("n_trials", e.get("n")), info.get("sha256_prefix", "?"))
    fig = plots.det_plot_many(curves, os.path.join(out_dir, "det_compare.png"), title="DET comparison")
    log.info("saved %s", fig)
    return {"figure": fig, "rows": rows}


# ---------------------------------------------------------------- the command


def run(args, load_engine: Callable) -> dict:
    """The whole command (see the module doc); returns the JSON it writes to ``<out>/verification.json``."""
    import voxdata
    from speaker.embed_store import load_embeddings
    from speaker.norm import NormStats
    from speaker.scoring import all_pairs_scores, cosine_score_trials, read_score_file, speaker_of
    from speaker.trial_lists import cost_model, list_info, protocol_lines

    checks.verification_inputs(args)
    if args.run_dir and not (args.scores or args.embeddings or args.weights):
        args.weights = os.path.join(args.run_dir, "final.caffemodel")  # a training run's last weights
        if not os.path.isfile(args.weights):
            raise FileNotFoundError(f"--run-dir {args.run_dir}: no final.caffemodel there; give --weights")
    if args.make_cohort:
        return make_cohort(args, load_engine)
    norms = list(dict.fromkeys(args.norm or ["none"]))
    if not (args.scores or args.embeddings or args.weights or args.compare):
        raise ValueError("give one of --weights (net mode), --embeddings FILE or --scores FILE (or --compare)")
    if args.scores and args.all_pairs:
        raise ValueError("--all-pairs needs embeddings (net mode or --embeddings), not --scores")
    if args.scores and norms != ["none"]:
        raise ValueError("--norm needs embeddings (net mode or --embeddings), not --scores")
    if set(norms) - {"none"} and not args.cohort:
        raise ValueError(f"--norm {' '.join(n for n in norms if n != 'none')} needs --cohort EMB.npz")
    source = args.scores or args.embeddings
    if not (source or args.weights):  # compare only
        if not args.out:
            raise ValueError("--compare alone needs --out (where det_compare.png goes)")
        out_dir = args.out
    else:
        out_dir = args.out or (os.path.dirname(os.path.abspath(source)) if source
                               else args.run_dir or guess_run_dir(args.weights))
    checks.output_folder(args, out_dir)
    cost = cost_model(tuple(args.p_target or (0.01, 0.001)), args.c_miss, args.c_fa)
    p_targets = cost["p_targets"]
    result: dict = {"protocol": {"cost": cost}}
    t0 = time.time()
    with EvalLog(out_dir, "test_verification") as log:
        rows: list[dict] = []
        if args.scores:
            labels, scores = read_score_file(args.scores)
            info = list_info(args.scores, labels.shape[0])
            log.info("scores %s: %d trials", args.scores, labels.shape[0])
            result["source"] = {"scores": os.path.abspath(args.scores)}
            result["lists"] = [info]
            rows.append(_row_summary(labels, scores, out_dir, "", os.path.basename(args.scores), info, "none", cost,
                                     args.bins))
        elif args.embeddings or args.weights:
            if not args.embeddings and args.data_root is None and not args.trials:
                raise ValueError("net mode needs --data-root (audio) or --trials next to the audio")
            trial_paths = list(dict.fromkeys(args.trials or [default_list(args.data_root, "veri_test.txt")]))
            lists = []
            for path in trial_paths:
                stem = os.path.splitext(os.path.basename(path))[0]
                missing_log = os.path.join(out_dir, f"missing_files_{stem}.txt")
                trials = voxdata.read_trials(path, data_root=args.data_root, check_files=not args.embeddings,
                                             missing_log=missing_log)
                if trials.missing:
                    log.warning("%d utterances of %s are missing; their trials are dropped (listed in %s)",
                                len(trials.missing), path, missing_log)
                if len(trials) == 0:
                    raise ValueError(f"{path}: no trial left whose files exist under {trials.wav_dir}")
                checks.trial_labels(path, trials.labels)
                n_file = _count_lines(path) if trials.missing else len(trials)  # trials in the file
                lists.append((path, trials, list_info(path, n_file, len(trials))))
                log.info("trials %s: %d trials over %d utterances", path, len(trials), len(trials.utterances()))
            wav_dirs = {t.wav_dir for _, t, _ in lists}
            if len(wav_dirs) > 1 and not args.embeddings:
                raise ValueError(f"the trial lists resolve to different audio folders {sorted(wav_dirs)}: "
                                 "give --data-root")
            utts = sorted(set().union(*(t.utterances() for _, t, _ in lists)))
            if args.embeddings:
                ids, emb, emb_protocol, _ = load_embeddings(args.embeddings)
                dim, made_by = emb.shape[1], args.embeddings
                result["source"] = {"embeddings": os.path.abspath(args.embeddings)}
            else:
                embedder = _NetEmbedder(args, load_engine, log)
                emb_protocol = embedder.protocol()
                dim, made_by = embedder.dim, f"{embedder.net_path} ({args.embed_blob})"
            cohort, top_n = None, None
            if set(norms) - {"none"}:     # the cohort is checked before the embedding, the long part
                cohort, result["protocol"]["cohort"] = _load_cohort(args, emb_protocol, dim, made_by, log)
                top_n = min(args.top_n, cohort.shape[0])
                if top_n < args.top_n:
                    log.warning("--top-n %d is more than the cohort's %d rows: AS-Norm uses all %d (= S-Norm)",
                                args.top_n, cohort.shape[0], top_n)
                result["protocol"]["cohort"]["top_n"] = top_n
            if not args.embeddings:
                emb_path = os.path.join(out_dir, "embeddings.npz")
                emb = embedder.embed_all(utts, lists[0][1].wav_dir, emb_path, log)
                ids = utts
                result["source"] = {"weights": os.path.abspath(args.weights), "embeddings": emb_path}
            result["protocol"]["embedding"] = emb_protocol
            result["lists"] = [info for _, _, info in lists]
            table = {u: emb[i] for i, u in enumerate(ids)}
            # cohort statistics once per utterance over all lists (-H's utterances are -E's)
            stats = {norm: NormStats(table, utts, cohort, norm, top_n) for norm in norms if norm != "none"}
            single = len(lists) == 1 and len(norms) == 1
            panels = []
            for _path, trials, info in lists:
                pairs = list(zip(trials.enrol, trials.test))
                raw = cosine_score_trials(table, pairs)
                stem = os.path.splitext(info["file"])[0]
                for norm in norms:
                    scores = raw if norm == "none" else stats[norm].apply(raw, pairs)
                    prefix = "" if single else f"{stem}_{norm}_"
                    title = f"{info['file']} ({info['name']})" + ("" if norm == "none" else f", {norm}")
                    rows.append(_row_summary(trials.labels, scores, out_dir, prefix, title, info, norm, cost,
                                             args.bins, pairs=pairs))
                    panels.append((title, trials.labels, scores))
            if len(rows) > 1:
                from speaker import plots

                result["figures"] = {
                    "score_hist_lists": plots.score_histograms(panels, os.path.join(out_dir, "score_hist_lists.png"),
                                                               bins=args.bins),
                    "det_lists": plots.det_plot_many(panels, os.path.join(out_dir, "det_lists.png"),
                                                     title="DET per list and normalisation"),
                }
            if args.all_pairs:
                first_utts = lists[0][1].utterances()
                row_of = {u: i for i, u in enumerate(ids)}
                idx = [row_of[u] for u in first_utts]  # every trial utterance was scored above, so all present
                ap_scores, ap_labels = all_pairs_scores(emb[idx], [speaker_of(u) for u in first_utts])
                log.info("all pairs of %s: %d utterances -> %d pairs", lists[0][2]["file"], len(first_utts),
                         ap_scores.shape[0])
                info = dict(lists[0][2], name=f"all pairs of {lists[0][2]['name']}", n_trials=int(ap_scores.shape[0]))
                result["all_pairs"] = _row_summary(ap_labels, ap_scores, out_dir, "all_pairs_", "all pairs", info,
                                                   "none", cost, args.bins, write=False)  # 11.9 M lines
            if args.projection:
                result.setdefault("figures", {}).update(_projection(ids, emb, lists[0][1].utterances(), out_dir,
                                                                    args, log))
        if rows:
            result["results"] = rows
            result["trials"] = rows[0]  # the first list, first normalisation (what speaker.report reads)
        if args.compare:
            result["compare"] = _compare(args.compare, out_dir, log, current=rows)
        result["seconds"] = round(time.time() - t0, 1)
        json_path = os.path.join(out_dir, "verification.json")
        if rows:
            with open(json_path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
            os.replace(json_path + ".tmp", json_path)
            for line in protocol_lines(result["lists"], cost, result["protocol"].get("embedding")):
                log.info("%s", line)
            if "cohort" in result["protocol"]:
                c = result["protocol"]["cohort"]
                log.info("cohort %s: %d %s rows, top-N %d", os.path.basename(c["file"]), c["rows"], c["mode"],
                         c["top_n"])
            table_rows = rows + ([result["all_pairs"]] if "all_pairs" in result else [])
            for line in _table(table_rows, p_targets):
                log.info("%s", line)
            log.info("saved %s and figures in %s", json_path, out_dir)
    return result


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


# ---------------------------------------------------------------- the cohort


def make_cohort(args, load_engine: Callable) -> dict:
    """Embed up to --cohort-per-speaker utterances of each training speaker (verification mode of
    iden_split: every speaker but the test speakers) with the trials' protocol; write --make-cohort."""
    import voxdata

    if not args.weights:
        raise ValueError("--make-cohort needs --weights (the net that embeds the trials)")
    if args.data_root is None:
        raise ValueError("--make-cohort needs --data-root (the training audio)")
    out_npz = args.make_cohort
    out_dir = os.path.dirname(os.path.abspath(out_npz))
    iden_split = args.iden_split or default_list(args.data_root, "iden_split.txt")
    with EvalLog(out_dir, "make_cohort") as log:
        splits = voxdata.read_iden_split(iden_split, mode="verification", data_root=args.data_root, check_files=True,
                                         missing_log=os.path.join(out_dir, "missing_files_cohort.txt"))
        by_spk: dict[str, list[str]] = {}
        for subset in (splits.train, splits.val):
            for rel, lab in zip(subset.paths, subset.labels):
                by_spk.setdefault(splits.speakers[lab], []).append(rel)
        rng = np.random.default_rng(args.seed)
        ids, speakers = [], []
        for spk in sorted(by_spk):
            utts = sorted(by_spk[spk])
            if len(utts) > args.cohort_per_speaker:
                utts = sorted(rng.choice(utts, size=args.cohort_per_speaker, replace=False).tolist())
            ids += utts
            speakers += [spk] * len(utts)
        order = np.argsort(ids, kind="stable")
        ids = [ids[i] for i in order]
        speakers = [speakers[i] for i in order]
        log.info("cohort: %d utterances of %d training speakers (at most %d each) from %s", len(ids), len(by_spk),
                 args.cohort_per_speaker, iden_split)
        embedder = _NetEmbedder(args, load_engine, log)
        embedder.embed_all(ids, splits.wav_dir, out_npz, log, speakers=speakers)
    return {"cohort": os.path.abspath(out_npz), "utterances": len(ids), "speakers": len(by_spk)}
