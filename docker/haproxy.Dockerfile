# HAProxy from Debian's package, the load balancer of docker/compose.scale-out.yaml in front of
# the backend replicas (configuration: docker/haproxy.cfg).
#   docker build -f docker/haproxy.Dockerfile -t buildfleet-haproxy .      (from the repo root)
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY docker/haproxy.cfg /etc/haproxy/haproxy.cfg
# The package made the user; port 8000 needs no privilege.
USER haproxy
EXPOSE 8000
# -W: master-worker, so `docker kill -s USR2` reloads the configuration; -db: stay in the
# foreground, logging to stdout.
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
