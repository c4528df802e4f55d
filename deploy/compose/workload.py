"""The Compose fault test's workload and checker (deploy/compose/test.sh runs it).

  workload.py write --stream S --state DIR --stop FILE --millrace BIN --grpc URL,URL --http URL,URL
      Writes until FILE exists, from two writers at once: the native API through the `millrace`
      CLI (`millrace put`, 10 records per call) and the Kinesis API through boto3 (PutRecord,
      one call per record, no retries, so an acknowledgement is one attempt). Each writer owns
      its keys and writes each key's values in order. Appends to DIR/acked.jsonl every
      acknowledged record and to DIR/in_doubt.jsonl every record whose outcome is unknown.

  workload.py check --stream S --state DIR --millrace BIN --grpc URL,URL
      Reads the stream back (`millrace read`, every shard from TRIM_HORIZON) and checks that every
      acknowledged record is there exactly once, that no record was read twice, that nothing was
      read that nobody wrote, and that each key's acknowledged records are in the order they
      were written. Exit 0 when all holds, 1 otherwise.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

KEYS_PER_WRITER = 4
NATIVE_BATCH = 10


def log(message):
    print(f"[workload] {message}", file=sys.stderr, flush=True)


class Journal:
    """Acknowledged and in-doubt records, appended as they happen (one JSON object a line)."""

    def __init__(self, state):
        self.lock = threading.Lock()
        self.acked = open(os.path.join(state, "acked.jsonl"), "a", encoding="utf-8")
        self.in_doubt = open(os.path.join(state, "in_doubt.jsonl"), "a", encoding="utf-8")

    def write(self, ok, key, value, index, sequence_number=None):
        row = {"key": key, "value": value, "index": index, "sequence_number": sequence_number}
        with self.lock:
            f = self.acked if ok else self.in_doubt
            f.write(json.dumps(row) + "\n")
            f.flush()


def native_writer(args, journal, stop):
    """`millrace put` with NATIVE_BATCH lines per call; each output line answers one line."""
    counters = Counter()
    env = dict(os.environ, MILLRACE_ENDPOINT=args.grpc)
    while not os.path.exists(stop):
        key = f"native-{random.randrange(KEYS_PER_WRITER)}"
        batch = []
        for _ in range(NATIVE_BATCH):
            batch.append((counters[key], f"{key}-{counters[key]}"))
            counters[key] += 1
        stdin = "".join(value + "\n" for _, value in batch)
        try:
            out = subprocess.run(
                [args.millrace, "put", args.stream, "--partition-key", key],
                input=stdin, capture_output=True, text=True, env=env, timeout=60,
            ).stdout.splitlines()
        except subprocess.TimeoutExpired:
            out = []
        for n, (index, value) in enumerate(batch):
            answer = json.loads(out[n]) if n < len(out) else {}
            sequence_number = answer.get("sequence_number")
            journal.write(sequence_number is not None, key, value, index, sequence_number)


def kinesis_writer(args, journal, stop):
    """boto3 PutRecord against a random node per call, without retries."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"total_max_attempts": 1}, connect_timeout=3, read_timeout=5)
    clients = [
        boto3.client(
            "kinesis", endpoint_url=url, region_name="us-east-1", config=config,
            aws_access_key_id="any", aws_secret_access_key="any",
        )
        for url in args.http.split(",")
    ]
    counters = Counter()
    while not os.path.exists(stop):
        key = f"kinesis-{random.randrange(KEYS_PER_WRITER)}"
        index = counters[key]
        counters[key] += 1
        value = f"{key}-{index}"
        try:
            r = random.choice(clients).put_record(
                StreamName=args.stream, PartitionKey=key, Data=value.encode()
            )
            journal.write(True, key, value, index, r["SequenceNumber"])
        except Exception as e:  # any failure leaves the outcome unknown
            journal.write(False, key, value, index)
            log(f"kinesis put failed ({type(e).__name__}); in doubt: {value}")
            time.sleep(0.2)


def write(args):
    os.makedirs(args.state, exist_ok=True)
    journal = Journal(args.state)
    threads = [
        threading.Thread(target=native_writer, args=(args, journal, args.stop)),
        threading.Thread(target=kinesis_writer, args=(args, journal, args.stop)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log("writers stopped")


def load(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check(args):
    acked = load(os.path.join(args.state, "acked.jsonl"))
    in_doubt = load(os.path.join(args.state, "in_doubt.jsonl"))
    env = dict(os.environ, MILLRACE_ENDPOINT=args.grpc)
    out = subprocess.run(
        [args.millrace, "read", args.stream], capture_output=True, text=True, env=env,
        timeout=300, check=True,
    ).stdout
    # `millrace read` prints each shard in sequence order, one shard after another; a key lives
    # in one shard (no resharding here), so a key's records come out in its shard's order.
    read = [json.loads(line) for line in out.splitlines() if line.strip()]
    seen = Counter(r["data"] for r in read)
    written = {r["value"] for r in acked} | {r["value"] for r in in_doubt}
    problems = []
    for r in acked:
        n = seen[r["value"]]
        if n != 1:
            problems.append(f"acknowledged {r['value']} read {n} times")
    for value, n in seen.items():
        if n > 1 and value not in {r["value"] for r in acked}:
            problems.append(f"{value} read {n} times")
        if value not in written:
            problems.append(f"{value} read but never written")
    index_of = {r["value"]: r["index"] for r in acked}
    order = defaultdict(list)
    for r in read:
        if r["data"] in index_of:
            order[r["partition_key"]].append(index_of[r["data"]])
    for key, indexes in order.items():
        if indexes != sorted(indexes):
            problems.append(f"key {key}: acknowledged records out of order")
    by_writer = Counter(r["key"].split("-")[0] for r in acked)
    log(
        f"acknowledged {len(acked)} ({dict(by_writer)}), in doubt {len(in_doubt)}, "
        f"read {len(read)} records"
    )
    for p in problems[:20]:
        log(f"ANOMALY: {p}")
    if min(by_writer.get("native", 0), by_writer.get("kinesis", 0)) < 50:
        log("too few acknowledged writes for the check to mean anything (50 per API needed)")
        return 1
    return 1 if problems else 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["write", "check"])
    p.add_argument("--stream", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--stop")
    p.add_argument("--millrace", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--http")
    args = p.parse_args()
    if args.command == "write":
        write(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
