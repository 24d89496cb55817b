#!/usr/bin/env bash
# The flood scenario of run.sh alone, for profiling and sweeps: one server (Orchard or the
# floor) pinned to one core, `loadgen stream` with N clients pinned to the other, one summary
# line per run (appended with the loadgen JSON to tests/bench/results/flood.jsonl).
#
#   tests/bench/flood.sh orchard|floor [label]
#
# Settings (environment): FLOOD_CLIENTS (1000), FLOOD_SECONDS (10), FLOOD_WARMUP (3),
# FLOOD_RATE (1000 events/s; Orchard gets a churn of RATE/4 restarts/s over 500 machines,
# 50 ms boots and shutdowns), FLOOR_BATCH_MS (the floor's batch window, 10), ORCHARD_* (passed
# to Orchard, e.g. ORCHARD_WS_COALESCE_MS), FLOOD_PERF=FILE (perf record -g of the server over
# the window), FLOOD_CALLGRIND=FILE (Orchard under valgrind --tool=callgrind, instructions
# of the window dumped to FILE.N: span = FLOOD_SECONDS - 2), FLOOD_COUNT=1 (perf stat of the server's system calls over the window),
# FLOOD_SERVER_LOG=FILE (a copy of the server's log), FLOOD_ORCHARD / FLOOD_LOADGEN (binaries; default target/release/{orchard,loadgen}; not built here: build
# with `cargo build --release -p orchard -p orchard-bench`, with
# CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=false for symbols).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WHO=${1:?usage: flood.sh orchard|floor [label]}
LABEL=${2:-$WHO}
CLIENTS=${FLOOD_CLIENTS:-1000}
SECONDS_=${FLOOD_SECONDS:-10}
WARMUP=${FLOOD_WARMUP:-3}
RATE=${FLOOD_RATE:-1000}
ORCHARD=${FLOOD_ORCHARD:-$ROOT/target/release/orchard}
LOADGEN=${FLOOD_LOADGEN:-$ROOT/target/release/loadgen}
mkdir -p "$HERE/results"
OUT=$HERE/results/flood.jsonl
WORK=$(mktemp -d "${TMPDIR:-/tmp}/orchard-flood.XXXXXX")
PID=""
trap '[ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT=$((20000 + RANDOM % 20000))
while (: >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
export FLOOD_PASSWORD="flood-$$-$RANDOM$RANDOM"
case $WHO in
orchard)
    mkdir -p "$WORK/data" "$WORK/plugins"
    taskset -c 0 env ORCHARD_ADMIN_PASSWORD="$FLOOD_PASSWORD" ORCHARD_PLUGINS_DIR="$WORK/plugins" \
        ORCHARD_SIMULATOR_MACHINES=500 ORCHARD_MACHINES_DYNAMIC_INTERVAL=3600 \
        ORCHARD_MACHINES_CONNECTIONS_INTERVAL=3600 ORCHARD_MACHINES_DISKS_INTERVAL=3600 \
        ORCHARD_SIMULATOR_CHURN_PER_SECOND=$(((RATE + 3) / 4)) \
        ORCHARD_SIMULATOR_BOOT_MS=50 ORCHARD_SIMULATOR_SHUTDOWN_MS=50 \
        ${FLOOD_CALLGRIND:+valgrind --tool=callgrind --callgrind-out-file=$FLOOD_CALLGRIND} \
        "$ORCHARD" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
    PID=$!
    URL=ws://127.0.0.1:$PORT/ws/machines/global
    ;;
floor)
    gcc -O2 -Wall -o "$WORK/floor" "$HERE/peers/floor/floor.c" || exit 1
    taskset -c 0 "$WORK/floor" "$PORT" flood "$RATE" 200 wait >"$WORK/server.log" 2>&1 &
    PID=$!
    URL=ws://127.0.0.1:$PORT/ws
    ;;
*) echo "usage: flood.sh orchard|floor [label]" >&2; exit 2 ;;
esac
for _ in $(seq 1200); do grep -q "listening on" "$WORK/server.log" && break; sleep 0.1; done
grep -q "listening on" "$WORK/server.log" || { cat "$WORK/server.log" >&2; exit 1; }
ARGS=(--url "$URL" --count "$CLIENTS" --seconds "$SECONDS_" --warmup "$WARMUP" --server-pid "$PID"
    --label "$LABEL" --scenario flood --json-out "$OUT")
if [ "$WHO" = orchard ]; then
    TOKEN=$("$LOADGEN" token --http "http://127.0.0.1:$PORT" --password-env FLOOD_PASSWORD) || exit 1
    ARGS+=(--token "$TOKEN")
else
    ARGS+=(--start-signal)
fi

# Profilers start once every client is connected and the warm-up is over, and stop before
# the window ends.
profile() {
    for _ in $(seq 600); do
        [ "$(ss -Htn state established "( sport = :$PORT )" | wc -l)" -ge "$CLIENTS" ] && break
        sleep 0.1
    done
    sleep "$WARMUP"
    local span=$((SECONDS_ > 3 ? SECONDS_ - 2 : 1))
    if [ -n "${FLOOD_PERF:-}" ]; then
        perf record -g -F 999 -p "$PID" -o "$FLOOD_PERF" -- sleep "$span" >"$WORK/perf.log" 2>&1
    fi
    if [ -n "${FLOOD_CALLGRIND:-}" ]; then
        callgrind_control -z "$PID" >/dev/null
        sleep "$span"
        callgrind_control -d window "$PID" >/dev/null
    fi
    if [ "${FLOOD_COUNT:-0}" = 1 ]; then
        perf stat -x, -e 'syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendmsg,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,context-switches,task-clock' \
            -p "$PID" -- sleep "$span" 2>"$HERE/results/flood-count-$LABEL.csv" >/dev/null
    fi
}
PROF=""
if [ -n "${FLOOD_PERF:-}${FLOOD_CALLGRIND:-}" ] || [ "${FLOOD_COUNT:-0}" = 1 ]; then profile & PROF=$!; fi

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
taskset -c 1 "$LOADGEN" stream "${ARGS[@]}" >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" ||
    { cat "$WORK/loadgen.err" >&2; exit 1; }
[ -n "$PROF" ] && wait "$PROF"
[ -n "${FLOOD_SERVER_LOG:-}" ] && cp "$WORK/server.log" "$FLOOD_SERVER_LOG"
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$OUT" "$LABEL" "$RATE" "${FLOOR_BATCH_MS:-10}" "${ORCHARD_WS_COALESCE_MS:-2}" "$LOAD0" "$LOAD1" "$WHO" <<'EOF'
import json, sys
out, label, rate, batch, coalesce, l0, l1, who = sys.argv[1:]
v = [json.loads(l) for l in open(out) if l.startswith("{")][-1]
e = v["event"]
cores = " ".join(f"cpu{i} {c['busy_pct']:.0f}% (si {c['softirq_pct']:.0f}%)" for i, c in enumerate(v.get("cores") or []))
window = batch if who == "floor" else f"coalesce {coalesce}"
print(f"{label}: rate {rate}/s, window {window} ms: {v['msgs_per_s']:,.0f} msg/s, "
      f"{v['msgs_per_server_cpu_s'] or 0:,.0f} per server CPU-s, server {v['server_cpu_pct']}% "
      f"(client {v['client_busy_pct']}%), p50/p99/max {e.get('p50_ms')}/{e.get('p99_ms')}/{e.get('max_ms')} ms, "
      f"closed {v.get('ended')}, load {l0} -> {l1}, {cores}")
EOF
