"""Entrypoint of docker/s3-server.Dockerfile: an S3-compatible server (moto's server mode) that
creates its buckets at start, so the backends, which never create one, find them.

`s3-server check` (the image's health check) exits 0 once every bucket answers a HEAD.

Environment: S3_PORT (default 9000), S3_BUCKETS (names separated by commas or spaces, default
"buildfleet"), S3_LOG_REQUESTS=1 (log every request). Objects live in this process's memory:
they are gone when the container stops, and the buckets are made again, empty, when it starts.
"""

import logging
import os
import re
import signal
import sys
import threading
import urllib.error
import urllib.request

from moto.server import ThreadedMotoServer


def settings() -> tuple[int, list[str]]:
    port = int(os.environ.get("S3_PORT", "9000"))
    buckets = [b for b in re.split(r"[,\s]+", os.environ.get("S3_BUCKETS", "buildfleet")) if b]
    return port, buckets


def check() -> int:
    port, buckets = settings()
    for bucket in buckets:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except (urllib.error.URLError, OSError) as e:
            print(f"bucket {bucket}: {e}", file=sys.stderr)
            return 1
    return 0


def serve() -> int:
    port, buckets = settings()
    if os.environ.get("S3_LOG_REQUESTS") != "1":
        # A backend stores each log batch as an object: one line per request would drown the
        # container's log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    stop = threading.Event()
    # As PID 1 the process gets no default action for SIGTERM: `docker stop` would wait out
    # its timeout and kill.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    server = ThreadedMotoServer(ip_address="0.0.0.0", port=port, verbose=False)
    server.start()
    for bucket in buckets:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="PUT")
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except urllib.error.HTTPError as e:
            print(f"s3-server: creating bucket {bucket}: HTTP {e.code}: {e.read()!r}", file=sys.stderr)
            return 1
        print(f"s3-server: bucket {bucket} ready", flush=True)
    print(f"s3-server: listening on port {port}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["check"]:
        sys.exit(check())
    if sys.argv[1:]:
        print("usage: s3-server [check]", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve())
