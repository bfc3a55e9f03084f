#!/usr/bin/env bash
# The paper's two-stage recipe as a chain of Grid Engine jobs: stage 1 (softmax), stage 2 (LM by default)
# held on stage 1 and starting from stage 1's final weights, then the identification and verification
# tests held on stage 2. Run it from the repository root on a submit host; it only submits and returns.
#
#   sge/recipe.sh --data-root D [options] [-- trainAug.py options for both stages...]
#
# Options:
#   --data-root D        corpus root (required); passed to training and tests
#   --iden-split F       iden_split.txt (default: the training script's default)
#   --stage1 SOLVER      default prototxt/solver_softmax.prototxt
#   --stage2 SOLVER      default prototxt/solver_lm.prototxt
#   --runs DIR           where the run directories go (default runs); stage 1 -> DIR/NAME_stage1,
#                        stage 2 -> DIR/NAME_stage2
#   --name NAME          job-name and run-directory prefix (default: the stage-2 solver's name)
#   --tests LIST         comma-separated subset of iden,veri (default iden,veri; "none" for no tests)
#   --test-args "ARGS"   extra options for both test scripts (e.g. "--crops 10")
#   --qsub-args "ARGS"   extra qsub options for every job (e.g. "-l gpu=1 -q gpu.q" or "-P myproject")
#   --gpu-mode multi     train with sge/train_multigpu.sge (torchrun, -pe) instead of sge/train.sge;
#   --pe "NAME N"        its parallel environment (default "smp 2")
#   --dry-run            print the qsub commands instead of running them
#
# Prints the job ids; follow them with `qstat` and the logs in DIR/logs/. Stage 2's initial weights are
# stage 1's final weights, found in DIR/NAME_stage1 when stage 2 starts (see sge/README.md).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }
die() { echo "recipe: error: $*" >&2; exit 2; }

DATA_ROOT="" IDEN_SPLIT="" S1=prototxt/solver_softmax.prototxt S2=prototxt/solver_lm.prototxt RUNS=runs NAME=""
TESTS=iden,veri TEST_ARGS="" QSUB_ARGS="" GPU_MODE=single PE="smp 2" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data-root) DATA_ROOT="${2:?--data-root needs a value}"; shift 2 ;;
        --iden-split) IDEN_SPLIT="${2:?}"; shift 2 ;;
        --stage1) S1="${2:?}"; shift 2 ;;
        --stage2) S2="${2:?}"; shift 2 ;;
        --runs) RUNS="${2:?}"; shift 2 ;;
        --name) NAME="${2:?}"; shift 2 ;;
        --tests) TESTS="${2:?}"; shift 2 ;;
        --test-args) TEST_ARGS="${2-}"; shift 2 ;;
        --qsub-args) QSUB_ARGS="${2-}"; shift 2 ;;
        --gpu-mode) GPU_MODE="${2:?}"; shift 2 ;;
        --pe) PE="${2:?}"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h | --help) usage 0 ;;
        --) shift; break ;;
        *) die "unknown option '$1' (trainAug.py options go after --; see --help)" ;;
    esac
done
[ -n "$DATA_ROOT" ] || die "--data-root is required"
[ -d "$DATA_ROOT" ] || die "--data-root $DATA_ROOT is not a directory"
[ -f trainAug.py ] && [ -f sge/train.sge ] || die "run this from the repository root (no trainAug.py / sge/train.sge here)"
[ -f "$S1" ] || die "stage-1 solver $S1 not found"
[ -f "$S2" ] || die "stage-2 solver $S2 not found"
command -v qsub >/dev/null || [ "$DRY" = 1 ] || die "qsub not found: not a Grid Engine submit host (try sge/local-cluster.sh up)"
NAME="${NAME:-$(basename "$S2" .prototxt | sed 's/^solver_//')}"
case "$GPU_MODE" in
    single) TRAIN_JOB=(sge/train.sge) ;;
    multi) read -r -a pe <<<"$PE"; TRAIN_JOB=(-pe "${pe[@]}" sge/train_multigpu.sge) ;;
    *) die "--gpu-mode is single or multi" ;;
esac

RUN1="$RUNS/${NAME}_stage1"
RUN2="$RUNS/${NAME}_stage2"
[ "$DRY" = 1 ] || mkdir -p "$RUNS/logs"
read -r -a qargs <<<"$QSUB_ARGS"
read -r -a targs <<<"$TEST_ARGS"
common=(--data-root "$DATA_ROOT")
[ -z "$IDEN_SPLIT" ] || common+=(--iden-split "$IDEN_SPLIT")

submit() { # submit JOBNAME qsub-args... -> prints the job id
    local name="$1"
    shift
    local cmd=(qsub -terse -N "$name" -o "$RUNS/logs/" "${qargs[@]+"${qargs[@]}"}" "$@")
    if [ "$DRY" = 1 ]; then
        printf '%q ' "${cmd[@]}" >&2
        echo >&2
        echo "<$name>"
        return 0
    fi
    local out
    out="$("${cmd[@]}")" || die "qsub failed: ${cmd[*]}"
    printf '%s\n' "${out%%.*}"
}

J1="$(submit "${NAME}_s1" "${TRAIN_JOB[@]}" "$S1" --out "$RUN1" "${common[@]}" "$@")"
J2="$(submit "${NAME}_s2" -hold_jid "$J1" "${TRAIN_JOB[@]}" "$S2" "$RUN1" --out "$RUN2" "${common[@]}" "$@")"
echo "stage 1: job $J1 -> $RUN1"
echo "stage 2: job $J2 -> $RUN2 (held on $J1; starts from the final weights in $RUN1)"
IFS=, read -r -a tests <<<"$TESTS"
for t in "${tests[@]}"; do
    case "$t" in
        iden) J="$(submit "${NAME}_iden" -hold_jid "$J2" sge/test_identification.sge "$RUN2" --data-root "$DATA_ROOT" \
                ${IDEN_SPLIT:+--iden-split "$IDEN_SPLIT"} "${targs[@]+"${targs[@]}"}")"
            echo "identification test: job $J (held on $J2) -> $RUN2/identification.json" ;;
        veri) J="$(submit "${NAME}_veri" -hold_jid "$J2" sge/test_verification.sge "$RUN2" --data-root "$DATA_ROOT" \
                "${targs[@]+"${targs[@]}"}")"
            echo "verification test: job $J (held on $J2) -> $RUN2" ;;
        none | "") ;;
        *) die "--tests: unknown test '$t' (iden, veri, none)" ;;
    esac
done
echo "follow with: qstat; logs in $RUNS/logs/"
