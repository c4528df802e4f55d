#!/usr/bin/env bash
# Copies into ROOT every shared library BINARY loads (as `ldd` resolves them) and the dynamic
# loader itself, each at its own path, so that BINARY runs in a FROM scratch image built on ROOT.
# Usage: deploy/docker/copy-libs.sh BINARY ROOT
set -euo pipefail
bin=$1 root=$2
# A static binary has none (ldd then says so and fails): nothing to copy.
{ ldd "$bin" || true; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
