#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, with one fake GPU, for tests/test_slurm.py.
#
# Debian 12 as root, no systemd needed: munged, slurmctld and slurmd are started directly and daemonise.
# Without slurmdbd, so `sacct` does not work: Snakemake's SLURM plugin must be run with
# `--slurm-status-command squeue` (profiles/slurm sets it). Installs the packages with apt where missing.
# What this script starts is recorded in $STATE; .ci/slurm-down.sh stops exactly that, by pid file.
set -euo pipefail

STATE=${SLURM_CI_STATE:-/run/tinyllm-slurm}
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024)) # leave the OS some room
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm-up: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
[ "$(id -u)" = 0 ] || die "must run as root"

# A previous run that was not torn down (a killed test session): stop it first.
[ -e "$STATE/started" ] && "$(dirname "$0")/slurm-down.sh"
alive /run/slurmctld.pid && die "a slurmctld this script did not start is running; not touching it"
alive /run/slurmd.pid && die "a slurmd this script did not start is running; not touching it"
mkdir -p "$STATE"
: >"$STATE/started"

if ! dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The postinst scripts try to start the services; without systemd policy-rc.d refuses, which is fine.
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
fi

# --- munge: authenticates slurmctld <-> slurmd <-> clients ---------------------------------------------------
if ! alive /run/munge/munged.pid; then
  if [ ! -s /etc/munge/munge.key ]; then # Debian's postinst makes one; be safe on other installs
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged # must run as munge; writes /run/munge/munged.pid
  echo /run/munge/munged.pid >>"$STATE/started"
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not work"

# --- configuration -------------------------------------------------------------------------------------------
MARK="# Written by tinyllm's .ci/slurm-up.sh"
for conf in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  if [ -s "$conf" ] && [ "$(head -1 "$conf")" != "$MARK" ]; then
    die "$conf exists and was not written by this script; not overwriting it"
  fi
done
# slurm-down.sh removes them again: with a slurm.conf naming a controller that is not running, every
# `snakemake` call waits 10 s (the SLURM plugin runs `scontrol show config` when it is imported).
echo "conf /etc/slurm/slurm.conf /etc/slurm/gres.conf" >>"$STATE/started"
# The node offers one GPU of type "fake". slurmd drops a GPU without a device file (node then drains as
# "gres/gpu count reported lower than configured"), hence File=/dev/null.
cat >/etc/slurm/slurm.conf <<CONF
${MARK}
# A one-node test cluster.
ClusterName=tinyllm-ci
SlurmctldHost=${NODE}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job that names no memory takes the whole node and every job runs alone.
DefMemPerCPU=500
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# squeue (the plugin's status source here) sees a finished job for MinJobAge seconds.
MinJobAge=300
GresTypes=gpu
NodeName=${NODE} CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat >/etc/slurm/gres.conf <<CONF
${MARK}
AutoDetect=off
NodeName=${NODE} Name=gpu Type=fake Count=1 File=/dev/null
CONF
# Saved state from an earlier cluster (another ClusterName, a drained node) would stop or drain this one.
rm -rf /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
install -d /var/lib/slurm/slurmd /var/lib/slurm/slurmctld /var/log/slurm

# --- daemons -------------------------------------------------------------------------------------------------
# Both daemonise and write their pid files; they report errors only to their logs.
/usr/sbin/slurmctld -c || { tail -20 /var/log/slurm/slurmctld.log >&2; die "slurmctld did not start"; }
echo /run/slurmctld.pid >>"$STATE/started"
/usr/sbin/slurmd || { tail -20 /var/log/slurm/slurmd.log >&2; die "slurmd did not start"; }
echo /run/slurmd.pid >>"$STATE/started"

for _ in $(seq 60); do
  [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" = idle ] && break
  sleep 0.5
done
sinfo -N -o '%N %T %c %m %G'
if [ "$(sinfo -h -n "$NODE" -o %T)" != idle ]; then
  tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
  die "node $NODE is not idle"
fi
