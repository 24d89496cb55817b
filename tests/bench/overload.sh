#!/usr/bin/env bash
# Overload: how Orchard sheds load when more is asked of it than its core can deliver
# (issue 21, item 9). For each churn rate, a fresh daemon (simulator only, OVERLOAD_MACHINES
# machines, 50 ms boots and shutdowns, the default periodic broadcasts) restarts RATE machines a
# second (four lifecycle events each) to CLIENTS readers of /ws/machines/global: our load
# client (`loadgen stream`) and, in the same run, an independent one (Node `ws`,
# peers/node/lifecycle-client.js) with OVERLOAD_NODE_CLIENTS of them. Both check, per client,
# that every lifecycle event of every machine arrived in order (a missed or reordered event
# is a "gap"). One line per rate, appended with the raw JSON to results/overload.jsonl.
#
#   tests/bench/overload.sh [RATE ...]       default: 125 250 500 1000 restarts/s
#
# Settings (environment): OVERLOAD_CLIENTS (1000, Node's included), OVERLOAD_NODE_CLIENTS
# (100), OVERLOAD_READ_BUFFER (65536: loadgen's read buffer per connection), OVERLOAD_RAW (1:
# loadgen reads with its minimal frame parser, `stream --raw`, so that it costs far less per
# message than the daemon; 0: through tungstenite), OVERLOAD_SECONDS (60), OVERLOAD_WARMUP (3), OVERLOAD_MACHINES (500), ORCHARD_* (passed
# to the daemon), OVERLOAD_ORCHARD / OVERLOAD_LOADGEN (binaries; default target/release/…,
# built here unless given), OVERLOAD_SERVER_CPU_PCT (unset: the whole of CPU 0; a number: the
# daemon gets at most that share of one CPU, through a cgroup (v1 cpu controller) made for the
# run and removed after it, so that the daemon, not the clients, is what cannot keep up).
# The server is pinned to CPU 0, both clients to CPU 1.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CLIENTS=${OVERLOAD_CLIENTS:-1000}
NODE_CLIENTS=${OVERLOAD_NODE_CLIENTS:-100}
SECONDS_=${OVERLOAD_SECONDS:-60}
WARMUP=${OVERLOAD_WARMUP:-3}
MACHINES=${OVERLOAD_MACHINES:-500}
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(125 250 500 1000)
RAW=$([ "${OVERLOAD_RAW:-1}" = 1 ] && echo 1)
ORCHARD=${OVERLOAD_ORCHARD:-}
LOADGEN=${OVERLOAD_LOADGEN:-}
if [ -z "$ORCHARD" ] || [ -z "$LOADGEN" ]; then
    (cd "$ROOT" && cargo build --release -p orchard -p orchard-bench) || exit 1
    ORCHARD=${ORCHARD:-$ROOT/target/release/orchard}
    LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
fi
if [ "$NODE_CLIENTS" -gt 0 ] && [ ! -d "$HERE/peers/node/node_modules/ws" ]; then
    (cd "$HERE/peers/node" && npm ci --no-audit --no-fund >/dev/null) || exit 1
fi
mkdir -p "$HERE/results"
OUT=$HERE/results/overload.jsonl
WORK=$(mktemp -d "${TMPDIR:-/tmp}/orchard-overload.XXXXXX")
PID=""
CG=""
if [ -n "${OVERLOAD_SERVER_CPU_PCT:-}" ]; then
    CG=/sys/fs/cgroup/cpu/orchard-overload-$$
    mkdir "$CG" || exit 1
    echo 100000 >"$CG/cpu.cfs_period_us"
    echo "$((OVERLOAD_SERVER_CPU_PCT * 1000))" >"$CG/cpu.cfs_quota_us"
fi
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export OVERLOAD_PASSWORD="overload-$$-$RANDOM$RANDOM"

for RATE in "${RATES[@]}"; do
    PORT=$((20000 + RANDOM % 20000))
    while (: >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
    rm -rf "$WORK/data" "$WORK/plugins"
    mkdir -p "$WORK/data" "$WORK/plugins"
    # The daemon joins the cgroup (if any) before it starts a thread.
    taskset -c 0 env ORCHARD_ADMIN_PASSWORD="$OVERLOAD_PASSWORD" ORCHARD_PLUGINS_DIR="$WORK/plugins" \
        ORCHARD_SIMULATOR_MACHINES="$MACHINES" ORCHARD_SIMULATOR_CHURN_PER_SECOND="$RATE" \
        ORCHARD_SIMULATOR_BOOT_MS=50 ORCHARD_SIMULATOR_SHUTDOWN_MS=50 \
        ORCHARD_AUTH_LOGIN_MAX_FAILURES=1000 CG="$CG" \
        sh -c '[ -z "$CG" ] || echo $$ >"$CG/cgroup.procs"; exec "$0" "$@"' \
        "$ORCHARD" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 1200); do grep -q "listening on" "$WORK/server.log" && break; sleep 0.1; done
    grep -q "listening on" "$WORK/server.log" || { cat "$WORK/server.log" >&2; exit 1; }
    TOKEN=$("$LOADGEN" token --http "http://127.0.0.1:$PORT" --password-env OVERLOAD_PASSWORD) || exit 1
    URL="ws://127.0.0.1:$PORT/ws/machines/global?access_token=$TOKEN"
    LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
    NODE_PID=""
    if [ "$NODE_CLIENTS" -gt 0 ]; then
        taskset -c 1 node "$HERE/peers/node/lifecycle-client.js" "$URL" "$NODE_CLIENTS" \
            "$((SECONDS_ + WARMUP + 10))" >"$WORK/node.json" 2>"$WORK/node.err" &
        NODE_PID=$!
    fi
    taskset -c 1 "$LOADGEN" stream --url "ws://127.0.0.1:$PORT/ws/machines/global" --token "$TOKEN" \
        --count "$((CLIENTS - NODE_CLIENTS))" --seconds "$SECONDS_" --warmup "$WARMUP" \
        --read-buffer "${OVERLOAD_READ_BUFFER:-65536}" ${RAW:+--raw} \
        --server-pid "$PID" --label "orchard-$RATE" --scenario overload --json-out "$WORK/loadgen.jsonl" \
        >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" || { cat "$WORK/loadgen.err" >&2; exit 1; }
    [ -n "$NODE_PID" ] && wait "$NODE_PID"
    LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
    kill -TERM "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
    PID=""
    python3 - "$OUT" "$RATE" "$CLIENTS" "$WORK/loadgen.jsonl" "$WORK/node.json" "$WORK/server.log" "$LOAD0" "$LOAD1" <<'EOF'
import json, re, sys
out, rate, clients, lg_file, node_file, log_file, l0, l1 = sys.argv[1:]
rate, clients = int(rate), int(clients)
lg = [json.loads(l) for l in open(lg_file) if l.startswith("{")][-1]
try:
    node = json.loads(open(node_file).read().strip().splitlines()[-1])
except Exception as e:  # Node not run, or it failed
    node = {"client": "node-ws", "error": str(e), "clients": 0, "ended": {}, "gaps": 0,
            "clientsWithGaps": 0, "events": 0}
log = open(log_file).read()
closes = {}
for m in re.finditer(r'closing 4008.*?reason=([^\n]*)', log):
    closes[m.group(1).strip()] = closes.get(m.group(1).strip(), 0) + 1
closed_lg = sum(v for k, v in (lg.get("ended") or {}).items())
closed_node = sum((node.get("ended") or {}).values())
rss = lg["server_rss_kib"]
e = lg["event"]
row = {
    "rate": rate, "offered_events_per_s": 4 * rate, "clients": clients,
    "offered_deliveries_per_s": 4 * rate * clients,
    "delivered_msgs_per_s": lg["msgs_per_s"], "server_cpu_pct": lg["server_cpu_pct"],
    "client_busy_pct": lg["client_busy_pct"],
    "closed_loadgen": closed_lg, "closed_node": closed_node,
    "closed_pct": round(100 * (closed_lg + closed_node) / clients, 2),
    "gaps_loadgen": lg["lifecycle"]["gaps"], "clients_with_gaps_loadgen": lg["lifecycle"]["clients_with_gaps"],
    "gaps_node": node.get("gaps"), "clients_with_gaps_node": node.get("clientsWithGaps"),
    "events_checked_loadgen": lg["lifecycle"]["events"], "events_checked_node": node.get("events"),
    "rss_kib": rss, "event_p50_ms": e.get("p50_ms"), "event_p99_ms": e.get("p99_ms"),
    "server_4008_reasons": closes, "hub_resyncs": log.count("machines hub fell behind"),
    "load": [l0, l1], "loadgen": lg, "node": node,
}
with open(out, "a") as f:
    f.write(json.dumps(row) + "\n")
print(f"churn {rate}/s ({4*rate} events/s, {4*rate*clients:,} deliveries/s offered): "
      f"delivered {lg['msgs_per_s']:,.0f} msg/s, server CPU {lg['server_cpu_pct']}%, "
      f"closed {row['closed_pct']}% (loadgen {closed_lg}, node {closed_node}; reasons {closes}), "
      f"gaps loadgen {row['gaps_loadgen']} in {row['clients_with_gaps_loadgen']} clients, "
      f"node {row['gaps_node']} in {row['clients_with_gaps_node']}, "
      f"events checked {row['events_checked_loadgen']:,} + {row['events_checked_node']:,}, "
      f"RSS start/max/end {rss['start']}/{rss['max']}/{rss['end']} KiB, "
      f"event p50/p99 {e.get('p50_ms')}/{e.get('p99_ms')} ms, hub resyncs {row['hub_resyncs']}, "
      f"load {l0} -> {l1}")
EOF
done
