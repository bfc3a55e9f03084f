#!/usr/bin/env python
"""Closed-set speaker identification with the paper's 50-crop protocol: top-1 / top-5 accuracy.

For each test utterance: N random augmented crops -> pooled feature (res4_3p) averaged over the crops ->
the rest of the net once -> classifier scores (fc6). The logic is in speaker/identification.py;
this is the CLI.

Which utterances:
  --mode identification: split 3 of iden_split (the test split; 8,251 utterances of 1,251 speakers);
  --mode verification:   split 2 (validation) of the 1,211 training speakers, the only utterances of those
                         speakers the net never trained on (the 40 test speakers are not in its classifier).
  --subset overrides that choice (test | val).
Class indices come from the labels JSON written by training (speaker keys in classifier order); --mode
defaults to the mode recorded there. Weights trained elsewhere (no labels JSON: give --net and --weights) are
numbered as training numbers them: the list's speakers in sorted order (id10001 first), in the mode whose
speaker count is the classifier's size (1,251 identification, 1,211 verification on VoxCeleb1); a size that
fits neither is an error.

File defaults (explicit rules):
  --run-dir:    the folder of --weights (its parent when that folder is snapshots/).
  --net:        <run-dir>/test.prototxt, deploy.prototxt or net.prototxt (the training run's copy of its
                net; its TEST phase is used), also looked up in run-dir's parent.
  --labels:     <run-dir>/labels.json (also looked up in run-dir's parent); none there: from the list.
  --iden-split: <data-root>/iden_split.txt when that file exists, else lists/iden_split.txt next to this
                script.
  --out:        <run-dir>.
Outputs in --out: identification.json, test_identification.log, missing_files_identification.txt (only if
files are missing; missing files are counted and reported, the rest is evaluated).
Before the long part every test recording is checked once (cached in .audio_check.json next to the run
directory) and the weights must hold every layer of the net: a bad recording or a partial .caffemodel is an
error (--skip-bad-audio leaves bad recordings out).

Exit status: 0 done; 1 error (one line on stderr naming the file or argument); 2 the command line does not
parse (argparse); 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from speaker.cli import run_script
from speaker.identification import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="trained .caffemodel")
    p.add_argument("--net", help="TEST-phase net prototxt (default: test.prototxt, deploy.prototxt or net.prototxt in "
                   "--run-dir or its parent)")
    p.add_argument("--run-dir", help="training run directory (default: the folder of --weights)")
    p.add_argument("--labels", help="labels JSON saved by training (default: <run-dir>/labels.json; without "
                   "one, the list's speakers in sorted order)")
    p.add_argument("--data-root", required=True,
                   help="VoxCeleb1 root (wavs under <data-root>/wav, or in it for the 2017 layout)")
    p.add_argument("--iden-split", help="iden_split.txt (default: <data-root>/iden_split.txt if present, "
                   "else lists/iden_split.txt)")
    p.add_argument("--mode", choices=("identification", "verification"),
                   help="how the net was trained (default: the mode in the labels JSON, else the mode whose speaker "
                   "count is the classifier's size)")
    p.add_argument("--subset", choices=("test", "val"),
                   help="utterances to test (default: test for identification, val for verification)")
    p.add_argument("--crops", type=int, default=50, help="random crops per utterance (default 50)")
    p.add_argument("--batch", type=int, default=50, help="crops per forward pass (default 50)")
    p.add_argument("--head-batch", type=int, default=64,
                   help="utterances per forward of the layers after pooling (default 64)")
    p.add_argument("--no-augment", action="store_true",
                   help="crops without repetition/time reversal, as the original's trainNoAug: a recording "
                   "shorter than one crop is refused by the pre-flight check (the paper tests WITH augmentation)")
    p.add_argument("--seed", type=int, default=0, help="crop seed (default 0)")
    p.add_argument("--gpu", type=int, default=None,
                   help="GPU id, -1 = CPU (default: $SGE_GPU, else 0 with CUDA on caffe_torch, else CPU)")
    p.add_argument("--engine", choices=("torch", "caffe"), default="torch",
                   help="caffe_torch (torch, default) or real pycaffe (caffe)")
    p.add_argument("--cache", help="audio cache folder holding every recording tested (data_utils.py cache "
                   "builds one of all splits; keys: absolute audio paths)")
    p.add_argument("--data-blob", default="data", help="the net's input blob (default %(default)s)")
    p.add_argument("--pool-blob", default="res4_3p",
                   help="the pooled blob averaged over the crops (default %(default)s)")
    p.add_argument("--score-blob", help="class-score blob (default: the blob the net's Accuracy layers read)")
    p.add_argument("--out", help="output folder (default: the run dir)")
    p.add_argument("--skip-bad-audio", action="store_true",
                   help="leave out recordings the pre-flight check finds unusable (counted, listed in "
                   "<out>/bad_audio_identification.txt) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_script("test_identification.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
