#!/usr/bin/env bash
# Start a one-node SLURM cluster with job accounting on this machine (Debian 12, root, no systemd).
#
#   sudo .ci/slurm/start.sh          # installs what is missing, starts what is not running
#   export SLURM_CONF=/var/lib/maskfm-slurm/etc/slurm.conf   # printed at the end
#   sinfo; sbatch --wrap 'hostname'; sacct
#
# Daemons: munged, MariaDB (127.0.0.1 only), slurmdbd, slurmctld, slurmd, each started directly
# and left running. Idempotent: when everything already runs, a call only checks and returns.
# Configuration: slurm.conf.in and slurmdbd.conf.in beside this script, rendered into
# $MASKFM_SLURM_DIR/etc (default /var/lib/maskfm-slurm) with this machine's name, CPUs and memory.
# Stop it all with .ci/slurm/stop.sh.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${MASKFM_SLURM_DIR:-/var/lib/maskfm-slurm}"
export SLURM_CONF="$DIR/etc/slurm.conf"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
START=$(date +%s%N)

say() { echo "[slurm] $*"; }
die() { echo "[slurm] ERROR: $*" >&2; exit 1; }
running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
stopped() { ! running "$1"; }
# retry SECONDS COMMAND...: run COMMAND every 0.2 s until it succeeds; fail after SECONDS.
retry() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.2
    done
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    retry "$seconds" "$@" || die "$what not ready after ${seconds}s (logs: $DIR/log)"
}

[[ $(id -u) == 0 ]] || die "needs root (it installs Debian packages and starts daemons)"

# --- packages -------------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- configuration ----------------------------------------------------------------------------
mkdir -p "$DIR"/{etc,state,spool,log,run}
chmod 700 "$DIR/etc"
[[ -s "$DIR/dbpass" ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DIR/dbpass")
node="$(hostname -s)"
# `slurmd -C` prints this machine's line (NodeName=vm CPUs=2 ... RealMemory=24105); keep 10 % of
# the memory back: SLURM drains a node that claims more memory than it has.
hw="$(slurmd -C | head -n 1)"
mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
hw="$(sed "s/RealMemory=[0-9]*/RealMemory=$(( mem * 9 / 10 ))/" <<<"$hw")"
changed=0
render() {  # render TEMPLATE TARGET MODE
    local tmp="$2.new"
    sed -e "s|@DIR@|$DIR|g" -e "s|@NODE@|$node|g" -e "s|@NODE_HW@|$hw|g" \
        -e "s|@DBPASS@|$(cat "$DIR/dbpass")|g" "$1" > "$tmp"
    chmod "$3" "$tmp"
    if cmp -s "$tmp" "$2"; then rm "$tmp"; else mv "$tmp" "$2"; changed=1; fi
}
render "$HERE/slurm.conf.in" "$DIR/etc/slurm.conf" 644
render "$HERE/slurmdbd.conf.in" "$DIR/etc/slurmdbd.conf" 600
# Let plain `sinfo`/`sbatch` find the cluster too, unless this machine has a SLURM config of its own.
if [[ ! -e /etc/slurm/slurm.conf ]]; then
    mkdir -p /etc/slurm && ln -s "$DIR/etc/slurm.conf" /etc/slurm/slurm.conf
fi
if (( changed )); then  # daemons started with another configuration must restart
    for pid in "$DIR"/run/{slurmd,slurmctld,slurmdbd}.pid; do
        if running "$pid"; then say "configuration changed: stopping $(basename "$pid" .pid)"; kill "$(cat "$pid")"; fi
    done
    for pid in "$DIR"/run/{slurmd,slurmctld,slurmdbd}.pid; do
        wait_for 30 "exit of $(basename "$pid" .pid)" stopped "$pid"
    done
fi

# --- munge (authentication) -------------------------------------------------------------------
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --force
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! running /run/munge/munged.pid; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 munged bash -c 'munge -n | unmunge'

# --- MariaDB (accounting storage) -------------------------------------------------------------
install -d -o mysql -g mysql /run/mysqld
if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising MariaDB's data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
fi
if ! running /run/mysqld/mysqld.pid; then
    say "starting MariaDB"
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
        --socket=/run/mysqld/mysqld.sock >>"$DIR/log/mariadb.log" 2>&1 </dev/null &
fi
wait_for 60 MariaDB mariadb-admin --socket=/run/mysqld/mysqld.sock ping
mariadb --socket=/run/mysqld/mysqld.sock -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$(cat "$DIR/dbpass")';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# --- SLURM ------------------------------------------------------------------------------------
if ! running "$DIR/run/slurmdbd.pid"; then
    say "starting slurmdbd"
    slurmdbd
fi
wait_for 60 slurmdbd sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx maskfm; then
    sacctmgr -i add cluster maskfm >/dev/null
fi
if ! running "$DIR/run/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld
fi
if ! running "$DIR/run/slurmd.pid"; then
    say "starting slurmd"
    slurmd
fi
node_up() { sinfo -h -n "$node" -o %T | grep -qE '^(idle|mixed|allocated|completing)$'; }
if ! retry 30 node_up; then  # DOWN or DRAINED from an earlier life: return it to service once
    scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
    wait_for 30 "node $node (state: $(sinfo -h -n "$node" -o %T))" node_up
fi

elapsed_ms=$(( ($(date +%s%N) - START) / 1000000 ))
say "up after $(( elapsed_ms / 1000 )).$(( elapsed_ms % 1000 / 100 )) s: $(sinfo -h -o '%P %a %D %T %N')"
say "export SLURM_CONF=$SLURM_CONF"
