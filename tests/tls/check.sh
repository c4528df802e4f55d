#!/usr/bin/env bash
# TLS end to end with unmodified tools (issue 15): a 3-node `millrace dev --tls` cluster with
# access keys (MILLRACE_ACCESS_KEYS, which dev's nodes inherit) serves the CLI over https://
# with the CA and a signed key, the AWS CLI and boto3 over HTTPS with the CA and SigV4; boto3 without the
# CA, with a wrong secret, or over plaintext is refused; a key created with the CLI may do only
# what its policy and the stream's resource policy allow; curl gets the status pages signed
# with SigV4 and is refused unsigned. Prints "tls check: PASSED".
# Run by .ci/run after the release build; on its own: tests/tls/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin="$root/target/release/millrace"
venv="$root/target/compose-venv"
[ -x "$bin" ] || cargo build --release --bin millrace
if [ ! -x "$venv/bin/aws" ] || ! "$venv/bin/python" -c 'import boto3, prometheus_client' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet boto3 awscli prometheus_client
fi

data=$(mktemp -d /tmp/millrace-tls-check.XXXXXX)
dev=""
teardown() {
  status=$?
  if [ -n "$dev" ]; then
    kill -INT "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ]; then
    echo "tls check: FAILED; node logs:"
    tail -n 30 "$data"/node-*/node.log 2>/dev/null || true
  fi
  rm -rf "$data"
  exit "$status"
}
trap teardown EXIT

MILLRACE_ACCESS_KEYS="AKIDTLSCHECK:tls-check-secret" "$bin" dev --tls --data-dir "$data" \
  > "$data/dev.out" 2>&1 &
dev=$!

export MILLRACE_CA_CERT="$data/tls/ca.pem"
export MILLRACE_ENDPOINT=https://127.0.0.1:7101,https://127.0.0.1:7102,https://127.0.0.1:7103
export MILLRACE_ACCESS_KEY_ID=AKIDTLSCHECK MILLRACE_SECRET_ACCESS_KEY=tls-check-secret
"$venv/bin/python" tests/tls/boto3_check.py wait --ca "$data/tls/ca.pem"

# The README's CLI commands, over TLS with a signed key.
"$bin" stream create tls-cli --shards 2 >/dev/null
printf 'one\ntwo\nthree\n' | "$bin" put tls-cli --partition-key k >/dev/null
got=$("$bin" read tls-cli | grep -c '"data":"' || true)
[ "$got" = 3 ] || { echo "CLI read $got records, wanted 3"; exit 1; }
if MILLRACE_SECRET_ACCESS_KEY=wrong "$bin" stream list >/dev/null 2>&1; then
  echo "the CLI with a wrong secret was answered"; exit 1
fi

# The AWS CLI, unmodified, over HTTPS with the CA and the key (a wrong secret is refused).
aws_kinesis() {
  AWS_ACCESS_KEY_ID=AKIDTLSCHECK AWS_DEFAULT_REGION=us-east-1 "$venv/bin/aws" \
    --endpoint-url https://127.0.0.1:4567 --ca-bundle "$MILLRACE_CA_CERT" kinesis "$@"
}
AWS_SECRET_ACCESS_KEY=tls-check-secret aws_kinesis list-streams | grep -q '"tls-cli"' \
  || { echo "aws kinesis list-streams does not list tls-cli"; exit 1; }
AWS_SECRET_ACCESS_KEY=tls-check-secret aws_kinesis describe-stream-summary \
  --stream-name tls-cli | grep -q '"OpenShardCount": 2' \
  || { echo "aws kinesis describe-stream-summary lost the shard count"; exit 1; }
if AWS_SECRET_ACCESS_KEY=wrong aws_kinesis list-streams >/dev/null 2>&1; then
  echo "the AWS CLI with a wrong secret was answered"; exit 1
fi
"$venv/bin/python" tests/tls/boto3_check.py run --ca "$data/tls/ca.pem" \
  --key AKIDTLSCHECK --secret tls-check-secret
# Permissions: a key created with the CLI, whose policy lets it read tls-* streams only.
created=$("$bin" access-key create)
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$created" "$1"; }
user_key=$(field access_key_id)
user_secret=$(field secret_access_key)
printf '{"statements":[{"effect":"allow","actions":["read"],"streams":["tls-*"]}]}' \
  | "$bin" policy put "$user_key" --file -
"$bin" policy get "$user_key" | grep -q '"tls-\*"' || { echo "policy get lost the policy"; exit 1; }
"$bin" access-key list | grep -q "\"$user_key\"" || { echo "access-key list misses the key"; exit 1; }
if "$bin" access-key list | grep -q "$user_secret"; then echo "access-key list shows a secret"; exit 1; fi
"$venv/bin/python" tests/tls/boto3_check.py permissions --ca "$data/tls/ca.pem" \
  --key AKIDTLSCHECK --secret tls-check-secret --user-key "$user_key" --user-secret "$user_secret"
# The status pages: curl signs them itself (SigV4); unsigned, or by a key without the cluster
# right, they are refused.
status_url=https://127.0.0.1:4567/v1/cluster/status
status_code() { curl -s -o /dev/null -w '%{http_code}' --cacert "$MILLRACE_CA_CERT" "$@" "$status_url"; }
code=$(status_code)
[ "$code" = 401 ] || { echo "an unsigned status page answered HTTP $code, not 401"; exit 1; }
code=$(status_code --aws-sigv4 "aws:amz:us-east-1:kinesis" --user "$user_key:$user_secret")
[ "$code" = 403 ] || { echo "a read-only key's status page answered HTTP $code, not 403"; exit 1; }
curl -sf --cacert "$MILLRACE_CA_CERT" --aws-sigv4 "aws:amz:us-east-1:kinesis" \
  --user "AKIDTLSCHECK:tls-check-secret" "$status_url" | grep -q '"metadata_leader"' \
  || { echo "curl --aws-sigv4 with the admin key did not get the cluster status"; exit 1; }
# /metrics (issue 16), signed like the status pages, parsed by the reference OpenMetrics parser.
metrics_url=https://127.0.0.1:4567/metrics
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$MILLRACE_CA_CERT" "$metrics_url")
[ "$code" = 401 ] || { echo "an unsigned /metrics answered HTTP $code, not 401"; exit 1; }
for port in 4567 4568 4569; do
  curl -sf --cacert "$MILLRACE_CA_CERT" --aws-sigv4 "aws:amz:us-east-1:kinesis" \
    --user "AKIDTLSCHECK:tls-check-secret" "https://127.0.0.1:$port/metrics" > "$data/metrics-$port.txt"
done
"$venv/bin/python" tests/tls/openmetrics_check.py "$data"/metrics-45*.txt
"$bin" access-key delete "$user_key"
for attempt in $(seq 50); do  # every node applies the deletion within milliseconds
  MILLRACE_ACCESS_KEY_ID="$user_key" MILLRACE_SECRET_ACCESS_KEY="$user_secret" \
    "$bin" stream list >/dev/null 2>&1 || break
  [ "$attempt" = 50 ] && { echo "a deleted key was still answered after 10 s"; exit 1; }
  sleep 0.2
done
echo "tls check: PASSED"
