#!/usr/bin/env bash
# Bring up a real single-node Slurm (munged + slurmctld + slurmd) on this machine, CPU only.
#
# Used by CI before pytest (`bash .ci/slurm_setup.sh`) and by tests/jobs/conftest.py when Slurm is not
# running. Idempotent: installs Debian's packages only when missing, rewrites slurm.conf only when its
# content changes, starts only the daemons that are not running, then waits until `sinfo` shows the node
# idle. Needs root and apt (Debian bookworm ships Slurm 22.05).
#
# Sources: slurm.conf(5) https://slurm.schedmd.com/slurm.conf.html (ProctrackType, TaskPlugin,
# SelectType=select/cons_tres, SelectTypeParameters, ReturnToService, JobRequeue, MpiDefault);
# munged(8) https://github.com/dun/munge/wiki/Man-8-munged ; Slurm's "Quick Start Administrator Guide"
# https://slurm.schedmd.com/quickstart_admin.html (daemons started as `slurmctld` / `slurmd`).
#
# Environment knobs: SLURM_SETUP_TIMEOUT (seconds to wait for the idle node, default 90).
set -euo pipefail

log() { echo "[slurm_setup] $*"; }
die() { echo "[slurm_setup] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get install and the slurm daemons need it)"

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
SPOOL=/var/spool/slurm-megaprompt
LOG_DIR=/var/log/slurm-megaprompt
RUN_DIR=/run/slurm-megaprompt
TIMEOUT="${SLURM_SETUP_TIMEOUT:-90}"

# --- 1. packages -------------------------------------------------------------------------------------
need=()
for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "apt-get not found; cannot install ${need[*]}"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Containers usually forbid service starts in postinst (policy-rc.d); without one, add a temporary
    # deny-all so the packages do not try to start daemons before slurm.conf exists.
    tmp_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; tmp_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ "$tmp_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
else
    log "packages already installed"
fi

# --- 2. slurm.conf -----------------------------------------------------------------------------------
host="$(hostname -s)"
ncpu="$(nproc)"
mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
real_mem=$(( mem_mb * 9 / 10 ))                   # a bit under the actual memory
def_mem=$(( real_mem / ncpu ))                    # jobs without --mem get a per-CPU share
# The node is reached over loopback; make the short hostname resolvable if it is not.
getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts

mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOG_DIR" "$RUN_DIR"
new_conf="$(cat <<EOF
# Written by megaprompt .ci/slurm_setup.sh: single-node CPU-only test cluster.
ClusterName=megaprompt-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${SPOOL}/ctld
SlurmdSpoolDir=${SPOOL}/d
SlurmctldPidFile=${RUN_DIR}/slurmctld.pid
SlurmdPidFile=${RUN_DIR}/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
MailProg=/bin/true
# Step credential lifetime; also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=5
# Short scheduling passes: a requeued job becomes eligible after cred_expire and starts on the next pass.
SchedulerParameters=sched_interval=5,bf_interval=5
NodeName=${host} NodeAddr=127.0.0.1 NodeHostname=${host} CPUs=${ncpu} RealMemory=${real_mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=${def_mem} OverSubscribe=NO
EOF
)"
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" > "$CONF"
    conf_changed=1
    log "wrote $CONF (node $host, CPUs=$ncpu, RealMemory=$real_mem)"
fi
# cgroup.conf is read by some 22.05 code paths even with proctrack/linuxproc; keep it harmless.
[ -f "$CONF_DIR/cgroup.conf" ] || printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' > "$CONF_DIR/cgroup.conf"

# --- 3. munge ----------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munge.socket.2.lock
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    else
        /usr/sbin/munged --force
    fi
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n </dev/null | unmunge >/dev/null || die "munged did not come up"
fi

# --- 4. slurm daemons --------------------------------------------------------------------------------
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$conf_changed" = 1 ]; then
    # A changed config needs fresh daemons (only ours: identified by their pid files).
    for pf in "$RUN_DIR/slurmd.pid" "$RUN_DIR/slurmctld.pid"; do
        if pid_alive "$pf"; then log "restarting $(basename "$pf" .pid) for the new config"; kill "$(cat "$pf")"; sleep 1; fi
    done
fi
if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
    # -c: start from a clean state. Jobs left in the saved state by an earlier (killed) session would
    # otherwise be requeued on this start and compete with the tests for the node's CPUs.
    log "starting slurmctld (clean state)"
    slurmctld -c
fi
for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.5; done
scontrol ping | grep -q "is UP" || { tail -20 "$LOG_DIR/slurmctld.log" >&2 || true; die "slurmctld did not come up"; }
if ! pid_alive "$RUN_DIR/slurmd.pid"; then
    log "starting slurmd"
    slurmd
fi

# --- 5. wait for the node ----------------------------------------------------------------------------
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    state="$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -20 "$LOG_DIR/slurmd.log" >&2 || true
        die "node $host not idle after ${TIMEOUT}s (state: ${state:-none})"
    fi
    sleep 1
done
log "slurm is up: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -n1)"
