#!/usr/bin/env bash
# Start a real one-node Slurm cluster on this machine, for the Slurm tests.
#
#   sudo scripts/slurm-up.sh          # idempotent: installs, configures, starts; prints "slurm up"
#   scripts/slurm-up.sh --down        # stop the daemons it started
#
# Installs Debian's slurm-wlm and munge when missing (needs root and apt),
# writes a minimal slurm.conf naming this host as the only node with
# `nproc` CPUs, and starts munged, slurmctld and slurmd in the background
# (no systemd needed, so it works in containers). KillWait and
# OverTimeLimit are set low so a job over its time limit dies within
# seconds of it, which keeps the time-limit test short.
#
# Exit status: 0 when `sinfo` answers and the node is idle; non-zero with
# the reason on stderr otherwise. CI calls it and carries on either way:
# the Slurm tests then skip and print that reason.
set -uo pipefail

CONF_DIR=/etc/slurm
STATE=/var/lib/moe-tui-slurm
LOGS=/var/log/moe-tui-slurm
HOST=$(hostname -s)
CPUS=$(nproc)

die() { echo "slurm-up: $*" >&2; exit 1; }

if [[ "${1:-}" == "--down" ]]; then
    for d in slurmd slurmctld munged; do
        [[ -f $STATE/$d.pid ]] && kill "$(cat "$STATE/$d.pid")" 2>/dev/null
        rm -f "$STATE/$d.pid"
    done
    echo "slurm down"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "needs root to install and start munge and Slurm (run it with sudo)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get to install them"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } \
        || die "apt-get could not install slurm-wlm and munge"
fi

mkdir -p "$STATE"/{ctld,d} "$LOGS" "$CONF_DIR" /run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0755 /run/munge

# munge: one key shared by every daemon of the cluster (here: one node).
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
fi

cat > "$CONF_DIR/slurm.conf.new" <<CONF
# Written by moe-tui scripts/slurm-up.sh: a one-node test cluster.
ClusterName=moetui
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Quick tests: a job over its limit gets SIGTERM at once and SIGKILL 2 s later.
OverTimeLimit=0
KillWait=2
# Finished jobs stay visible to scontrol for 10 minutes (no accounting database here).
MinJobAge=600
SchedulerParameters=sched_interval=2
NodeName=$HOST CPUs=$CPUS RealMemory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 )) State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
changed=0
if ! cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"; then
    mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
    changed=1
else
    rm -f "$CONF_DIR/slurm.conf.new"
fi

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! pgrep -x munged >/dev/null; then
    su -s /bin/sh munge -c "munged" 2>>"$LOGS/munged.err" || munged --force 2>>"$LOGS/munged.err" \
        || die "munged did not start: $(tail -1 "$LOGS/munged.err")"
fi
if (( changed )); then  # a new config: restart what runs with the old one
    for d in slurmd slurmctld; do alive "$STATE/$d.pid" && kill "$(cat "$STATE/$d.pid")"; done
    sleep 1
fi
alive "$STATE/slurmctld.pid" || slurmctld 2>>"$LOGS/slurmctld.err" || die "slurmctld did not start: see $LOGS/slurmctld.log"
alive "$STATE/slurmd.pid" || slurmd 2>>"$LOGS/slurmd.err" || die "slurmd did not start: see $LOGS/slurmd.log"

for _ in $(seq 1 30); do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1)
    if [[ $state == idle* || $state == mix* || $state == alloc* ]]; then
        echo "slurm up: node $HOST ($CPUS CPUs), partition debug"
        exit 0
    fi
    [[ $state == down* || $state == drain* ]] && scontrol update nodename="$HOST" state=resume >/dev/null 2>&1
    sleep 1
done
die "the node did not become idle (sinfo says '${state:-nothing}'); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
