# shellcheck shell=bash
# Shared by the sge/*.sge job scripts (sourced from $REPO/sge/lib.sh; qsub copies a job script to the spool
# directory, so the job finds this file through the repository, not through its own path).
#
# Exit codes of a job, and what Grid Engine does with them:
#   0    finished.
#   99   interrupted after writing a snapshot (the training scripts exit 99 on SIGUSR1/SIGUSR2/SIGTERM/
#        SIGINT), or killed by Grid Engine's notify signal before the trainer could handle it (nothing is lost
#        beyond the last snapshot). Grid Engine requeues a job that exits 99 ("Rq"), and the requeued run continues from the
#        snapshot (--resume auto): what a job stopped by its soft run-time limit (-l s_rt, SIGUSR1) wants.
#        A job deleted with qdel is not requeued; submit the same command again to continue.
#   100  anything else went wrong. Grid Engine puts the job into error state ("Eqw") instead of ending it,
#        so jobs held on it with -hold_jid stay held (a failed stage 1 never releases stage 2).
#        `qstat -j JOB` shows the reason; fix it, then `qmod -cj JOB` to run it again, or `qdel JOB`.
#        SGE_FAIL_EXIT=1 (qsub -v) makes failures end the job instead.

sge_log() { printf '[%s %s] %s\n' "$(date '+%F %T')" "${JOB_NAME:-job}.${JOB_ID:-?}" "$*" >&2; }

sge_fail() {
    sge_log "ERROR: $*"
    sge_log "job left in error state (Eqw): fix the cause, then 'qmod -cj ${JOB_ID:-JOB}', or 'qdel ${JOB_ID:-JOB}'"
    exit "${SGE_FAIL_EXIT:-100}"
}

# REPO: the repository (default: the job's working directory, i.e. where qsub -cwd was typed).
# PYTHON: the interpreter (default: $REPO/.venv/bin/python, else python3).
sge_setup() {
    REPO="${REPO:-$PWD}"
    [ -f "$REPO/trainAug.py" ] || sge_fail "no trainAug.py in REPO=$REPO: submit from the repository root, or qsub -v REPO=/path/to/repo"
    if [ -z "${PYTHON:-}" ]; then
        if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || sge_fail "python interpreter '$PYTHON' not found (set PYTHON with qsub -v)"
    export PYTHONUNBUFFERED=1
    sge_log "host $(hostname), queue ${QUEUE:-?}, cwd $PWD, repo $REPO, restarted=${RESTARTED:-0}, slots=${NSLOTS:-1}, SGE_GPU=${SGE_GPU:-unset}"
}

# Final weights of a finished training run directory: <run>/final.caffemodel when the training script
# wrote one, else <run>/snapshots/*_iter_<max_iter>.caffemodel (max_iter from <run>/solver.prototxt or from
# the solver given as $2). Prints the path; returns 1 (with a message) when the run is not finished.
final_weights() {
    local run="$1" solver="${2:-}" max_iter="" f
    if [ -e "$run/final.caffemodel" ]; then
        printf '%s\n' "$run/final.caffemodel"
        return 0
    fi
    for f in "$solver" "$run/solver.prototxt"; do
        [ -n "$f" ] && [ -f "$f" ] || continue
        max_iter="$(sed -n 's/^[[:space:]]*max_iter[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p' "$f" | tail -n 1)"
        [ -n "$max_iter" ] && break
    done
    if [ -n "$max_iter" ]; then
        for f in "$run"/snapshots/*_iter_"$max_iter".caffemodel; do
            if [ -e "$f" ]; then
                printf '%s\n' "$f"
                return 0
            fi
        done
    fi
    echo "run directory $run has no final weights ($run/final.caffemodel${max_iter:+ or snapshots/*_iter_$max_iter.caffemodel}): did its training job finish?" >&2
    return 1
}

# A .caffemodel stays as it is; a run directory becomes its final weights (see final_weights).
resolve_weights() {
    local w="$1" solver="${2:-}"
    if [ -d "$w" ]; then
        final_weights "$w" "$solver" || return 1
    elif [ -f "$w" ]; then
        printf '%s\n' "$w"
    else
        echo "weights '$w' do not exist (neither a .caffemodel nor a run directory)" >&2
        return 1
    fi
}

# Grid Engine's notify signals (-notify: SIGUSR2 before the kill of qdel / h_rt, SIGUSR1 before a suspend
# or at s_rt) go to the whole process group: the training script receives them itself. The job shell must
# survive them (bash would die of SIGUSR1/2) and wait for the snapshot.
SGE_NOTIFIED=""
sge_trap_notify() {
    trap 'SGE_NOTIFIED="${SGE_NOTIFIED}USR1 "; sge_log "got SIGUSR1 (notify): waiting for the snapshot"' USR1
    trap 'SGE_NOTIFIED="${SGE_NOTIFIED}USR2 "; sge_log "got SIGUSR2 (notify): waiting for the snapshot"' USR2
    trap 'SGE_NOTIFIED="${SGE_NOTIFIED}TERM "; sge_log "got SIGTERM: waiting for the snapshot"' TERM
}

# Run a training command and turn its exit status into the job's (see the top of this file).
sge_run_training() {
    local rc
    sge_log "running: $*"
    "$@"
    rc=$?
    # (bash runs the traps above only once this foreground command has ended: rc is the trainer's own)
    case "$rc" in
        0)
            sge_log "training finished"
            exit 0
            ;;
        99)
            sge_log "training interrupted (${SGE_NOTIFIED:-signal}); snapshot written: exiting 99 so that Grid Engine requeues the job (resubmit it if it was deleted), it continues with --resume auto"
            exit 99
            ;;
        *)
            if [ -n "$SGE_NOTIFIED" ] && [ "$rc" -gt 128 ]; then
                # killed by the notify signal itself: it came before the trainer could take it (while
                # Python started); nothing is lost beyond the last snapshot (they are written atomically)
                sge_log "training ended by signal $((rc - 128)) after ${SGE_NOTIFIED}before it could write a snapshot: exiting 99 so that Grid Engine requeues the job; it continues from the last snapshot with --resume auto"
                exit 99
            fi
            sge_fail "training failed with exit status $rc"
            ;;
    esac
}
