#!/usr/bin/env bash
# `systemd-analyze verify` on deploy/systemd/millrace.service, failing on any warning too.
# It runs against a scratch root (--root) holding the unit, the system's own units and the
# release binary at the path ExecStart names, so it checks the unit without installing anything.
# Without systemd-analyze it says "systemd verify: SKIPPED" and exits 0 (skipped, not passed).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd verify: SKIPPED (no systemd-analyze here)"
  exit 0
fi
units=$(systemd-analyze --system unit-paths 2>/dev/null | grep -m1 -E '^/(usr/)?lib/systemd/system$' || true)
units=${units:-/lib/systemd/system}
[ -x target/release/millrace ] || cargo build --release --bin millrace >&2
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp target/release/millrace "$root/usr/local/bin/millrace"
mkdir -p "$root/usr/bin"
cp /usr/bin/kill "$root/usr/bin/kill"   # ExecReload's
cp -r "$units" "$root/usr/lib/systemd/system"
cp deploy/systemd/millrace.service "$root/etc/systemd/system/"
out=$(systemd-analyze verify --root="$root" millrace.service 2>&1) || {
  echo "$out"
  echo "systemd verify: FAILED"
  exit 1
}
if [ -n "$out" ]; then
  echo "$out"
  echo "systemd verify: FAILED (warnings)"
  exit 1
fi
echo "systemd verify: PASSED (deploy/systemd/millrace.service)"
