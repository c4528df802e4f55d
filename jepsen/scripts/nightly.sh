#!/usr/bin/env bash
# The nightly tier (issue 18): RUNS runs of SECONDS each, 5 nodes, cycling through mixes of every
# nemesis at mixed rates, one report folder each, then the summary table (runs, ok operations,
# anomalies, the longest unavailability after each fault kind) in summary.md beside them.
#
#   jepsen/scripts/nightly.sh RUNS SECONDS        (as root; e.g. 20 300)
#
# NIGHTLY_SEED (default: the date) seeds the runs; NIGHTLY_MIXES (space-separated) replaces the
# mixes. Exit status: 0 when every run is valid, 1 otherwise (the table says which and why).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:?usage: nightly.sh RUNS SECONDS}"
seconds="${2:?usage: nightly.sh RUNS SECONDS}"
bash jepsen/scripts/setup.sh
read -r -a mixes <<< "${NIGHTLY_MIXES:-kill,partition,power-loss pause,clock,net reshard,kill,net power-loss,partition,clock corrupt,kill membership,kill,partition kill,pause,partition,clock,reshard,power-loss,net,corrupt,membership}"
rates=(100 200 400)
seed="${NIGHTLY_SEED:-$(date -u +%Y%m%d)}"
out="jepsen/results/nightly-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
cargo build --release -q -p millrace-jepsen
dirs=()
for ((i = 0; i < runs; i++)); do
  mix="${mixes[$((i % ${#mixes[@]}))]}"
  rate="${rates[$((i % ${#rates[@]}))]}"
  dir="$out/run-$(printf %02d "$i")"
  mkdir -p "$dir"
  echo "nightly: run $((i + 1))/$runs: --nemesis $mix --rate $rate --seed $((seed + i))" >&2
  # A failed run is a row of the table, not the end of the tier.
  target/release/millrace-jepsen test --nodes 5 --time-limit "$seconds" --nemesis "$mix" \
    --rate "$rate" --seed "$((seed + i))" --results "$dir" > "$dir/harness.log" 2>&1 || true
  tail -1 "$dir/harness.log" >&2
  dirs+=("$dir")
done
target/release/millrace-jepsen summarize --out "$out/summary.md" "${dirs[@]}"
