"""boto3 against a TLS Millrace cluster (tests/tls/check.sh): what works and what is refused."""

import argparse
import ssl
import sys
import time
import urllib.request

import boto3
import botocore.config
import botocore.exceptions

HTTPS = "https://127.0.0.1:4567"


def client(endpoint, verify, key, secret):
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        verify=verify,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10),
    )


def wait(ca):
    context = None  # until dev has written the CA file
    deadline = time.time() + 90
    while time.time() < deadline:
        if context is None:
            try:
                context = ssl.create_default_context(cafile=ca)
            except OSError:
                time.sleep(0.5)
                continue
        try:
            ready = all(
                urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=context, timeout=2).status == 200
                for port in (4567, 4568, 4569)
            )
            if ready:
                return
        except OSError:  # not up yet (URLError, refused, reset)
            pass
        time.sleep(0.5)
    sys.exit("the TLS cluster did not become ready within 90 s")


def refused(what, call, expect):
    try:
        call()
    except expect as e:
        print(f"refused as it should be: {what}: {type(e).__name__}: {str(e)[:120]}")
        return
    sys.exit(f"{what} was answered")


def run(ca, key, secret):
    k = client(HTTPS, ca, key, secret)
    k.create_stream(StreamName="tls-boto3", ShardCount=1)
    k.get_waiter("stream_exists").wait(StreamName="tls-boto3", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    sent = [f"record {i} over TLS".encode() for i in range(20)]
    for data in sent:
        k.put_record(StreamName="tls-boto3", PartitionKey="k", Data=data)
    it = k.get_shard_iterator(
        StreamName="tls-boto3", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    got = []
    while len(got) < len(sent):
        page = k.get_records(ShardIterator=it, Limit=1000)
        if not page["Records"]:
            break
        got += [r["Data"] for r in page["Records"]]
        it = page["NextShardIterator"]
    if got != sent:
        sys.exit(f"boto3 read back {len(got)} records, not the {len(sent)} written in order")
    print(f"boto3 over HTTPS: wrote and read back {len(got)} records")

    refused(
        "boto3 that does not trust the cluster CA",
        lambda: client(HTTPS, True, key, secret).list_streams(),
        botocore.exceptions.SSLError,
    )
    refused(
        "boto3 with a wrong secret",
        lambda: client(HTTPS, ca, key, "wrong-secret").list_streams(),
        botocore.exceptions.ClientError,
    )
    refused(
        "boto3 with an unknown key",
        lambda: client(HTTPS, ca, "AKIDUNKNOWN", secret).list_streams(),
        botocore.exceptions.ClientError,
    )
    refused(
        "boto3 over plaintext HTTP to the TLS port",
        lambda: client("http://127.0.0.1:4567", None, key, secret).list_streams(),
        (botocore.exceptions.HTTPClientError, botocore.exceptions.EndpointConnectionError),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["wait", "run"])
    p.add_argument("--ca", required=True)
    p.add_argument("--key")
    p.add_argument("--secret")
    a = p.parse_args()
    if a.what == "wait":
        wait(a.ca)
    else:
        run(a.ca, a.key, a.secret)


if __name__ == "__main__":
    main()
