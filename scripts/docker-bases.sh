#!/usr/bin/env bash
# Makes, on this machine, the base images that docker/*.Dockerfile and docker/compose.yaml
# name, for a Docker engine that reaches no registry (CI here: `docker images` starts empty and
# nothing can be pulled). The Dockerfiles stay as a user would use them; only their bases come
# from here instead of Docker Hub:
#
#   debian:bookworm-slim     a Debian bookworm root filesystem made with debootstrap (minbase),
#                            carrying this machine's extra CAs for images that install
#                            ca-certificates
#   rust:1.95-bookworm       that filesystem + gcc, libc6-dev, make, perl, pkg-config and this
#   rust:1.95-slim-bookworm  machine's own Rust toolchain, laid out like the official image
#                            (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo),
#                            trusting the extra CAs of this machine's trust store
#   postgres:15-bookworm     that filesystem + Debian's postgresql-15 and a small entrypoint
#                            honouring the official image's POSTGRES_* variables and PGDATA
#
# An image that already exists is kept (delete it to rebuild it). Needs root (debootstrap,
# chroot) and Debian's package mirror; installs debootstrap when it is missing.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), RUST_TOOLCHAIN_DIR (default
# the toolchain rustup resolves in this repository, i.e. rust-toolchain.toml's channel).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.95-bookworm
RUST_SLIM_IMAGE=rust:1.95-slim-bookworm
POSTGRES_IMAGE=postgres:15-bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

log() { printf '==> %s\n' "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

work=$(mktemp -d /var/tmp/buildfleet-bases.XXXXXX)
mounted=()
cleanup() {
    local m
    for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# Unpacks $DEBIAN_IMAGE into a fresh directory, so every derived image starts from the same
# filesystem as the image users get from `FROM debian:bookworm-slim`.
rootfs_from_debian_image() {
    local dir=$1 container
    mkdir -p "$dir"
    container=$(docker create "$DEBIAN_IMAGE" /bin/true)
    docker export "$container" | tar -C "$dir" -x
    docker rm "$container" >/dev/null
}

# Runs apt-get inside a root filesystem; services are never started (policy-rc.d).
chroot_apt_install() {
    local dir=$1
    shift
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod +x "$dir/usr/sbin/policy-rc.d"
    mount -t proc proc "$dir/proc" && mounted+=("$dir/proc")
    if ! {
        chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            chroot "$dir" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends "$@"
    } >"$work/apt.log" 2>&1; then
        tail -30 "$work/apt.log" >&2
        return 1
    fi
    chroot "$dir" apt-get clean
    umount "$dir/proc"
    unset 'mounted[-1]'
    rm -f "$dir/usr/sbin/policy-rc.d"
    rm -rf "$dir"/var/lib/apt/lists/* "$dir/etc/resolv.conf"
    : >"$dir/etc/resolv.conf"
}

copy_extra_cas() {
    local dir=$1
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        mkdir -p "$dir/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    fi
}

import_rootfs() {
    local dir=$1 image=$2
    shift 2
    tar -C "$dir" --numeric-owner -c . | docker import "$@" - "$image" >/dev/null
    log "created $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
}

make_debian() {
    command -v debootstrap >/dev/null || {
        log "installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 debootstrap >/dev/null
    }
    local dir=$work/debian
    log "debootstrap $SUITE (minbase) from $MIRROR"
    debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
        tail -30 "$work/debootstrap.log" >&2
        return 1
    }
    cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    # What the official slim image leaves out: documentation, manuals, package lists.
    rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
        "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/log/*.log
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
    # Certificate authorities this machine added to its own trust store (a TLS-inspecting
    # egress proxy in CI, say), laid where Debian's ca-certificates package looks: inert in
    # this image, trusted by any image derived from it that installs ca-certificates (pip in
    # docker/s3-server.Dockerfile fetches through that proxy).
    copy_extra_cas "$dir"
    : >"$dir/etc/resolv.conf"
    import_rootfs "$dir" "$DEBIAN_IMAGE" --change 'CMD ["bash"]'
}

make_rust() {
    local toolchain=${RUST_TOOLCHAIN_DIR:-$(dirname "$(dirname "$(rustup which rustc)")")}
    toolchain=$(readlink -f "$toolchain")
    local version
    version=$("$toolchain/bin/rustc" --version | awk '{print $2}')
    local dir=$work/rust
    log "rust image from $toolchain (rustc $version)"
    rootfs_from_debian_image "$dir"
    chroot_apt_install "$dir" ca-certificates gcc libc6-dev make perl pkg-config
    # Certificate authorities this machine added to its own trust store (a TLS-inspecting
    # egress proxy in CI, say) are trusted in the build stage too, or cargo cannot fetch.
    copy_extra_cas "$dir"
    chroot "$dir" update-ca-certificates >/dev/null 2>&1
    local dest=$dir/usr/local/rustup/toolchains/$version-x86_64-unknown-linux-gnu
    mkdir -p "$dest" "$dir/usr/local/cargo/bin"
    # The toolchain without its HTML docs (most of its size).
    tar -C "$toolchain" --exclude=./share/doc -c . | tar -C "$dest" -x
    local bin
    for bin in "$dest"/bin/*; do
        ln -s "../../rustup/toolchains/$version-x86_64-unknown-linux-gnu/bin/$(basename "$bin")" \
            "$dir/usr/local/cargo/bin/$(basename "$bin")"
    done
    chmod -R a+rX "$dir/usr/local/rustup" "$dir/usr/local/cargo"
    import_rootfs "$dir" "$RUST_IMAGE" \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV RUST_VERSION=$version" \
        --change 'CMD ["bash"]'
}

make_postgres() {
    local dir=$work/postgres
    log "postgres image from Debian's postgresql-15"
    rootfs_from_debian_image "$dir"
    chroot_apt_install "$dir" postgresql-15
    # Debian's package made a cluster under /var/lib/postgresql/15/main; the entrypoint makes
    # its own in $PGDATA, as the official image does.
    rm -rf "$dir/var/lib/postgresql/15" "$dir/etc/postgresql/15"
    install -d -o "$(stat -c %u "$dir/var/lib/postgresql")" -g "$(stat -c %g "$dir/var/lib/postgresql")" \
        "$dir/var/lib/postgresql/data" "$dir/var/run/postgresql"
    install -m 0755 docker/bases/postgres-entrypoint.sh "$dir/usr/local/bin/docker-entrypoint.sh"
    import_rootfs "$dir" "$POSTGRES_IMAGE" \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'VOLUME /var/lib/postgresql/data' \
        --change 'EXPOSE 5432' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]'
}

# A Debian image made here by an earlier version of this script, without the extra CAs, is
# made again (images derived from it could not fetch through the machine's proxy). An image
# pulled from a registry (it has a repository digest) is never replaced.
debian_lacks_extra_cas() {
    compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null || return 1
    [ "$(docker image inspect -f '{{len .RepoDigests}}' "$DEBIAN_IMAGE")" = 0 ] || return 1
    local present crt
    present=$(docker run --rm --network none --entrypoint ls "$DEBIAN_IMAGE" \
        /usr/local/share/ca-certificates 2>/dev/null || true)
    for crt in /usr/local/share/ca-certificates/*.crt; do
        grep -qxF "$(basename "$crt")" <<<"$present" || return 0
    done
    return 1
}

if ! have_image "$DEBIAN_IMAGE"; then
    make_debian
elif debian_lacks_extra_cas; then
    log "$DEBIAN_IMAGE was made without this machine's extra CAs: making it again"
    make_debian
else
    log "$DEBIAN_IMAGE exists"
fi
if have_image "$RUST_IMAGE"; then log "$RUST_IMAGE exists"; else make_rust; fi
if ! have_image "$RUST_SLIM_IMAGE"; then
    # One local image stands in for both: the slim one is a subset of what it holds.
    docker tag "$RUST_IMAGE" "$RUST_SLIM_IMAGE"
    log "tagged $RUST_IMAGE as $RUST_SLIM_IMAGE"
fi
if have_image "$POSTGRES_IMAGE"; then log "$POSTGRES_IMAGE exists"; else make_postgres; fi
