#!/usr/bin/env bash
# A one-host SLURM for the tests (tests/test_cluster.py) and for trying slurm/train.sbatch by hand:
# Debian's slurm-wlm daemons and munge on this machine, one CPU-only node, one partition.
#
#   bash slurm/testbed.sh            # start (the default): install if missing, configure, start, wait for idle
#   bash slurm/testbed.sh status     # exit 0 when the node answers and is idle or in use
#   bash slurm/testbed.sh stop       # stop the daemons (configuration and packages stay)
#   NO_INSTALL=1 bash slurm/testbed.sh    # start only if the packages are there already
#
# Needs root. Idempotent: a start on a running testbed only checks it. It writes /etc/slurm/slurm.conf,
# marked as its own, and refuses to touch one it did not write (a real cluster's). State, spool and
# logs live under /var/lib/fastdcgan-slurm and /var/log/fastdcgan-slurm.
# Exit codes: 0 done; 3 SLURM cannot run here (one line says why: not root, no package access, another
# configuration); 1 it should run but did not come up (the daemons' logs are named).
set -euo pipefail

MARK="# written by fastdcgan slurm/testbed.sh"
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/fastdcgan-slurm
LOGS=/var/log/fastdcgan-slurm
PIDS=/run/fastdcgan-slurm
NODE=$(hostname -s)
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "testbed: $*" >&2; }
cannot() { echo "testbed: SLURM cannot run here: $*" >&2; exit 3; }

alive() {  # alive NAME: the daemon whose pid file we wrote is running
    local pid
    pid=$(cat "$PIDS/$1.pid" 2>/dev/null) && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }

install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && { rm -f "$LOGS/no-install"; return 0; }
    if [[ -n "${NO_INSTALL:-}" ]]; then  # what the last try to install said, if one failed
        [[ -s "$LOGS/no-install" ]] && cannot "$(cat "$LOGS/no-install")"
        cannot "packages ${missing[*]} are not installed (bash slurm/testbed.sh installs them)"
    fi
    command -v apt-get >/dev/null || cannot "packages ${missing[*]} are missing and there is no apt-get"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1; then
        apt-get update -q >>"$LOGS/apt.log" 2>&1 || true
        if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1; then
            echo "could not install ${missing[*]} (no package access? see $LOGS/apt.log)" >"$LOGS/no-install"
            cannot "$(cat "$LOGS/no-install")"
        fi
    fi
}

write_conf() {
    # One node with this host's memory. CPUs=8 on any host (config_overrides: the real count may be
    # smaller): the tests' jobs take one each, so that they run side by side, even on 2 cores.
    local mem
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    local new
    new=$(cat <<EOF
$MARK: a one-host test cluster; bash slurm/testbed.sh stop, then delete this file to give it up.
ClusterName=fastdcgan-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=8 RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [[ -e "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
        cannot "$CONF exists and was not written by this script (a real cluster's?); not touching it"
    fi
    if [[ "$(cat "$CONF" 2>/dev/null)" != "$new" ]]; then
        mkdir -p "$(dirname "$CONF")"
        printf '%s\n' "$new" >"$CONF"
        CONF_CHANGED=1
    fi
}

start_munge() {
    [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged --force
    touch "$PIDS/munged.ours"  # stop stops munged only if start started it
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    say "munged did not come up (see /var/log/munge/munged.log)"
    exit 1
}

start() {
    [[ $(id -u) -eq 0 ]] || cannot "not root (the daemons, and the tests that signal their jobs, need root)"
    mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" "$PIDS"
    install
    CONF_CHANGED=
    write_conf
    start_munge
    if [[ -n "$CONF_CHANGED" ]] && { alive slurmctld || alive slurmd; }; then
        say "configuration changed: restarting the daemons"
        stop_daemons
    fi
    alive slurmctld || { say "starting slurmctld"; slurmctld -f "$CONF"; }
    alive slurmd || { say "starting slurmd"; slurmd -f "$CONF"; }
    local state=""
    for _ in $(seq 120); do
        state=$(node_state)
        case "$state" in
            idle|mixed|allocated|completing) say "node $NODE $state"; return 0 ;;
            down*|drain*|fail*)  # e.g. after an unclean stop: ReturnToService cannot tell it was us
                scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    say "node $NODE not idle after 60 s (state: ${state:-no answer}); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
    exit 1
}

stop_daemons() {
    local name pid
    for name in slurmd slurmctld; do
        alive "$name" || continue
        pid=$(cat "$PIDS/$name.pid")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { say "$name ($pid) ignored SIGTERM for 10 s: killing it"; kill -9 "$pid"; }
        rm -f "$PIDS/$name.pid"
        say "stopped $name"
    done
}

stop() {
    [[ $(id -u) -eq 0 ]] || cannot "not root"
    # Jobs first, so that no job step outlives its slurmd.
    if alive slurmctld && squeue -h -o %i 2>/dev/null | grep -q .; then
        squeue -h -o %i | xargs -r scancel --quiet --full --signal=KILL 2>/dev/null || true
        squeue -h -o %i | xargs -r scancel --quiet 2>/dev/null || true
        for _ in $(seq 100); do squeue -h -o %i 2>/dev/null | grep -q . || break; sleep 0.2; done
    fi
    stop_daemons
    if [[ -e "$PIDS/munged.ours" ]]; then
        local pid
        pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
        if [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            say "stopped munged"
        fi
        rm -f "$PIDS/munged.ours"
    fi
}

status() {
    local state
    state=$(node_state)
    echo "node ${NODE}: ${state:-no answer}"
    [[ "$state" =~ ^(idle|mixed|allocated|completing)$ ]]
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: bash slurm/testbed.sh [start|status|stop]" >&2; exit 2 ;;
esac
