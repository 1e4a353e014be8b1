#!/usr/bin/env bash
# The test command. PostgreSQL tests run when BUILDFLEET_TEST_POSTGRES_URL is set and say
# they were skipped otherwise; `bash scripts/test-postgres.sh start` prints a URL to use.
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests build a real crate offline: have what that needs in cargo's cache.
bash scripts/e2e-crate.sh >/dev/null
cargo test --workspace --all-targets --no-fail-fast
