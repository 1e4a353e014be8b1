#!/usr/bin/env bash
# A throwaway S3-compatible server on loopback for the object-storage tests: moto's server mode
# (from PyPI, in a virtualenv under $BUILDFLEET_S3_VENV, default .cache/s3-server-venv in the
# repository). Every object lives in the server's memory and ends with it.
#
#   scripts/s3-server.sh install   install moto[server] into the virtualenv when missing
#   scripts/s3-server.sh start     start it on a free loopback port; prints the endpoint URL
#   scripts/s3-server.sh stop      stop the server `start` left running
#   scripts/s3-server.sh run PORT  run it in the foreground on PORT (what tests spawn)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${BUILDFLEET_S3_VENV:-$ROOT/.cache/s3-server-venv}"
STATE="${BUILDFLEET_S3_DIR:-/tmp/buildfleet-test-s3}"
MOTO_VERSION="5.1.22"

install() {
    if [ -x "$VENV/bin/moto_server" ]; then
        return
    fi
    echo "installing moto[server] $MOTO_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() {
    local url="$1"
    for _ in $(seq 1 200); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$url/moto-api/" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    echo "error: the S3 server at $url did not answer" >&2
    return 1
}

case "${1:-}" in
    install)
        install
        ;;
    run)
        install
        exec "$VENV/bin/moto_server" -H 127.0.0.1 -p "${2:?usage: s3-server.sh run PORT}"
        ;;
    start)
        install
        mkdir -p "$STATE"
        if [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
            cat "$STATE/url"
            exit 0
        fi
        port="$(free_port)"
        url="http://127.0.0.1:$port"
        "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/log" 2>&1 &
        echo $! >"$STATE/pid"
        echo "$url" >"$STATE/url"
        wait_ready "$url"
        echo "$url"
        ;;
    stop)
        if [ -f "$STATE/pid" ]; then
            kill "$(cat "$STATE/pid")" 2>/dev/null || true
            rm -f "$STATE/pid" "$STATE/url"
        fi
        ;;
    *)
        echo "usage: $0 install|start|stop|run PORT" >&2
        exit 2
        ;;
esac
