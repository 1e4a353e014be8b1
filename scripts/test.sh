#!/usr/bin/env bash
# The test command: every test, on SQLite and PostgreSQL. Without BUILDFLEET_TEST_POSTGRES_URL
# it starts a throwaway PostgreSQL server itself (scripts/test-postgres.sh); when PostgreSQL is
# not installed it stops with the install command, unless BUILDFLEET_TEST_SKIP_POSTGRES=1 says
# to run the SQLite half only.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BUILDFLEET_TEST_POSTGRES_URL:-}" ]; then
    if [ "${BUILDFLEET_TEST_SKIP_POSTGRES:-}" = 1 ]; then
        echo "note: BUILDFLEET_TEST_SKIP_POSTGRES=1: the PostgreSQL tests are skipped" >&2
    elif ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        BUILDFLEET_TEST_POSTGRES_URL="$(bash scripts/test-postgres.sh start)"
        export BUILDFLEET_TEST_POSTGRES_URL
        echo "PostgreSQL for tests: $BUILDFLEET_TEST_POSTGRES_URL (scripts/test-postgres.sh stop ends it)" >&2
    else
        cat >&2 <<'MSG'
error: the tests run on SQLite and PostgreSQL, and PostgreSQL is not installed.
  Install it:  sudo apt-get install -y postgresql      (the test starts its own server)
  or point at a server:  BUILDFLEET_TEST_POSTGRES_URL=postgres://user@host/db bash scripts/test.sh
  or run the SQLite half only:  BUILDFLEET_TEST_SKIP_POSTGRES=1 bash scripts/test.sh
MSG
        exit 1
    fi
fi
# The object-storage tests need an S3-compatible server: moto's, installed into .cache/ from
# PyPI when missing and started on loopback (scripts/s3-server.sh stop ends it).
if [ -z "${BUILDFLEET_TEST_S3_URL:-}" ]; then
    BUILDFLEET_TEST_S3_URL="$(bash scripts/s3-server.sh start)"
    export BUILDFLEET_TEST_S3_URL
    echo "S3 server for tests: $BUILDFLEET_TEST_S3_URL (scripts/s3-server.sh stop ends it)" >&2
fi
# The end-to-end tests build a real crate offline: have what that needs in cargo's cache.
bash scripts/e2e-crate.sh >/dev/null
cargo test --workspace --all-targets --no-fail-fast
