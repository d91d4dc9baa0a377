#!/usr/bin/env bash
# Stop the daemons that start.sh started (by their pid files), newest first.
set -euo pipefail
DIR="${MASKFM_SLURM_DIR:-/var/lib/maskfm-slurm}"
for pid in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/run/slurmdbd.pid" \
           /run/mysqld/mysqld.pid /run/munge/munged.pid; do
    if [[ -s $pid ]] && kill -0 "$(cat "$pid")" 2>/dev/null; then
        echo "[slurm] stopping $(basename "$pid" .pid) ($(cat "$pid"))"
        kill "$(cat "$pid")"
    fi
done
