#!/usr/bin/env bash
# Builds the image `millrace-prometheus:dev` FROM scratch out of Debian's `prometheus` package
# (no image registry is needed): the package is downloaded with apt (not installed), and its
# binary goes in with the shared libraries `ldd` says it loads, /etc/passwd with the user
# `nobody` it runs as, and an empty /prometheus for its data. The configuration is mounted
# (deploy/grafana/prometheus.yml; see deploy/compose/docker-compose.monitoring.yml).
# Usage: deploy/prometheus/build-image.sh [TAG]   (default millrace-prometheus:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-millrace-prometheus:dev}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
repo=$(pwd)
cd "$ctx"
# apt-get download keeps the package out of the host's installed set; the index may need an
# update on a fresh machine.
apt-get download prometheus >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }
dpkg-deb -x prometheus_*.deb pkg
bin=pkg/usr/bin/prometheus
root=rootfs
mkdir -p "$root/usr/bin" "$root/etc/prometheus" data
cp "$bin" "$root/usr/bin/prometheus"
# The web UI's files, when the package ships them (the API and scraping need none).
if [ -d pkg/usr/share/prometheus ]; then
  mkdir -p "$root/usr/share"
  cp -r pkg/usr/share/prometheus "$root/usr/share/"
fi
bash "$repo/deploy/docker/copy-libs.sh" "$bin" "$root"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
echo 'nogroup:x:65534:' > "$root/etc/group"
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
cat > Dockerfile <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
COPY --chown=65534:65534 data/ /prometheus/
USER 65534:65534
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
DOCKERFILE
docker build --quiet -t "$tag" . >/dev/null
docker run --rm "$tag" --version >/dev/null
version=$(docker run --rm "$tag" --version 2>&1 | head -1)
echo "built $tag ($version)"
