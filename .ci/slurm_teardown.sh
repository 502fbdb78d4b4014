#!/usr/bin/env bash
# Stop the test cluster started by .ci/slurm_setup.sh: cancel all jobs, stop slurmd, slurmctld and munged
# (by the pid files those daemons wrote, never by name). Packages and slurm.conf stay, so a later
# `bash .ci/slurm_setup.sh` is quick. Pass --purge-state to also delete the controller's saved state.
set -uo pipefail

RUN_DIR=/run/slurm-megaprompt
SPOOL=/var/spool/slurm-megaprompt

log() { echo "[slurm_teardown] $*"; }

stop_pidfile() {  # stop_pidfile NAME FILE
    local name="$1" pf="$2" pid
    [ -f "$pf" ] || return 0
    pid="$(cat "$pf")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pf"
}

if command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; then
    scancel --user="$(id -un)" 2>/dev/null || true
fi
stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
stop_pidfile munged /run/munge/munged.pid
if [ "${1:-}" = "--purge-state" ]; then
    log "removing $SPOOL"
    rm -rf "$SPOOL"
fi
log "done"
