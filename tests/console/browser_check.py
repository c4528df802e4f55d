"""The console in a real browser (issue 16): headless Chromium, driven over the DevTools
protocol, loads /console of a running 3-node cluster once and is never reloaded; the rendered
DOM must name all three nodes (up) and the stream with a leader for every shard (with
--writing, a write rate above 0; with --group, the consumer group and its lag in records). Then one node
(not the one serving the page, not the metadata leader, leading at least one shard) is killed
with SIGKILL, and the same page must show it down and every shard led by a live node, within
three refresh intervals (and 2 s) of the cluster status saying so. Screenshots before and after are saved.

Usage: browser_check.py --url URL --stream NAME --data-dir DIR --artifacts DIR
           [--group NAME] [--writing] [--key ID --secret SECRET]
Prints "console browser check: PASSED" or exits non-zero naming what was wrong.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

DEADLINE_S = 60


def fail(why):
    print(f"console browser check: FAILED: {why}", file=sys.stderr)
    sys.exit(1)


class Browser:
    """One headless Chromium with one page, spoken to over the DevTools protocol."""

    def __init__(self, profile):
        self.proc = subprocess.Popen(
            [
                shutil.which("chromium") or "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = os.path.join(profile, "DevToolsActivePort")
        port = None
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end and port is None:
            if os.path.exists(port_file):
                lines = open(port_file).read().split()
                port = lines[0] if lines else None
            if port is None:
                time.sleep(0.1)
        if port is None:
            fail("chromium did not open its DevTools port")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=DEADLINE_S)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    fail(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("value")

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        print(f"screenshot: {path}")

    def close(self):
        self.proc.kill()
        self.proc.wait()


# What the page shows, read from its DOM.
VIEW = """JSON.stringify({
  origin: performance.timeOrigin,
  refreshes: Number(document.body.dataset.refreshes || 0),
  nodes: [...document.querySelectorAll('[data-node-id]')].map(r => ({id: Number(r.dataset.nodeId), up: r.dataset.up === 'true', leads: Number(r.dataset.leads)})),
  streams: [...document.querySelectorAll('[data-stream]')].map(d => d.dataset.stream),
  write_rates: [...document.querySelectorAll('[data-stream]')].map(d => Number(d.dataset.writeRate || 0)),
  groups: [...document.querySelectorAll('[data-group]')].map(g => g.dataset.group),
  group_lags: [...document.querySelectorAll('[data-group]')].map(g => g.dataset.lagRecords || ""),
  shards: [...document.querySelectorAll('[data-stream] [data-shard]')].map(r => ({shard: r.dataset.shard, leader: r.dataset.leader})),
  warnings: [...document.querySelectorAll('[data-warning]')].map(w => w.dataset.warning),
  text: document.body.innerText,
})"""


def view(browser):
    v = browser.eval(VIEW)
    return json.loads(v) if v else None


def wait_for(what, check, deadline_s=DEADLINE_S):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = check()
        if last and last[0]:
            return last[1]
        time.sleep(0.2)
    fail(f"{what} within {deadline_s} s; last seen: {last[1] if last else None}")


def cluster_state(url, auth):
    req = urllib.request.Request(url.rstrip("/") + "/state")
    if auth:
        req.add_header("Authorization", auth)
    try:
        return json.load(urllib.request.urlopen(req, timeout=5))
    except Exception:
        return None


def node_pid(data_dir, node_id):
    """The pid of `millrace serve` for node `node_id` of the dev cluster in `data_dir`."""
    want = os.path.join(data_dir, f"node-{node_id}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and want.encode() in args:
            return int(pid)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--group", help="a consumer group the page must list")
    ap.add_argument("--writing", action="store_true",
                    help="records are being written: the page must show a write rate above 0")
    ap.add_argument("--key")
    ap.add_argument("--secret")
    a = ap.parse_args()
    os.makedirs(a.artifacts, exist_ok=True)
    auth = None
    if a.key:
        auth = "Basic " + base64.b64encode(f"{a.key}:{a.secret}".encode()).decode()

    profile = tempfile.mkdtemp(prefix="millrace-console-chromium.")
    browser = Browser(profile)
    try:
        browser.call("Page.enable")
        browser.call("Network.enable")
        if auth:
            browser.call("Network.setExtraHTTPHeaders", headers={"Authorization": auth})
        browser.call("Page.navigate", url=a.url)

        def healthy():
            v = view(browser)
            ok = (
                v is not None
                and sorted(n["id"] for n in v["nodes"]) == [1, 2, 3]
                and all(n["up"] for n in v["nodes"])
                and a.stream in v["streams"]
                and v["shards"]
                and all(s["leader"] for s in v["shards"])
                and (not a.group or a.group in v["groups"])
                # The group's lag in records, measured by the shards' leaders, has arrived.
                and (not a.group or any(lag.isdigit() for lag in v["group_lags"]))
                and (not a.writing or max(v["write_rates"], default=0) > 0)
            )
            return ok, v

        before = wait_for("the console to show 3 nodes up, the stream led and written, and the group",
                          healthy)
        for node in ("node 1", "node 2", "node 3", a.stream):
            if node not in before["text"]:
                fail(f"the page's text does not name {node!r}")
        browser.screenshot(os.path.join(a.artifacts, "console-before.png"))

        # The node to kill leads a shard and is neither the page's node nor the metadata
        # leader; leaderships are balanced over the nodes shortly after the stream is made.
        def candidate():
            st = cluster_state(a.url, auth)
            if st is None:
                return False, None
            leaders = {sh["leader"] for x in st["streams"] for sh in x["shards"]}
            found = [n for n in (1, 2, 3)
                     if n not in (st["metadata_leader"], st["served_by"]) and n in leaders]
            return bool(found), (found[0] if found else None, st)

        victim, s = wait_for("a node to kill that leads a shard (not the metadata leader)",
                             candidate)
        pid = node_pid(a.data_dir, victim)
        if pid is None:
            fail(f"no process for node {victim}")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        print(f"killed node {victim} (pid {pid}), which led shards of {a.stream}")

        def reported():
            st = cluster_state(a.url, auth)
            if st is None:
                return False, None
            down = any(n["node_id"] == victim and not n["up"] for n in st["nodes"])
            led = all(sh["leader"] not in (None, victim) for x in st["streams"] for sh in x["shards"])
            return down and led, st

        wait_for(f"the cluster status to show node {victim} down and its shards re-led", reported)
        known_at = time.monotonic()
        refresh_s = s["refresh_ms"] / 1000

        def shown():
            v = view(browser)
            ok = (
                v is not None
                and any(n["id"] == victim and not n["up"] and n["leads"] == 0 for n in v["nodes"])
                and all(x["leader"] and int(x["leader"]) != victim for x in v["shards"])
                and "node-down" in v["warnings"]
            )
            return ok, v

        after = wait_for(f"the console to show node {victim} down and its shards' new leaders",
                         shown, deadline_s=3 * refresh_s + 2)
        shown_at = time.monotonic()
        if after["origin"] != before["origin"]:
            fail("the page was reloaded; it must refresh itself")
        if after["refreshes"] <= before["refreshes"]:
            fail("the page did not refresh")
        browser.screenshot(os.path.join(a.artifacts, "console-after-kill.png"))
        print(f"node {victim} down in the status {known_at - killed_at:.1f} s after the kill; "
              f"on the page {shown_at - known_at:.1f} s later (refresh {refresh_s:.0f} s)")
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    print("console browser check: PASSED")


if __name__ == "__main__":
    main()
