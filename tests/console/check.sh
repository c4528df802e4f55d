#!/usr/bin/env bash
# The web console (issue 16): a 3-node `millrace dev` cluster with access keys serves /console
# only to a key allowed GetClusterStatus (HTTP Basic: 401 without or with a wrong secret, 403
# for a key whose policy does not allow it), and headless Chromium (Debian's `chromium`,
# installed here when missing) loads it, sees all three nodes and the stream, and after a node
# is killed sees it down and its shards' new leaders without reloading (browser_check.py).
# Screenshots go to target/console-artifacts/. Prints "console check: PASSED".
# Run by .ci/run after the release build; on its own: tests/console/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin="$root/target/release/millrace"
venv="$root/target/console-venv"
artifacts="$root/target/console-artifacts"
[ -x "$bin" ] || cargo build --release --bin millrace
if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! "$venv/bin/python" -c 'import websocket' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet websocket-client
fi

data=$(mktemp -d /tmp/millrace-console-check.XXXXXX)
dev=""
load=()
teardown() {
  status=$?
  for pid in "${load[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$dev" ]; then
    kill -INT "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ]; then
    echo "console check: FAILED; node logs:"
    tail -n 30 "$data"/node-*/node.log 2>/dev/null || true
  fi
  rm -rf "$data"
  exit "$status"
}
trap teardown EXIT

key=AKIDCONSOLECHECK secret=console-check-secret
MILLRACE_ACCESS_KEYS="$key:$secret" "$bin" dev --data-dir "$data" > "$data/dev.out" 2>&1 &
dev=$!
export MILLRACE_ENDPOINT=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
export MILLRACE_ACCESS_KEY_ID=$key MILLRACE_SECRET_ACCESS_KEY=$secret

url=http://127.0.0.1:4567/console
status_of() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
deadline=$((SECONDS + 60))
until [ "$(status_of -u "$key:$secret" "$url/state")" = 200 ]; do
  [ $SECONDS -lt $deadline ] || { echo "the console state was not served within 60 s"; exit 1; }
  sleep 0.5
done

# Credentials: the same keys as the API.
[ "$(status_of "$url")" = 401 ] || { echo "/console without a key was not refused with 401"; exit 1; }
curl -s -D - -o /dev/null "$url" | grep -qi '^www-authenticate: Basic' \
  || { echo "/console's 401 does not ask for Basic credentials"; exit 1; }
[ "$(status_of -u "$key:wrong" "$url")" = 401 ] || { echo "/console with a wrong secret was not refused"; exit 1; }
[ "$(status_of -u "$key:wrong" "$url/state")" = 401 ] || { echo "/console/state with a wrong secret was not refused"; exit 1; }
[ "$(status_of -u "$key:$secret" "$url")" = 200 ] || { echo "/console with the key was refused"; exit 1; }
created=$("$bin" access-key create)
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$created" "$1"; }
reader_key=$(field access_key_id)
reader_secret=$(field secret_access_key)
printf '{"statements":[{"effect":"allow","actions":["read"],"streams":["*"]}]}' \
  | "$bin" policy put "$reader_key" --file -
deadline=$((SECONDS + 30))
until [ "$(status_of -u "$reader_key:$reader_secret" "$url")" = 403 ]; do
  [ $SECONDS -lt $deadline ] || { echo "/console was not refused with 403 for a key not allowed GetClusterStatus"; exit 1; }
  sleep 0.5
done

"$bin" stream create console-demo --shards 3 >/dev/null
printf 'one\ntwo\nthree\n' | "$bin" put console-demo --partition-key k >/dev/null

# Live traffic for the page's rates, and a consumer group for its lag.
yes 'a console record' | "$bin" put console-demo --partition-key k --rate 50 >/dev/null 2>&1 &
load+=($!)
"$bin" group consume console-demo --group console-readers --worker-id w1 >/dev/null 2>&1 &
load+=($!)

rm -rf "$artifacts"
"$venv/bin/python" tests/console/browser_check.py --url "$url" --stream console-demo \
  --group console-readers --writing \
  --data-dir "$data" --artifacts "$artifacts" --key "$key" --secret "$secret"
echo "console check: PASSED"
