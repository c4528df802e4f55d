#!/usr/bin/env bash
# Offline checks of deploy/k8s (no cluster can run here):
# 1. every manifest validates against the Kubernetes API schemas, strictly (unknown fields are
#    errors), with kubernetes-validate from PyPI in a private venv;
# 2. the init step's script, run with a stand-in kubectl, writes for an initial pod and for a
#    scaled-out pod a config file that `millrace serve` accepts.
# Run by .ci/run; on its own: deploy/k8s/validate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
versions=${K8S_VERSIONS:-"1.30.0 1.33.0"}
venv="$root/target/k8s-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "kubernetes-validate==1.37.0"
fi
manifests=$(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)
for v in $versions; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" $manifests
  echo "k8s: manifests valid against Kubernetes $v"
done

[ -x target/release/millrace ] || cargo build --release --bin millrace >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" - "$work" <<'PY'
import sys, yaml
work = sys.argv[1]
data = yaml.safe_load(open("deploy/k8s/configmap.yaml"))["data"]
for name in ("millrace.toml", "init.sh"):
    open(f"{work}/{name}", "w").write(data[name])
PY
mkdir -p "$work/bin"
printf '#!/bin/sh\necho zone-x\n' > "$work/bin/kubectl"
chmod +x "$work/bin/kubectl"
for pod in millrace-0 millrace-4; do
  PATH="$work/bin:$PATH" POD_NAME=$pod NODE_NAME=k8s-node STATEFULSET=millrace SERVICE=millrace \
    INITIAL_NODES=3 TEMPLATE="$work/millrace.toml" OUT="$work/$pod.toml" \
    bash "$work/init.sh" >/dev/null
  # An empty zone on the command line overrides the file's and is refused: that refusal comes
  # only after every key of the file was parsed and accepted.
  err=$(target/release/millrace serve --config "$work/$pod.toml" --zone "" 2>&1 || true)
  case "$err" in
    *"invalid configuration: zone: must not be empty"*) ;;
    *) echo "$err"; echo "k8s: the config written for $pod is refused"; exit 1 ;;
  esac
  grep -q 'zone = "zone-x"' "$work/$pod.toml"
done
grep -q '^peers = "1=millrace-0.millrace:7101,2=millrace-1.millrace:7101,3=millrace-2.millrace:7101"$' "$work/millrace-0.toml"
grep -q '^node-id = 5$' "$work/millrace-4.toml"
grep -q '^join = "millrace-client:7101"$' "$work/millrace-4.toml"
echo "k8s: the init step writes configs the node accepts (initial pod and scaled-out pod)"
