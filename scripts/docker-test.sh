#!/usr/bin/env bash
# End-to-end test of the Docker deployment (docker/): builds the images as a user would,
# brings the Compose stack up (PostgreSQL, backend, builders), enrols builders with an
# enrolment token, builds a real crate and verifies its artifact with stock OpenSSH, scales
# the builders, restarts the backend in the middle of a build; then scales out
# (docker/compose.scale-out.yaml: 3 backend replicas behind HAProxy, the S3 server), kills the
# replica a builder is connected to in the middle of a build and checks that the build
# finishes whole; and tears everything down.
#
#   bash scripts/docker-test.sh          (needs a Docker engine, docker compose or
#                                         docker-compose, python3, ssh-keygen, sha256sum)
#
# On an engine that reaches no registry, scripts/docker-bases.sh first makes the base images
# the Dockerfiles name. Environment: BF_DOCKER_TEST_PROJECT (Compose project name, default
# bf-ci-PID; the scale-out stack is PROJECT-scale), BF_DOCKER_TEST_KEEP=1 (leave the stacks up
# for inspection),
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
scale_project=$project-scale
# The scale-out stack's small images are kept between runs under a fixed tag, so the next
# run's build is a cache hit (a changed Dockerfile rebuilds them).
s3_image=buildfleet-s3-server:docker-test
lb_image=buildfleet-haproxy:docker-test

# A recipe slow enough for the backend to be restarted while it runs; mounted into the
# builders by a test-only override file.
cat >"$work/builder.toml" <<'EOF'
[[recipes]]
name = "slow-echo"
version = "1"
commands = [["sh", "-c", "for i in $(seq 40); do echo tick $i; sleep 1; done; echo done > \"$1/slow.txt\"", "sh", "${BUILDFLEET_OUT}"]]
artifacts = [{ name = "slow.txt", path = "slow.txt" }]

# For the scale-out phase: numbered log lines, to be stored exactly once whatever happens to
# the replica a builder streams them to, and an artifact of several MiB (a multipart upload to
# the bucket through the load balancer) whose digest the test knows.
[[recipes]]
name = "numbered"
version = "1"
commands = [["sh", "-c", "for i in $(seq 40); do echo line $i; sleep 0.5; done; seq 1500000 > \"$1/numbers.txt\"", "sh", "${BUILDFLEET_OUT}"]]
artifacts = [{ name = "numbers.txt", path = "numbers.txt" }]
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

# The scale-out stack's replicas also publish their port, each on a random loopback port, so
# the test can ask every replica which builders are connected to it.
cat >"$work/compose.scale-test.yaml" <<'EOF'
services:
  backend:
    ports:
      - "127.0.0.1::8000"
EOF

export BUILDFLEET_ADMIN_TOKEN=$admin_token BUILDFLEET_PORT=$port \
    BUILDFLEET_BACKEND_IMAGE=$backend_image BUILDFLEET_BUILDER_IMAGE=$builder_image \
    BUILDFLEET_S3_IMAGE=$s3_image BUILDFLEET_LB_IMAGE=$lb_image \
    BUILDFLEET_BUILDER_STOP_GRACE=60s
compose() {
    "${compose_cmd[@]}" -p "$project" -f "$repo/docker/compose.yaml" \
        -f "$work/compose.test.yaml" "$@"
}
compose_scale() {
    "${compose_cmd[@]}" -p "$scale_project" -f "$repo/docker/compose.scale-out.yaml" \
        -f "$work/compose.test.yaml" -f "$work/compose.scale-test.yaml" "$@"
}
# The stack whose logs a failure prints.
active_stack=compose

finish() {
    local status=$?
    # A check that failed under wait_for exits with its output silenced: undo that here.
    exec 1>&3 2>&3
    if [ "$status" -ne 0 ]; then
        printf '\n==> FAILED (exit %s); Compose logs:\n' "$status" >&2
        "$active_stack" logs --no-color --tail=150 >&2 || true
    fi
    if [ "${BF_DOCKER_TEST_KEEP:-0}" = 1 ]; then
        echo "leaving projects $project and $scale_project up (BF_DOCKER_TEST_KEEP=1); admin token $admin_token, $base" >&2
    else
        compose down -v --remove-orphans >/dev/null 2>&1 || true
        compose_scale down -v --remove-orphans >/dev/null 2>&1 || true
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
bases_needed=
for image in debian:bookworm-slim rust:1.95-bookworm rust:1.95-slim-bookworm postgres:15-bookworm; do
    docker image inspect "$image" >/dev/null 2>&1 || bases_needed=1
done
# A Debian image made here (no repository digest) may predate what the script now puts in it:
# the script checks it.
[ "$(docker image inspect -f '{{len .RepoDigests}}' debian:bookworm-slim 2>/dev/null)" = 0 ] && bases_needed=1
if [ -n "$bases_needed" ]; then
    bash scripts/docker-bases.sh
fi

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
build_image docker/s3-server.Dockerfile "$s3_image"
build_image docker/haproxy.Dockerfile "$lb_image"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
    grep -E "^buildfleet-((backend|builder):$project|(s3-server|haproxy):docker-test) " || true

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

# --- scale-out: replicas behind HAProxy, objects in the S3 server --------------------------

scale_started=$(date +%s)
log "scale-out: the managed-services override renders (a config check: nothing managed here)"
managed_config() {
    "${compose_cmd[@]}" -p "$scale_project" -f "$repo/docker/compose.scale-out.yaml" \
        -f "$repo/docker/compose.scale-out.managed.yaml" config
}
printf '[storage]\nkind = "s3"\nbucket = "managed"\nregion = "eu-west-1"\n' >"$work/storage.toml"
rendered=$(BUILDFLEET_DATABASE_URL=postgres://bf:secret@db.invalid:5432/bf \
    BUILDFLEET_STORAGE_CONFIG=$work/storage.toml AWS_ACCESS_KEY_ID=AKIDTEST managed_config)
for expected in "BUILDFLEET_DATABASE_URL: postgres://bf:secret@db.invalid:5432/bf" \
    "AWS_ACCESS_KEY_ID: AKIDTEST" "- $work/storage.toml:/etc/buildfleet/buildfleet.toml:ro"; do
    grep -qF -- "$expected" <<<"$rendered" || die "the managed override does not render '$expected'"
done
if (unset BUILDFLEET_DATABASE_URL && BUILDFLEET_STORAGE_CONFIG=$work/storage.toml managed_config) \
    >/dev/null 2>"$work/managed.err"; then
    die "the managed override renders without BUILDFLEET_DATABASE_URL"
fi
grep -q 'set BUILDFLEET_DATABASE_URL' "$work/managed.err" ||
    die "the managed override fails without naming BUILDFLEET_DATABASE_URL: $(cat "$work/managed.err")"

log "scale-out: single-backend stack down; PostgreSQL, the S3 server, 3 backends, HAProxy up"
compose down -v --remove-orphans >/dev/null 2>&1
active_stack=compose_scale
compose_scale up -d --scale backend=3 lb
wait_for 180 "/healthz through HAProxy" healthy
mapfile -t replicas < <(compose_scale ps -q backend)
[ "${#replicas[@]}" = 3 ] || die "expected 3 backend replicas, found ${#replicas[@]}"
replica_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; }
for replica in "${replicas[@]}"; do
    wait_for 120 "replica ${replica:0:12} to be healthy" replica_healthy "$replica"
done

# replica_api CONTAINER METHOD PATH [BODY]: `api` sent to one replica (its loopback port).
replica_api() {
    local container=$1
    shift
    BF_BASE=http://$(docker port "$container" 8000 | head -n 1) api "$@"
}
# A replica lists as connected only the builders whose session it holds.
replica_holds() {
    replica_api "$1" GET /api/v1/builders |
        json "any(b['id'] == $2 and b['connected'] for b in d['builders'])" | grep -qx True
}
connected_on_replicas() {
    local replica n=0
    for replica in "$@"; do
        n=$((n + $(replica_api "$replica" GET /api/v1/builders | json 'sum(1 for b in d["builders"] if b["connected"])')))
    done
    echo "$n"
}
connected_on_replicas_eq() {
    local want=$1
    shift
    [ "$(connected_on_replicas "$@")" = "$want" ]
}
# log_lines JOB: the text of each line of the job's log (JSON lines, one record each).
log_lines() {
    api GET "/api/v1/jobs/$1/log" |
        python3 -c 'import json, sys; [print(json.loads(l).get("line", "")) for l in sys.stdin if l.strip()]'
}
log_has_line() { log_lines "$1" | grep -qx "$2"; }

log "scale-out: 2 builders dialling HAProxy"
token_json=$(api POST /api/v1/enrolment-tokens '{"max_uses": 2, "ttl_secs": 1800}')
BUILDFLEET_ENROL_TOKEN=$(json 'd["token"]' <<<"$token_json")
compose_scale up -d --no-deps --scale builder=2 builder
wait_for 180 "2 builders connected to the replicas" connected_on_replicas_eq 2 "${replicas[@]}"

log "scale-out: a build through HAProxy; the replica holding its builder is killed mid-build"
numbered_sha=$(api POST /api/v1/sources "@$crate" | json 'd["sha256"]')
# Uploaded through one replica into the bucket: every replica serves it.
for replica in "${replicas[@]}"; do
    replica_api "$replica" GET "/api/v1/sources/$numbered_sha" | sha256sum | grep -q "^$numbered_sha " ||
        die "replica ${replica:0:12} does not serve the source uploaded through HAProxy"
done
numbered=$(api POST /api/v1/jobs "{\"source_sha256\": \"$numbered_sha\", \"recipe\": \"numbered\"}" | json 'd["id"]')
wait_for 120 "job $numbered to log line 5" log_has_line "$numbered" "line 5"
holder=$(api GET "/api/v1/jobs/$numbered" | json 'd["builder_id"]')
victim=
for replica in "${replicas[@]}"; do
    if replica_holds "$replica" "$holder"; then victim=$replica; fi
done
[ -n "$victim" ] || die "no replica says it holds builder $holder of job $numbered"
stored=$(log_lines "$numbered" | grep -c '^line ')
# Killed after the build ended, the replica would test nothing: on a machine this slow the
# recipe needs more lines.
[ "$(job_state "$numbered")" = running ] && [ "$stored" -lt 40 ] ||
    die "job $numbered got to line $stored of 40 ($(job_state "$numbered")) before its replica could be killed"
docker kill "$victim" >/dev/null
echo "killed replica ${victim:0:12}, holding builder $holder, with line 1 to line $stored of 40 stored"
survivors=()
for replica in "${replicas[@]}"; do
    [ "$replica" = "$victim" ] || survivors+=("$replica")
done
wait_for 300 "job $numbered to succeed after its replica died" job_in_state "$numbered" succeeded
wait_for 120 "both builders connected to the 2 surviving replicas" \
    connected_on_replicas_eq 2 "${survivors[@]}"
for replica in "${survivors[@]}"; do
    if replica_holds "$replica" "$holder"; then echo "builder $holder is now on replica ${replica:0:12}"; fi
done

log "scale-out: job $numbered's log (line 1..40 exactly once) and artifact (through HAProxy)"
attempt=$(api GET "/api/v1/jobs/$numbered" | json 'd["attempt"]')
[ "$attempt" = 1 ] || die "job $numbered ran $attempt attempts: its builder did not resume on another replica"
api GET "/api/v1/jobs/$numbered/log" >"$work/numbered.jsonl"
python3 - "$work/numbered.jsonl" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
seqs = [r["seq"] for r in records]
if any(b <= a for a, b in zip(seqs, seqs[1:])):
    sys.exit(f"the log's sequence numbers repeat or go back: {seqs}")
numbered = [r["line"] for r in records if r.get("line", "").startswith("line ")]
if numbered != [f"line {i}" for i in range(1, 41)]:
    sys.exit(f"the log's numbered lines are {numbered}, not line 1 to line 40 once each")
print(f"{len(records)} log records, line 1 to line 40 once each")
PY
expected_sha=$(seq 1500000 | sha256sum | cut -d' ' -f1)
[ "$(api GET "/api/v1/jobs/$numbered/artifacts/numbers.txt" | sha256sum | cut -d' ' -f1)" = "$expected_sha" ] ||
    die "job $numbered's artifact downloaded through HAProxy has another SHA-256"
[ "$(api GET "/api/v1/jobs/$numbered/statement" | json '[s["digest"]["sha256"] for s in d["subject"] if s["name"] == "numbers.txt"]')" = "['$expected_sha']" ] ||
    die "job $numbered's statement names another digest for numbers.txt"
echo "numbers.txt: sha256 $expected_sha"
log "scale-out phase passed in $(($(date +%s) - scale_started))s"

log "docker deployment test passed in $(($(date +%s) - started))s"
