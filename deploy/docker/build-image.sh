#!/usr/bin/env bash
# Builds the release `millrace` binary on this host and the image `millrace:dev` FROM scratch:
# the binary (debug info stripped), the shared libraries `ldd` says it loads, at the paths its
# loader looks in, /etc/passwd and /etc/group with the user `millrace` (10001), and an empty
# /data owned by it. No base image is pulled: nothing but the host's files goes in.
# Usage: deploy/docker/build-image.sh [TAG]   (default millrace:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-millrace:dev}
cargo build --release --bin millrace >&2
bin=target/release/millrace

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$ctx/data"
strip --strip-debug -o "$root/usr/local/bin/millrace" "$bin"
# Every library the dynamic loader resolves, and the loader itself, at their own paths.
bash deploy/docker/copy-libs.sh "$bin" "$root"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/sbin/nologin
millrace:x:10001:10001:millrace:/data:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
millrace:x:10001:
GROUP
# Names (peers, other containers) resolve through /etc/hosts, then DNS (Docker's resolver).
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
cp deploy/docker/Dockerfile "$ctx/Dockerfile"

docker build --quiet -t "$tag" "$ctx" >&2
# The image must run on its own: the binary starts and finds every library.
docker run --rm --entrypoint /usr/local/bin/millrace "$tag" --version >&2
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "built $tag: $((size / 1024 / 1024)) MiB ($size bytes)"
