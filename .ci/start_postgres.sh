#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL server for the store tests and the write benchmark.
#
#   eval "$(.ci/start_postgres.sh | tail -n 1)"     # sets ABLATE_TEST_PG_URL
#   .ci/start_postgres.sh stop                      # stop it (the data dir is kept for reuse)
#
# Idempotent: a second call finds the running server and prints the same URL. The server listens on
# 127.0.0.1 only, on a free port, with trust authentication, its socket and data under $ABLATE_PG_DIR
# (default /tmp/ablate-pg-$USER). Durability is off (fsync, synchronous_commit): it is a test server.
# $ABLATE_PG_OPTS adds server options at start, e.g. "-c max_connections=30" (tests/test_workers_pg.py).
# PostgreSQL refuses to run as root, so as root it runs as the OS user `postgres` (created if absent).
# Progress goes to stderr; the last line on stdout is `export ABLATE_TEST_PG_URL=...`.
set -euo pipefail

log() { echo "start_postgres: $*" >&2; }
die() { log "$*"; exit 1; }

find_bin() {  # find_bin NAME: PATH first, then the Debian/Ubuntu versioned directories
    local name=$1 p
    if p=$(command -v "$name" 2>/dev/null); then echo "$p"; return; fi
    for p in /usr/local/bin/"$name" /usr/lib/postgresql/*/bin/"$name"; do
        [[ -x $p ]] && { echo "$p"; return; }
    done
    die "cannot find the PostgreSQL program '$name' (install the postgresql server package)"
}

PG_CTL=$(find_bin pg_ctl)
INITDB=$(find_bin initdb)
PSQL=$(find_bin psql)
DB_NAME=${ABLATE_PG_DB:-ablate_test}

if [[ $(id -u) -eq 0 ]]; then
    OS_USER=${ABLATE_PG_OS_USER:-postgres}
    if ! id "$OS_USER" >/dev/null 2>&1; then
        log "creating OS user $OS_USER"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$OS_USER"
    fi
    as_pg() { runuser -u "$OS_USER" -- "$@"; }
else
    OS_USER=$(id -un)
    as_pg() { "$@"; }
fi
DB_USER=$OS_USER
STATE=${ABLATE_PG_DIR:-/tmp/ablate-pg-$OS_USER}
DATA=$STATE/data
PORT_FILE=$STATE/port
LOGFILE=$STATE/server.log

mkdir -p "$STATE"
[[ $(id -u) -eq 0 ]] && chown "$OS_USER" "$STATE"
chmod 700 "$STATE"

if [[ ${1:-} == stop ]]; then
    if [[ -f $DATA/PG_VERSION ]] && as_pg "$PG_CTL" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$PG_CTL" -D "$DATA" -m fast -w stop >&2
    else
        log "not running"
    fi
    exit 0
fi

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ ! -f $DATA/PG_VERSION ]]; then
    log "initdb in $DATA"
    rm -rf "$DATA"
    as_pg "$INITDB" -D "$DATA" -U "$DB_USER" --auth=trust -E UTF8 --no-locale --no-sync >"$STATE/initdb.log" 2>&1 \
        || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
fi

if as_pg "$PG_CTL" -D "$DATA" status >/dev/null 2>&1 && [[ -f $PORT_FILE ]]; then
    PORT=$(cat "$PORT_FILE")
    log "already running on 127.0.0.1:$PORT"
else
    PORT=""
    if [[ -f $PORT_FILE ]] && ! port_in_use "$(cat "$PORT_FILE")"; then
        PORT=$(cat "$PORT_FILE")
    fi
    if [[ -z $PORT ]]; then
        for p in $(seq 54329 54429); do
            if ! port_in_use "$p"; then PORT=$p; break; fi
        done
    fi
    [[ -n $PORT ]] || die "no free port in 54329-54429"
    echo "$PORT" >"$PORT_FILE"
    log "starting on 127.0.0.1:$PORT (log $LOGFILE)"
    as_pg "$PG_CTL" -D "$DATA" -l "$LOGFILE" -w -t 60 \
        -o "-h 127.0.0.1 -p $PORT -k $STATE -c fsync=off -c synchronous_commit=off -c full_page_writes=off ${ABLATE_PG_OPTS:-}" \
        start >&2 || { tail -n 20 "$LOGFILE" >&2 || true; die "pg_ctl start failed"; }
fi

psql_admin() { "$PSQL" -h 127.0.0.1 -p "$PORT" -U "$DB_USER" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [[ $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") != 1 ]]; then
    log "creating database $DB_NAME"
    psql_admin -c "CREATE DATABASE \"$DB_NAME\"" >&2
fi

echo "export ABLATE_TEST_PG_URL=postgresql+psycopg://$DB_USER@127.0.0.1:$PORT/$DB_NAME"
