#!/usr/bin/env bash
# Builds Parley's image on a machine with no reachable registry and runs it:
#   1. starts dockerd if none runs (no bridge, no iptables: --network host);
#   2. makes the runtime base `debian:bookworm-slim` with debootstrap and
#      `docker import` unless it exists;
#   3. builds the release binaries and the image from them (BINARIES=prebuilt);
#   4. runs the one-process suite from the image (read-only root filesystem)
#      and checks /readyz and one WebSocket chat exchange.
# Usage: deploy/test/image.sh [TAG]   (default parley:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag="${1:-parley:dev}"
target="${CARGO_TARGET_DIR:-target}"
# Debian's 20.10 client has BuildKit built in; newer clients need buildx.
docker="$(command -v /usr/bin/docker || command -v docker)"
export DOCKER_BUILDKIT=1
work="$(mktemp -d)"
container=""
cleanup() {
    [ -n "$container" ] && "$docker" rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== docker daemon"
if ! "$docker" info >/dev/null 2>&1; then
    dockerd --bridge=none --iptables=false >/tmp/parley-dockerd.log 2>&1 &
    for _ in $(seq 60); do "$docker" info >/dev/null 2>&1 && break; sleep 1; done
    "$docker" info >/dev/null
fi

echo "== runtime base"
if ! "$docker" image inspect debian:bookworm-slim >/dev/null 2>&1; then
    rootfs="$work/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$docker" import - debian:bookworm-slim
    rm -rf "$rootfs"
fi

echo "== release binaries"
bins=(parley parley-edge parley-auth parley-chat parley-ai parley-presence)
cargo build --release --locked $(printf -- '--bin %s ' "${bins[@]}")
mkdir -p "$work/context/bin"
for bin in "${bins[@]}"; do
    ln "$target/release/$bin" "$work/context/bin/$bin" 2>/dev/null \
        || cp "$target/release/$bin" "$work/context/bin/$bin"
done

echo "== image $tag"
"$docker" build --network host -f deploy/Dockerfile --build-arg BINARIES=prebuilt \
    --build-arg REVISION="$(git rev-parse --short HEAD)" -t "$tag" "$work/context"

echo "== one-process suite from the image"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
container="$("$docker" run -d --network host --read-only \
    --tmpfs /tmp --tmpfs /var/lib/parley:uid=10001,gid=10001 \
    -e PARLEY_EDGE_LISTEN="127.0.0.1:$port" \
    -e PARLEY_AUTH_LISTEN=127.0.0.1:0 -e PARLEY_CHAT_LISTEN=127.0.0.1:0 \
    -e PARLEY_AI_LISTEN=127.0.0.1:0 -e PARLEY_PRESENCE_LISTEN=127.0.0.1:0 \
    "$tag" parley)"
for _ in $(seq 60); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.5
done
if ! curl -fsS "http://127.0.0.1:$port/readyz"; then
    "$docker" logs "$container"
    exit 1
fi
echo
python3 deploy/test/ws_exchange.py 127.0.0.1 "$port"
echo "image $tag ok"
