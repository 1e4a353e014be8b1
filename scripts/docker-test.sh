#!/usr/bin/env bash
# End-to-end test of the Docker deployment (docker/): builds the images as a user would,
# brings the Compose stack up (PostgreSQL, backend, builders), enrols builders with an
# enrolment token, builds a real crate and verifies its artifact with stock OpenSSH, scales
# the builders, restarts the backend in the middle of a build, and tears everything down.
#
#   bash scripts/docker-test.sh          (needs a Docker engine, docker compose or
#                                         docker-compose, python3, ssh-keygen, sha256sum)
#
# On an engine that reaches no registry, scripts/docker-bases.sh first makes the base images
# the Dockerfiles name. Environment: BF_DOCKER_TEST_PROJECT (Compose project name, default
# bf-ci-PID), BF_DOCKER_TEST_KEEP=1 (leave the stack up for inspection),
# BF_DOCKER_TEST_BACKEND_IMAGE and BF_DOCKER_TEST_BUILDER_IMAGE (test these images, built
# before from docker/*.Dockerfile, instead of building).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

started=$(date +%s)
log() { printf '\n==> [%4ss] %s\n' "$(($(date +%s) - started))" "$*"; }
# Errors go to fd 3 (the script's stderr), which checks run under wait_for do not silence.
exec 3>&2
die() {
    printf 'error: %s\n' "$*" >&3
    exit 1
}

if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' is installed"
fi
for tool in python3 ssh-keygen sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

project=${BF_DOCKER_TEST_PROJECT:-bf-ci-$$}
work=$(mktemp -d /tmp/bf-docker-test.XXXXXX)
admin_token=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
backend_image=buildfleet-backend:$project
builder_image=buildfleet-builder:$project

# A recipe slow enough for the backend to be restarted while it runs; mounted into the
# builders by a test-only override file.
cat >"$work/builder.toml" <<'EOF'
[[recipes]]
name = "slow-echo"
version = "1"
commands = [["sh", "-c", "for i in $(seq 40); do echo tick $i; sleep 1; done; echo done > \"$1/slow.txt\"", "sh", "${BUILDFLEET_OUT}"]]
artifacts = [{ name = "slow.txt", path = "slow.txt" }]
EOF
chmod 0644 "$work/builder.toml"
# The crate is built offline, as an air-gapped builder would: cargo still resolves its
# dev-dependencies (criterion, for itoa), so the builders get this machine's crates.io index
# cache, read-only, in their cargo home (scripts/e2e-crate.sh makes sure it holds them).
crate=$(bash scripts/e2e-crate.sh)
cargo_index=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/index/index.crates.io-*/ 2>/dev/null | head -n 1)
[ -n "$cargo_index" ] || die "no crates.io index cache under ${CARGO_HOME:-$HOME/.cargo}/registry/index"
cat >"$work/compose.test.yaml" <<EOF
services:
  builder:
    environment:
      BUILDFLEET_CONFIG: /etc/buildfleet/builder.toml
    volumes:
      - $work/builder.toml:/etc/buildfleet/builder.toml:ro
      - $cargo_index:/var/tmp/buildfleet-work/cargo-home/registry/index/$(basename "$cargo_index"):ro
EOF

export BUILDFLEET_ADMIN_TOKEN=$admin_token BUILDFLEET_PORT=$port \
    BUILDFLEET_BACKEND_IMAGE=$backend_image BUILDFLEET_BUILDER_IMAGE=$builder_image \
    BUILDFLEET_BUILDER_STOP_GRACE=60s
compose() {
    "${compose_cmd[@]}" -p "$project" -f "$repo/docker/compose.yaml" \
        -f "$work/compose.test.yaml" "$@"
}

finish() {
    local status=$?
    # A check that failed under wait_for exits with its output silenced: undo that here.
    exec 1>&3 2>&3
    if [ "$status" -ne 0 ]; then
        printf '\n==> FAILED (exit %s); Compose logs:\n' "$status" >&2
        compose logs --no-color --tail=150 >&2 || true
    fi
    if [ "${BF_DOCKER_TEST_KEEP:-0}" = 1 ]; then
        echo "leaving project $project up (BF_DOCKER_TEST_KEEP=1); admin token $admin_token, $base" >&2
    else
        compose down -v --remove-orphans >/dev/null 2>&1 || true
        docker rmi "$backend_image" "$builder_image" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    log "finished with status $status"
}
trap finish EXIT

# --- HTTP helpers (python3: no curl or jq needed) ----------------------------------------

# api METHOD PATH [JSON_BODY|@FILE] -> prints the body; fails on a non-2xx status.
api() {
    python3 - "$@" <<'PY'
import sys, urllib.request, urllib.error, os
method, path = sys.argv[1], sys.argv[2]
data = None
headers = {"Authorization": "Bearer " + os.environ["BUILDFLEET_ADMIN_TOKEN"]}
if len(sys.argv) > 3:
    arg = sys.argv[3]
    if arg.startswith("@"):
        data = open(arg[1:], "rb").read()
        headers["Content-Type"] = "application/octet-stream"
    else:
        data = arg.encode()
        headers["Content-Type"] = "application/json"
req = urllib.request.Request(os.environ["BF_BASE"] + path, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        sys.stdout.buffer.write(r.read())
except urllib.error.HTTPError as e:
    sys.stderr.write(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}\n")
    sys.exit(1)
PY
}
export BF_BASE=$base

# json EXPR: evaluates a Python expression over the JSON document on stdin (bound to `d`).
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

# wait_for SECONDS WHAT COMMAND...: retries COMMAND every 2 s until it succeeds.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$(($(date +%s) + timeout))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
        sleep 2
    done
}

healthy() { python3 -c "import urllib.request; urllib.request.urlopen('$base/healthz', timeout=5)"; }
connected_builders() { api GET /api/v1/builders | json 'sum(1 for b in d["builders"] if b["connected"])'; }
builders_connected_eq() { [ "$(connected_builders)" = "$1" ]; }
job_state() { api GET "/api/v1/jobs/$1" | json 'd["state"]'; }
job_in_state() {
    local state
    state=$(job_state "$1")
    case "$state" in
    "$2") return 0 ;;
    failed | cancelled | timed_out)
        api GET "/api/v1/jobs/$1/log" >&3 || true
        die "job $1 ended $state"
        ;;
    *) return 1 ;;
    esac
}

# --- images --------------------------------------------------------------------------------

log "base images (made locally when no registry is reachable)"
for image in debian:bookworm-slim rust:1.95-bookworm rust:1.95-slim-bookworm postgres:15-bookworm; do
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        bash scripts/docker-bases.sh
        break
    fi
done

# Both Dockerfiles share one build stage; the second build reuses its cached layers, so the
# workspace compiles once.
build_image() {
    local dockerfile=$1 image=$2
    log "building $image ($dockerfile)"
    if ! docker build --force-rm -f "$dockerfile" -t "$image" . >"$work/build.log" 2>&1; then
        tail -n 60 "$work/build.log" >&2
        die "docker build -f $dockerfile failed"
    fi
}
if [ -n "${BF_DOCKER_TEST_BACKEND_IMAGE:-}" ] && [ -n "${BF_DOCKER_TEST_BUILDER_IMAGE:-}" ]; then
    # Images built earlier from these Dockerfiles; the test leaves them in place.
    docker tag "$BF_DOCKER_TEST_BACKEND_IMAGE" "$backend_image"
    docker tag "$BF_DOCKER_TEST_BUILDER_IMAGE" "$builder_image"
    log "using $BF_DOCKER_TEST_BACKEND_IMAGE and $BF_DOCKER_TEST_BUILDER_IMAGE"
else
    build_image docker/backend.Dockerfile "$backend_image"
    build_image docker/builder.Dockerfile "$builder_image"
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^buildfleet-(backend|builder):$project " || true

# --- stack ---------------------------------------------------------------------------------

log "starting PostgreSQL and the backend (project $project, port $port)"
compose up -d postgres backend
wait_for 180 "the backend's /healthz" healthy

log "enrolment token, then 2 builders"
token_json=$(api POST /api/v1/enrolment-tokens '{"max_uses": 5, "ttl_secs": 1800, "labels": {"pool": "compose"}}')
export BUILDFLEET_ENROL_TOKEN
BUILDFLEET_ENROL_TOKEN=$(json 'd["token"]' <<<"$token_json")
token_id=$(json 'd["id"]' <<<"$token_json")
compose up -d --scale builder=2 builder
wait_for 180 "2 connected builders" builders_connected_eq 2
api GET /api/v1/enrolment-tokens | json '[(t["id"], t["uses"], t["max_uses"]) for t in d["enrolment_tokens"]]'

log "building the itoa crate on a builder"
source_sha=$(api POST /api/v1/sources "@$crate" | json 'd["sha256"]')
[ "$source_sha" = "$(sha256sum "$crate" | cut -d' ' -f1)" ] || die "the backend stored another digest"
job=$(api POST /api/v1/jobs "{\"source_sha256\": \"$source_sha\", \"recipe\": \"cargo-build\", \"parameters\": {\"offline\": \"true\"}}" | json 'd["id"]')
echo "job $job: $(basename "$crate")"
wait_for 600 "job $job to succeed" job_in_state "$job" succeeded

log "verifying job $job's artifact with ssh-keygen -Y verify and sha256sum"
mkdir -p "$work/job-$job"
cd "$work/job-$job"
api GET "/api/v1/jobs/$job/statement" >statement
api GET "/api/v1/jobs/$job/statement.sig" >statement.sig
api GET /api/v1/allowed_signers >allowed_signers
principal=$(ssh-keygen -Y find-principals -s statement.sig -f allowed_signers)
ssh-keygen -Y verify -f allowed_signers -I "$principal" -n buildfleet-statement \
    -s statement.sig <statement
json '"\n".join(s["digest"]["sha256"] + "  " + s["name"] for s in d["subject"])' <statement >SHA256SUMS
[ -s SHA256SUMS ] || die "the statement lists no artifact"
while read -r _ name; do
    api GET "/api/v1/jobs/$job/artifacts/$name" >"$name"
done <SHA256SUMS
sha256sum -c SHA256SUMS
cd "$repo"

log "scaling builders down to 1 and up to 3"
compose up -d --scale builder=1 builder
wait_for 180 "1 connected builder" builders_connected_eq 1
compose up -d --scale builder=3 builder
wait_for 180 "3 connected builders" builders_connected_eq 3
admitted=$(api GET /api/v1/builders | json 'len(d["builders"])')
# Slots are reused: the builder that was scaled away comes back with its own key.
[ "$admitted" = 3 ] || die "expected 3 admitted builders (slots reused), found $admitted"

log "restarting the backend in the middle of a build"
slow_sha=$(api POST /api/v1/sources "@$crate" | json 'd["sha256"]')
slow=$(api POST /api/v1/jobs "{\"source_sha256\": \"$slow_sha\", \"recipe\": \"slow-echo\"}" | json 'd["id"]')
wait_for 120 "job $slow to run" job_in_state "$slow" running
sleep 5
compose restart backend
wait_for 180 "the backend's /healthz after the restart" healthy
[ "$(job_state "$slow")" = running ] || die "job $slow is $(job_state "$slow") right after the restart"
wait_for 300 "job $slow to succeed after the restart" job_in_state "$slow" succeeded
api GET "/api/v1/jobs/$slow/artifacts/slow.txt" | grep -qx done || die "job $slow's artifact is wrong"
api GET "/api/v1/jobs/$slow/log" | grep -q 'tick 40' || die "job $slow's log lost its end"

log "revoking the enrolment token"
api DELETE "/api/v1/enrolment-tokens/$token_id" | json 'd["revoked_at"] is not None and not d["usable"]' | grep -qx True

log "docker deployment test passed in $(($(date +%s) - started))s"
