#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the test suite on 127.0.0.1 and prints its URL.
# Usage: scripts/test-postgres.sh start|stop   (PORT defaults to 55432)
set -euo pipefail
PORT="${BUILDFLEET_TEST_PG_PORT:-55432}"
DIR="${BUILDFLEET_TEST_PG_DIR:-/tmp/buildfleet-test-pg}"
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$BIN" ]; then
    echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2
    exit 1
fi
# PostgreSQL refuses to run as root; use the postgres account when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

case "${1:-start}" in
start)
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then echo "$URL"; exit 0; fi
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        as_pg "'$BIN/initdb' -D '$DIR/data' -A trust -U postgres" >/dev/null
    fi
    as_pg "'$BIN/pg_ctl' -D '$DIR/data' -l '$DIR/log' -w -o \"-k /tmp -p $PORT -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off\" start" >/dev/null
    echo "$URL"
    ;;
stop)
    as_pg "'$BIN/pg_ctl' -D '$DIR/data' -m fast stop" >/dev/null
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
