#!/bin/sh
# Entrypoint of the builder image. Replicas of one Compose service share one state volume; each
# takes the first free identity slot in it (slot-N, held by a lock for the life of the
# process), so a builder keeps its key and name across restarts, upgrades and re-scaling, and
# no key is ever copied: the key is generated in the slot on first start and admitted with
# BUILDFLEET_ENROL_TOKEN (`buildfleet-builder run --enrol-token`).
#
# Reads: BUILDFLEET_STATE_DIR (the shared volume), BUILDFLEET_WORK_ROOT (job directories, one
# folder per builder), BUILDFLEET_NAME_PREFIX (default "builder"; names are
# PREFIX-N-RANDOM, fixed on first start). Setting BUILDFLEET_KEY skips the slots: the
# container is then one builder configured by BUILDFLEET_* variables alone.
set -eu

if [ "${1:-}" != run ] || [ -n "${BUILDFLEET_KEY:-}" ]; then
    exec buildfleet-builder "$@"
fi

state=${BUILDFLEET_STATE_DIR:-/var/lib/buildfleet-builder}
i=1
while :; do
    slot=$state/slot-$i
    mkdir -p "$slot"
    exec 9>>"$slot/lock"
    if flock -n 9; then
        break
    fi
    exec 9>&-
    i=$((i + 1))
done

if [ ! -s "$slot/name" ]; then
    suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s\n' "${BUILDFLEET_NAME_PREFIX:-builder}-$i-$suffix" >"$slot/name"
fi
BUILDFLEET_NAME=$(cat "$slot/name")
BUILDFLEET_KEY=$slot/key
BUILDFLEET_WORK_DIR=${BUILDFLEET_WORK_ROOT:-/var/tmp/buildfleet-work}/$BUILDFLEET_NAME
export BUILDFLEET_NAME BUILDFLEET_KEY BUILDFLEET_WORK_DIR
echo "builder slot $slot: name $BUILDFLEET_NAME" >&2
# The lock on fd 9 is inherited and held until the builder exits.
exec buildfleet-builder "$@"
