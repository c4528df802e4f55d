"""boto3 against a TLS Millrace cluster (tests/tls/check.sh): what works and what is refused."""

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
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


def access_denied(what, call, says):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        code, message = e.response["Error"]["Code"], e.response["Error"]["Message"]
        if code != "AccessDeniedException" or says not in message:
            sys.exit(f"{what}: refused with {code}: {message!r}, not AccessDeniedException saying {says!r}")
        print(f"refused as it should be: {what}: {code}: {message[:140]}")
        return
    sys.exit(f"{what} was answered")


def raw(ca, key, secret, action, body):
    """A SigV4-signed Kinesis request with exactly `body` (members an SDK would not send)."""
    data = json.dumps(body).encode()
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url=HTTPS + "/",
        data=data,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Kinesis_20131202." + action},
    )
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(key, secret), "kinesis", "us-east-1").add_auth(request)
    prepared = request.prepare()
    sent = urllib.request.Request(prepared.url, data=data, headers=dict(prepared.headers), method="POST")
    try:
        answer = urllib.request.urlopen(sent, context=ssl.create_default_context(cafile=ca), timeout=10)
        return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def permissions(ca, key, secret, user_key, user_secret):
    """A key the CLI created, whose policy lets it read tls-* streams only."""
    admin = client(HTTPS, ca, key, secret)
    user = client(HTTPS, ca, user_key, user_secret)
    deadline = time.time() + 10
    while True:  # the key is applied on every node within milliseconds; allow for a slow run
        try:
            names = user.list_streams()["StreamNames"]
            break
        except botocore.exceptions.ClientError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    if "tls-boto3" not in names or any(not n.startswith("tls-") for n in names):
        sys.exit(f"the read-only key lists {names}")
    user.describe_stream_summary(StreamName="tls-boto3")
    # ListShards pages: the NextToken alone names the stream the key may read.
    first = user.list_shards(StreamName="tls-cli", MaxResults=1)
    rest = user.list_shards(NextToken=first["NextToken"])
    if len(first["Shards"]) + len(rest["Shards"]) != 2:
        sys.exit(f"the read-only key paged through {first} and {rest}, not 2 shards")
    access_denied(
        "a key that may only read, writing",
        lambda: user.put_record(StreamName="tls-boto3", PartitionKey="k", Data=b"x"),
        f"User: arn:aws:iam::123456789012:user/{user_key} is not authorized to perform: kinesis:PutRecord",
    )
    arn = admin.describe_stream_summary(StreamName="tls-boto3")["StreamDescriptionSummary"]["StreamARN"]
    # Members an action does not read cannot choose what is checked: the stream the action
    # acts on is the one authorised.
    admin.create_stream(StreamName="secret-stream", ShardCount=1)
    admin.get_waiter("stream_exists").wait(StreamName="secret-stream", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    iterator = admin.get_shard_iterator(
        StreamName="secret-stream", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    for action, body in [
        ("DescribeStreamSummary", {"StreamName": "secret-stream", "ResourceARN": arn}),
        ("DescribeStreamSummary", {"StreamName": "secret-stream", "ConsumerARN": arn + "/consumer/c:1"}),
        ("GetRecords", {"ShardIterator": iterator, "StreamARN": arn}),
    ]:
        status, answer = raw(ca, user_key, user_secret, action, body)
        if answer.get("__type") != "AccessDeniedException" or "secret-stream" not in answer.get("message", ""):
            sys.exit(f"{action} {sorted(body)} by the tls-* key: {status} {answer}")
        print(f"refused as it should be: {action} with {sorted(body)} on secret-stream")
    policy = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::123456789012:user/'
        + user_key
        + '"},"Action":"kinesis:Describe*","Resource":"'
        + arn
        + '"}]}'
    )
    admin.put_resource_policy(ResourceARN=arn, Policy=policy)
    if admin.get_resource_policy(ResourceARN=arn)["Policy"] != policy:
        sys.exit("GetResourcePolicy did not answer the policy put")
    deadline = time.time() + 10
    while True:
        try:
            user.describe_stream_summary(StreamName="tls-boto3")
        except botocore.exceptions.ClientError:
            break
        if time.time() > deadline:
            sys.exit("the resource policy's deny was not applied within 10 s")
        time.sleep(0.2)
    access_denied(
        "a resource policy that denies",
        lambda: user.describe_stream_summary(StreamName="tls-boto3"),
        "with an explicit deny in a resource-based policy",
    )
    admin.describe_stream_summary(StreamName="tls-boto3")  # the deny names one key only
    admin.delete_resource_policy(ResourceARN=arn)
    print("boto3 permissions: read-only key, explicit deny in a resource policy")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["wait", "run", "permissions"])
    p.add_argument("--ca", required=True)
    p.add_argument("--key")
    p.add_argument("--secret")
    p.add_argument("--user-key")
    p.add_argument("--user-secret")
    a = p.parse_args()
    if a.what == "wait":
        wait(a.ca)
    elif a.what == "permissions":
        permissions(a.ca, a.key, a.secret, a.user_key, a.user_secret)
    else:
        run(a.ca, a.key, a.secret)


if __name__ == "__main__":
    main()
