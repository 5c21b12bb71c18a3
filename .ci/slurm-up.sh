#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster on this machine, for the `slurm` tests and for trying
# `plankton ... --backend slurm` locally. Debian/Ubuntu only (apt); must run as root.
#
# Idempotent: each step checks before it acts, so running it again on a live cluster only re-checks it.
# The config is rewritten only when it would change (new CPU count or memory), and then the daemons restart.
#
# Choices that matter inside a container (no systemd, no cgroup delegation, loopback only):
#   - daemons are started directly, not through systemd;
#   - ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroups;
#   - SlurmUser=root, so slurmctld needs no extra user set-up;
#   - no slurmdbd: finished jobs go to a jobcomp text file, and `sacct` (used by submitit for job state)
#     reads it instead of a database.
#
# Exit status: 0 when `sinfo`, `srun -N1 true` and `sbatch --wait --wrap true` all work; 1 otherwise,
# after printing what failed and the tail of the relevant log.
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
START=$(date +%s)

say() { printf '[slurm-up] %s\n' "$*"; }
die() {
    printf '[slurm-up] ERROR: %s\n' "$1" >&2
    shift
    for log in "$@"; do
        if [[ -f $log ]]; then
            printf '[slurm-up] --- last lines of %s ---\n' "$log" >&2
            tail -n 20 "$log" >&2
        fi
    done
    exit 1
}

# True when the process whose id is in pid file $1 is alive.
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the daemon whose id is in pid file $1 (only that process) and wait for it to go.
stop() {
    local pidfile=$1 pid
    running "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    die "process $pid (from $pidfile) did not stop"
}

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"

# --- 1. packages -----------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v srun >/dev/null; then
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is missing: install slurm-wlm and munge by hand"
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi

# --- 2. munge (authentication between the SLURM commands and daemons) -----------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    # A stale socket or pid file left by a killed munged makes the new one refuse to start.
    running /run/munge/munged.pid || rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged || die "munged did not start" /var/log/munge/munged.log
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munge does not answer (munge -n | unmunge)" /var/log/munge/munged.log
fi

# --- 3. slurm.conf ---------------------------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
TOTAL_MB=$(free -m | awk '/^Mem:/ {print $2}')
# A little under the total: slurmd drains a node whose configured memory exceeds what it finds.
MEM_MB=$((TOTAL_MB * 95 / 100))
getent hosts "$HOST" >/dev/null || die "hostname $HOST does not resolve; add '127.0.0.1 $HOST' to /etc/hosts"

install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$SPOOL_CTLD" "$SPOOL_D"
NEW_CONF=$(mktemp)
trap 'rm -f "$NEW_CONF"' EXIT
cat >"$NEW_CONF" <<EOF
# Written by .ci/slurm-up.sh: a one-node cluster for tests and local trials. Edits are overwritten.
ClusterName=plankton
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in a container: track processes by parent id and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
# Cores are the consumable; memory is checked against the node but not reserved, so small jobs share it.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
# Bring the node back by itself after a restart, and keep cancellations in tests short.
ReturnToService=2
KillWait=5
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

CHANGED=0
if ! cmp -s "$NEW_CONF" "$CONF_DIR/slurm.conf"; then
    say "writing $CONF_DIR/slurm.conf (node $HOST, $CPUS CPUs, $MEM_MB MB)"
    install -m 0644 "$NEW_CONF" "$CONF_DIR/slurm.conf"
    CHANGED=1
fi

# --- 4. daemons ------------------------------------------------------------------------------------
if [[ $CHANGED -eq 1 ]]; then
    # Node definitions are only read at start-up; a reconfigure is not enough.
    stop /run/slurmd.pid
    stop /run/slurmctld.pid
fi
if ! running /run/slurmctld.pid; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start" "$LOG_DIR/slurmctld.log"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (scontrol ping)" "$LOG_DIR/slurmctld.log"
if ! running /run/slurmd.pid; then
    say "starting slurmd"
    slurmd || die "slurmd did not start" "$LOG_DIR/slurmd.log"
fi

# --- 5. the node must be usable --------------------------------------------------------------------
state=""
for _ in $(seq 150); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1)
    case $state in
        idle | mixed | allocated | completing) break ;;
        drained* | draining | down*)
            # Left over from an earlier run (e.g. killed daemons); the config is known good now.
            scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case $state in
    idle | mixed | allocated | completing) ;;
    *) die "node $HOST is '${state:-unknown}', not idle: $(sinfo -h -n "$HOST" -o '%E' 2>/dev/null)" \
        "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log" ;;
esac

# --- 6. smoke test: the two ways jobs reach the node -----------------------------------------------
timeout 60 srun -N1 -t 1 true || die "'srun -N1 true' failed" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log"
timeout 60 sbatch --wait -t 1 -o /dev/null --wrap true >/dev/null \
    || die "'sbatch --wait --wrap true' failed" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log"

sinfo
say "cluster up: partition debug on $HOST ($CPUS CPUs, $MEM_MB MB) in $(($(date +%s) - START)) s"
