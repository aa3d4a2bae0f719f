"""A stand-in for the AWS IoT credentials provider, and a Kinesis front that checks its tokens.

There is no public server for this API, so this one follows its documentation: HTTPS that
requires a client certificate signed by the test CA (Python's ssl module: a TLS stack other
than streamgate's), `GET /role-aliases/<alias>/credentials` with the thing name in
`x-amzn-iot-thingname`, answered with
`{"credentials": {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}}` that expire
LIFETIME seconds later; a wrong alias is 404, a wrong thing name 403.

The front (plain HTTP) forwards Kinesis calls to moto only when they are signed with an access
key this provider issued and carry its session token, unexpired; others get Kinesis's own
`ExpiredTokenException` / `UnrecognizedClientException`. Control: `POST /_control/down` (the
provider answers 503), `/_control/up`, `GET /_control/stats`, `GET /_control/records` (the
payloads in the stream, read from moto with boto3).

usage: iot_credentials.py --ca CA --cert CERT --key KEY --alias A --thing T --moto URL
                          --stream NAME [--lifetime S]    (prints "PORTS <https> <front>")
"""
import argparse
import datetime
import http.client
import http.server
import json
import re
import secrets
import ssl
import sys
import threading
import time
import urllib.parse

import boto3

STATE = {"down": False, "issued": {}, "fetches": 0, "refused": 0, "rejected": 0, "used": set(), "forwarded": 0}
LOCK = threading.Lock()


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_provider(args):
    class Provider(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            with LOCK:
                STATE["fetches"] += 1
                down = STATE["down"]
            if down:
                return self.reply(503, {"message": "Service Unavailable"})
            m = re.fullmatch(r"/role-aliases/([^/]+)/credentials", self.path)
            if not m or m.group(1) != args.alias:
                with LOCK:
                    STATE["refused"] += 1
                return self.reply(404, {"message": "Role alias does not exist"})
            if self.headers.get("x-amzn-iot-thingname") != args.thing:
                with LOCK:
                    STATE["refused"] += 1
                return self.reply(403, {"message": "Forbidden"})
            akid = "ASIA" + secrets.token_hex(8).upper()
            token = secrets.token_urlsafe(48)
            expires = int(time.time()) + args.lifetime
            with LOCK:
                STATE["issued"][akid] = (token, expires)
            self.reply(200, {"credentials": {
                "accessKeyId": akid,
                "secretAccessKey": secrets.token_urlsafe(30),
                "sessionToken": token,
                "expiration": rfc3339(expires),
            }})

    return Provider


def make_front(args):
    moto = urllib.parse.urlparse(args.moto)

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body, ctype="application/x-amz-json-1.1"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path.startswith("/_control/"):
                with LOCK:
                    STATE["down"] = self.path == "/_control/down"
                return self.reply(200, {"down": STATE["down"]}, "application/json")
            auth = self.headers.get("Authorization", "")
            m = re.search(r"Credential=([A-Z0-9]+)/", auth)
            token = self.headers.get("X-Amz-Security-Token")
            with LOCK:
                issued = STATE["issued"].get(m.group(1)) if m else None
                ok = issued is not None and issued[0] == token and time.time() < issued[1]
                if ok:
                    STATE["used"].add(m.group(1))
                    STATE["forwarded"] += 1
                else:
                    STATE["rejected"] += 1
            if not ok:
                kind = "ExpiredTokenException" if issued else "UnrecognizedClientException"
                return self.reply(400, {"__type": kind, "message": "The security token included in the request is expired" if issued else "The security token included in the request is invalid."})
            conn = http.client.HTTPConnection(moto.hostname, moto.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request("POST", self.path, body, headers)
            r = conn.getresponse()
            data = r.read()
            self.reply(r.status, data, r.getheader("Content-Type", "application/x-amz-json-1.1"))

        def do_GET(self):
            if self.path == "/_control/stats":
                with LOCK:
                    s = {"fetches": STATE["fetches"], "issued": len(STATE["issued"]), "refused": STATE["refused"],
                         "rejected": STATE["rejected"], "keys_used": len(STATE["used"]), "forwarded": STATE["forwarded"]}
                return self.reply(200, s, "application/json")
            if self.path == "/_control/records":
                return self.reply(200, records(args), "application/json")
            self.reply(404, {"message": "no such path"}, "application/json")

    return Front


def kinesis(args):
    return boto3.client("kinesis", endpoint_url=args.moto, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def records(args):
    k = kinesis(args)
    out = []
    for shard in k.list_shards(StreamName=args.stream)["Shards"]:
        it = k.get_shard_iterator(StreamName=args.stream, ShardId=shard["ShardId"],
                                  ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            r = k.get_records(ShardIterator=it, Limit=10000)
            out.extend(x["Data"].decode() for x in r["Records"])
            if not r["Records"]:
                break
            it = r.get("NextShardIterator")
    return out


def main():
    ap = argparse.ArgumentParser()
    for a in ("--ca", "--cert", "--key", "--alias", "--thing", "--moto", "--stream"):
        ap.add_argument(a, required=True)
    ap.add_argument("--lifetime", type=int, default=3600)
    args = ap.parse_args()
    kinesis(args).create_stream(StreamName=args.stream, ShardCount=1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_provider(args))
    provider.socket = ctx.wrap_socket(provider.socket, server_side=True)
    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_front(args))
    for s in (provider, front):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"PORTS {provider.server_address[1]} {front.server_address[1]}", flush=True)
    try:
        sys.stdin.read()  # until the test closes stdin (or dies)
    finally:
        for s in (provider, front):
            s.shutdown()


if __name__ == "__main__":
    main()
