#!/usr/bin/env python3
"""A Telegram Bot API stand-in for pg_regstage's tests and the offline demo.

Serves, over loopback HTTP, the parts of the Bot API that pg_regstage and the
relay use:

  POST /bot<token>/getFile              {"file_id": ...} -> result.file_path
  GET  /file/bot<token>/<file_path>     deterministic file content
  POST /bot<token>/getUpdates           long polling over an injected queue
  POST /bot<token>/<anyMethod>          recorded (sendMessage, answerCallbackQuery, ...)

Test control (no token):
  POST /_test/updates    body: an update object or a list of them -> queued
  GET  /_test/calls      every recorded method call, as a JSON list ({"method", "params", "at",
                         "message_id": the message_id answered})
  POST /_test/reset      forget calls, updates and counters
  POST /_test/fault      {"method": "sendMessage", "status": 429, "retry_after": 1, "times": 1}
                         or {"method": "sendMessage", "delay_ms": 50, "times": 100} (slow, then normal;
                         "jitter": true makes each delay a random part of delay_ms)
                         "chat_id": N limits a fault to calls for that chat; "hold_ms": N records
                         the call (Telegram accepted it) and only then waits N ms before answering;
                         "text": T limits it to calls with that text
  POST /_test/raw_updates  [{"update_id": N or null, "raw_b64": "..."}]: queued as is, bytes spliced
                         into getUpdates' result array (undecodable updates; update_id null: none)

Every error answer names the request's URL, token included, as proxies and
some servers do: ok=false descriptions end with "(POST /bot<token>/getFile)",
download errors are an HTML page quoting the URL.  A client that passes an
error text on unredacted leaks the token into the tests' logs and outputs,
which the suites grep for it.

Faults are chosen by the file_id, so tests stay stateless and parallel: the
file_id is "_"-separated directives ending in any tag, e.g. "status500_t1".
  status<N>    getFile answers HTTP N with ok=false
  okfalse      getFile answers 400 ok=false "Bad Request: invalid file_id"
  delay<ms>    getFile waits before answering
  dldelay<ms>  the download waits before sending
  drip<ms>     the download sends 1 KiB every <ms>
  bytes<N>     content length N (default 2048)
  size<N>      getFile reports file_size N (content unchanged)
  nosize       getFile omits file_size
  trunc        the download announces the full length, sends half, closes
  empty        zero-byte content
  dlstatus<N>  the download answers HTTP N
  flaky<N>     getFile fails with 500 the first N times for this file_id
  badpath      getFile returns file_path "../../etc/passwd"
  abspath      getFile returns file_path "/etc/passwd"
  ctlpath      getFile returns a file_path with a newline and a NUL
  png / pdf    content starts with that format's magic bytes (default JPEG)
  sample<name> the bundled image samples/<name>.png (the demo's passport/selfie)
"""
import argparse
import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

DIRECTIVE = re.compile(r"^([a-z]+?)(\d*)$")
MAGIC = {"jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "png": b"\x89PNG\r\n\x1a\n",
         "pdf": b"%PDF-1.4\n"}


def directives(file_id):
    out = {}
    for part in file_id.split("_")[:-1]:
        m = DIRECTIVE.match(part)
        if m:
            out[m.group(1)] = int(m.group(2)) if m.group(2) else True
    return out


SAMPLES = __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), "samples")


@__import__("functools").lru_cache(maxsize=64)
def content_for_id(file_id):
    return content_for(file_id, directives(file_id))


def content_for(file_id, d):
    if file_id.startswith("sample") and "_" in file_id:      # sample<name>_<tag>: a bundled image
        name = file_id[6:file_id.index("_")]
        if re.match(r"^[a-z]+$", name):
            try:
                with open("%s/%s.png" % (SAMPLES, name), "rb") as f:
                    return f.read()
            except OSError:
                pass
    n = d.get("bytes", 2048)
    if d.get("empty"):
        return b""
    kind = "png" if d.get("png") else "pdf" if d.get("pdf") else "jpg"
    buf = bytearray(MAGIC[kind])
    block = hashlib.sha256(file_id.encode()).digest()
    while len(buf) < n:
        buf += block
        block = hashlib.sha256(block).digest()
    return bytes(buf[:n])


class State:
    def __init__(self, token):
        self.token = token
        self.lock = threading.Condition()
        self.updates = []          # queued, not yet delivered past offset
        self.next_update_id = 1000
        self.calls = []
        self.counters = {}
        self.faults = []
        self.message_id = 1
        self.getupdates = 0        # getUpdates requests answered


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # like nginx: no 40 ms delayed-ACK stalls on keep-alive
    server_version = "botapi-standin/1.0"

    def log_message(self, fmt, *args):       # quiet; never print URLs (they hold the token)
        pass

    @property
    def st(self):
        return self.server.state

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status, description, **extra):
        """An ok=false answer whose description ends with the request line, as
        proxies and some servers echo it: the URL holds the token, so every
        error text a client passes on must be redacted."""
        body = {"ok": False, "error_code": status,
                "description": "%s (%s %s)" % (description, self.command, self.path)}
        body.update(extra)
        return self.send_json(status, body)

    def send_error_html(self, status, reason):
        """A web server's error page for a download, naming the URL (and so the token)."""
        body = ("<html><head><title>%d %s</title></head><body><h1>%s</h1>"
                "<p>The requested URL %s was not found on this server.</p></body></html>\n"
                % (status, reason, reason, self.path)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            from urllib.parse import parse_qs
            return {k: v[0] for k, v in parse_qs(raw.decode()).items()}

    def split_token(self, path):
        # /bot<token>/<method>  or /file/bot<token>/<path>
        m = re.match(r"^/(file/)?bot([^/]+)/(.+)$", path)
        if not m:
            return None, None, None
        return bool(m.group(1)), m.group(2), m.group(3)

    # ---- control ---------------------------------------------------------
    def control(self, method):
        st = self.st
        if self.path == "/_test/updates" and method == "POST":
            body = self.read_body()
            items = body if isinstance(body, list) else [body]
            with st.lock:
                ids = []
                for u in items:
                    if "update_id" not in u:
                        u["update_id"] = st.next_update_id
                    st.next_update_id = max(st.next_update_id, u["update_id"]) + 1
                    st.updates.append(u)
                    ids.append(u["update_id"])
                st.lock.notify_all()
            return self.send_json(200, {"ok": True, "update_ids": ids, "at": time.time()})
        if self.path.startswith("/_test/calls"):
            with st.lock:
                return self.send_json(200, st.calls)
        if self.path == "/_test/pending":
            with st.lock:
                return self.send_json(200, {"pending": len(st.updates)})
        if self.path == "/_test/reset":
            with st.lock:
                st.calls.clear(); st.updates.clear(); st.counters.clear(); st.faults.clear()
                st.getupdates = 0
            return self.send_json(200, {"ok": True})
        if self.path == "/_test/raw_updates" and method == "POST":
            import base64
            with st.lock:
                ids = []
                for r in self.read_body():
                    uid = r.get("update_id")
                    if uid is None:
                        uid = st.next_update_id
                    st.next_update_id = max(st.next_update_id, uid) + 1
                    st.updates.append({"update_id": uid, "__raw__": base64.b64decode(r["raw_b64"])})
                    ids.append(uid)
                st.lock.notify_all()
            return self.send_json(200, {"ok": True, "update_ids": ids, "at": time.time()})
        if self.path == "/_test/stats":
            with st.lock:
                return self.send_json(200, {"getupdates": st.getupdates, "pending": len(st.updates)})
        if self.path == "/_test/fault" and method == "POST":
            with st.lock:
                st.faults.append(self.read_body())
            return self.send_json(200, {"ok": True})
        return self.send_json(404, {"ok": False})

    # ---- Bot API ---------------------------------------------------------
    def do_GET(self):
        if self.path.startswith("/_test/"):
            return self.control("GET")
        is_file, token, rest = self.split_token(self.path)
        if token != self.st.token:
            return self.send_error_json(401, "Unauthorized")
        if is_file:
            return self.download(unquote(rest))
        return self.api(rest, {})

    def do_POST(self):
        if self.path.startswith("/_test/"):
            return self.control("POST")
        is_file, token, rest = self.split_token(self.path)
        body = self.read_body()
        if token != self.st.token or is_file:
            return self.send_error_json(401, "Unauthorized")
        return self.api(rest, body)

    def api(self, method, body):
        st = self.st
        if method == "getFile":
            return self.get_file(body)
        if method == "getUpdates":
            return self.get_updates(body)
        delay = 0.0
        hold = 0.0

        def applies(f):
            return f.get("method") == method and f.get("times", 1) > 0 and \
                ("chat_id" not in f or str(f["chat_id"]) == str(body.get("chat_id"))) and \
                ("text" not in f or f["text"] == body.get("text"))
        with st.lock:
            for f in st.faults:
                if applies(f) and "delay_ms" in f:
                    f["times"] = f.get("times", 1) - 1
                    delay = f["delay_ms"] / 1000.0
                    if f.get("jitter"):
                        delay *= __import__("random").random()
        if delay:
            time.sleep(delay)
        with st.lock:
            for f in st.faults:
                if applies(f) and "hold_ms" in f:
                    f["times"] = f.get("times", 1) - 1
                    hold = f["hold_ms"] / 1000.0
                    break
            for f in ([] if hold else st.faults):
                if applies(f) and "delay_ms" not in f and "hold_ms" not in f:
                    f["times"] = f.get("times", 1) - 1
                    status = f.get("status", 500)
                    params = {"retry_after": f["retry_after"]} if "retry_after" in f else {}
                    return self.send_error_json(status, f.get("description", "Injected fault"), parameters=params)
            st.message_id += 1
            mid = st.message_id
            # the message_id answered: a test edits or replies to that message
            st.calls.append({"method": method, "params": body, "at": time.time(), "message_id": mid})
        result = True if method.startswith("answer") or method.startswith("delete") else \
            {"message_id": mid, "date": int(time.time()), "chat": {"id": body.get("chat_id")}, "text": body.get("text")}
        if hold:
            time.sleep(hold)        # accepted (recorded), the answer not yet given
        try:
            return self.send_json(200, {"ok": True, "result": result})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def get_updates(self, body):
        st = self.st
        offset = int(body.get("offset", 0) or 0)
        timeout = min(float(body.get("timeout", 0) or 0), 50.0)
        limit = int(body.get("limit", 100) or 100)
        deadline = time.time() + timeout
        with st.lock:
            st.getupdates += 1
            st.updates = [u for u in st.updates if u["update_id"] >= offset]
            while not st.updates and time.time() < deadline:
                st.lock.wait(max(0.0, deadline - time.time()))
                st.updates = [u for u in st.updates if u["update_id"] >= offset]
            batch = st.updates[:limit]
        if not any("__raw__" in u for u in batch):
            return self.send_json(200, {"ok": True, "result": batch})
        # raw updates: their bytes go into the answer as they are
        body = b'{"ok":true,"result":[' + b",".join(
            u["__raw__"] if "__raw__" in u else json.dumps(u).encode() for u in batch) + b"]}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def get_file(self, body):
        file_id = str(body.get("file_id", ""))
        d = directives(file_id)
        st = self.st
        if "delay" in d:
            time.sleep(d["delay"] / 1000.0)
        if "flaky" in d:
            with st.lock:
                n = st.counters.get(file_id, 0)
                st.counters[file_id] = n + 1
            if n < d["flaky"]:
                return self.send_error_json(500, "Internal Server Error")
        if "status" in d:
            return self.send_error_json(d["status"], "Injected HTTP %d" % d["status"])
        if d.get("okfalse"):
            return self.send_error_json(400, "Bad Request: invalid file_id")
        if not file_id:
            return self.send_error_json(400, "Bad Request: file_id is empty")
        data = content_for_id(file_id)
        result = {"file_id": file_id, "file_unique_id": hashlib.md5(file_id.encode()).hexdigest()[:16],
                  "file_path": "documents/file_%s.jpg" % file_id}
        if d.get("badpath"):
            result["file_path"] = "../../etc/passwd"
        elif d.get("abspath"):
            result["file_path"] = "/etc/passwd"
        elif d.get("ctlpath"):
            result["file_path"] = "documents/file\n\x00%s.jpg" % file_id
        if not d.get("nosize"):
            result["file_size"] = d.get("size", len(data))
        return self.send_json(200, {"ok": True, "result": result})

    def download(self, file_path):
        m = re.match(r"^documents/file_(.+)\.jpg$", file_path)
        if not m:
            return self.send_error_html(404, "Not Found")
        file_id = m.group(1)
        d = directives(file_id)
        if "dlstatus" in d:
            return self.send_error_html(d["dlstatus"], "Injected")
        data = content_for_id(file_id)
        if "dldelay" in d:
            time.sleep(d["dldelay"] / 1000.0)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if d.get("trunc"):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if "drip" in d:
                for i in range(0, len(data), 1024):
                    self.wfile.write(data[i:i + 1024])
                    self.wfile.flush()
                    time.sleep(d["drip"] / 1000.0)
                return
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=28080)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--token", required=True, help="the only token accepted")
    ap.add_argument("--pidfile")
    ap.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    ap.add_argument("--tls-key", help="the certificate's private key (PEM)")
    args = ap.parse_args()
    ThreadingHTTPServer.request_queue_size = 1024      # many clients connect at once
    srv = ThreadingHTTPServer((args.bind, args.port), Handler)
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads = True
    srv.state = State(args.token)
    if args.pidfile:
        import os
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    sys.stderr.write("botapi-standin listening on %s:%d\n" % (args.bind, args.port))
    sys.stderr.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
