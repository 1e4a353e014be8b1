# The Buildfleet builder (`buildfleet-builder run`), with the Rust toolchain its cargo recipes
# need: it derives from the Rust image (about 0.9 GB on top of Debian) rather than
# debian:bookworm-slim, because the default `process` strategy runs recipes inside this
# container. A builder that only uses the `docker` strategy could run on a slim base.
#   docker build -f docker/builder.Dockerfile -t buildfleet-builder .      (from the repo root)

# Build stage: the same text as in backend.Dockerfile, so building both images compiles the
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

FROM rust:1.95-slim-bookworm
RUN groupadd --system --gid 10001 buildfleet \
    && useradd --system --uid 10001 --gid buildfleet --home-dir /var/lib/buildfleet-builder \
        --shell /usr/sbin/nologin buildfleet \
    && install -d -o buildfleet -g buildfleet -m 0750 \
        /var/lib/buildfleet-builder /var/tmp/buildfleet-work
COPY --from=build /usr/local/bin/buildfleet-builder /usr/local/bin/buildfleet-builder
COPY docker/builder-entrypoint.sh /usr/local/bin/buildfleet-builder-entrypoint
USER buildfleet
# Keys and names of the builders (one slot per replica, see the entrypoint), and job work
# directories. Cargo's own home is per replica too: /usr/local/cargo is read-only for us.
ENV BUILDFLEET_STATE_DIR=/var/lib/buildfleet-builder \
    BUILDFLEET_WORK_ROOT=/var/tmp/buildfleet-work \
    CARGO_HOME=/var/tmp/buildfleet-work/cargo-home
VOLUME ["/var/lib/buildfleet-builder", "/var/tmp/buildfleet-work"]
# The builder has no health endpoint: it is healthy while its process lives (it reconnects to
# the backend by itself; the backend's /api/v1/builders shows whether it is connected).
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["sh", "-c", "kill -0 1"]
ENTRYPOINT ["buildfleet-builder-entrypoint"]
CMD ["run"]
