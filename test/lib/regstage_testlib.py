"""Helpers shared by the script suites (test/relay, test/faults): psql,
the Bot API stand-in's control API, Telegram-shaped updates, the relay
process, and the case table every suite prints."""
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

if not __debug__:
    # python -O / PYTHONOPTIMIZE strips assert statements: a suite would pass
    # checks it never made.  The suites' checks raise (check()), and this
    # refuses to run any that might still rely on assert.
    raise SystemExit("the test suites must not run under python -O / PYTHONOPTIMIZE")


class CheckFailed(Exception):
    """A promise the product did not keep (raised by check())."""


def check(cond, what):
    """Raise CheckFailed(what) unless cond: an explicit check, unlike assert
    it is never optimised away."""
    if not cond:
        raise CheckFailed(what)
    return cond


class Env:
    """Where a suite's servers are (set by its shell wrapper)."""

    def __init__(self, prefix):
        g = lambda k: os.environ["%s_%s" % (prefix, k)]
        self.dir = g("DIR")
        self.pg_port = g("PG_PORT")
        self.api = "http://127.0.0.1:%s" % g("API_PORT")
        self.token = g("TOKEN")
        self.relay_bin = g("BIN")
        self.pg_bin = os.environ["PG_BIN"]
        self.sock = os.path.join(self.dir, "sock")
        self.relay_log = os.path.join(self.dir, "relay.log")
        self.pg_log = os.path.join(self.dir, "log", "postgres.log")
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    # ---- PostgreSQL ------------------------------------------------------
    def sql(self, q, user="postgres", check=True):
        out = subprocess.run(["psql", "-h", self.sock, "-p", self.pg_port, "-U", user, "-d", "postgres",
                              "-AtX", "-v", "ON_ERROR_STOP=1", "-c", q],
                             capture_output=True, text=True, timeout=300)
        if check and out.returncode != 0:
            raise RuntimeError("psql failed: %s" % out.stderr.strip())
        return out.stdout.strip() if out.returncode == 0 else "ERROR: " + out.stderr.strip()

    def session(self, user="postgres"):
        return PsqlSession(self, user)

    def pg_ctl(self, *args):
        subprocess.run(self.as_postgres + [os.path.join(self.pg_bin, "pg_ctl"), "-D", os.path.join(self.dir, "pgdata"),
                                           "-l", self.pg_log, "-w", "-t", "120"] + list(args),
                       check=True, capture_output=True, cwd=self.dir)

    def wait_pg(self, timeout=60):
        wait_for(lambda: self.sql("SELECT 1", check=False) == "1", timeout, "PostgreSQL accepting connections")

    # ---- the Bot API stand-in ---------------------------------------------
    def http(self, path, body=None):
        req = urllib.request.Request(self.api + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def inject(self, updates):
        return self.http("/_test/updates", updates)

    def calls(self, chat=None, method=None):
        cs = self.http("/_test/calls")
        return [c for c in cs if (chat is None or str(c["params"].get("chat_id")) == str(chat))
                and (method is None or c["method"] == method)]


class PsqlSession:
    """A psql process kept open: transactions can span calls, and the
    backend can be killed in the middle of one."""

    def __init__(self, env, user):
        self.p = subprocess.Popen(["psql", "-h", env.sock, "-p", env.pg_port, "-U", user, "-d", "postgres",
                                   "-XAtq", "-v", "VERBOSITY=verbose"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.n = 0
        self.buf = b""
        self.pid = self.run("SELECT pg_backend_pid()", timeout=30)[0]

    def send(self, q):
        """Start a statement without waiting for it."""
        self.n += 1
        self.p.stdin.write((q.rstrip().rstrip(";") + ";\n\\echo __END_%d__\n" % self.n).encode())
        self.p.stdin.flush()
        return self.n

    def _readline(self, deadline):
        """One output line, or None at EOF; raises CheckFailed at the deadline
        even when psql prints nothing (a statement that hangs)."""
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed("timeout")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if not self.buf:
                    return None
                line, self.buf = self.buf, b""
                return line.decode("utf-8", "replace")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def wait(self, n=None, timeout=120):
        """The output lines of statement n (default: the last one sent), up to
        its end marker or psql's exit; CheckFailed after timeout seconds."""
        n = n or self.n
        lines, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self._readline(deadline)
            except CheckFailed:
                self.p.kill()
                self.p.wait()
                raise CheckFailed("psql did not finish statement %d in %ss (output so far: %s)"
                                  % (n, timeout, " | ".join(lines)[:300]))
            if line is None or line == "__END_%d__" % n:
                return lines
            lines.append(line)

    def run(self, q, timeout=120):
        return self.wait(self.send(q), timeout)

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(10)
        except Exception:
            self.p.kill()
            self.p.wait()


def sqlstate(lines):
    """The SQLSTATE of the first ERROR/FATAL line of a verbose psql output, or None."""
    for line in lines:
        for tag in ("ERROR:  ", "FATAL:  "):
            if line.startswith(tag):
                return line[len(tag):len(tag) + 5]
    return None


def wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise CheckFailed("timed out after %ss waiting for %s" % (timeout, what))


# ---- Telegram-shaped updates ----------------------------------------------
def sender(tid, lang="en"):
    return {"id": tid, "is_bot": False, "first_name": "Test", "username": "t%d" % tid, "language_code": lang}


def message(tid, body):
    m = {"message_id": 1, "from": sender(tid), "chat": {"id": tid, "type": "private", "first_name": "Test"},
         "date": int(time.time())}
    m.update(body)
    return {"message": m}


def text(tid, t):
    return message(tid, {"text": t})


def photo(tid, file_id):
    return message(tid, {"photo": [
        {"file_id": "AgACsmall%d" % tid, "file_unique_id": "a", "file_size": 100, "width": 90, "height": 90},
        {"file_id": file_id, "file_unique_id": "b", "file_size": 9999, "width": 1280, "height": 960}]})


def contact(tid):
    return message(tid, {"contact": {"phone_number": "+7916%07d" % (tid % 10000000), "first_name": "Test",
                                     "user_id": tid}})


def callback(tid, data):
    return {"callback_query": {"id": "cb%d" % tid, "from": sender(tid), "chat_instance": "1",
                               "message": {"message_id": 1, "chat": {"id": tid, "type": "private"}, "date": 1},
                               "data": data}}


def registration(tid, passport="AgACp", selfie="AgACs"):
    """The six updates of a whole registration."""
    return [text(tid, "/start"), callback(tid, "lang:en"), text(tid, "Test User"), contact(tid),
            photo(tid, "%s_%d" % (passport, tid)), photo(tid, "%s_%d" % (selfie, tid))]


# ---- the relay ---------------------------------------------------------------
class Relay:
    def __init__(self, env, token=None, workers=4, db_user="relay_bot", extra_env=None, log=None, bin=None):
        e = dict(os.environ, TELEGRAM_BOT_TOKEN=token or env.token, TELEGRAM_API_URL=env.api,
                 DATABASE_URL="host=%s port=%s dbname=postgres user=%s application_name=regstage-relay"
                 % (env.sock, env.pg_port, db_user),
                 RELAY_WORKERS=str(workers), RELAY_POLL_TIMEOUT="5")
        e.update(extra_env or {})
        self.log = open(log or env.relay_log, "a")
        self.p = subprocess.Popen([bin or env.relay_bin], env=e, stdout=self.log, stderr=self.log)
        if os.environ.get("REGSTAGE_RELAY_PIDS"):       # the suite's shell wrapper stops every relay listed
            with open(os.environ["REGSTAGE_RELAY_PIDS"], "a") as f:
                f.write("%d\n" % self.p.pid)

    def rss_kb(self, field="RssAnon"):
        with open("/proc/%d/status" % self.p.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    def stop(self, sig=signal.SIGTERM, timeout=10):
        self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
            self.log.close()
        return rc


# ---- the case table --------------------------------------------------------
class Report:
    """The case table.  REGSTAGE_CASES (a regular expression) runs only the
    cases whose names match; the others show as "skipped"."""

    def __init__(self):
        self.results = []
        self.only = os.environ.get("REGSTAGE_CASES")

    def case(self, name, checked):
        """Decorator: run the case now, record ok / the failure, go on."""
        def deco(fn):
            if self.only and not re.search(self.only, name):
                self.results.append((name, "skipped", checked, 0.0))
                return fn
            t0 = time.time()
            try:
                fn()
                self.results.append((name, None, checked, time.time() - t0))
            except Exception as e:      # a failed case is reported; the suite goes on
                self.results.append((name, "%s: %s" % (type(e).__name__, e), checked, time.time() - t0))
            sys.stderr.write("  %s %s\n" % ("ok  " if self.results[-1][1] is None else "FAIL", name))
            return fn
        return deco

    def not_run(self, name, checked, why):
        """A case this run has no part of (another storage backend's): listed
        as "n/a" with the reason; neither passed nor failed."""
        self.results.append((name, NotRun(why), checked, 0.0))

    def finish(self):
        w = max(len(r[0]) for r in self.results)
        print("\n%-*s | %-7s | %s" % (w, "case", "result", "what was checked"))
        print("-" * (w + 70))
        for name, err, checked, dt in self.results:
            result = ("ok" if err is None else "skipped" if err == "skipped" else "n/a" if isinstance(err, NotRun)
                      else "FAILED")
            print("%-*s | %-7s | %s (%.1f s)" % (w, name, result, checked, dt))
            if err and err != "skipped":
                print("%*s   -> %s" % (w, "", err))
        failed = sum(1 for r in self.results if r[1] and r[1] != "skipped" and not isinstance(r[1], NotRun))
        skipped = sum(1 for r in self.results if r[1] == "skipped")
        not_run = sum(1 for r in self.results if isinstance(r[1], NotRun))
        print("%d passed, %d failed%s%s" % (len(self.results) - failed - skipped - not_run, failed,
                                            ", %d skipped (REGSTAGE_CASES)" % skipped if skipped else "",
                                            ", %d not for this run" % not_run if not_run else ""))
        return 1 if failed or skipped else 0


class NotRun(str):
    """Why a case is not part of this run (Report.not_run)."""
