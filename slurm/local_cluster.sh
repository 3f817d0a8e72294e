#!/usr/bin/env bash
# A real single-node SLURM cluster on this (Debian) machine, for tests and demos.
#
#   slurm/local_cluster.sh start    install the Debian packages when missing (apt-get, needs root),
#                                   write the config, start munged, slurmctld and slurmd
#   slurm/local_cluster.sh stop     cancel the cluster's jobs, stop the daemons (by pid file)
#   slurm/local_cluster.sh status   daemons and nodes
#   slurm/local_cluster.sh env      the exports clients need: eval "$(slurm/local_cluster.sh env)"
#
# State lives in $ECHO_SLURM_DIR (default /tmp/echo-nemo-slurm). The config follows what
# was measured to work in a container: proctrack/linuxproc, task/none, no accounting
# (a sacct shim answers submitit from squeue), SlurmdParameters=config_overrides and the
# node line from `slurmd -C`, MinJobAge high so finished jobs stay visible to squeue.
set -euo pipefail

STATE="${ECHO_SLURM_DIR:-/tmp/echo-nemo-slurm}"
CTLD_PORT="${ECHO_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${ECHO_SLURM_SLURMD_PORT:-6818}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="$STATE/slurm.conf"
SOCKET="$STATE/munge/munge.socket.2"

log() { echo "[local_cluster] $*" >&2; }

packages_missing() {
    local cmd
    for cmd in slurmctld slurmd sbatch munged; do
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || return 0
    done
    return 1
}

install_packages() {
    packages_missing || return 0
    if [ "$(id -u)" != 0 ]; then
        log "slurmctld/slurmd/slurm-client/munge are missing and installing them needs root"
        return 1
    fi
    # one installer at a time: clusters started side by side (pytest-xdist workers) would
    # otherwise race for dpkg's lock; the ones that waited find the packages installed
    (
        flock 9
        packages_missing || exit 0
        log "installing slurmctld slurmd slurm-client munge with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >&2
    ) 9>/tmp/echo-nemo-slurm-install.lock
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
    local host node
    host="$(hostname -s)"
    # slurmd -C prints the node's real CPUs/memory; drop its UpTime line.
    node="$(/usr/sbin/slurmd -C | head -n1)"
    mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge" "$STATE/bin" "$STATE/log"
    cat >"$CONF" <<CONF
ClusterName=echonemo
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays the restart of a requeued job (default 120 s)
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
# run the scheduler every second: a requeued job becomes eligible again after cred_expire
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=65000
KillWait=3
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    cp "$HERE/sacct_shim.sh" "$STATE/bin/sacct"
    chmod +x "$STATE/bin/sacct"
}

start() {
    install_packages
    if pid_alive "$STATE/slurmctld.pid"; then
        log "already running (state in $STATE)"
        return 0
    fi
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    write_config
    if [ ! -f "$STATE/munge/munge.key" ]; then
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$STATE/munge/munge.key"
    fi
    chmod 700 "$STATE/munge"
    /usr/sbin/munged --force --key-file="$STATE/munge/munge.key" --socket="$SOCKET" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    export SLURM_CONF="$CONF"
    /usr/sbin/slurmctld -c -f "$CONF"
    /usr/sbin/slurmd -f "$CONF"
    # Wait for the node to register and become usable.
    for _ in $(seq 1 60); do
        state="$(sinfo -h -o '%T' 2>/dev/null | head -n1 || true)"
        case "$state" in
            idle*|mixed*|allocated*) log "up: node $state (state in $STATE)"; return 0 ;;
            down*|drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    log "the node did not come up; see $STATE/log/"
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    return 1
}

stop() {
    export SLURM_CONF="$CONF"
    if pid_alive "$STATE/slurmctld.pid"; then
        # Cancel this cluster's jobs and give their steps a moment to end.
        jobs="$(squeue -h -t pending,running,completing,configuring,suspended -o '%i' 2>/dev/null || true)"
        if [ -n "$jobs" ]; then
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 40); do
                [ -z "$(squeue -h -t running,completing,configuring -o '%i' 2>/dev/null)" ] && break
                sleep 0.25
            done
        fi
    fi
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munge/munged.pid"; do
        if pid_alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    log "stopped"
}

status() {
    local rc=0
    for d in munge/munged slurmctld slurmd; do
        if pid_alive "$STATE/$d.pid"; then echo "$(basename $d): running (pid $(cat "$STATE/$d.pid"))"
        else echo "$(basename $d): stopped"; rc=1; fi
    done
    [ "$rc" = 0 ] && SLURM_CONF="$CONF" sinfo
    return $rc
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF PATH=$STATE/bin:\$PATH" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
