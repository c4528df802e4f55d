#!/usr/bin/env bash
# Server CPU per record of one `bench produce` run on a fresh `millrace dev` cluster: records/s,
# latency, CPU-seconds per 10k records summed over the node processes (from /proc), and records
# per Raft entry (from the nodes' stats). For comparing shapes of the write path side by side in
# one sitting (shards, in flight, nodes, replication factor); see docs/benchmarks.md.
# Usage: [NODES=3] [RF=3] [RUNS=1] tests/bench/cpu-per-record.sh SHARDS IN_FLIGHT RECORDS
# Needs the release binary: cargo build --release --bin millrace
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$(pwd)/target/release/millrace}
NODES=${NODES:-3}
RF=${RF:-3}
RUNS=${RUNS:-1}
shards=${1:?shards}
in_flight=${2:?in flight}
records=${3:?records}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin millrace" >&2; exit 1; }
endpoints=$(seq 1 "$NODES" | sed 's/^/http:\/\/127.0.0.1:710/' | paste -sd,)
export MILLRACE_ENDPOINT=$endpoints
for _ in $(seq 1 "$RUNS"); do
  dir=$(mktemp -d)
  MILLRACE_REPLICATION_FACTOR=$RF "$BIN" dev --nodes "$NODES" --data-dir "$dir" > "$dir/dev.out" 2>&1 &
  dev=$!
  trap 'kill -INT $dev 2>/dev/null || true' EXIT
  for _ in $(seq 1 150); do curl -sf http://127.0.0.1:4567/readyz >/dev/null && break; sleep 0.2; done
  pids=$(pgrep -P "$dev" | paste -sd' ')
  ticks() { local t=0 p; for p in $pids; do set -- $(cut -d' ' -f14,15 "/proc/$p/stat"); t=$((t + $1 + $2)); done; echo "$t"; }
  # A warm-up run creates the stream and lets its leaders settle.
  "$BIN" bench produce --stream s --shards "$shards" --records 20000 --in-flight "$in_flight" --json > /dev/null
  t0=$(ticks)
  out=$("$BIN" bench produce --stream s --shards "$shards" --records "$records" --in-flight "$in_flight" --json | tail -1)
  t1=$(ticks)
  python3 - "$out" "$t0" "$t1" "$(getconf CLK_TCK)" "$records" "$NODES" "$RF" "$shards" "$in_flight" <<'PY'
import json, sys
o = json.loads(sys.argv[1])
t0, t1, hz, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
entries = sum(x["entries"] for x in o["nodes"])
recs = sum(x["records"] for x in o["nodes"])
print(f"nodes={sys.argv[6]} rf={sys.argv[7]} shards={sys.argv[8]} in_flight={sys.argv[9]}: "
      f"{o['records_per_sec']:.0f} records/s, p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, "
      f"{(t1 - t0) / hz / n * 1e4:.3f} server CPU-s per 10k records, "
      f"{recs / max(entries, 1):.1f} records per entry")
PY
  kill -INT "$dev" 2>/dev/null || true
  wait "$dev" 2>/dev/null || true
  trap - EXIT
  rm -rf "$dir"
done
