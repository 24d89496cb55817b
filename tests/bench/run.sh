#!/usr/bin/env bash
# Orchard's fan-out benchmark, one command: builds everything, runs every scenario against
# Orchard and each peer (server pinned to one core, load client to the other), prints one
# table and writes it to tests/bench/results/latest.md. See tests/bench/README.md.
#
#   tests/bench/run.sh [--quick] [--only orchard,floor,warp,node,python]
#
# Settings come from BENCH_* environment variables (listed below with their defaults).
set -uo pipefail # not -e: a peer that fails is reported as not run; the comparison goes on

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

QUICK=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY="${2:-}"; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RESULTS=$HERE/results
mkdir -p "$RESULTS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/orchard-bench.XXXXXX")
RAW=$RESULTS/raw.jsonl
LOG=$RESULTS/run.log
: >"$RAW"
: >"$LOG"

if [ "$QUICK" = 1 ]; then
    DEF_SECONDS=8 DEF_SLOW=12 DEF_POLL=15
else
    DEF_SECONDS=20 DEF_SLOW=25 DEF_POLL=30
fi
SERVER_CPU=${BENCH_SERVER_CPU:-0}           # core the server under test is pinned to
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}           # core the load client is pinned to
CLIENTS=${BENCH_CLIENTS:-1000}              # clients of the tick, flood and slow scenarios
WINDOW=${BENCH_SECONDS:-$DEF_SECONDS}       # measuring window of tick and flood
SLOW_WINDOW=${BENCH_SLOW_SECONDS:-$DEF_SLOW} # measuring window of the slow-consumer run
WARMUP=${BENCH_WARMUP:-3}                   # seconds after connecting, before measuring
FLEET=${BENCH_FLEET:-2000}                  # simulated machines (tick, slow, poll, logins)
POLL_SECONDS=${BENCH_POLL_SECONDS:-$DEF_POLL}
IDLE_ORCHARD=${BENCH_IDLE_ORCHARD:-1000,10000} # idle connection steps for Orchard
IDLE_PEERS=${BENCH_IDLE_PEERS:-1000}        # idle connection steps for the peers
IDLE_FLEET=${BENCH_IDLE_FLEET:-8}           # machines while measuring idle connections
TICK_BYTES=${BENCH_TICK_BYTES:-auto}        # peers' tick size; auto: Orchard's measured one
FLOOD_RATE=${BENCH_FLOOD_RATE:-1000}        # peers' event messages per second (each to all)
FLOOD_BYTES=${BENCH_FLOOD_BYTES:-200}       # peers' event message size
FLOOD_FLEET=${BENCH_FLOOD_FLEET:-500}       # machines while Orchard churns
# Each restart the simulator churns yields 4 events on /ws/machines/global (SHUTDOWN_START,
# SHUTDOWN_SUCCESS, BOOTUP_START, BOOTUP_SUCCESS).
FLOOD_CHURN=${BENCH_FLOOD_CHURN:-$(((FLOOD_RATE + 3) / 4))}
SLOW_PERCENT=${BENCH_SLOW_PERCENT:-1}
LOGINS=${BENCH_LOGINS:-200}
SERVERS=${ONLY:-orchard,floor,warp,node,python}

ORCHARD=$ROOT/target/release/orchard
LOADGEN=$ROOT/target/release/loadgen
WARP=$ROOT/target/release/warp-peer
FLOOR=$WORK/floor
PYTHON=$HERE/peers/python/.venv/bin/python
export BENCH_PASSWORD="bench-$$-$RANDOM$RANDOM"

say() { echo "$*" | tee -a "$LOG"; }
has() { case ",$SERVERS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# A JSON line saying why a scenario did not run.
skip() { # label scenario reason...
    local label=$1 scenario=$2
    shift 2
    local why=${*//\"/\'}
    printf '{"label":"%s","scenario":"%s","skipped":"%s"}\n' "$label" "$scenario" "$why" >>"$RAW"
    say "-- $label/$scenario not run: $why"
}

declare -A BROKEN=() # peer -> why it cannot run here

# ---- build -------------------------------------------------------------------------------
say "== build"
(cd "$ROOT" && cargo build --release -p orchard -p orchard-bench -p orchard-bench-warp) >>"$LOG" 2>&1 || {
    say "cargo build failed; see $LOG"
    exit 1
}
if has floor; then
    gcc -O2 -Wall -o "$FLOOR" "$HERE/peers/floor/floor.c" >>"$LOG" 2>&1 || BROKEN[floor]="gcc failed"
fi
if has node; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        BROKEN[node]="node/npm not installed"
    elif ! (cd "$HERE/peers/node" && npm ci --no-audit --no-fund) >>"$LOG" 2>&1; then
        BROKEN[node]="npm ci failed"
    fi
fi
if has python; then
    if ! command -v python3 >/dev/null; then
        BROKEN[python]="python3 not installed"
    elif ! { [ -x "$PYTHON" ] || python3 -m venv "$HERE/peers/python/.venv"; } >>"$LOG" 2>&1 ||
        ! "$PYTHON" -m pip install -q -r "$HERE/peers/python/requirements.txt" >>"$LOG" 2>&1; then
        BROKEN[python]="venv or pip install failed"
    fi
fi

# ---- limits ------------------------------------------------------------------------------
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 1048576 ]; then hard=1048576; fi
ulimit -n "$hard" 2>/dev/null || true
say "== file descriptors: $(ulimit -n); server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU"
if ! taskset -c "$SERVER_CPU,$CLIENT_CPU" true 2>/dev/null; then
    say "taskset cannot use CPUs $SERVER_CPU and $CLIENT_CPU"
    exit 1
fi

# ---- processes ---------------------------------------------------------------------------
PORT=18300
next_port() {
    PORT=$((PORT + 1))
    while (: >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
}

PID=""
# Starts a server pinned to the server core and waits for "listening on" in its log.
start() { # name command...
    local name=$1
    shift
    local log=$WORK/$name.$PORT.log
    taskset -c "$SERVER_CPU" "$@" >"$log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do
        if grep -q "listening on" "$log" 2>/dev/null; then return 0; fi
        if ! kill -0 "$PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    say "-- $name did not start:"
    tail -5 "$log" | tee -a "$LOG"
    stop
    return 1
}

stop() {
    [ -n "$PID" ] || return 0
    kill -TERM "$PID" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
    PID=""
}
trap 'stop; rm -rf "$WORK"' EXIT

# The load client, pinned to the client core; the human table is shown, JSON goes to $RAW.
lg() { # label scenario subcommand args...
    local label=$1 scenario=$2 sub=$3
    shift 3
    local args=(--label "$label" --scenario "$scenario" --json-out "$RAW")
    [ -n "$PID" ] && args+=(--server-pid "$PID")
    taskset -c "$CLIENT_CPU" "$LOADGEN" "$sub" "${args[@]}" "$@" 2>>"$LOG" | grep -v '^{' | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || say "-- $label/$scenario: loadgen failed (see $LOG)"
}

# A field of the last JSON line for label/scenario (python3 when present).
jget() { # label scenario key.key
    command -v python3 >/dev/null || return 0
    python3 - "$RAW" "$@" <<'EOF'
import json, sys
raw, label, scenario, path = sys.argv[1:]
value = None
for line in open(raw):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("label") == label and v.get("scenario") == scenario:
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        value = v
if value is not None:
    print(value)
EOF
}

# ---- Orchard -----------------------------------------------------------------------------
ORCHARD_RUNS=0
start_orchard() { # machines dynamic_interval [VAR=value...]
    local machines=$1 interval=$2
    shift 2
    ORCHARD_RUNS=$((ORCHARD_RUNS + 1))
    local data=$WORK/orchard-data-$ORCHARD_RUNS
    mkdir -p "$data" "$WORK/no-plugins"
    next_port
    start orchard env ORCHARD_ADMIN_PASSWORD="$BENCH_PASSWORD" \
        ORCHARD_PLUGINS_DIR="$WORK/no-plugins" \
        ORCHARD_SIMULATOR_MACHINES="$machines" \
        ORCHARD_MACHINES_DYNAMIC_INTERVAL="$interval" \
        "$@" "$ORCHARD" serve --listen "127.0.0.1:$PORT" --data-dir "$data" || return 1
    TOKEN=$("$LOADGEN" token --http "http://127.0.0.1:$PORT" --password-env BENCH_PASSWORD 2>>"$LOG")
    [ -n "$TOKEN" ] || { say "-- cannot log in to Orchard"; stop; return 1; }
}
QUIET=(ORCHARD_MACHINES_CONNECTIONS_INTERVAL=3600 ORCHARD_MACHINES_DISKS_INTERVAL=3600)

run_orchard() {
    local url
    say ""
    say "==== orchard"
    # Idle: nothing is sent after the initial state (no periodic broadcasts in the window).
    if start_orchard "$IDLE_FLEET" 3600 "${QUIET[@]}"; then
        lg orchard idle idle --url "ws://127.0.0.1:$PORT/ws/machines/global" --token "$TOKEN" \
            --count "$IDLE_ORCHARD"
        stop
    else skip orchard idle "the daemon did not start"; fi
    # The DATA_DYNAMIC tick of $FLEET machines, each second, to every global client.
    if start_orchard "$FLEET" 1; then
        url="ws://127.0.0.1:$PORT/ws/machines/global"
        lg orchard tick stream --url "$url" --token "$TOKEN" --count "$CLIENTS" \
            --seconds "$WINDOW" --warmup "$WARMUP"
        stop
    else skip orchard tick "the daemon did not start"; fi
    if start_orchard "$FLEET" 1; then
        lg orchard slow stream --url "ws://127.0.0.1:$PORT/ws/machines/global" --token "$TOKEN" \
            --count "$CLIENTS" --seconds "$SLOW_WINDOW" --warmup "$WARMUP" \
            --slow-percent "$SLOW_PERCENT"
        stop
    else skip orchard slow "the daemon did not start"; fi
    # Events: the simulator restarts machines continuously (BOOTUP_*/SHUTDOWN_*).
    if start_orchard "$FLOOD_FLEET" 3600 "${QUIET[@]}" \
        ORCHARD_SIMULATOR_CHURN_PER_SECOND="$FLOOD_CHURN" \
        ORCHARD_SIMULATOR_BOOT_MS=50 ORCHARD_SIMULATOR_SHUTDOWN_MS=50; then
        lg orchard flood stream --url "ws://127.0.0.1:$PORT/ws/machines/global" --token "$TOKEN" \
            --count "$CLIENTS" --seconds "$WINDOW" --warmup "$WARMUP"
        stop
        if [ "$(jget orchard flood event.msgs)" = 0 ]; then
            skip orchard flood "no events arrived: the simulator has no churn_per_second setting?"
        fi
    else
        skip orchard flood "the daemon did not start (ORCHARD_SIMULATOR_CHURN_PER_SECOND unknown?)"
    fi
    # Polling cost with no clients, then logins against the same daemon. The login limiter
    # counts attempts in flight as failures per (address, user): raised, so that the
    # concurrent logins of one user from one address are hashed rather than refused (429).
    if start_orchard "$FLEET" 1 ORCHARD_AUTH_LOGIN_MAX_FAILURES=1000000; then
        sleep 2
        lg orchard poll cpu --seconds "$POLL_SECONDS"
        lg orchard logins logins --http "http://127.0.0.1:$PORT" --concurrency "$LOGINS" \
            --user admin --password-env BENCH_PASSWORD
        stop
    else skip orchard poll "the daemon did not start"; fi
}

# ---- peers -------------------------------------------------------------------------------
peer_cmd() { # name mode args... -> the command line in CMD
    local name=$1
    shift
    case $name in
        floor) CMD=("$FLOOR" "$PORT" "$@") ;;
        warp) CMD=("$WARP" "$PORT" "$@") ;;
        node) CMD=(node "$HERE/peers/node/server.js" "$PORT" "$@") ;;
        python) CMD=("$PYTHON" "$HERE/peers/python/server.py" "$PORT" "$@") ;;
    esac
}

run_peer() { # name
    local name=$1 s
    say ""
    say "==== $name"
    if [ -n "${BROKEN[$name]:-}" ]; then
        for s in idle tick slow flood; do skip "$name" "$s" "${BROKEN[$name]}"; done
        return
    fi
    next_port
    peer_cmd "$name" idle
    if start "$name" "${CMD[@]}"; then
        lg "$name" idle idle --url "ws://127.0.0.1:$PORT/ws" --count "$IDLE_PEERS"
        stop
    else skip "$name" idle "did not start"; fi
    for s in tick slow; do
        next_port
        peer_cmd "$name" tick "$TICK"
        if start "$name" "${CMD[@]}"; then
            if [ "$s" = tick ]; then
                lg "$name" tick stream --url "ws://127.0.0.1:$PORT/ws" --count "$CLIENTS" \
                    --seconds "$WINDOW" --warmup "$WARMUP"
            else
                lg "$name" slow stream --url "ws://127.0.0.1:$PORT/ws" --count "$CLIENTS" \
                    --seconds "$SLOW_WINDOW" --warmup "$WARMUP" --slow-percent "$SLOW_PERCENT"
            fi
            stop
        else skip "$name" "$s" "did not start"; fi
    done
    next_port
    # The flood starts once every client is connected (loadgen sends SIGUSR2).
    peer_cmd "$name" flood "$FLOOD_RATE" "$FLOOD_BYTES" wait
    if start "$name" "${CMD[@]}"; then
        lg "$name" flood stream --url "ws://127.0.0.1:$PORT/ws" --count "$CLIENTS" \
            --seconds "$WINDOW" --warmup "$WARMUP" --start-signal
        stop
    else skip "$name" flood "did not start"; fi
}

# ---- the run -----------------------------------------------------------------------------
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$SECONDS
TICK=400000
if has orchard; then
    run_orchard
    if [ "$TICK_BYTES" = auto ]; then
        measured=$(jget orchard tick tick.avg_bytes)
        [ -n "$measured" ] && [ "${measured%.*}" -gt 0 ] && TICK=${measured%.*}
    fi
fi
[ "$TICK_BYTES" != auto ] && TICK=$TICK_BYTES
say ""
say "== peers send ticks of $TICK bytes and $FLOOD_RATE events/s of $FLOOD_BYTES bytes"
for p in floor warp node python; do
    has "$p" && run_peer "$p"
done
ELAPSED=$((SECONDS - T0))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the table ---------------------------------------------------------------------------
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
versions="rustc $(rustc --version 2>/dev/null | cut -d' ' -f2)"
command -v node >/dev/null && versions+=", node $(node --version)"
[ -f "$HERE/peers/node/node_modules/ws/package.json" ] &&
    versions+=", ws $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$HERE/peers/node/node_modules/ws/package.json")"
[ -x "$PYTHON" ] && versions+=", $("$PYTHON" --version 2>&1), websockets $("$PYTHON" -c 'import websockets; print(websockets.__version__)' 2>/dev/null)"
versions+=", $(gcc --version | head -1)"
servers_present=orchard,floor,warp,node,python
[ -n "$ONLY" ] && servers_present=$ONLY
{
    echo "# Orchard fan-out benchmark"
    echo
    echo "Run $STARTED$([ "$QUICK" = 1 ] && echo ' (--quick)'), $((ELAPSED / 60)) min $((ELAPSED % 60)) s."
    echo "Machine: $(nproc) CPUs ($cpu_model), $mem RAM, kernel $(uname -r); $versions."
    echo "Server pinned to CPU $SERVER_CPU, load client to CPU $CLIENT_CPU (taskset); loopback."
    echo "Load average (1/5/15 min) at the start: $LOAD_START; at the end: $LOAD_END (anything above the"
    echo "benchmark's own ~1-2 is other work on the machine, and makes every figure noisier)."
    echo "Settings: $CLIENTS clients; windows $WINDOW s (slow consumers $SLOW_WINDOW s) after $WARMUP s warm-up;"
    echo "Orchard: $FLEET simulated machines for tick/slow/poll/logins, $IDLE_FLEET while idle (no periodic"
    echo "broadcasts), churn $FLOOD_CHURN restarts/s over $FLOOD_FLEET machines for the flood; peers: ticks of"
    echo "$TICK bytes each second, $FLOOD_RATE events/s of $FLOOD_BYTES bytes in 10 ms batches."
    echo "Cells: value (ratio to the floor); last columns: Orchard ÷ each other server."
    echo
    "$LOADGEN" report --input "$RAW" --servers "$servers_present"
} >"$RESULTS/latest.md"
say ""
cat "$RESULTS/latest.md" | tee -a "$LOG"
say ""
say "written: $RESULTS/latest.md (raw JSON lines: $RAW, log: $LOG)"
