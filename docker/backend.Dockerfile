# The Buildfleet backend (`buildfleet serve`): API, dashboard and builder sessions.
#   docker build -f docker/backend.Dockerfile -t buildfleet-backend .      (from the repo root)
# Configuration is by BUILDFLEET_* environment variables (see docs/docker.md); state lives in
# /var/lib/buildfleet (SQLite by default, or set BUILDFLEET_DATABASE_URL=postgres://...).

# Build stage: the same text as in builder.Dockerfile, so building both images compiles the
# workspace once (the second build reuses these cached layers). Keep the two in step.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Images ship without line tables (the repository's release profile keeps them for local
# profiling): the binaries are a fraction of the size and compile faster; panics still name
# their functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
COPY . .
RUN cargo build --release --locked -p buildfleet-backend -p buildfleet-builder \
    && cp target/release/buildfleet target/release/buildfleet-builder /usr/local/bin/ \
    && rm -rf target

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 buildfleet \
    && useradd --system --uid 10001 --gid buildfleet --home-dir /var/lib/buildfleet \
        --shell /usr/sbin/nologin buildfleet \
    && install -d -o buildfleet -g buildfleet -m 0750 /var/lib/buildfleet
COPY --from=build /usr/local/bin/buildfleet /usr/local/bin/buildfleet
USER buildfleet
ENV BUILDFLEET_BIND=0.0.0.0:8000 \
    BUILDFLEET_DATA_DIR=/var/lib/buildfleet \
    BUILDFLEET_LOCAL_BUILDERS=0
VOLUME /var/lib/buildfleet
EXPOSE 8000
# bash's /dev/tcp speaks enough HTTP for /healthz: the image needs no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${BUILDFLEET_BIND##*:} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["buildfleet"]
CMD ["serve"]
