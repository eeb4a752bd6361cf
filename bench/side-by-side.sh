#!/usr/bin/env bash
# Parley beside Node's `ws` (and Socket.IO) in one run, on this machine:
# each server in turn pinned to CPU 0, the same load generator on CPU 1.
# Only ratios from one run mean anything: the machine's speed drifts.
#
#   bench/side-by-side.sh idle       # 10,000 connections signed in, joined to rooms of 100
#   bench/side-by-side.sh fanout     # 1,000 subscribers in 10 rooms, 500/1000/2000 msg/s
#   bench/side-by-side.sh send       # the send path: 20 rooms, 200 subscribers, 1000/3000 msg/s
#
# Knobs (environment): KINDS ("ws parley"; add sio), IDLE_N, RATES, SUBS, ROOMS.
# The harness (Node servers and a load generator that speaks all three
# protocols) lives in the peers folder: PARLEY_PEERS (default ../shared/peers
# beside this checkout). Prints one JSON line per run, then one summary line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="${PARLEY_PEERS:-$root/../shared/peers}"
if [ ! -x "$peers/side-by-side.sh" ]; then
    echo "no peers harness at $peers (set PARLEY_PEERS)" >&2
    exit 1
fi
scenario="${1:-idle}"
export KINDS="${KINDS:-ws parley}"
case "$scenario" in
    idle) export RATES="${RATES-}" IDLE_N="${IDLE_N:-10000}" ;;
    fanout) export RATES="${RATES-500 1000 2000}" IDLE_N=0 ;;
    send) export RATES="${RATES-1000 3000}" SUBS="${SUBS:-200}" ROOMS="${ROOMS:-20}" IDLE_N=0 ;;
    *) echo "scenario: idle | fanout | send" >&2; exit 2 ;;
esac
if [ -z "${PARLEY_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p parley
    export PARLEY_BIN="$root/target/release/parley"
fi
export ROOT="$root"
# Every load client comes from 127.0.0.1 and load is the point: lift the
# per-address, per-user and rate limits (docs/security.md).
export PARLEY_EDGE_MAX_HTTP_CONNS_PER_IP="${PARLEY_EDGE_MAX_HTTP_CONNS_PER_IP:-0}"
out="$("$peers/side-by-side.sh" | tail -1)"
python3 - "$out" "$scenario" <<'PY'
import json, os, sys
out, scenario = sys.argv[1], sys.argv[2]
runs = {}
for name in sorted(os.listdir(out)):
    if not name.endswith(".json"):
        continue
    try:
        run = json.load(open(os.path.join(out, name)))
    except ValueError:
        continue
    print(json.dumps({"file": name, **run}))
    runs[name[:-5]] = run
summary = {"scenario": scenario, "results": out}
if scenario == "idle":
    for key, run in runs.items():
        kind = key.split("-")[1]
        cpu = (run.get("cpu_during_hold") or {}).get("servers_cpu_pct_total")
        summary[kind] = {
            "conns_ok": run.get("conns_ok"),
            "rss_per_conn_bytes": run.get("server_rss_per_conn_bytes"),
            "connect_rate_per_sec": run.get("connect_rate_per_sec"),
            "setup_p50_ms": (run.get("setup_latency_ms") or {}).get("p50"),
            "setup_p99_ms": (run.get("setup_latency_ms") or {}).get("p99"),
            "idle_cpu_pct": cpu,
        }
else:
    for key, run in runs.items():
        _, kind, rate = key.split("-", 2)
        cpu = (run.get("cpu_during_send") or {}).get("servers_cpu_pct_total")
        dps = run.get("deliveries_per_sec") or 0
        summary[f"{kind}-{rate}"] = {
            "deliveries_per_sec": dps,
            "p50_ms": (run.get("latency_ms") or {}).get("p50"),
            "p99_ms": (run.get("latency_ms") or {}).get("p99"),
            "loss_pct": run.get("loss_pct"),
            "server_us_per_delivery": round(cpu / 100 / dps * 1e6, 2) if cpu and dps else None,
        }
print(json.dumps(summary))
PY
