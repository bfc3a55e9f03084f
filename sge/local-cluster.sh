#!/usr/bin/env bash
# A one-node Son of Grid Engine 8.1.9 cluster on this Debian machine, to try (and test) the sge/ jobs
# without a real cluster.
#
#   sudo sge/local-cluster.sh up        install (when missing), configure and start; idempotent
#   sudo sge/local-cluster.sh status    daemons, hosts, queues, jobs
#   sudo sge/local-cluster.sh down      stop the daemons (the configuration is kept for the next `up`)
#
# Jobs run as an ordinary user: root's jobs are rejected by Grid Engine's default `min_uid`. `up` creates
# the user $SGE_LOCAL_USER (default: sgeuser) for that; submit with `su sgeuser -c 'qsub ...'`, or submit
# as any other ordinary user of the machine. See sge/README.md.
#
# Environment (all optional):
#   SGE_LOCAL_USER     user created for running jobs (default sgeuser; empty: create none)
#   SGE_LOCAL_SLOTS    slots of all.q (default: the number of cores)
#   SGE_LOCAL_NOTIFY   the queue's notify time: seconds between SIGUSR1/SIGUSR2 and SIGSTOP/SIGKILL
#                      for jobs submitted with -notify (default 60, Grid Engine's default)
#   SGE_LOCAL_TIMEOUT  seconds to wait for each daemon to answer (default 120)
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine
export SGE_CELL=default
export PATH="$PATH:/usr/bin:/usr/sbin"
COMMON="$SGE_ROOT/$SGE_CELL/common"
LOCAL_USER="${SGE_LOCAL_USER-sgeuser}"
# the machine's cores: nproc honours OMP_NUM_THREADS, which a single-threaded test run sets (a 1-slot queue would
# leave a 2-slot job waiting for ever)
SLOTS="${SGE_LOCAL_SLOTS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"
NOTIFY="${SGE_LOCAL_NOTIFY:-60}"
TIMEOUT="${SGE_LOCAL_TIMEOUT:-120}"
PE_NAME=smp
QUEUE=all.q

say() { printf 'local-cluster: %s\n' "$*" >&2; }
die() { printf 'local-cluster: error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "'$1' installs packages and starts system daemons: run it as root (sudo $0 $1)"
}

# The name Grid Engine will use for this host. SGE resolves names itself; we use what `hostname`
# prints and make every other name of 127.0.0.1 an alias of it (see fix_host_aliases).
host_name() {
    local h
    h="$(hostname)"
    [ -n "$h" ] || die "hostname is empty"
    getent hosts "$h" >/dev/null || die "host name '$h' does not resolve (add it to /etc/hosts)"
    printf '%s\n' "$h"
}

installed() {
    command -v qconf >/dev/null 2>&1 && [ -x /usr/sbin/sge_qmaster ] && [ -x /usr/sbin/sge_execd ] \
        && [ -x /etc/init.d/gridengine-master ] && [ -x /etc/init.d/gridengine-exec ]
}

install_packages() {
    local host="$1"
    if installed; then
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"
    say "installing gridengine-master gridengine-exec gridengine-client (Debian's Son of Grid Engine)"
    debconf-set-selections <<EOF
gridengine-common shared/gridenginemaster string $host
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-common shared/gridengineconfig boolean true
gridengine-client shared/gridenginemaster string $host
gridengine-client shared/gridenginecell string $SGE_CELL
gridengine-client shared/gridengineconfig boolean true
EOF
    local pkgs=(gridengine-master gridengine-exec gridengine-client)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"; then
        say "apt-get install failed; running apt-get update and trying again"
        DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
            || die "apt-get install ${pkgs[*]} failed"
    fi
    installed || die "the gridengine packages are installed but qconf/sge_qmaster/sge_execd are missing"
}

# When 127.0.0.1 resolves to "localhost" before the host's own name, every client is refused with
# 'client IP resolved to host name "localhost". This is not identical to clients host name'.
# host_aliases makes all those names one host for Grid Engine.
fix_host_aliases() {
    local host="$1" aliases="" name
    for name in localhost localhost.localdomain $(getent hosts 127.0.0.1 | cut -d' ' -f2-) \
                $(awk '$1 == "127.0.0.1" || $1 == "::1" {for (i = 2; i <= NF; i++) print $i}' /etc/hosts); do
        [ "$name" = "$host" ] && continue
        case " $aliases " in *" $name "*) continue ;; esac
        aliases="$aliases $name"
    done
    mkdir -p "$COMMON"
    printf '%s%s\n' "$host" "$aliases" >"$COMMON/host_aliases.new"
    if ! cmp -s "$COMMON/host_aliases.new" "$COMMON/host_aliases" 2>/dev/null; then
        mv "$COMMON/host_aliases.new" "$COMMON/host_aliases"
        say "wrote $COMMON/host_aliases: $(cat "$COMMON/host_aliases")"
    else
        rm -f "$COMMON/host_aliases.new"
    fi
    if [ "$(cat "$COMMON/act_qmaster" 2>/dev/null)" != "$host" ]; then
        printf '%s\n' "$host" >"$COMMON/act_qmaster"
        say "wrote $COMMON/act_qmaster: $host"
    fi
}

master_running() { pgrep -x sge_qmaster >/dev/null 2>&1; }
execd_running() { pgrep -x sge_execd >/dev/null 2>&1; }

wait_for() { # wait_for DESCRIPTION COMMAND...
    local what="$1" i
    shift
    for ((i = 0; i < TIMEOUT; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    die "$what did not happen within ${TIMEOUT}s (see /var/spool/gridengine/qmaster/messages and
/var/spool/gridengine/execd/*/messages)"
}

start_master() {
    if master_running && qstat >/dev/null 2>&1; then
        return 0
    fi
    say "starting sge_qmaster"
    /etc/init.d/gridengine-master start >&2 || die "/etc/init.d/gridengine-master start failed"
    wait_for "sge_qmaster answering qconf -sss" qconf -sss
}

# qconf_file OPTION_ADD OPTION_MODIFY EXISTS(0/1) FILE: add or modify an object from a file.
qconf_file() {
    local add="$1" mod="$2" exists="$3" file="$4" out
    if [ "$exists" = 1 ]; then
        out="$(qconf "$mod" "$file" 2>&1)" || die "qconf $mod $file: $out"
    else
        out="$(qconf "$add" "$file" 2>&1)" || die "qconf $add $file: $out"
    fi
}

configure() {
    local host="$1" tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN

    qconf -sh 2>/dev/null | grep -qx "$host" || qconf -ah "$host" >/dev/null
    qconf -ss 2>/dev/null | grep -qx "$host" || qconf -as "$host" >/dev/null

    # execution host
    cat >"$tmp/exechost" <<EOF
hostname              $host
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
    if qconf -sel 2>/dev/null | grep -qx "$host"; then
        : # keep it (its complex_values may have been edited by hand)
    else
        qconf_file -Ae -Me 0 "$tmp/exechost"
    fi

    # host group
    printf 'group_name @allhosts\nhostlist %s\n' "$host" >"$tmp/allhosts"
    if qconf -shgrpl 2>/dev/null | grep -qx '@allhosts'; then
        qconf_file -Ahgrp -Mhgrp 1 "$tmp/allhosts"
    else
        qconf_file -Ahgrp -Mhgrp 0 "$tmp/allhosts"
    fi

    # parallel environment for multi-GPU jobs on one host (sge/train_multigpu.sge): all slots on one host
    cat >"$tmp/$PE_NAME" <<EOF
pe_name            $PE_NAME
slots              $SLOTS
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    if qconf -spl 2>/dev/null | grep -qx "$PE_NAME"; then
        qconf_file -Ap -Mp 1 "$tmp/$PE_NAME"
    else
        qconf_file -Ap -Mp 0 "$tmp/$PE_NAME"
    fi

    # queue: template from qconf -sq, then our values
    local exists=0
    if qconf -sql 2>/dev/null | grep -qx "$QUEUE"; then
        exists=1
        qconf -sq "$QUEUE" >"$tmp/queue"
    else
        qconf -sq >"$tmp/queue"
    fi
    case "$NOTIFY" in ''|*[!0-9]*) die "SGE_LOCAL_NOTIFY must be a number of seconds, not '$NOTIFY'" ;; esac
    local notify_hms
    notify_hms="$(printf '%02d:%02d:%02d' $((NOTIFY / 3600)) $((NOTIFY % 3600 / 60)) $((NOTIFY % 60)))"
    awk -v q="$QUEUE" -v slots="$SLOTS" -v pe="$PE_NAME" -v notify="$notify_hms" '
        # continuation lines (ending in a backslash) belong to the previous key: drop them with it
        cont { cont = ($0 ~ /\\$/); next }
        {
            key = $1
            if (key == "qname")        { print "qname " q; cont = ($0 ~ /\\$/); next }
            if (key == "hostlist")     { print "hostlist @allhosts"; cont = ($0 ~ /\\$/); next }
            if (key == "slots")        { print "slots " slots; cont = ($0 ~ /\\$/); next }
            if (key == "pe_list")      { print "pe_list " pe; cont = ($0 ~ /\\$/); next }
            if (key == "notify")       { print "notify " notify; cont = ($0 ~ /\\$/); next }
            # load from other work on this machine must not put the queue in alarm state (no dispatch)
            if (key == "load_thresholds") { print "load_thresholds NONE"; cont = ($0 ~ /\\$/); next }
            print
        }' "$tmp/queue" >"$tmp/queue.new"
    qconf_file -Aq -Mq "$exists" "$tmp/queue.new"

    # scheduler: dispatch within a second or two instead of the default 15 s (chained jobs start sooner)
    qconf -ssconf >"$tmp/sched"
    sed -i -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
        -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
        -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' "$tmp/sched"
    local out
    out="$(qconf -Msconf "$tmp/sched" 2>&1)" || die "qconf -Msconf: $out"

    rm -rf "$tmp"
    trap - RETURN
}

create_user() {
    [ -n "$LOCAL_USER" ] || return 0
    if ! id "$LOCAL_USER" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$LOCAL_USER" || die "useradd $LOCAL_USER failed"
        say "created user $LOCAL_USER for running jobs (root's jobs are refused by min_uid)"
    fi
}

start_execd() {
    local host="$1"
    if ! execd_running; then
        say "starting sge_execd"
        /etc/init.d/gridengine-exec start >&2 || die "/etc/init.d/gridengine-exec start failed"
    fi
    # the queue instance is usable once the execd has reported a load (state no longer 'u')
    wait_for "the execution daemon reporting for $QUEUE@$host" queue_ok "$host"
    # a job that failed earlier (e.g. a root job refused by min_uid) leaves the queue in error state E
    if [[ "$(queue_state "$host")" == *E* ]]; then
        say "clearing error state E of $QUEUE@$host (qmod -c)"
        qmod -c "$QUEUE@$host" >/dev/null
    fi
    if [[ "$(queue_state "$host")" == *d* ]]; then
        say "enabling the disabled queue instance $QUEUE@$host (qmod -e)"
        qmod -e "$QUEUE@$host" >/dev/null
    fi
    wait_for "the queue instance $QUEUE@$host becoming usable" queue_usable "$host"
}

queue_state() { # the states column of the queue instance (empty when fine); "missing" when not listed
    local line
    line="$(qstat -f -q "$QUEUE@$1" 2>/dev/null | awk '$1 ~ /@/')"
    if [ -z "$line" ]; then echo missing; return; fi
    awk '{ print $6 }' <<<"$line"
}

queue_usable() { [ -z "$(queue_state "$1")" ]; }

queue_ok() { # the queue instance exists and the execd reports (state not 'u' unknown, nor 'a' alarm)
    local st
    st="$(queue_state "$1")"
    [ "$st" != missing ] && [[ "$st" != *u* ]] && [[ "$st" != *a* ]]
}

cmd_up() {
    need_root up
    local host t0
    t0=$(date +%s)
    host="$(host_name)"
    install_packages "$host"
    fix_host_aliases "$host"
    start_master
    configure "$host"
    create_user
    start_execd "$host"
    say "up in $(($(date +%s) - t0)) s: host $host, queue $QUEUE ($SLOTS slots, notify ${NOTIFY}s), PE $PE_NAME"
    say "submit as an ordinary user, e.g.: su $LOCAL_USER -c 'qsub -b y -cwd /bin/hostname'"
    say "environment for clients: export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
}

# pid of a daemon from its own pid file in the spool directory (the init scripts' /run pid files are not
# written by Debian's 8.1.9 daemons, so `/etc/init.d/gridengine-master stop` does not find them)
daemon_pids() { # daemon_pids sge_qmaster|sge_execd
    pgrep -x "$1" 2>/dev/null | tr '\n' ' '
}

cmd_down() {
    need_root down
    if ! installed; then
        say "Grid Engine is not installed; nothing to stop"
        return 0
    fi
    local host
    host="$(host_name)"
    if master_running; then
        local jobs
        jobs="$(qstat -u '*' 2>/dev/null | awk 'NR > 2' | wc -l)"
        [ "$jobs" = 0 ] || say "warning: $jobs job(s) in the cluster; running ones are killed, the others stay spooled"
    fi
    if execd_running; then
        say "stopping sge_execd (qconf -kej $host)"
        if master_running; then qconf -kej "$host" >&2 || true; fi
        wait_gone sge_execd 20 || { /etc/init.d/gridengine-exec stop >&2 || true; }
    fi
    if master_running; then
        say "stopping sge_qmaster (qconf -km)"
        qconf -km >&2 || true
        wait_gone sge_qmaster 30 || true
    fi
    local d
    for d in sge_execd sge_qmaster; do
        if pgrep -x "$d" >/dev/null; then
            say "$d still running after qconf: sending SIGTERM to $(daemon_pids "$d")"
            # shellcheck disable=SC2046
            kill $(daemon_pids "$d") 2>/dev/null || true
            wait_gone "$d" 30 || die "$d still running (pid $(daemon_pids "$d")) after 30 s"
        fi
    done
    say "down (configuration kept in $SGE_ROOT/$SGE_CELL and /var/spool/gridengine; 'up' starts it again)"
}

wait_gone() { # wait_gone DAEMON SECONDS
    local i
    for ((i = 0; i < $2; i++)); do
        pgrep -x "$1" >/dev/null || return 0
        sleep 1
    done
    return 1
}

cmd_status() {
    if ! installed; then
        echo "Grid Engine: not installed (run: sudo $0 up)"
        return 3
    fi
    local rc=0
    if master_running; then echo "sge_qmaster: running"; else echo "sge_qmaster: stopped"; rc=3; fi
    if execd_running; then echo "sge_execd:   running"; else echo "sge_execd:   stopped"; rc=3; fi
    if [ "$rc" = 0 ]; then
        echo
        qhost || rc=3
        echo
        qstat -f -u '*' || rc=3
    fi
    return "$rc"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
