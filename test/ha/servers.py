"""Servers of the HA suite: Redis + Sentinel, PostgreSQL nodes, etcd,
Patroni, HAProxy, the Bot API stand-in and the relay.  Every process
started here is recorded in $HA_DIR/pids ("pid name" per line) the moment
it exists, so test/scripts/ha.sh stops it by pid whatever happens."""
import os
import signal
import socket
import subprocess
import time

W = os.environ["HA_DIR"]
SRC = os.environ["HA_SRC"]
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
AS_PG = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
T0 = time.time()


def log(msg):
    print("[%6.2fs] %s" % (time.time() - T0, msg), flush=True)


def record(pid, name):
    with open(os.path.join(W, "pids"), "a") as f:
        f.write("%d %s\n" % (pid, name))


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, TypeError):
        return False


def wait_gone(pid, timeout=10):
    t = time.time()
    while alive(pid) and time.time() - t < timeout:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return not alive(pid)


def kill9(pid, what):
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 10)
    log("KILLED %s (pid %d) with SIGKILL" % (what, pid))


def wait_for(pred, timeout, what, step=0.1):
    t = time.time()
    while time.time() - t < timeout:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def spawn(argv, name, logfile, as_pg=False, env=None, cwd=None):
    out = open(logfile, "ab")
    p = subprocess.Popen((AS_PG + argv) if as_pg and AS_PG else argv, stdout=out, stderr=out,
                         env=env, cwd=cwd or W, start_new_session=True)
    record(p.pid, name)
    return p


def chown_pg(path):
    if AS_PG:
        subprocess.run(["chown", "-R", "postgres:postgres", path], check=True)


# ---- Redis ----------------------------------------------------------------
def rcli(port, *args, timeout=3):
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--raw"] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=timeout)
    return r.stdout.strip()


def start_redis(port, replicaof=None):
    d = os.path.join(W, "redis-%d" % port)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "redis.conf"), "w") as f:
        f.write("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\nsave \"\"\nappendonly no\n"
                "repl-diskless-sync-delay 0\n%s" % (port, d, "replicaof 127.0.0.1 %d\n" % replicaof if replicaof else ""))
    p = spawn(["redis-server", os.path.join(d, "redis.conf")], "redis-server:%d" % port, os.path.join(d, "redis.log"))
    wait_for(lambda: rcli(port, "PING") == "PONG", 10, "redis :%d" % port)
    return p


def start_sentinel(port, master_name, master_port):
    d = os.path.join(W, "sentinel-%d" % port)
    os.makedirs(d, exist_ok=True)
    # each sentinel rewrites its own config file
    with open(os.path.join(d, "sentinel.conf"), "w") as f:
        f.write("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\n"
                "sentinel monitor %s 127.0.0.1 %d 2\n"
                "sentinel down-after-milliseconds %s 1000\n"
                "sentinel failover-timeout %s 5000\n"
                "sentinel parallel-syncs %s 1\n" % (port, d, master_name, master_port,
                                                    master_name, master_name, master_name))
    return spawn(["redis-sentinel", os.path.join(d, "sentinel.conf"), "--daemonize", "no"],
                 "redis-sentinel:%d" % port, os.path.join(d, "sentinel.log"))


# ---- PostgreSQL ---------------------------------------------------------------
class Node:
    """A PostgreSQL data directory under W, reached over TCP on 127.0.0.1."""

    def __init__(self, name, port, password=None):
        self.name, self.port, self.password = name, port, password
        self.dir = os.path.join(W, name)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")

    def env(self):
        e = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self.password:
            e["PGPASSWORD"] = self.password
        return e

    def psql(self, q, check=True, timeout=60):
        r = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                            "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-c", q],
                           capture_output=True, text=True, timeout=timeout, env=dict(self.env(), PGCONNECT_TIMEOUT="2"))
        if check and r.returncode != 0:
            raise AssertionError("psql on %s failed: %s" % (self.name, r.stderr.strip()))
        return r.stdout.strip() if r.returncode == 0 else "ERROR " + r.stderr.strip()

    def up(self):
        return self.psql("SELECT 1", check=False) == "1"

    def in_recovery(self):
        return self.psql("SELECT pg_is_in_recovery()", check=False)

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def pg_ctl(self, *args):
        subprocess.run(AS_PG + [os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-t", "60"]
                       + list(args), check=True, capture_output=True, cwd=W, env=self.env())

    def start(self):
        self.pg_ctl("start")
        pid = self.postmaster_pid()
        record(pid, "postmaster:%s" % self.name)
        log("started PostgreSQL %s :%d (postmaster pid %d)" % (self.name, self.port, pid))

    def log_lines(self, needle):
        try:
            with open(self.log, errors="replace") as f:
                return [l.rstrip() for l in f if needle in l]
        except OSError:
            return []


def initdb(node, conf):
    os.makedirs(node.dir, exist_ok=True)
    chown_pg(node.dir)
    subprocess.run(AS_PG + [os.path.join(PG_BIN, "initdb"), "-D", node.data, "-U", "postgres", "--auth=trust",
                            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True, cwd=W)
    with open(os.path.join(node.data, "postgresql.conf"), "a") as f:
        f.write("port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n%s\n"
                % (node.port, node.dir, conf))
    with open(os.path.join(node.data, "pg_hba.conf"), "a") as f:
        f.write("host replication all 127.0.0.1/32 trust\n")


def basebackup(primary, standby):
    os.makedirs(standby.dir, exist_ok=True)
    chown_pg(standby.dir)
    subprocess.run(AS_PG + [os.path.join(PG_BIN, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
                            "-U", "postgres", "-D", standby.data, "-R", "-X", "stream", "--no-sync", "-c", "fast",
                            "-d", "application_name=%s" % standby.name],
                   check=True, capture_output=True, cwd=W, env=standby.env())
    with open(os.path.join(standby.data, "postgresql.conf"), "a") as f:
        f.write("port = %d\nunix_socket_directories = '%s'\n" % (standby.port, standby.dir))


# ---- Bot API stand-in and relay --------------------------------------------------
def start_standin(port, token):
    d = os.path.join(W, "standin")
    os.makedirs(d, exist_ok=True)
    p = spawn(["python3", os.path.join(SRC, "test/standin/botapi_standin.py"), "--port", str(port), "--token", token],
              "standin:%d" % port, os.path.join(d, "standin.log"))
    import urllib.request
    wait_for(lambda: _get("http://127.0.0.1:%d/_test/pending" % port), 10, "stand-in")
    return p


def _get(url):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read()
    except Exception:
        return None


def http(url, body=None):
    import json
    import urllib.request
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def start_relay(name, database_url, api, token, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(TELEGRAM_BOT_TOKEN=token, TELEGRAM_API_URL=api, DATABASE_URL=database_url,
               RELAY_WORKERS="4", RELAY_POLL_TIMEOUT="2", RELAY_MAX_ATTEMPTS="5",
               # a call claimed on a primary that died is sent again when its lease
               # (send timeout + 5 s) ends: keep it short here
               RELAY_SEND_TIMEOUT="5")
    env.update(extra_env or {})
    p = spawn([os.path.join(SRC, "relay/regstage-relay")], "relay:%s" % name, os.path.join(W, "relay-%s.log" % name),
              env=env)
    log("started relay %s (pid %d), DATABASE_URL=%s" % (name, p.pid, database_url.replace(os.environ.get("HA_SU_PASS", "\0"), "***")))
    return p


class ConflictingBotApi:
    """A Bot API that, like Telegram, lets one getUpdates long poll run at a
    time per bot: a new one ends the one in flight with 409 Conflict
    ("terminated by other getUpdates request").  Every other method answers
    ok.  TELEGRAM_API_URL=http://127.0.0.1:<port>/<name> tells the clients
    apart: polls[name] lists (time, status) of each getUpdates answered."""

    CONFLICT = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"

    def __init__(self, port, token):
        import json
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        api = self
        self.token = token
        self.cond = threading.Condition()
        self.current = None          # the poll in flight: (name, serial)
        self.serial = 0
        self.polls = {}
        self.updates = []            # [update], delivered from the offset on

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):      # the URL holds the token
                pass

            def answer(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                m = re.match(r"^/([a-z0-9]+)/bot([^/]+)/([A-Za-z]+)$", self.path)
                if not m or m.group(2) != api.token:
                    return self.answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                name, method = m.group(1), m.group(3)
                if method != "getUpdates":
                    return self.answer(200, {"ok": True, "result": {"message_id": 1, "chat": {"id": req.get("chat_id")}}})
                status, result = api.poll(name, int(req.get("offset") or 0), float(req.get("timeout") or 0))
                if status == 409:
                    return self.answer(409, {"ok": False, "error_code": 409, "description": api.CONFLICT})
                return self.answer(200, {"ok": True, "result": result})

        ThreadingHTTPServer.daemon_threads = True
        self.srv = ThreadingHTTPServer(("127.0.0.1", port), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def poll(self, name, offset, timeout):
        deadline = time.time() + min(timeout, 50)
        with self.cond:
            self.serial += 1
            me = (name, self.serial)
            self.current = me            # ends the poll in flight, if any
            self.cond.notify_all()
            while True:
                if self.current != me:
                    status, result = 409, None
                    break
                due = [u for u in self.updates if u["update_id"] >= offset]
                if due or time.time() >= deadline:
                    status, result = 200, due[:100]
                    self.current = None
                    break
                self.cond.wait(max(0.0, deadline - time.time()))
            self.polls.setdefault(name, []).append((time.time(), status))
        return status, result

    def inject(self, updates):
        with self.cond:
            self.updates.extend(updates)
            self.cond.notify_all()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()
