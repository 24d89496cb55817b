#!/usr/bin/env bash
# Soak test (not in CI): runs an Orchard daemon under consoles, subscribers and churn for a
# while (default 1 h) and checks that its open file descriptors, threads and memory return to
# baseline.
#
# The baseline is taken with the daemon warm and quiet: the same load first runs for WARMUP
# seconds (default 600), the daemon gets SETTLE seconds (default 30) to close what it held, and
# then it is sampled ("warm"). That is when its caches hold what this load puts in them: the
# audit log is kept to AUDIT_KEEP entries (default 2,000, which the warm-up passes), so the
# database, and redb's page cache of it, stop growing before the baseline; the blocking pool
# has had its bursts. Then the load runs for SECONDS, the daemon settles again and is sampled
# ("end"). It fails if the end is above the warm baseline by more than FD_SLACK descriptors,
# THREAD_SLACK threads or RSS_SLACK_KB of resident memory. Samples taken under load are
# printed every minute but not judged: one login holds a 19 MiB argon2 block while it hashes.
#
#   tests/soak/soak.sh [SECONDS]        # default 3600
#   ORCHARD_BIN=target/release/orchard SUBSCRIBERS=40 CONSOLES=4 CHURNERS=6 tests/soak/soak.sh 300
#
# Needs python3 (standard library only). Uses a temporary data directory and a free port.
set -euo pipefail

SECONDS_TO_RUN=${1:-3600}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${ORCHARD_BIN:-}
if [[ -z $BIN ]]; then
    if [[ -x $ROOT/target/release/orchard ]]; then BIN=$ROOT/target/release/orchard; else BIN=$ROOT/target/debug/orchard; fi
fi
[[ -x $BIN ]] || { echo "no orchard binary at $BIN (cargo build first)" >&2; exit 2; }
# Every ORCHARD_* variable is a configuration key to the daemon, which refuses unknown ones.
unset ORCHARD_BIN
WARMUP=${WARMUP:-600}
SETTLE=${SETTLE:-30}
FD_SLACK=${FD_SLACK:-2}
THREAD_SLACK=${THREAD_SLACK:-2}
RSS_SLACK_KB=${RSS_SLACK_KB:-2048}

WORK=$(mktemp -d)
DAEMON_PID=
LOAD_PID=
cleanup() {
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null || true
    if [[ -n $DAEMON_PID ]]; then kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

export ORCHARD_ADMIN_PASSWORD="soak-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$WORK/plugins"
# The built-in simulator only; machines change state on their own as well.
ORCHARD_PLUGINS_DIR="$WORK/plugins" \
ORCHARD_SIMULATOR_MACHINES=${MACHINES:-16} \
ORCHARD_SIMULATOR_CHURN_PER_SECOND=${SIM_CHURN:-2} \
ORCHARD_SIMULATOR_BOOT_MS=300 ORCHARD_SIMULATOR_SHUTDOWN_MS=200 \
ORCHARD_AUTH_LOGIN_MAX_FAILURES=1000000 \
ORCHARD_STORAGE_AUDIT_KEEP=${AUDIT_KEEP:-2000} \
    "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
PORT=
for _ in $(seq 1 100); do
    PORT=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/daemon.log" 2>/dev/null | head -1 | sed 's/.*://') || true
    [[ -n $PORT ]] && break
    sleep 0.2
done
[[ -n $PORT ]] || { echo "the daemon did not start:" >&2; cat "$WORK/daemon.log" >&2; exit 1; }

# sample WHEN [NAME]: prints the daemon's figures; with NAME, keeps them as NAME_FDS, NAME_THREADS
# and NAME_RSS. RSS is split into anonymous memory (heap, stacks: where a leak shows) and
# file-backed pages (the binary and libraries, bounded by their size).
sample() {
    local fds threads rss anon file
    fds=$(ls "/proc/$DAEMON_PID/fd" | wc -l)
    read -r threads rss anon file < <(awk '/^Threads:/ {t=$2} /^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2}
        END {print t, r, a, f}' "/proc/$DAEMON_PID/status")
    printf '%-12s %6s %8s %10s %10s %10s\n' "$1" "$fds" "$threads" "$rss" "$anon" "$file"
    if [[ -n ${2:-} ]]; then eval "$2_FDS=$fds $2_THREADS=$threads $2_RSS=$rss"; fi
}

load() {
    python3 "$ROOT/tests/soak/soak.py" --port "$PORT" --seconds "$1" \
        --subscribers "${SUBSCRIBERS:-20}" --consoles "${CONSOLES:-4}" --churners "${CHURNERS:-2}" \
        2>>"$WORK/load.log" &
    LOAD_PID=$!
    local elapsed=0
    while kill -0 "$LOAD_PID" 2>/dev/null; do
        sleep 1
        elapsed=$((elapsed + 1))
        if (( elapsed % 60 == 0 )); then sample "$2+${elapsed}s"; fi
    done
    wait "$LOAD_PID" || { echo "the load generator failed:" >&2; tail -20 "$WORK/load.log" >&2; exit 1; }
    LOAD_PID=
    sleep "$SETTLE"
}

curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null
echo "orchard $BIN on port $PORT (pid $DAEMON_PID): warm-up $WARMUP s, load $SECONDS_TO_RUN s"
printf '%-12s %6s %8s %10s %10s %10s\n' when fds threads rss_kb anon_kb file_kb
sample start START
load "$WARMUP" warmup
sample warm WARM
load "$SECONDS_TO_RUN" load
sample end END
echo "threads by name at the end: $(cat /proc/"$DAEMON_PID"/task/*/comm | sort | uniq -c | awk '{printf "%s×%s ", $2, $1}')"
LOAD_ERRORS=$(grep -c . "$WORK/load.log" || true)
echo "load-generator errors: $LOAD_ERRORS (first lines below)"
head -5 "$WORK/load.log"
kill -0 "$DAEMON_PID" || { echo "the daemon died" >&2; exit 1; }
FAIL=0
(( END_FDS <= WARM_FDS + FD_SLACK )) || { echo "FAIL: fds $WARM_FDS (warm) -> $END_FDS"; FAIL=1; }
(( END_THREADS <= WARM_THREADS + THREAD_SLACK )) || { echo "FAIL: threads $WARM_THREADS (warm) -> $END_THREADS"; FAIL=1; }
(( END_RSS <= WARM_RSS + RSS_SLACK_KB )) || { echo "FAIL: RSS $WARM_RSS (warm) -> $END_RSS kB"; FAIL=1; }
echo "from warm to end: fds $((END_FDS - WARM_FDS)), threads $((END_THREADS - WARM_THREADS)), RSS $((END_RSS - WARM_RSS)) kB over $SECONDS_TO_RUN s"
grep -E ' (ERROR|WARN) ' "$WORK/daemon.log" | grep -v 'plugin failed to load' | head -5 || true
(( FAIL == 0 )) && echo "OK: fds, threads and RSS back to baseline"
exit "$FAIL"
