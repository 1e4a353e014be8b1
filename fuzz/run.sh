#!/usr/bin/env bash
# A long fuzzing run of one target under a coverage-guided engine, on the stable toolchain.
#   bash fuzz/run.sh TARGET [DURATION] [ENGINE]
# TARGET: frame_decoder | archive_bytes | archive_entries | statement
# DURATION: as cargo-bolero takes it (default 10min); ENGINE: libfuzzer (default) or afl.
# The committed seeds are copied into target/fuzz-corpus/TARGET, where the engine adds what
# it finds, so fuzz/ stays clean. Crashing inputs land in fuzz/tests/__fuzz__/TARGET/crashes/,
# which `cargo test -p buildfleet-fuzz` replays first (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:?usage: bash fuzz/run.sh TARGET [DURATION] [ENGINE]}"
duration="${2:-10min}"
engine="${3:-libfuzzer}"
seeds="fuzz/tests/__fuzz__/$target/corpus"
[ -f "fuzz/tests/$target.rs" ] || { echo "no fuzz target $target" >&2; exit 2; }

command -v cargo-bolero >/dev/null || cargo install cargo-bolero --version 0.13.5 --locked

corpus="target/fuzz-corpus/$target"
mkdir -p "$corpus"
if [ -d "$seeds" ]; then cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true; fi

# No sanitizer: `-Zsanitizer` needs nightly. Coverage instrumentation (sancov) is stable.
# The workspace has no `fuzz` profile: release, with debug assertions and overflow checks
# on so that arithmetic bugs panic instead of wrapping.
export RUSTFLAGS="${RUSTFLAGS:-} -Cdebug-assertions=on -Coverflow-checks=on"
exec cargo bolero test "$target" -p buildfleet-fuzz \
    --engine "$engine" --sanitizer NONE --profile release \
    --corpus-dir "$corpus" -T "$duration" --max-input-length 65536
