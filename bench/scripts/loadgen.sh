#!/usr/bin/env bash
# One command per load benchmark: builds release binaries, starts a fresh
# one-process suite in a temporary directory, runs `loadgen` against it with
# the suite's pid, prints loadgen's JSON line, and stops the suite.
#
#   bench/scripts/loadgen.sh idle --connections 10000
#   bench/scripts/loadgen.sh fanout --subscribers 1000 --rooms 10 --rate 2000 --via publish
#   bench/scripts/loadgen.sh reconnect --clients 10000 --rooms 100 --missed 20
#   bench/scripts/loadgen.sh ai --streams 1000   (the suite then asks loadgen's model server)
#   bench/scripts/loadgen.sh soak   (19,900 connections in 20 rooms, 2,000 messages/s, 10 minutes)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p parley -p parley-bench

export PARLEY_AUTH_HS256_SECRET="${PARLEY_AUTH_HS256_SECRET:-loadgen-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
export PARLEY_SERVICES_CREDENTIAL="${PARLEY_SERVICES_CREDENTIAL:-loadgen-credential-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
export PARLEY_LOG_LEVEL="${PARLEY_LOG_LEVEL:-warn}"
# Every load client comes from 127.0.0.1 and load is the point: lift the
# per-address, per-user and per-connection limits (docs/security.md).
export PARLEY_EDGE_MAX_CONNS_PER_IP="${PARLEY_EDGE_MAX_CONNS_PER_IP:-1000000}"
export PARLEY_EDGE_MAX_HTTP_CONNS_PER_IP="${PARLEY_EDGE_MAX_HTTP_CONNS_PER_IP:-0}"
export PARLEY_EDGE_MAX_CONNS_PER_USER="${PARLEY_EDGE_MAX_CONNS_PER_USER:-1000000}"
for key in USER_PER_MIN USER_PER_HOUR ANONYMOUS_PER_MIN ANONYMOUS_PER_HOUR IP_MESSAGES_PER_MIN \
    IP_CONNECTS_PER_MIN CONN_COMMANDS_PER_MIN ROOM_CREATE_PER_HOUR ROOM_CREATE_ANONYMOUS_PER_HOUR; do
    var="PARLEY_EDGE_RATE_$key"
    export "$var=${!var:-0}"
done
if [ "${1:-}" = ai ]; then
    export PARLEY_AI_PROVIDER=openai PARLEY_AI_BASE_URL=http://127.0.0.1:18080/v1
fi
work="$(mktemp -d)"
server=""
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

cd "$work"
if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
    echo "something already listens on 127.0.0.1:8080; stop it first" >&2
    exit 1
fi
"$root/target/release/parley" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then break; fi
    sleep 0.1
done
if ! kill -0 "$server" 2>/dev/null; then
    echo "the suite did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
"$root/target/release/loadgen" --edge-pid "$server" "$@"
