#!/usr/bin/env bash
# Prints the path of the real crate the end-to-end tests build (the newest itoa-1.*.crate in
# the cargo registry cache) after making sure it can be built offline there: cargo resolves a
# crate's dev-dependencies (criterion, for itoa) from the local index even with --offline, as
# an air-gapped builder's warm cache would have them. Fetches once; later runs need no network.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo_home=${CARGO_HOME:-$HOME/.cargo}

find_crate() { ls "$cargo_home"/registry/cache/*/itoa-1.*.crate 2>/dev/null | sort -V | tail -n 1; }
crate=$(find_crate || true)
if [ -z "$crate" ]; then
    # The workspace depends on itoa (through serde_json): fetching it brings the archive.
    cargo fetch --locked --quiet >&2
    crate=$(find_crate || true)
fi
[ -n "$crate" ] || { echo "error: no itoa-1.*.crate under $cargo_home/registry/cache" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
manifest=$(ls "$work"/itoa-*/Cargo.toml)
if ! cargo fetch --offline --quiet --manifest-path "$manifest" >/dev/null 2>&1; then
    echo "fetching the index entries and archives $(basename "$crate") needs offline" >&2
    cargo fetch --quiet --manifest-path "$manifest" >&2
fi
echo "$crate"
