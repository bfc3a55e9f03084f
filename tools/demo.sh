#!/usr/bin/env bash
# The whole demo on the built-in synthetic corpus, on the CPU (a GPU is used if present):
#   set-up -> synthetic VoxCeleb1-format corpus -> stage 1 (softmax) -> stage 2 (logistic margin, from the
#   stage-1 weights) -> identification and verification tests of both -> results table and plots.
# Everything lands in demo/ (corpus, runs, results.md). Re-running resumes/reuses what is there;
# `rm -rf demo` starts over. Environment: DEMO_DIR (default demo), DEMO_CROPS (test crops, default 10),
# DEMO_RECIPE=modern (also today's augmentation: the same two stages with MUSAN-style noise + simulated-RIR
# reverberation from `data_utils.py synth-noise`, tested the same way; its stage 2 adds a third row).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
PY=.venv/bin/python
DEMO=${DEMO_DIR:-demo}
CROPS=${DEMO_CROPS:-10}
CORPUS=$DEMO/corpus
mkdir -p "$DEMO"
start=$(date +%s)

if [ ! -f "$CORPUS/veri_test.txt" ]; then
    echo "== synthetic corpus -> $CORPUS"
    # (an interrupted earlier synth may have left part of it: --force replaces that)
    $PY data_utils.py synth --out "$CORPUS" --speakers 40 --utterances 24 --test-speakers 10 --quiet --force
fi

# verification mode: train on the 30 non-test speakers (their split 2 is the validation set, used for the
# identification figures), verify on the 10 held-out speakers.
common=(--data-root "$CORPUS" --mode verification --test-interval 150 --resume auto --no-progress)
echo "== stage 1: softmax"
$PY trainAug.py --solver prototxt/demo/solver_softmax.prototxt --out "$DEMO/stage1_softmax" "${common[@]}"
echo "== stage 2: logistic margin, from the stage-1 weights"
$PY trainAug.py --solver prototxt/demo/solver_lm.prototxt --weights "$DEMO/stage1_softmax/final.caffemodel" \
    --out "$DEMO/stage2_lm" "${common[@]}"

runs=(stage1_softmax stage2_lm)
rows=("softmax (stage 1)=$DEMO/stage1_softmax" "logistic margin (stage 2)=$DEMO/stage2_lm")
if [ "${DEMO_RECIPE:-paper}" = modern ]; then
    if [ ! -d "$DEMO/noise/simulated_rirs" ]; then
        echo "== synthetic MUSAN-layout noise and simulated RIRs -> $DEMO/noise"
        $PY data_utils.py synth-noise --out "$DEMO/noise"
    fi
    modern=(--noise "$DEMO/noise/musan" --rir "$DEMO/noise/simulated_rirs")
    echo "== today's augmentation: stage 1 (softmax) with noise + reverberation"
    $PY trainAug.py --solver prototxt/demo/solver_softmax.prototxt --out "$DEMO/modern_stage1_softmax" \
        "${common[@]}" "${modern[@]}"
    echo "== today's augmentation: stage 2 (logistic margin), from its stage-1 weights"
    $PY trainAug.py --solver prototxt/demo/solver_lm.prototxt \
        --weights "$DEMO/modern_stage1_softmax/final.caffemodel" --out "$DEMO/modern_stage2_lm" \
        "${common[@]}" "${modern[@]}"
    runs+=(modern_stage2_lm)
    rows+=("logistic margin + noise/RIR augmentation (stage 2)=$DEMO/modern_stage2_lm")
fi

for run in "${runs[@]}"; do
    echo "== tests of $run"
    $PY test_identification.py --weights "$DEMO/$run/final.caffemodel" --data-root "$CORPUS" --crops "$CROPS" \
        --out "$DEMO/$run" --no-progress
    $PY test_verification.py --weights "$DEMO/$run/final.caffemodel" --data-root "$CORPUS" --crops "$CROPS" \
        --out "$DEMO/$run" --no-progress
done

echo "== results (identification: held-out utterances of the 30 training speakers; verification: the 10"
echo "   held-out speakers' trials)"
$PY -m speaker.report "${rows[@]}" --out "$DEMO/results.md"
echo "plots: $DEMO/*/training_curve.png, score_hist.png, roc.png, det.png"
echo "demo wall time: $(( $(date +%s) - start )) s (after set-up: tools/setup.sh is not counted)"
