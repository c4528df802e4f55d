#!/usr/bin/env bash
# Installs what the jepsen harness needs on a Debian machine: iproute2 (network namespaces,
# bridge, veth), iptables (partitions) and libfaketime (clock faults). Idempotent: installs only
# what is missing. Needs root, as the harness itself does.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
ls /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime libfaketime)
if [ ${#need[@]} -gt 0 ]; then
  echo "jepsen setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
