#!/usr/bin/env python
"""Speaker verification: EER and minDCF of cosine-scored embeddings, every result naming its protocol.

Ways in (the work is in speaker/verification.py; this is the CLI):
  net mode (--weights): embed every utterance the trial lists need exactly once -- the paper's 50 random
      crops (--crops N; fc5 of the crop-averaged res4_3p) or each utterance once at full length
      (--crops full) -- resumably (a stopped run continues: <out>/embeddings.npz.partial/), save
      embeddings.npz, score;
  --embeddings FILE:  score from a saved embeddings.npz (arrays `ids`, `embeddings`), no net;
  --scores FILE:      evaluate an existing `label score [path1 path2]` file, no net, no audio;
  --compare RUN_DIR...: DET curves of earlier runs (their verification.json) on one plot, alone or after a run;
  --make-cohort OUT.npz (with --weights or --run-dir, and --data-root): embed up to --cohort-per-speaker
      utterances of each training speaker (every speaker but the verification test speakers) for --norm,
      with the same protocol as the trials.
--trials is repeatable: -O, -E and -H in one run from one set of embeddings. --norm none snorm asnorm scores
each list raw and normalised with --cohort (speaker-averaged or per utterance, --cohort-mode; AS-Norm over
the --top-n best cohort scores). --all-pairs also scores every pair of the first list's utterances.
Full-utterance and 50-crop figures are not interchangeable (the paper used 50 crops).

File defaults (explicit rules):
  --run-dir: the folder of --weights (its parent when that folder is snapshots/).
  --net:     <run-dir>/test.prototxt, deploy.prototxt or net.prototxt, also looked up in run-dir's parent.
  --trials:  <data-root>/veri_test.txt when that exists, else lists/veri_test.txt next to this script.
  --out:     the run dir in net mode, else the folder of the --scores / --embeddings file.
Outputs in --out: verification.json, test_verification.log, embeddings.npz (net mode), scores.txt,
score_hist.png, roc.png, det.png -- prefixed <list>_<norm>_ when there are several lists or norms, with
score_hist_lists.png and det_lists.png then --, all_pairs_*.png, projection_pca.png / projection_tsne.png
(--projection), det_compare.png (--compare), missing_files_<list>.txt if trial files are missing (those trials
are dropped, counted, reported).

Exit status: 0 done; 1 error (one line on stderr naming the file or argument); 2 the command line does not
parse (argparse); 130 stopped by Ctrl-C (the embeddings finished so far are kept).
"""

from __future__ import annotations

import argparse
import sys

from speaker.cli import run_script

# engine_for imports the engine (caffe_torch or pycaffe) only when called: runs without a net need none
from speaker.engine import engine_for as load_engine
from speaker.evaluate import default_list  # noqa: F401  (the documented --trials rule, used by tests)


def _crops(value: str) -> str:
    if value == "full":
        return value
    try:
        int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of crops or 'full', got {value!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--scores", help="evaluate this 'label score [path1 path2]' file (no net needed)")
    src.add_argument("--embeddings", help="score trials from this embeddings.npz (no net needed)")
    src.add_argument("--weights", help="trained .caffemodel (net mode)")
    p.add_argument("--net", help="TEST-phase net prototxt (default: test.prototxt, deploy.prototxt or net.prototxt in "
                   "--run-dir or its parent)")
    p.add_argument("--run-dir", help="training run directory (default: the folder of --weights); alone, it "
                   "means --weights <run-dir>/final.caffemodel")
    p.add_argument("--data-root", help="VoxCeleb1 root (wav files under <data-root>/wav or it)")
    p.add_argument("--trials", action="append",
                   help="trial list '<0|1> <path1> <path2>', repeatable (default: <data-root>/veri_test.txt if "
                   "present, else lists/veri_test.txt)")
    p.add_argument("--all-pairs", action="store_true", help="also score every pair of the first list's utterances")
    p.add_argument("--p-target", type=float, action="append",
                   help="P_target of a minDCF (repeatable; default 0.01 and 0.001; given, it replaces both: "
                   "--p-target 0.01 --p-target 0.05 for VoxSRC's and the paper's first)")
    p.add_argument("--c-miss", type=float, default=1.0, help="C_miss of the DCF (default 1)")
    p.add_argument("--c-fa", type=float, default=1.0, help="C_fa of the DCF (default 1)")
    p.add_argument("--norm", nargs="+", choices=("none", "snorm", "asnorm"),
                   help="score normalisation(s), each reported (default none; e.g. --norm none asnorm)")
    p.add_argument("--cohort", help="cohort embeddings .npz for --norm (made by --make-cohort)")
    p.add_argument("--cohort-mode", choices=("speaker", "utterance"), default="speaker",
                   help="cohort rows: speaker-averaged embeddings (default) or every utterance")
    p.add_argument("--top-n", type=int, default=300, help="AS-Norm: cohort scores kept per side (default 300)")
    p.add_argument("--make-cohort", metavar="OUT.npz", help="embed training speakers' utterances into a cohort")
    p.add_argument("--iden-split", help="--make-cohort: iden_split.txt (default: <data-root>/iden_split.txt if "
                   "present, else lists/iden_split.txt)")
    p.add_argument("--cohort-per-speaker", type=int, default=20,
                   help="--make-cohort: utterances per training speaker, drawn with --seed (default 20)")
    p.add_argument("--crops", type=_crops, default="50",
                   help="random crops per utterance (default 50, the paper), or 'full': each utterance once at "
                   "its whole length")
    p.add_argument("--max-frames", type=int, default=6000,
                   help="--crops full: longer utterances run in chunks of at most this many frames (default 6000 "
                   "= 60 s)")
    p.add_argument("--batch", type=int, default=50, help="crops per forward pass (default 50)")
    p.add_argument("--head-batch", type=int, default=64,
                   help="utterances per forward of the layers after pooling (default 64)")
    p.add_argument("--no-augment", action="store_true",
                   help="crops without repetition/time reversal, as the original's trainNoAug: a recording "
                   "shorter than one crop is refused by the pre-flight check (the paper tests WITH augmentation)")
    p.add_argument("--seed", type=int, default=0, help="crop seed (default 0)")
    p.add_argument("--save-every", type=int, default=500,
                   help="net mode: save partial embeddings every N utterances (default 500)")
    p.add_argument("--gpu", type=int, default=None,
                   help="GPU id, -1 = CPU (default: $SGE_GPU, else 0 with CUDA on caffe_torch, else CPU)")
    p.add_argument("--engine", choices=("torch", "caffe"), default="torch",
                   help="caffe_torch (torch, default) or real pycaffe (caffe)")
    p.add_argument("--cache", help="audio cache folder holding every recording tested (data_utils.py cache "
                   "builds one of all splits; keys: absolute audio paths)")
    p.add_argument("--data-blob", default="data", help="the net's input blob (default %(default)s)")
    p.add_argument("--pool-blob", default="res4_3p",
                   help="the pooled blob averaged over the crops (default %(default)s)")
    p.add_argument("--embed-blob", default="fc5", help="the embedding blob (default %(default)s)")
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="DET curves of these runs on one plot")
    p.add_argument("--projection", action="store_true",
                   help="PCA and t-SNE pictures of the first list's embeddings, coloured by speaker")
    p.add_argument("--projection-max", type=int, default=2000,
                   help="--projection: at most this many utterances (whole speakers, in id order; default 2000)")
    p.add_argument("--bins", type=int, default=100, help="histogram bins (default 100)")
    p.add_argument("--out", help="output folder (default: the run dir in net mode, else the folder of the "
                   "--scores / --embeddings file)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv=None) -> int:
    from speaker.verification import run

    args = build_parser().parse_args(argv)
    return run_script("test_verification.py", lambda: run(args, load_engine))


if __name__ == "__main__":
    sys.exit(main())
