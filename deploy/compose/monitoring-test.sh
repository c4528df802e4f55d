#!/usr/bin/env bash
# Prometheus beside the Compose cluster (issue 16): builds the node image and the Prometheus
# image (deploy/prometheus/build-image.sh, from Debian's package), starts docker-compose.yml with
# docker-compose.monitoring.yml, and checks that Prometheus scrapes all three nodes, that their
# metrics arrive (one metadata leader, every node's Raft groups), and that every query of the
# Grafana dashboard is PromQL that this Prometheus evaluates without an error. Everything it
# started is removed at the end, pass or fail.
# Without a working Docker it prints "monitoring test: SKIPPED" and exits 0: skipped, not passed.
# Run by .ci/run; on its own: deploy/compose/monitoring-test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! docker info >/dev/null 2>&1; then
  echo "monitoring test: SKIPPED (docker info fails: no Docker engine here)"
  exit 0
fi
project=millrace-monitoring
files=(-f deploy/compose/docker-compose.yml -f deploy/compose/docker-compose.monitoring.yml)
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose -p "$project" "${files[@]}" "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
  compose() { docker-compose -p "$project" "${files[@]}" "$@"; }
else
  echo "monitoring test: SKIPPED (neither 'docker compose' nor docker-compose is installed)"
  exit 0
fi

teardown() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "monitoring test: FAILED; logs:"
    compose logs --no-color --tail 20 2>&1 | tail -80 || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  exit "$status"
}
trap teardown EXIT
compose down -v --remove-orphans >/dev/null 2>&1 || true

deploy/docker/build-image.sh >/dev/null
deploy/prometheus/build-image.sh
compose up -d >/dev/null 2>&1
python3 - <<'PY'
import json, sys, time, urllib.parse, urllib.request

API = "http://127.0.0.1:9090/api/v1"

def get(path):
    try:
        return json.load(urllib.request.urlopen(API + path, timeout=5))
    except urllib.error.HTTPError as e:
        return json.load(e)
    except Exception:
        return None

def query(expr):
    return get("/query?" + urllib.parse.urlencode({"query": expr}))

def scalar(expr):
    r = query(expr)
    result = (r or {}).get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None

def wait(what, check, deadline_s=120):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(1)
    sys.exit(f"monitoring test: FAILED: {what} within {deadline_s} s")

def targets_up():
    r = get("/targets")
    active = (r or {}).get("data", {}).get("activeTargets", [])
    up = sorted(t["labels"]["instance"] for t in active if t["health"] == "up")
    return up if len(up) == 3 else None

print("scraped and up:", ", ".join(wait("Prometheus to scrape all three nodes", targets_up)))
wait("one metadata leader in the scraped metrics",
     lambda: scalar('sum(millrace_metadata_leader{job="millrace"})') == 1.0)
wait("every node's Raft groups in the scraped metrics",
     lambda: scalar('count(millrace_raft_groups{job="millrace"} >= 1)') == 3.0)

dashboard = json.load(open("deploy/grafana/millrace-dashboard.json"))
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                exprs.append(x)
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(dashboard)
bad = []
for e in exprs:
    q = e.replace("$job", "millrace").replace("$__rate_interval", "1m")
    r = query(q)
    if not r or r.get("status") != "success":
        bad.append(f"{e}: {(r or {}).get('error', 'no answer')}")
if bad:
    sys.exit("monitoring test: FAILED: dashboard queries Prometheus refuses:\n  " + "\n  ".join(bad))
print(f"all {len(exprs)} dashboard queries evaluate")
PY
echo "monitoring test: PASSED"
