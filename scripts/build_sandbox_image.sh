#!/usr/bin/env bash
# Build the sandbox image `rapha-sandbox:<tag>` without any image registry.
#
#   scripts/build_sandbox_image.sh [--force] [--fresh] [--tag TAG]
#
# No registry is reachable here, so nothing can be pulled: the root filesystem is made with
# debootstrap (Debian bookworm, minbase, plus the shared libraries that torch/transformers need
# and Debian's python3 3.11), packed with tar and imported with `docker import`.  The image holds
# no Python packages: the sandbox binds the worker's virtual-environment site-packages read-only
# at /opt/rapha/site-packages (same CPython 3.11 ABI) -- see docs/sandbox.md.
#
# Idempotent: when the image already exists it only re-records its id. --force imports the image
# again; the root filesystem tarball is cached as var/sandbox-image/rootfs-<tag>.tar, so that
# (and a rebuild after `docker rmi`) takes seconds; --fresh runs debootstrap again as well.
# The image id is written to var/sandbox-image/<tag>.id and printed on the last line; the docker
# backend resolves the image name to this id once and pins every container to it.
#
# Needs root, a running engine (scripts/start_dockerd.sh), debootstrap (installed with apt-get
# when missing) and a reachable Debian mirror ($RAPHA_DEBIAN_MIRROR, default deb.debian.org).
# Takes about 40 s from scratch here, a few seconds from the cached tarball, ~0.1 s when the
# image exists.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Keep in step with DEFAULT_IMAGE in training/sandbox/docker_backend.py.
TAG="${RAPHA_SANDBOX_IMAGE_TAG:-bookworm-py311-1}"
FORCE=0
FRESH=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1; shift ;;
        --fresh) FORCE=1; FRESH=1; shift ;;
        --tag) TAG="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "build_sandbox_image.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

IMAGE="rapha-sandbox:$TAG"
CACHE="$ROOT/var/sandbox-image"
TARBALL="$CACHE/rootfs-$TAG.tar"
IDFILE="$CACHE/$TAG.id"
MIRROR="${RAPHA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,zlib1g,libgomp1,libstdc++6,python3"

docker_cli() {
    if [ -x /usr/bin/docker ]; then /usr/bin/docker "$@"; else docker "$@"; fi
}

if ! docker_cli info >/dev/null 2>&1; then
    echo "build_sandbox_image.sh: no docker engine answers; run scripts/start_dockerd.sh first" >&2
    exit 1
fi
mkdir -p "$CACHE"

record() {
    local id
    id="$(docker_cli image inspect --format '{{.Id}}' "$IMAGE")"
    echo "$id" >"$IDFILE"
    echo "build_sandbox_image.sh: $IMAGE = $id (recorded in ${IDFILE#$ROOT/})"
    echo "$id"
}

if [ "$FORCE" = 0 ] && docker_cli image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build_sandbox_image.sh: $IMAGE already exists (use --force to rebuild)"
    record
    exit 0
fi

if [ "$FRESH" = 1 ] || [ ! -s "$TARBALL" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "build_sandbox_image.sh: debootstrap needs root" >&2
        exit 1
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        echo "build_sandbox_image.sh: installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null 2>&1 || {
            apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap; } || {
            echo "build_sandbox_image.sh: debootstrap is missing and could not be installed; run: apt-get install -y debootstrap" >&2
            exit 1; }
    fi
    WORK="$(mktemp -d "$CACHE/rootfs-XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    DIR="$WORK/rootfs"
    echo "build_sandbox_image.sh: debootstrap bookworm into $DIR (about a minute)"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$DIR" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        echo "build_sandbox_image.sh: debootstrap failed; last lines:" >&2
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    }
    # Slim down and harden: no package caches, no setuid/setgid binaries, the mount points the
    # sandbox uses, and a world-writable sticky /tmp (a tmpfs is mounted over it at run time).
    rm -rf "$DIR"/var/cache/apt/archives/*.deb "$DIR"/var/lib/apt/lists/* "$DIR"/usr/share/doc/* \
           "$DIR"/usr/share/man/* "$DIR"/usr/share/locale/* "$DIR"/var/log/*
    find "$DIR" -xdev -type f \( -perm -4000 -o -perm -2000 \) -exec chmod ug-s {} +
    mkdir -p "$DIR"/code "$DIR"/data "$DIR"/models "$DIR"/out "$DIR"/job "$DIR"/adapter \
             "$DIR"/opt/rapha/site-packages "$DIR"/opt/rapha/boot
    chmod 1777 "$DIR/tmp"
    chroot "$DIR" /usr/bin/python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
    tar --numeric-owner -C "$DIR" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$WORK"
    trap - EXIT
else
    echo "build_sandbox_image.sh: reusing cached root filesystem ${TARBALL#$ROOT/}"
fi

OLD_ID="$(docker_cli image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
echo "build_sandbox_image.sh: importing $IMAGE"
docker_cli import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'USER 65534:65534' \
    --change 'LABEL rapha.python=3.11 rapha.sandbox.tag='"$TAG" \
    --change 'WORKDIR /tmp' \
    --message "rapha sandbox rootfs (debootstrap bookworm minbase + $PACKAGES)" \
    - "$IMAGE" <"$TARBALL" >/dev/null
if [ -n "$OLD_ID" ]; then
    # The previous build, now untagged; kept only while a container still uses it.
    docker_cli rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
record
