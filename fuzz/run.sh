#!/usr/bin/env bash
# Builds every fuzz target (cargo-fuzz, AddressSanitizer) and runs each for SECONDS (default
# 10), one after another, starting from its committed corpus (fuzz/corpus/<target>/; new
# inputs found go to fuzz/target/new-corpus/, not into the committed one). A crash, timeout
# or out-of-memory stops the script with a non-zero status and leaves the input under
# fuzz/artifacts/<target>/.
#   fuzz/run.sh [SECONDS] [TARGET...]
# FUZZ_SANITIZER (default address; `none` builds in about a third of the time) and FUZZ_DEV=1
# (no optimisation, debug assertions on: builds in ~2 min on 2 cores, runs slower) choose the
# build; CI runs `FUZZ_SANITIZER=none FUZZ_DEV=1 fuzz/run.sh 5`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
shift || true
CARGO_FUZZ_VERSION=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION"; then
  cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
# cargo-fuzz needs nightly flags (-Zsanitizer); the stable toolchain accepts them with this.
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir .)
build=(--fuzz-dir . --sanitizer "${FUZZ_SANITIZER:-address}")
[ "${FUZZ_DEV:-0}" = 1 ] && build+=(--dev)
cargo fuzz build "${build[@]}"
for t in "${targets[@]}"; do
  scratch="target/new-corpus/$t"
  mkdir -p "$scratch"
  echo "fuzz: $t for ${seconds}s"
  log="target/fuzz-$t.log"
  rc=0
  cargo fuzz run "${build[@]}" "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$log" | tr '\n' ' '
  echo
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz: $t FAILED (status $rc; the input is under fuzz/artifacts/$t/)"
    exit 1
  fi
done
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a crash"
