#!/usr/bin/env bash
# A one-node Slurm cluster (munged + slurmctld + slurmd) for the Slurm tests and CI.
#
#   tests/slurm/cluster.sh start [DIR]   start it (or see it running) and wait until a job runs
#   tests/slurm/cluster.sh stop  [DIR]   cancel its jobs, stop the three daemons by pid
#   tests/slurm/cluster.sh status [DIR]  exit 0 when all three daemons are alive and sinfo answers
#   tests/slurm/cluster.sh env [DIR]     print `export SLURM_CONF=...` for a shell (eval it)
#
# Everything the cluster owns lives in DIR ($KDTUI_SLURM_DIR, else ${TMPDIR:-/tmp}/kdtui-slurm):
# slurm.conf, the munge key and socket, state, spool, logs and pid files; nothing is written to
# /etc or /var and nothing is read from them, so it does not collide with a system Slurm or with
# a second cluster in another DIR (each picks two free ports). Made for a container: no cgroups
# (proctrack/linuxproc, task/none), no accounting database, every daemon runs as root.
# Needs the Debian packages slurm-wlm and munge. Waits at most $KDTUI_SLURM_TIMEOUT seconds
# (default 60) for each step and says which step failed, with the daemons' logs.
#
# KDTUI_SLURM_NODES=2 starts a two-node cluster on this one machine, for runs across nodes:
# node 1 at 127.0.0.1 and node 2 at 127.0.0.2 (both loopback), one slurmd each, each in a UTS
# namespace of its own (`unshare --uts`) whose host name is its address, so each binds its
# own address (CommunicationParameters=NoInAddrAny) and a job's tasks on node 2 see another
# host name. Nothing is written to /etc/hosts. Each node has the machine's CPUs.
set -euo pipefail

action=${1:-}
DIR=${2:-${KDTUI_SLURM_DIR:-${TMPDIR:-/tmp}/kdtui-slurm}}
TIMEOUT=${KDTUI_SLURM_TIMEOUT:-60}
NODES=${KDTUI_SLURM_NODES:-1}
[[ $NODES == 1 || $NODES == 2 ]] || { echo "KDTUI_SLURM_NODES=$NODES: 1 or 2" >&2; exit 2; }
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF="$DIR/slurm.conf"
DAEMONS=(slurmd slurmctld munged)
((NODES == 1)) || DAEMONS=(slurmd.kdtui-n1 slurmd.kdtui-n2 slurmctld munged)

die() {
    echo "tests/slurm/cluster.sh: $*" >&2
    for log in "$DIR"/log/*.log; do
        [[ -s $log ]] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
    done
    exit 1
}

pidfile() { echo "$DIR/run/$1.pid"; }

# The pid in DIR/run/NAME.pid when that process is alive and is NAME (not a reused pid).
alive_pid() {
    local pid
    pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${1%%.*}"* ]] && echo "$pid"
}

running() {
    local d
    for d in "${DAEMONS[@]}"; do alive_pid "$d" >/dev/null || return 1; done
    timeout 10 sinfo -h >/dev/null 2>&1
}

# Wait until "$@" succeeds, at most TIMEOUT seconds; $what names the step in the error.
wait_for() {
    local what=$1 deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what (DIR=$DIR)"
        sleep 0.2
    done
}

node_idle() {
    local states
    states=$(sinfo -h -N -o %T 2>/dev/null) || return 1
    [[ $(grep -c '^idle$' <<<"$states") == "$NODES" ]]
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
    local detected node cpus mem ctld_port slurmd_port
    # what slurmd itself detects, so the node registers with a valid configuration
    detected=$(slurmd -C | head -n 1)
    node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$detected")
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$detected")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
    [[ -n $node && -n $cpus && -n $mem ]] || die "could not read the node from 'slurmd -C'"
    local spool_suffix="" node_suffix="" bind_own="" nodes_lines
    nodes_lines="NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP"
    if ((NODES == 2)); then
        spool_suffix=/%n node_suffix=.%n
        bind_own="
# two slurmd on one machine: each binds the address its host name (its UTS namespace's) names
CommunicationParameters=NoInAddrAny"
        nodes_lines="NodeName=kdtui-n1 NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem / 2)) State=UNKNOWN
NodeName=kdtui-n2 NodeAddr=127.0.0.2 CPUs=$cpus RealMemory=$((mem / 2)) State=UNKNOWN
PartitionName=debug Nodes=kdtui-n1,kdtui-n2 Default=YES MaxTime=INFINITE State=UP"
    fi
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
    cat >"$SLURM_CONF" <<EOF
# Written by tests/slurm/cluster.sh: a one-node test cluster, everything under $DIR
ClusterName=kdtui
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (Slurm's default: 120 s)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool$spool_suffix
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile "slurmd$node_suffix")
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd$node_suffix.log$bind_own
# containers: no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd: sacct has no database; finished jobs are written to a text file (sacct -c reads it)
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
# CPUs and memory are consumed per job; a job without --mem gets its CPUs' share of memory
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
# look at pending jobs every second or two (defaults 30 s and 60 s), so a requeued job or an
# array task waiting for its turn starts within seconds
SchedulerParameters=bf_interval=1,sched_interval=2
MpiDefault=none
MailProg=/bin/true
# a node marked down (slurmd restarted by hand while slurmctld runs) comes back by itself;
# a cancelled or requeued job gets SIGKILL soon after SIGTERM (about 5 s here, not Slurm's 30 s:
# submitit ignores SIGTERM); finished jobs stay visible to scontrol for 5 minutes
ReturnToService=2
KillWait=2
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
$nodes_lines
EOF
}

start_munged() {
    local m=$DIR/munge
    if [[ ! -s $m/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$m/munge.key"
        else
            dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 status=none
        fi
    fi
    chmod 0400 "$m/munge.key" # munged refuses a key others can read
    munged --force --key-file="$m/munge.key" --socket="$m/munge.socket" \
        --pid-file="$(pidfile munged)" --log-file="$DIR/log/munged.log" --seed-file="$m/munged.seed"
}

start() {
    if running; then
        echo "slurm cluster already running in $DIR (SLURM_CONF=$SLURM_CONF)"
        return
    fi
    stop quiet # whatever half of a cluster is left: start clean
    mkdir -p "$DIR"
    chmod 0755 "$DIR" # munged wants its socket reachable; the key itself is 0400
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    write_config
    local t0=$SECONDS
    start_munged || die "munged did not start"
    wait_for "munged's socket" test -S "$DIR/munge/munge.socket"
    slurmctld || die "slurmctld did not start"
    wait_for "slurmctld to answer sinfo" sinfo -h
    if ((NODES == 1)); then
        slurmd || die "slurmd did not start"
    else
        local n
        for n in 1 2; do
            mkdir -p "$DIR/spool/kdtui-n$n"
            unshare --uts sh -c "hostname 127.0.0.$n && exec slurmd -N kdtui-n$n" ||
                die "slurmd of node kdtui-n$n did not start (it needs unshare --uts: root)"
        done
    fi
    wait_for "the node to be idle in sinfo" node_idle
    timeout "$TIMEOUT" srun --nodes="$NODES" --time=1 hostname >/dev/null ||
        die "'srun --nodes=$NODES hostname' did not run within ${TIMEOUT}s"
    timeout "$TIMEOUT" sbatch --wait --time=1 --output=/dev/null --wrap=true >/dev/null ||
        die "'sbatch --wait --wrap=true' did not finish within ${TIMEOUT}s"
    echo "slurm cluster ready in $((SECONDS - t0))s in $DIR (SLURM_CONF=$SLURM_CONF)"
}

stop() {
    local d pid pids=()
    if alive_pid slurmctld >/dev/null; then
        # running jobs would outlive slurmd (linuxproc does not kill them with it)
        timeout 10 scancel --quiet --partition=debug 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while [[ -n $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && ((SECONDS < deadline)); do
            sleep 0.2
        done
    fi
    for d in "${DAEMONS[@]}"; do
        if pid=$(alive_pid "$d"); then
            kill -TERM "$pid" && pids+=("$pid")
        fi
    done
    local deadline=$((SECONDS + 15))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    done
    rm -f "$DIR"/run/*.pid
    [[ ${1:-} == quiet ]] || echo "slurm cluster in $DIR stopped"
}

case $action in
start) start ;;
stop) stop ;;
status) running ;;
env) echo "export SLURM_CONF=$(printf %q "$SLURM_CONF")" ;;
*)
    echo "usage: $0 start|stop|status|env [DIR]" >&2
    exit 2
    ;;
esac
