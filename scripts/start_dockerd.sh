#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, for the sandbox's docker backend.
#
#   scripts/start_dockerd.sh [--timeout SECONDS]
#
# - installs docker.io with apt-get when dockerd is missing (needs root);
# - starts `dockerd --bridge=none` in the background when `docker info` does not answer
#   (no default bridge: sandboxes use network "none" only, and a bridge would put a
#   private-range network on the machine that nothing here should send traffic to);
# - waits until `docker info` answers, or fails with a clear message.
# Idempotent: with an engine already answering it does nothing and exits 0.
# Log: $RAPHA_DOCKERD_LOG, default var/dockerd.log under the repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TIMEOUT=60
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "start_dockerd.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

LOG="${RAPHA_DOCKERD_LOG:-$ROOT/var/dockerd.log}"

# Prefer the engine's own client (docker.io ships /usr/bin/docker, same API version).
docker_cli() {
    if [ -x /usr/bin/docker ]; then /usr/bin/docker "$@"; else docker "$@"; fi
}

answers() {
    docker_cli info >/dev/null 2>&1
}

if command -v docker >/dev/null 2>&1 || [ -x /usr/bin/docker ]; then
    if answers; then
        echo "start_dockerd.sh: docker engine already answering"
        exit 0
    fi
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "start_dockerd.sh: dockerd is not installed and this is not root; run: sudo apt-get install -y docker.io" >&2
        exit 1
    fi
    echo "start_dockerd.sh: installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y docker.io
fi

if [ "$(id -u)" != 0 ]; then
    echo "start_dockerd.sh: no docker engine answers and starting dockerd needs root" >&2
    exit 1
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    mkdir -p "$(dirname "$LOG")"
    echo "start_dockerd.sh: starting dockerd --bridge=none (log: $LOG)"
    # setsid + nohup: the engine outlives this script and the shell that ran it.
    setsid nohup dockerd --bridge=none >>"$LOG" 2>&1 </dev/null &
else
    echo "start_dockerd.sh: dockerd is running but not answering yet; waiting"
fi

deadline=$(( $(date +%s) + TIMEOUT ))
until answers; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "start_dockerd.sh: docker engine did not answer within ${TIMEOUT}s; last lines of $LOG:" >&2
        tail -n 30 "$LOG" >&2 2>/dev/null || true
        exit 1
    fi
    sleep 0.5
done
echo "start_dockerd.sh: docker engine answering ($(docker_cli version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
