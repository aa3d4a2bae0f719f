#!/usr/bin/env python3
"""Small Kinesis client for the benchmark: Python standard library only (no boto3 to install).

    kinesis.py freeport                       a free TCP port on 127.0.0.1
    kinesis.py ready                          waits until the server answers (TLS verified)
    kinesis.py create STREAM SHARDS           creates a stream and waits until it is ACTIVE
    kinesis.py count STREAM T0 T1 [dups]      reads every shard and prints one JSON line
    kinesis.py delete STREAM

Environment: KINESIS_ENDPOINT (https://127.0.0.1:PORT), KINESIS_CA (PEM the server's
certificate chains to). Requests are signed with SigV4 like a real client's (kinesalite only
checks that a signature is there, but a correct one costs a few lines).

`count` reads the stream from the server, so it counts what was delivered, not what a client
believes it sent: every record, the records whose ApproximateArrivalTimestamp (the server's
clock) lies in [T0, T1) (unix seconds), their data bytes, with `dups` the repeated
(sourceId, sequenceNumber) pairs of streamgate payloads, and one record from the middle of the
window as a sample.
"""
import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import ssl
import sys
import time
import urllib.parse

REGION = os.environ.get("AWS_REGION", "us-east-1")
KEY = os.environ.get("AWS_ACCESS_KEY_ID", "bench")
SECRET = os.environ.get("AWS_SECRET_ACCESS_KEY", "bench")


class Kinesis:
    def __init__(self):
        url = urllib.parse.urlparse(os.environ["KINESIS_ENDPOINT"])
        self.host, self.port = url.hostname, url.port or 443
        ctx = ssl.create_default_context(cafile=os.environ["KINESIS_CA"])
        self.conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=60)

    def call(self, op, body):
        data = json.dumps(body).encode()
        amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "content-type": "application/x-amz-json-1.1",
            "host": f"{self.host}:{self.port}",
            "x-amz-date": amz_date,
            "x-amz-target": f"Kinesis_20131202.{op}",
        }
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            ["POST", "/", ""]
            + [f"{k}:{headers[k]}" for k in sorted(headers)]
            + ["", signed, hashlib.sha256(data).hexdigest()]
        )
        scope = f"{amz_date[:8]}/{REGION}/kinesis/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        k = ("AWS4" + SECRET).encode()
        for part in (amz_date[:8], REGION, "kinesis", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={KEY}/{scope}, SignedHeaders={signed}, Signature={sig}"
        )
        self.conn.request("POST", "/", body=data, headers=headers)
        resp = self.conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{op}: HTTP {resp.status}: {text[:300]!r}")
        return json.loads(text) if text else {}


def freeport():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def ready(timeout=20.0):
    deadline = time.time() + timeout
    while True:
        try:
            Kinesis().call("ListStreams", {})
            return
        except ssl.SSLError:
            raise  # a certificate problem does not go away by waiting
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def create(stream, shards):
    k = Kinesis()
    k.call("CreateStream", {"StreamName": stream, "ShardCount": int(shards)})
    for _ in range(100):
        desc = k.call("DescribeStream", {"StreamName": stream})["StreamDescription"]
        if desc["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.1)
    raise RuntimeError(f"stream {stream} did not become ACTIVE")


def count(stream, t0, t1, dups_wanted=""):
    t0, t1 = float(t0), float(t1)
    k = Kinesis()
    shards = k.call("DescribeStream", {"StreamName": stream})["StreamDescription"]["Shards"]
    total = in_window = data_bytes = 0
    seen, dups, middle = set(), 0, None
    seq_re = re.compile(rb'"sourceId":"([^"]*)"|"sequenceNumber":(\d+)')
    for shard in shards:
        it = k.call(
            "GetShardIterator",
            {"StreamName": stream, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON"},
        )["ShardIterator"]
        while it:
            page = k.call("GetRecords", {"ShardIterator": it, "Limit": 10000})
            records = page.get("Records", [])
            if not records:
                break  # the producers are stopped before counting: an empty page is the end
            it = page.get("NextShardIterator")
            for r in records:
                data = base64.b64decode(r["Data"])
                total += 1
                data_bytes += len(data)
                if t0 <= float(r["ApproximateArrivalTimestamp"]) < t1:
                    in_window += 1
                    if middle is None and float(r["ApproximateArrivalTimestamp"]) >= (t0 + t1) / 2:
                        middle = data.decode(errors="replace").strip()
                if dups_wanted != "dups":
                    continue
                # streamgate payloads carry (sourceId, sequenceNumber): a pair seen twice is a
                # duplicate delivery. Fluent Bit's dummy records are all alike: not asked there.
                found = seq_re.findall(data)
                src = next((m[0] for m in found if m[0]), None)
                seq = next((m[1] for m in found if m[1]), None)
                if src is not None and seq is not None:
                    if (src, seq) in seen:
                        dups += 1
                    else:
                        seen.add((src, seq))
    print(
        json.dumps(
            {
                "records": total,
                "in_window": in_window,
                "bytes_per_record": round(data_bytes / total, 1) if total else 0,
                "duplicates": dups if seen else None,
                "sample": middle,
            }
        )
    )


def delete(stream):
    Kinesis().call("DeleteStream", {"StreamName": stream})


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"freeport": freeport, "ready": ready, "create": create, "count": count, "delete": delete}[cmd](
        *args
    )
