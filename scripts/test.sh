#!/usr/bin/env bash
# The test command. PostgreSQL tests run when BUILDFLEET_TEST_POSTGRES_URL is set and say
# they were skipped otherwise; `bash scripts/test-postgres.sh start` prints a URL to use.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --no-fail-fast
