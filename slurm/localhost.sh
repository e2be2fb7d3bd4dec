#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and the rehearsal (./dev slurm, ./dev rehearse).
#
#   ./dev slurm start    install (Debian: slurmctld, slurmd, slurmdbd, munge, MariaDB) and start it
#   ./dev slurm status   what runs, sinfo, the configuration file
#   ./dev slurm stop     stop the daemons this command started (the packages stay installed)
#
# Needs root and apt-get (Debian 12: SLURM 22.05). It writes /etc/slurm/slurm.conf and
# slurmdbd.conf with a marker line and refuses to touch files without it, so it never replaces a
# real cluster's configuration. State and logs: /var/lib/longctx-slurm/ (daemon logs in log/).
#
# The node is this machine under its short host name, partition "debug" (and "held", which
# queues jobs and never starts them), and advertises
# $LONGCTX_SLURM_CPUS CPUs (default 64), $LONGCTX_SLURM_GPUS GPUs (default 8, no devices: a
# count only) and $LONGCTX_SLURM_MEM_MB memory (default 262144), whatever the machine has
# (SlurmdParameters=config_overrides), so the project's job scripts are accepted with the
# resources a GPU node would give them (--gpus-per-node=8, --cpus-per-task=16, --exclusive, --mem).
# Jobs run on the CPUs there are. JobRequeue=1, so train.sbatch's `scontrol requeue` works, and
# accounting goes to slurmdbd (MariaDB on localhost), so `sacct` shows states and requeues.
set -euo pipefail

STATE=${LONGCTX_SLURM_STATE:-/var/lib/longctx-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by longctx slurm/localhost.sh"
CPUS=${LONGCTX_SLURM_CPUS:-64}
GPUS=${LONGCTX_SLURM_GPUS:-8}
MEM=${LONGCTX_SLURM_MEM_MB:-262144}
PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)

die() { echo "slurm/localhost.sh: $*" >&2; exit 1; }

ours() {  # a configuration file we may write: absent, or written by us
    [ ! -e "$1" ] || head -n 1 "$1" | grep -qF "$MARK"
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
    local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "$what did not come up; logs in $STATE/log/"
        sleep 1
    done
}

install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu) to install ${missing[*]}"
    echo "installing ${missing[*]} (apt-get)"
    # The packages' own start scripts must not start daemons with the stock configuration.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' RETURN
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
}

write_config() {
    ours "$CONF" || die "$CONF exists and was not written by this script: not replacing a real cluster's configuration"
    ours "$DBD_CONF" || die "$DBD_CONF exists and was not written by this script"
    ours /etc/slurm/gres.conf || die "/etc/slurm/gres.conf exists and was not written by this script"
    local host; host=$(hostname -s)
    mkdir -p "$STATE"/{ctld,d,log} /etc/slurm
    cat > "$CONF" <<EOF
$MARK (one node on localhost; ./dev slurm stop)
ClusterName=longctx
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=20
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
JobRequeue=1
ReturnToService=2
# Small overheads: schedule every 2 s, no long waits at job end, keep finished jobs visible 10 min.
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=10
MinJobAge=600
InactiveLimit=0
Waittime=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
NodeName=$host CPUs=$CPUS RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
# Queues and never starts: tests submit there to check what sbatch accepts without running it.
PartitionName=held Nodes=$host MaxTime=INFINITE State=DOWN
EOF
    # GPU "devices" for SLURM's bookkeeping: character devices equal to /dev/null (SLURM wants a
    # device file per GPU; a count alone is reported as 0 GPUs and the node is set INVAL).
    mkdir -p "$STATE/gpus"
    local i
    for i in $(seq 0 $((GPUS - 1))); do
        [ -c "$STATE/gpus/gpu$i" ] || mknod "$STATE/gpus/gpu$i" c 1 3 || die "mknod $STATE/gpus/gpu$i failed"
    done
    echo "$MARK
NodeName=$host Name=gpu File=$STATE/gpus/gpu[0-$((GPUS - 1))]" > /etc/slurm/gres.conf
    cat > "$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=longctx_slurm_acct
EOF
    chmod 600 "$DBD_CONF"
}

node_up() {  # the node takes jobs; one left drained or down by an earlier run is resumed
    local state; state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1)
    case "$state" in
        idle*|mixed*|allocated*|completing*) return 0 ;;
        drain*|down*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    return 1
}

start() {
    [ "$(id -u)" -eq 0 ] || die "needs root (it installs packages and starts system daemons)"
    install
    write_config
    if ! running munged; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        [ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || /usr/sbin/create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
        runuser -u munge -- /usr/sbin/munged </dev/null >>"$STATE/log/start.out" 2>&1
    fi
    wait_for 30 munged munge -n
    if ! running mariadbd && ! running mysqld; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        # exec: no shell stays behind holding the caller's stdout (a test's pipe would never close)
        (cd / && exec setsid mysqld_safe) >"$STATE/log/mariadb.out" 2>&1 </dev/null &
    fi
    # MariaDB's root logs in through its unix socket: slurmdbd runs as root, no password anywhere.
    wait_for 60 MariaDB mysql -u root -e 'select 1'
    # daemons log to $STATE/log/; their own stdout must not hold the caller's pipe open
    running slurmdbd || slurmdbd </dev/null >>"$STATE/log/start.out" 2>&1
    wait_for 60 slurmdbd sacctmgr -n show cluster
    if running slurmctld; then scontrol reconfigure >/dev/null; else slurmctld </dev/null >>"$STATE/log/start.out" 2>&1; fi
    running slurmd || slurmd </dev/null >>"$STATE/log/start.out" 2>&1
    wait_for 60 "slurmctld and slurmd" node_up
    echo "SLURM 1 node up: $(sinfo -h -p debug -o '%P %D %T %c CPUs %G') (state and logs: $STATE)"
}

stop() {  # by the daemons' pid files: only what start started
    local d pid
    for d in slurmd slurmctld slurmdbd; do
        pid=$(cat "$STATE/$d.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        fi
    done
    if [ -S /run/mysqld/mysqld.sock ]; then mysqladmin -u root shutdown 2>/dev/null || true; fi
    pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    echo "SLURM stopped (packages and $STATE kept)"
}

status() {
    local d
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        printf '%-10s %s\n' "$d" "$(running "$d" && echo running || echo stopped)"
    done
    if running slurmctld; then sinfo; fi
    echo "configuration: $CONF; state and logs: $STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) sed -n '2,6p' "$0"; exit 2 ;;
esac
