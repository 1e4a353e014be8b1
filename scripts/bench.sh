#!/usr/bin/env bash
# The full benchmark run (docs/benchmarks.md): release build, every suite (or the one named
# first) on SQLite and PostgreSQL; the table on stdout, JSON in target/bench/results.json.
# PostgreSQL: BUILDFLEET_BENCH_POSTGRES_URL or BUILDFLEET_TEST_POSTGRES_URL (an admin URL),
# else a throwaway server from scripts/test-postgres.sh (which runs with fsync=off).
# Extra arguments go to buildfleet-bench, e.g. `scripts/bench.sh idle-sessions --sessions 5000`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BUILDFLEET_BENCH_POSTGRES_URL:-}${BUILDFLEET_TEST_POSTGRES_URL:-}" ]; then
    BUILDFLEET_BENCH_POSTGRES_URL="$(bash scripts/test-postgres.sh start)"
    export BUILDFLEET_BENCH_POSTGRES_URL
fi
cargo build --release -p buildfleet-backend -p buildfleet-builder -p buildfleet-bench
mkdir -p target/bench
suite="${1:-all}"
shift || true
exec target/release/buildfleet-bench "$suite" --db both --json target/bench/results.json "$@"
