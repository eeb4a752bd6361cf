#!/usr/bin/env bash
# Runs the example consumers against a real one-process `parley`: the Watch
# consumer (watch.py) and the webhook receiver (webhook_receiver.py), with
# post.py writing into a room. Checks that the consumer saw the message
# once, resumed across a restart of parley without loss or duplicate, and
# that the receiver verified a signed room event and an offline user's
# mention. Needs python3 with grpcio and grpcio-tools (PYTHON=...), and a
# built parley (PARLEY_BIN, default target/debug/parley).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
BIN="${PARLEY_BIN:-${CARGO_TARGET_DIR:-target}/debug/parley}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

read -r EDGE AUTH CHAT AI PRESENCE HOOK < <("$PY" - <<'PY'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
export PARLEY_SERVICES_CREDENTIAL="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
export PARLEY_WEBHOOK_SECRET="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
printf '%s\n' "$PARLEY_WEBHOOK_SECRET" >"$work/hook.secret"
cat >"$work/parley.toml" <<TOML
[edge]
listen = "127.0.0.1:$EDGE"
[auth]
listen = "127.0.0.1:$AUTH"
[ai]
listen = "127.0.0.1:$AI"
[presence]
listen = "127.0.0.1:$PRESENCE"
[chat]
listen = "127.0.0.1:$CHAT"
database_url = "sqlite://$work/parley.db?mode=rwc"

[[chat.webhooks]]
name = "example"
url = "http://127.0.0.1:$HOOK/hook"
secret_file = "$work/hook.secret"
events = ["message.new", "notification.offline"]
retry_base_ms = 200
TOML

start_parley() {
    "$BIN" --config "$work/parley.toml" >>"$work/parley.log" 2>&1 &
    parley_pid=$!
    pids+=("$parley_pid")
}

# Waits up to 30 s for `grep -c PATTERN FILE` to reach COUNT.
wait_for() {
    local count=$1 pattern=$2 file=$3
    for _ in $(seq 300); do
        if [ "$(grep -c -- "$pattern" "$file" 2>/dev/null || true)" -ge "$count" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for $count × $pattern in $file"
    tail -n 30 "$work"/*.log "$work"/*.jsonl || true
    exit 1
}

start_parley
"$PY" docs/examples/webhook_receiver.py --port "$HOOK" >"$work/hooks.jsonl" 2>"$work/receiver.log" &
pids+=($!)
room="$("$PY" docs/examples/post.py --target "127.0.0.1:$CHAT" --text "first")"
"$PY" docs/examples/watch.py --target "127.0.0.1:$CHAT" --position-file "$work/position" \
    >"$work/watch.jsonl" 2>"$work/watch.log" &
pids+=($!)
wait_for 1 '"kind": "message.new"' "$work/watch.jsonl"

# parley restarts; the consumer reconnects by itself and resumes.
kill "$parley_pid"
wait "$parley_pid" 2>/dev/null || true
start_parley
"$PY" docs/examples/post.py --target "127.0.0.1:$CHAT" --room "$room" --text "second" >/dev/null
wait_for 2 '"kind": "message.new"' "$work/watch.jsonl"
grep -q "disconnected (UNAVAILABLE); resuming from" "$work/watch.log"
"$PY" - "$work/watch.jsonl" <<'PY'
import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
positions = [e["position"] for e in events]
assert positions == sorted(set(positions)), f"duplicate or out of order: {positions}"
texts = [e["event"]["message"]["text"] for e in events if e["kind"] == "message.new"]
assert texts == ["@bob first", "@bob second"], texts
print(f"watch.py: {len(events)} events, positions {positions[0]}..{positions[-1]}, none twice")
PY

# Two messages as room events, two mentions of bob (who has no connection).
wait_for 4 '"verified"' "$work/hooks.jsonl"
if grep -q '"rejected"' "$work/hooks.jsonl"; then
    echo "a webhook failed verification"
    exit 1
fi
"$PY" - "$work/hooks.jsonl" <<'PY'
import json, sys
payloads = [json.loads(line)["payload"] for line in open(sys.argv[1])]
kinds = sorted((p["type"], p.get("reason") or p.get("kind")) for p in payloads)
assert kinds == [("notification.offline", "mention")] * 2 + [("room.event", "message.new")] * 2, kinds
assert all(p["user"] == "bob" for p in payloads if p["type"] == "notification.offline")
print("webhook_receiver.py: 4 signed webhooks verified (2 room events, 2 offline mentions)")
PY
echo "examples: ok"
