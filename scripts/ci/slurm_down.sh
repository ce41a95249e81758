#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by scripts/ci/slurm_up.sh, and only it.
#
#   scripts/ci/slurm_down.sh [PREFIX] [--purge]   # PREFIX defaults to /tmp/dyt-slurm
#
# Cancels this cluster's jobs first (stopping slurmd alone would leave them running), then stops
# slurmd, slurmctld, slurmdbd, MariaDB and munged through the pid files under PREFIX/run and
# PREFIX/munge: it never kills by process name. --purge also deletes PREFIX. Safe to re-run.
set -euo pipefail

PREFIX=${DYT_SLURM_PREFIX:-/tmp/dyt-slurm}
PURGE=false
for arg in "$@"; do
    if [[ $arg == --purge ]]; then PURGE=true; else PREFIX=$arg; fi
done
PREFIX=$(realpath -m "$PREFIX")
RUN=$PREFIX/run
export SLURM_CONF=$PREFIX/etc/slurm.conf

log() { echo "slurm_down: $*"; }

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop NAME PIDFILE: SIGTERM the pid in PIDFILE, wait up to 15 s, then SIGKILL it.
stop() {
    local name=$1 pidfile=$2 pid
    if ! alive "$pidfile"; then
        rm -f "$pidfile"
        return
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 75); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name (pid $pid)"
}

if alive "$RUN/slurmctld.pid"; then
    scancel --full --quiet --cluster=dyt --partition=debug 2>/dev/null || true
    # Give slurmd a moment to kill the cancelled jobs' processes.
    for _ in $(seq 50); do
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.2
    done
fi
stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop slurmdbd "$RUN/slurmdbd.pid"
stop mariadbd "$RUN/mariadb.pid"
stop munged "$PREFIX/munge/munged.pid"

if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$PREFIX/etc/slurm.conf" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
if $PURGE; then
    rm -rf "$PREFIX"
    log "removed $PREFIX"
fi
