#!/usr/bin/env bash
# How long a restarted follower takes to catch up on large records (issue 12, pipelined
# replication): 3 local nodes, one stream of 1 shard; a follower is killed, RECORDS records of
# 1 MB (4 per request) are acknowledged, the follower is started again and the time until its
# applied index reaches the leader's is printed (process start included).
# Usage: [BIN=target/release/millrace] tests/bench/catch-up.sh [RECORDS]   (default 1500, ≈ 1.5 GB)
# Uses ports 7101-7103 and 4567-4569; needs about 3 × RECORDS MB of disk under /tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/millrace}
N=${1:-1500}
[ -x "$BIN" ] || { echo "build first: cargo build --release --bin millrace" >&2; exit 1; }
D=$(mktemp -d)
PEERS=1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103
export MILLRACE_ENDPOINT=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
declare -A PID
start() {
  mkdir -p "$D/n$1"
  "$BIN" serve --plaintext --node-id "$1" --data-dir "$D/n$1" --grpc-addr "127.0.0.1:710$1" \
    --http-addr "127.0.0.1:456$((6 + $1))" --zone "z$1" --peers "$PEERS" >> "$D/n$1.log" 2>&1 &
  PID[$1]=$!
  disown "${PID[$1]}"
}
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
applied() {  # the shard group's applied index on node $1 (0 if unknown)
  curl -sf "127.0.0.1:456$((6 + $1))/v1/node/status" 2>/dev/null | python3 -c '
import json, sys
g = [x for x in json.load(sys.stdin)["groups"] if x["group_id"] != 0]
print((g[0]["applied_index"] or 0) if g else 0)' 2>/dev/null || echo 0
}
start 1; start 2; start 3
for _ in $(seq 1 120); do
  [ "$("$BIN" cluster status 2>/dev/null | grep -c ' up ')" = 3 ] && break; sleep 0.5
done
"$BIN" stream create catchup --shards 1 > /dev/null
sleep 2
leader=$("$BIN" cluster status | awk 'NR > 1 && $1 ~ /^[0-9]+$/ && $6 == 1 {print $1; exit}')
follower=$(( leader % 3 + 1 ))
echo "leader node $leader, follower node $follower (killed)"
kill -9 "${PID[$follower]}"
"$BIN" bench produce --stream catchup --records "$N" --record-bytes 1000000 --in-flight 8 \
  --batch-records 4 2>&1 | head -1
target=$(applied "$leader")
t0=$(date +%s.%N)
start "$follower"
until [ "$(applied "$follower")" -ge "$target" ]; do sleep 0.2; done
echo "the follower applied index $target after $(echo "$(date +%s.%N) - $t0" | bc) s (process start included)"
