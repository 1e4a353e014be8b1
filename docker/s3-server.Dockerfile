# An S3-compatible server for docker/compose.scale-out.yaml: moto's server mode (the one the
# object-storage tests run, scripts/s3-server.sh), creating its buckets at start.
#   docker build -f docker/s3-server.Dockerfile -t buildfleet-s3-server .      (from the repo root)
#
# It keeps every object in memory and loses them when it stops: it stands in for a real object
# store (AWS S3, MinIO, Garage, Ceph RGW) to try replicas out and to test them, not for
# production (docs/docker.md, "Scaling out").
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# moto with only its S3 backend and the web server (the `server` extra would add every AWS
# service's dependencies, 2.5 times the size). The same moto as scripts/s3-server.sh.
RUN python3 -m venv /opt/moto \
    && /opt/moto/bin/pip install --no-cache-dir --disable-pip-version-check \
        "moto[s3]==5.1.22" "flask==3.1.3" "flask-cors==6.0.5"
COPY docker/s3-server.py /usr/local/bin/s3-server
USER nobody
ENV S3_PORT=9000 \
    S3_BUCKETS=buildfleet
EXPOSE 9000
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/moto/bin/python", "/usr/local/bin/s3-server", "check"]
ENTRYPOINT ["/opt/moto/bin/python", "/usr/local/bin/s3-server"]
