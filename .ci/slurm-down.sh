#!/usr/bin/env bash
# Stop what .ci/slurm-up.sh started: only the daemons it recorded, by their pid files (never by name).
set -u

STATE=${SLURM_CI_STATE:-/run/tinyllm-slurm}
[ -e "$STATE/started" ] || exit 0

stop() { # $1 = pid file: TERM, wait up to 5 s, then KILL
  [ -s "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

# Jobs still queued or running on the test cluster would otherwise outlive it as orphaned processes.
if grep -qx /run/slurmctld.pid "$STATE/started"; then
  scancel --user=root 2>/dev/null || true
  sleep 1
fi
# Reverse start order: slurmd, slurmctld, their config, then munge (which both use until they exit).
tac "$STATE/started" | while read -r what files; do
  if [ "$what" = conf ]; then
    # shellcheck disable=SC2086 # a list of paths without spaces
    rm -f $files
  else
    stop "$what"
  fi
done
rm -rf "$STATE"
