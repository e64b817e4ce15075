#!/usr/bin/env python3
"""A stand-in S3 service for the failure cases s3rver cannot play, chosen
by bucket name (path-style requests: /<bucket>/<key>):

  verified   a small in-memory store (PUT, GET, HEAD, DELETE, ListObjectsV2
             with continuation tokens) that checks every SigV4 signature
             (Authorization header or presigned query) with the real secret,
             honours If-None-Match: * (412) and refuses an expired
             presigned URL — s3rver checks neither the secret nor expiry
  denied     403 AccessDenied
  err500     500 InternalError          err503  503 SlowDown
  slow       answers after 30 s
  garbage    200 with a body that is not XML
  open       the same store, no signature asked (bench/run.sh: the server's floor)
  any other  404 NoSuchBucket

GET /_blob/<n> serves n deterministic bytes (a download to stream from);
GET /_log returns the requests seen, as JSON; GET /_objects?prefix=<p>
returns the verified store's objects under p as {key: [size, sha256]}
(unsigned: the tests' own view of the store); POST /_seed and /_drop with
{"keys": [...], "size": n, "age": seconds} make or remove objects at once.

Like S3, and unlike s3rver, a PUT whose body did not arrive in full
stores nothing.
"""
import argparse
import base64
import calendar
import hashlib
import hmac
import json
import os
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--access-key", required=True)
ap.add_argument("--secret-file", required=True)
ap.add_argument("--region", default="us-east-1")
ap.add_argument("--pidfile")
args = ap.parse_args()
SECRET = open(args.secret_file).read().strip()

store = {}          # key -> (bytes, time)
log = []
lock = threading.Lock()


def blob(n):
    """n deterministic bytes: sha256 counter stream."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"regstage-%d" % i).digest()
        i += 1
    return bytes(out[:n])


def enc(s):
    return urllib.parse.quote(s, safe="-_.~")


def canonical_query(raw, drop=()):
    pairs = []
    for part in raw.split("&") if raw else []:
        name, _, value = part.partition("=")
        name, value = urllib.parse.unquote(name), urllib.parse.unquote(value)
        if name not in drop:
            pairs.append((enc(name), enc(value)))
    return "&".join("%s=%s" % p for p in sorted(pairs))


def signature(secret, date, region, creq):
    sts = "\n".join(["AWS4-HMAC-SHA256", date, "%s/%s/s3/aws4_request" % (date[:8], region),
                     hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (date[:8], region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def reply(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def error(self, status, code, message, head=False):
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message>"
                "<RequestId>standin</RequestId></Error>" % (code, message)).encode()
        self.reply(status, body, {"Content-Type": "application/xml"}, head)

    def verify(self, path, raw_query, payload):
        """None if the signature is right, else why not."""
        q = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
        if "X-Amz-Signature" in q:
            date = q["X-Amz-Date"][0]
            signed = q["X-Amz-SignedHeaders"][0].split(";")
            given = q["X-Amz-Signature"][0]
            payload_hash = "UNSIGNED-PAYLOAD"
            t = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
            if time.time() > t + int(q["X-Amz-Expires"][0]):
                return "Request has expired"
            cq = canonical_query(raw_query, drop=("X-Amz-Signature",))
        else:
            auth = self.headers.get("Authorization", "")
            m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, ?"
                         r"SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$", auth)
            if not m:
                return "no SigV4 Authorization header"
            if m.group(1) != args.access_key:
                return "unknown access key"
            date = self.headers.get("x-amz-date", "")
            signed = m.group(4).split(";")
            given = m.group(5)
            payload_hash = self.headers.get("x-amz-content-sha256")
            if payload_hash is None:
                return "no x-amz-content-sha256"
            if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(payload).hexdigest():
                return "x-amz-content-sha256 does not match the body"
            cq = canonical_query(raw_query)
        lines = []
        for h in signed:
            v = self.headers.get(h)
            if v is None:
                return "signed header %s not sent" % h
            lines.append("%s:%s\n" % (h, " ".join(v.split())))
        creq = "\n".join([self.command, path, cq, "".join(lines), ";".join(signed), payload_hash])
        if not hmac.compare_digest(signature(SECRET, date, args.region, creq), given):
            return "SignatureDoesNotMatch"
        return None

    def handle_any(self):
        path, _, raw_query = self.path.partition("?")
        n = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(n) if n else b""
        if len(payload) != n:           # the client gave up mid-body: S3 stores nothing
            self.close_connection = True
            return
        head = self.command == "HEAD"
        entry = {"method": self.command, "path": path, "query": raw_query,
                 "if_none_match": self.headers.get("If-None-Match"),
                 "content_sha256": self.headers.get("x-amz-content-sha256"),
                 "content_length": n, "authorization": bool(self.headers.get("Authorization"))}
        with lock:
            log.append(entry)
        if path == "/_log":
            return self.reply(200, json.dumps(log).encode(), {"Content-Type": "application/json"})
        if path in ("/_seed", "/_drop") and self.command == "POST":
            # {"keys": [...], "size": n, "age": seconds}: objects made (or
            # dropped) at once, bypassing PUT, so a test can fill the store
            # with 100,000 objects in a moment
            spec = json.loads(payload)
            body = b"x" * spec.get("size", 16)
            made = time.time() - spec.get("age", 0)
            with lock:
                for k in spec["keys"]:
                    if path == "/_seed":
                        store[k] = (body, made)
                    else:
                        store.pop(k, None)
            return self.reply(200, b"{}", {"Content-Type": "application/json"})
        if path == "/_objects":
            prefix = urllib.parse.parse_qs(raw_query).get("prefix", [""])[0]
            with lock:
                objs = {k: [len(v[0]), hashlib.sha256(v[0]).hexdigest()] for k, v in store.items()
                        if k.startswith(prefix)}
            return self.reply(200, json.dumps(objs).encode(), {"Content-Type": "application/json"})
        if path.startswith("/_blob/"):
            return self.reply(200, blob(int(path[7:])), {"Content-Type": "application/octet-stream"})
        bucket, _, key = path[1:].partition("/")
        key = urllib.parse.unquote(key)
        if bucket == "denied":
            return self.error(403, "AccessDenied", "Access Denied", head)
        if bucket == "err500":
            return self.error(500, "InternalError", "We encountered an internal error. Please try again.", head)
        if bucket == "err503":
            return self.error(503, "SlowDown", "Please reduce your request rate.", head)
        if bucket == "slow":
            time.sleep(30)
            return self.reply(200)
        if bucket == "garbage":
            return self.reply(200, b"this is not xml <", {"Content-Type": "application/xml"}, head)
        if bucket not in ("verified", "open"):
            return self.error(404, "NoSuchBucket", "The specified bucket does not exist", head)

        why = self.verify(path, raw_query, payload) if bucket == "verified" else None
        entry["signature"] = why or "ok"
        if why == "Request has expired":
            return self.error(403, "AccessDenied", why, head)
        if why:
            return self.error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match "
                              "the signature you provided (%s)." % why, head)
        with lock:
            if self.command == "PUT":
                if self.headers.get("If-None-Match") == "*" and key in store:
                    return self.error(412, "PreconditionFailed", "At least one of the pre-conditions you specified "
                                      "did not hold")
                store[key] = (payload, time.time())
                return self.reply(200, b"", {"ETag": '"%s"' % hashlib.md5(payload).hexdigest()})
            if self.command == "DELETE":
                store.pop(key, None)
                return self.reply(204)
            if key == "" and self.command == "GET":
                return self.list_objects(urllib.parse.parse_qs(raw_query, keep_blank_values=True))
            if key not in store:
                return self.error(404, "NoSuchKey", "The specified key does not exist.", head)
            data, _ = store[key]
            return self.reply(200, data, {"Content-Type": "application/octet-stream"}, head)

    def list_objects(self, q):
        prefix = q.get("prefix", [""])[0]
        max_keys = int(q.get("max-keys", ["1000"])[0])
        after = base64.b64decode(q["continuation-token"][0])[2:].decode() if "continuation-token" in q else None
        keys = sorted(k for k in store if k.startswith(prefix) and (after is None or k > after))
        page, more = keys[:max_keys], len(keys) > max_keys
        parts = ["<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/"
                 "2006-03-01/\"><Name>verified</Name><Prefix>%s</Prefix><KeyCount>%d</KeyCount><MaxKeys>%d</MaxKeys>"
                 "<IsTruncated>%s</IsTruncated>" % (prefix, len(page), max_keys, "true" if more else "false")]
        for k in page:
            parts.append("<Contents><Key>%s</Key><LastModified>%s</LastModified><Size>%d</Size></Contents>"
                         % (k, time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(store[k][1])), len(store[k][0])))
        if more:
            # a token with "+", "/" and "=": it must be encoded and signed exactly
            parts.append("<NextContinuationToken>%s</NextContinuationToken>"
                         % base64.b64encode(b"\xfb\xff" + page[-1].encode()).decode())
        parts.append("</ListBucketResult>")
        self.reply(200, "".join(parts).encode(), {"Content-Type": "application/xml"})

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = handle_any


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
if args.pidfile:
    with open(args.pidfile, "w") as f:
        f.write(str(os.getpid()))
server.serve_forever()
