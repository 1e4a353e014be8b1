#!/usr/bin/env bash
# CI's benchmark check: every suite, tiny, on SQLite and PostgreSQL, in seconds. It fails only
# when a suite produced no numbers; it never judges a number (timings on CI are noise).
# Uses the debug build CI already has; PostgreSQL as in scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BUILDFLEET_BENCH_POSTGRES_URL:-}${BUILDFLEET_TEST_POSTGRES_URL:-}" ]; then
    BUILDFLEET_BENCH_POSTGRES_URL="$(bash scripts/test-postgres.sh start)"
    export BUILDFLEET_BENCH_POSTGRES_URL
fi
cargo build -p buildfleet-backend -p buildfleet-builder -p buildfleet-bench
mkdir -p target/bench
exec target/debug/buildfleet-bench all --smoke --db both --json target/bench/smoke.json "$@"
