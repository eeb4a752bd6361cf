#!/usr/bin/env bash
# Builds Parley's image on a machine with no reachable registry and runs it:
#   1. starts dockerd if none runs (no bridge, no iptables: --network host);
#   2. makes the runtime base `debian:bookworm-slim` with debootstrap and
#      `docker import` unless it exists;
#   3. builds the release binaries and the image from them (BINARIES=prebuilt);
#   4. runs the one-process suite from the image (read-only root filesystem)
#      and checks /readyz and one WebSocket chat exchange;
#   5. runs the split topology from the image: one container per component
#      (--network host, each on its own loopback port, secrets mounted as
#      files, a Redis bus), checks every service with the standard gRPC
#      health check and one WebSocket exchange through the containerised
#      edge.
# Needs: dockerd and debootstrap (Debian's docker.io and debootstrap), curl,
# python3 (venv), redis-server, and network access to deb.debian.org and
# PyPI (grpcio, for the health checks) on first use.
# Usage: deploy/test/image.sh [TAG]   (default parley:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag="${1:-parley:dev}"
target="${CARGO_TARGET_DIR:-target}"
GRPCIO_HEALTH_VERSION=1.85.1
# Debian's 20.10 client has BuildKit built in; newer clients need buildx.
docker="$(command -v /usr/bin/docker || command -v docker)"
export DOCKER_BUILDKIT=1
work="$(mktemp -d)"
containers=()
redis_pid=""
cleanup() {
    for c in "${containers[@]}"; do
        "$docker" rm -f "$c" >/dev/null 2>&1 || true
    done
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits for http://127.0.0.1:PORT/readyz; on failure prints the logs of the
# containers named after it and fails.
wait_ready() {
    local port="$1"
    shift
    for _ in $(seq 60); do
        curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! curl -fsS "http://127.0.0.1:$port/readyz"; then
        for c in "$@"; do
            echo "--- logs of $c"
            "$docker" logs "$c" 2>&1 | tail -n 50
        done
        exit 1
    fi
    echo
}

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
# shellcheck disable=SC2046
nice -n 10 cargo build --release --locked --workspace $(printf -- '--bin %s ' "${bins[@]}")
mkdir -p "$work/context/bin"
for bin in "${bins[@]}"; do
    ln "$target/release/$bin" "$work/context/bin/$bin" 2>/dev/null \
        || cp "$target/release/$bin" "$work/context/bin/$bin"
done

echo "== image $tag"
"$docker" build --network host -f deploy/Dockerfile --build-arg BINARIES=prebuilt \
    --build-arg REVISION="$(git rev-parse --short HEAD)" -t "$tag" "$work/context"

echo "== one-process suite from the image"
port="$(free_port)"
container="$("$docker" run -d --network host --read-only \
    --tmpfs /tmp --tmpfs /var/lib/parley:uid=10001,gid=10001 \
    -e PARLEY_EDGE_LISTEN="127.0.0.1:$port" \
    -e PARLEY_AUTH_LISTEN=127.0.0.1:0 -e PARLEY_CHAT_LISTEN=127.0.0.1:0 \
    -e PARLEY_AI_LISTEN=127.0.0.1:0 -e PARLEY_PRESENCE_LISTEN=127.0.0.1:0 \
    "$tag" parley)"
containers+=("$container")
wait_ready "$port" "$container"
python3 deploy/test/ws_exchange.py 127.0.0.1 "$port"
"$docker" rm -f "$container" >/dev/null

echo "== split topology from the image"
# The gRPC health checks use grpcio, in a virtualenv of their own.
venv="${PARLEY_IMAGE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/parley-image-venv}"
pins="grpcio-health-checking==$GRPCIO_HEALTH_VERSION"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
    echo "installing $pins into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "$pins"
    echo "$pins" > "$venv/.pins"
fi
# A Redis of this test's own for the bus (not in the image: a backend).
redis_port="$(free_port)"
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
# The secrets as files, as the Kubernetes manifests mount them.
secrets="$work/secrets"
mkdir -p "$secrets"
openssl rand -hex 32 > "$secrets/services-credential"
openssl rand -hex 32 > "$secrets/bus-signing-key"
openssl rand -hex 32 > "$secrets/auth-hs256-secret"
echo "redis://127.0.0.1:$redis_port" > "$secrets/redis-url"
chown -R 10001:10001 "$secrets"
chmod 0500 "$secrets"
chmod 0400 "$secrets"/*
edge_port="$(free_port)"
declare -A grpc_port
for service in auth chat ai presence; do
    grpc_port[$service]="$(free_port)"
done
common_env=(
    -e PARLEY_SERVICES_CREDENTIAL_FILE=/run/secrets/parley/services-credential
    -e PARLEY_BUS_BACKEND=redis
    -e PARLEY_BUS_REDIS_URL_FILE=/run/secrets/parley/redis-url
    -e PARLEY_BUS_SIGNING_KEY_FILE=/run/secrets/parley/bus-signing-key
    -e PARLEY_SERVICES_AUTH_URL="http://127.0.0.1:${grpc_port[auth]}"
    -e PARLEY_SERVICES_CHAT_URL="http://127.0.0.1:${grpc_port[chat]}"
    -e PARLEY_SERVICES_AI_URL="http://127.0.0.1:${grpc_port[ai]}"
    -e PARLEY_SERVICES_PRESENCE_URL="http://127.0.0.1:${grpc_port[presence]}"
    -e PARLEY_EDGE_LISTEN="127.0.0.1:$edge_port"
    # ws_exchange.py signs in with the development login (the edge listens
    # on loopback, which is what it requires).
    -e PARLEY_AUTH_DEV_LOGIN=true
    -e PARLEY_AUTH_HS256_SECRET_FILE=/run/secrets/parley/auth-hs256-secret
)
split=()
for service in auth chat ai presence edge; do
    upper="${service^^}"
    env=("${common_env[@]}")
    if [ "$service" != edge ]; then
        env+=(-e "PARLEY_${upper}_LISTEN=127.0.0.1:${grpc_port[$service]}"
              -e "PARLEY_${upper}_METRICS_LISTEN=127.0.0.1:0")
    fi
    container="$("$docker" run -d --network host --read-only \
        --tmpfs /tmp --tmpfs /var/lib/parley:uid=10001,gid=10001 \
        -v "$secrets:/run/secrets/parley:ro" "${env[@]}" \
        --name "parley-image-test-$service-$$" "$tag" "parley-$service")"
    containers+=("$container")
    split+=("$container")
done
addresses=()
for service in auth chat ai presence; do
    addresses+=("$service=127.0.0.1:${grpc_port[$service]}")
done
if ! "$venv/bin/python" deploy/test/grpc_health_check.py "${addresses[@]}"; then
    for c in "${split[@]}"; do
        echo "--- logs of $c"
        "$docker" logs "$c" 2>&1 | tail -n 50
    done
    exit 1
fi
wait_ready "$edge_port" "${split[@]}"
python3 deploy/test/ws_exchange.py 127.0.0.1 "$edge_port"
echo "image $tag ok"
