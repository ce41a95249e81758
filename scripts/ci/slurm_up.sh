#!/usr/bin/env bash
# Start a real one-node SLURM cluster (slurmctld + slurmd + slurmdbd on a private MariaDB, munge) on
# this machine, for the SLURM tests (tests/test_slurm.py) and for trying the launchers by hand.
#
#   sudo scripts/ci/slurm_up.sh [PREFIX]        # PREFIX defaults to /tmp/dyt-slurm
#   scripts/ci/slurm_down.sh [PREFIX]           # stops exactly what this script started
#
# Needs root on Debian 12; works without systemd (every daemon is started by hand and tracked by a
# pid file under PREFIX). Re-running it is safe: daemons that are alive are kept, missing ones are
# started, and it returns once the node is idle. Everything lives under PREFIX: configs in etc/,
# pid files in run/, logs in log/, controller state, slurmd spool and the accounting DB.
# /etc/slurm/slurm.conf is made a symlink to PREFIX/etc/slurm.conf (unless another file is there),
# so sinfo/sbatch work without SLURM_CONF; `export SLURM_CONF=PREFIX/etc/slurm.conf` also works.
#
# Why each setting (measured on a one-node Debian 12 cluster): accounting makes a
# crashed job visible to submitit (without sacct a hard crash hangs a Hydra sweep), and
# cred_expire=10 + bf_interval=5 bring a requeue round trip from ~2 min down to ~15 s.
set -euo pipefail

PREFIX=$(realpath -m "${1:-${DYT_SLURM_PREFIX:-/tmp/dyt-slurm}}")
CLUSTER=dyt
NODE=dytnode
PARTITION=debug
# Non-default ports so this cluster never collides with a site installation.
CTLD_PORT=${DYT_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${DYT_SLURM_SLURMD_PORT:-16818}
DBD_PORT=${DYT_SLURM_DBD_PORT:-16819}
DB_PORT=${DYT_SLURM_DB_PORT:-16306}
WAIT_S=${DYT_SLURM_WAIT_S:-60}

ETC=$PREFIX/etc RUN=$PREFIX/run LOG=$PREFIX/log
MUNGE_DIR=$PREFIX/munge
DB_DIR=$PREFIX/mariadb
STATE_DIRS=("$PREFIX/state" "$PREFIX/spool" "$DB_DIR")
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
DB_SOCKET=$RUN/mariadb.sock

die() { echo "slurm_up: ERROR: $*" >&2; exit 1; }
log() { echo "slurm_up: $*"; }

[[ $(id -u) == 0 ]] || die "must run as root (it installs packages and starts daemons); try: sudo $0 $*"

# alive PIDFILE: true when the pid file names a running process.
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# fail_with_logs MESSAGE: print MESSAGE and the last lines of every daemon log, then exit.
fail_with_logs() {
    echo "slurm_up: ERROR: $1; last log lines:" >&2
    tail -n 15 "$LOG"/*.log "$MUNGE_DIR"/*.log >&2 2>/dev/null || true
    exit 1
}

# wait_for SECONDS WHAT PIDFILE CMD...: poll CMD every 0.2 s; fail on timeout, or at once when the
# daemon behind PIDFILE ("-" for none) has written its pid and died.
wait_for() {
    local seconds=$1 what=$2 pidfile=$3; shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [[ $pidfile != - && -s $pidfile ]] && ! alive "$pidfile"; then
            fail_with_logs "the daemon of $pidfile exited while waiting for $what"
        fi
        ((SECONDS < deadline)) || fail_with_logs "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- packages (once)
install_packages() {
    local missing=()
    for bin in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge slurmdbd:slurmdbd \
        mariadbd:mariadb-server; do
        command -v "${bin%%:*}" >/dev/null || missing+=("${bin#*:}")
    done
    ((${#missing[@]} == 0)) && return
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Without systemd, package scripts cannot start services (policy-rc.d refuses); we start them below.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------- configuration files
write_configs() {
    local cpus mem
    # Advertise more CPUs than exist (with SlurmdParameters=config_overrides) so a sweep's jobs run
    # side by side; memory is capped so DefMemPerCPU jobs always fit.
    cpus=${DYT_SLURM_CPUS:-$(($(nproc) * 4))}
    mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    ((mem > 20000)) && mem=20000
    mkdir -p "$ETC" "$RUN" "$LOG" "$PREFIX/state" "$PREFIX/spool"

    cat >"$ETC/slurm.conf" <<EOF
# Written by scripts/ci/slurm_up.sh: one-node test cluster under $PREFIX.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start 11 s after it stopped instead of 121 s.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
MailProg=/bin/true
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups on a CI machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job with no --mem takes the whole node and jobs run one at a time.
DefMemPerCPU=1000
SchedulerType=sched/backfill
# Backfill every 5 s picks up requeued jobs quickly (default 30 s).
SchedulerParameters=bf_interval=5
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=5
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# For slurmdbd this names the munge socket of the controller's persistent connection.
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    # slurmdbd refuses a config readable by others (it holds the DB password).
    (
        umask 077
        cat >"$ETC/slurmdbd.conf" <<EOF
# Written by scripts/ci/slurm_up.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=dyt-slurm
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$ETC/slurmdbd.conf"
}

# Clients (sinfo, sbatch, srun inside jobs) read /etc/slurm/slurm.conf unless SLURM_CONF is set.
link_client_config() {
    mkdir -p /etc/slurm
    if [[ -L /etc/slurm/slurm.conf || ! -e /etc/slurm/slurm.conf ]]; then
        ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf
    else
        log "keeping the existing /etc/slurm/slurm.conf; export SLURM_CONF=$ETC/slurm.conf to reach this cluster"
    fi
}

# ---------------------------------------------------------------- daemons
start_munge() {
    alive "$MUNGE_DIR/munged.pid" && return
    mkdir -p "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chmod 0700 "$MUNGE_DIR"
    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
        chown munge:munge "$MUNGE_DIR/munge.key"
        chmod 0400 "$MUNGE_DIR/munge.key"
    fi
    # munged must run as munge (it owns the key); setpriv keeps munged's own pid in the pid file.
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --force \
        --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" --num-threads=10
    wait_for 10 munged "$MUNGE_DIR/munged.pid" [ -S "$MUNGE_SOCKET" ]
}

start_mariadb() {
    alive "$RUN/mariadb.pid" && return
    if [[ ! -d $DB_DIR/mysql ]]; then
        mkdir -p "$DB_DIR"
        mariadb-install-db --no-defaults --datadir="$DB_DIR" --user=root \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed; see $LOG/mariadb-install.log"
    fi
    nohup mariadbd --no-defaults --datadir="$DB_DIR" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
        --socket="$DB_SOCKET" --pid-file="$RUN/mariadb.pid" --log-error="$LOG/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
    wait_for 30 "MariaDB on port $DB_PORT" "$RUN/mariadb.pid" mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
    mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'dyt-slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" ||
        die "could not create the slurm DB user; see $LOG/mariadb.log"
}

start_slurmdbd() {
    alive "$RUN/slurmdbd.pid" && return
    # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF.
    slurmdbd
    wait_for 30 "slurmdbd on port $DBD_PORT" "$RUN/slurmdbd.pid" bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"
}

start_slurmctld() {
    alive "$RUN/slurmctld.pid" && return
    slurmctld -f "$ETC/slurm.conf"
    wait_for 30 "slurmctld on port $CTLD_PORT" "$RUN/slurmctld.pid" scontrol ping
}

start_slurmd() {
    alive "$RUN/slurmd.pid" && return
    slurmd -f "$ETC/slurm.conf" -N "$NODE"
}

node_ready() {
    local state
    state=$(sinfo -h -N -n "$NODE" -o %T)
    [[ $state =~ ^(idle|mixed|allocated)$ ]]
}

# ---------------------------------------------------------------- main
install_packages
mkdir -p "$PREFIX"
any_alive=false
for pidfile in "$MUNGE_DIR/munged.pid" "$RUN"/{mariadb,slurmdbd,slurmctld,slurmd}.pid; do
    alive "$pidfile" && any_alive=true
done
if ! $any_alive; then
    # A fresh start wipes controller state, slurmd spool and the accounting DB together: keeping the
    # DB alone would reuse job ids that it already holds.
    rm -rf "${STATE_DIRS[@]}" "$RUN" "$LOG"
fi
write_configs
link_client_config
export SLURM_CONF=$ETC/slurm.conf
start_munge
start_mariadb
start_slurmdbd
start_slurmctld
start_slurmd
wait_for "$WAIT_S" "node $NODE to become idle (sinfo -N)" "$RUN/slurmd.pid" node_ready
# submitit decides that a crashed job is over through sacct: make sure accounting answers.
wait_for 30 "accounting (sacct)" - sacct -n -X -S now
log "cluster '$CLUSTER' is up: node $NODE ($(sinfo -h -N -n "$NODE" -o '%c CPUs, %m MB')), partition $PARTITION"
log "config: $SLURM_CONF; logs: $LOG; stop it with scripts/ci/slurm_down.sh $PREFIX"
