#!/usr/bin/env bash
# Idle cost of a 3-node cluster (one machine) with N idle shards: CPU (% of one core, summed over
# the three node processes), resident memory and disk, measured from /proc and du over a quiet
# window.
# Usage: [STREAMS=S] [WINDOW=SECONDS] tests/bench/idle-cost.sh [SHARDS...]   (default: 10 100 1000)
# With STREAMS=S, S streams of SHARDS shards each are created one after another (the issue's
# scale target: STREAMS=10 with 1000, the per-stream limit).
# Needs the release binary: cargo build --release --bin millrace
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/millrace}
WINDOW=${WINDOW:-20}
STREAMS=${STREAMS:-1}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin millrace" >&2; exit 1; }
ticks=$(getconf CLK_TCK)
for shards in "${@:-10 100 1000}"; do
  for n in $shards; do
    dir=$(mktemp -d)
    "$BIN" dev --data-dir "$dir" > "$dir/dev.out" 2>&1 &
    dev=$!
    trap 'kill -INT $dev 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do grep -q MILLRACE_ENDPOINT "$dir/dev.out" 2>/dev/null && break; sleep 0.2; done
    pids=$(grep -o 'pid [0-9]*' "$dir/dev.out" | awk '{print $2}')
    export MILLRACE_ENDPOINT=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
    for _ in $(seq 1 150); do curl -sf http://127.0.0.1:4567/readyz >/dev/null && break; sleep 0.2; done
    start=$(date +%s)
    each=""
    for s in $(seq 1 "$STREAMS"); do
      t0=$(date +%s)
      # Many shards can take longer than the CLI's 60 s wait: keep waiting for ACTIVE (10 min max).
      "$BIN" stream create "idle-$s" --shards "$n" > /dev/null 2>&1 || true
      for _ in $(seq 1 600); do
        "$BIN" stream describe "idle-$s" 2>/dev/null | grep -q '"status": "ACTIVE"' && break
        sleep 1
      done
      each="$each${each:+, }$(( $(date +%s) - t0 ))"
    done
    created=$(( $(date +%s) - start ))
    sleep 10   # let elections and catch-up settle
    cpu() { local t=0; for p in $pids; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t + $1 + $2)); done; echo $t; }
    c0=$(cpu); sleep "$WINDOW"; c1=$(cpu)
    rss=0; for p in $pids; do rss=$((rss + $(awk '/VmRSS/ {print $2}' /proc/$p/status))); done
    pct=$(awk -v d=$((c1 - c0)) -v t="$ticks" -v w="$WINDOW" 'BEGIN { printf "%.1f", 100 * d / t / w }')
    disk=$(du -sm --exclude=dev.out --exclude=node.log "$dir" | awk '{print $1}')
    sled=$(du -smc "$dir"/node-*/meta | tail -1 | awk '{print $1}')
    echo "{\"streams\": $STREAMS, \"shards_per_stream\": $n, \"create_seconds\": $created, \"create_seconds_each\": [$each], \"idle_cpu_percent_of_one_core\": $pct, \"rss_mib_total\": $((rss / 1024)), \"disk_mib_total\": $disk, \"sled_mib_total\": $sled}"
    kill -INT $dev; wait $dev 2>/dev/null || true
    # The nodes shut down gracefully after dev exits; wait until their ports are free.
    for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
    trap - EXIT
    rm -rf "$dir"
  done
done
