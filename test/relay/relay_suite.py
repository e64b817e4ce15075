#!/usr/bin/env python3
"""The relay suite: regstage-relay, its own PostgreSQL cluster, the shared
test Redis and its own Bot API stand-in.  Prints a table of cases and exits
non-zero if any failed."""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from regstage_testlib import (Env, Relay, Report, callback, registration, text, wait_for)  # noqa: E402

env = Env("RELAY_SUITE")
report = Report()
case = report.case


def registered(tid):
    return env.sql("SELECT count(*) FROM regstage.users u JOIN regstage.documents d ON d.user_id = u.id "
                   "WHERE u.telegram_id = %d" % tid) == "2"


env.sql("CREATE EXTENSION IF NOT EXISTS pg_regstage")
env.sql("DO $$ BEGIN CREATE ROLE relay_bot LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
env.sql("SELECT regstage.grant_bot_access('relay_bot')")
subprocess.run(["redis-cli", "-p", os.environ["REDIS_PORT"], "EVAL",
                "for _,k in ipairs(redis.call('KEYS','relaysuite:*')) do redis.call('DEL',k) end", "0"],
               capture_output=True)
env.http("/_test/reset", {})
relay = Relay(env)
UPLOADS = os.path.join(env.dir, "uploads")


def downloading(tid):
    """A commit of this user is downloading right now: its .part file exists."""
    d = os.path.join(UPLOADS, str(tid))
    return os.path.isdir(d) and any(f.endswith(".part") for f in os.listdir(d))


def log_from(path=None):
    """A function returning what was appended to a relay log since now."""
    path = path or env.relay_log
    offset = os.path.getsize(path) if os.path.exists(path) else 0

    def since():
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            f.seek(offset)
            return f.read()
    return since


def texts(tid):
    return [c["params"].get("text", "") for c in env.calls(tid, "sendMessage")]


def database_url(**extra):
    url = "host=%s port=%s dbname=postgres user=relay_bot application_name=regstage-relay" % (env.sock, env.pg_port)
    return " ".join([url] + ["%s=%s" % kv for kv in extra.items()])


@case("unit tests", "test/relay/relay_unit.c under ASan + UBSan: token shape, redaction, backoff cap 30 s, "
      "an update refused (not a crash) when calloc fails")
def _():
    out = subprocess.run([os.path.join(env.dir, "bin", "relay_unit")], capture_output=True, text=True, timeout=60)
    fails = [l for l in out.stdout.splitlines() if l.startswith("FAIL")]
    assert out.returncode == 0 and not fails, "exit %d: %s %s" % (out.returncode, fails[:5], out.stderr[-1500:])


@case("full registration", "6 updates -> user + 2 documents; the 6 replies in update order; staging cleared")
def _():
    env.inject(registration(30001))
    wait_for(lambda: registered(30001), 20, "user 30001 registered")
    texts = [c["params"].get("text", "") for c in env.calls(30001, "sendMessage")]
    expected = ["Welcome", "Please send your full name", "Please share your phone", "Please send a photo of your passport",
                "Now please send a selfie", "Registration complete"]
    assert len(texts) == len(expected) and all(t.startswith(e) for t, e in zip(texts, expected)), \
        "replies out of order: %s" % texts
    assert env.calls(method="answerCallbackQuery"), "callback answered"
    assert env.sql("SELECT regstage.staged(30001) IS NULL") == "t"


@case("chats in parallel", "chat A's commit is downloading (its .part file exists) for 10 s: chat B's reply comes "
      "while it still is, and the relay's own time for B is < 2 s")
def _():
    ups = registration(30002, selfie="dldelay10000_AgACs")
    env.inject(ups[:-1])
    wait_for(lambda: len(env.calls(30002)) >= 5, 10, "chat A at the selfie step")
    env.inject(ups[-1:])
    wait_for(lambda: downloading(30002), 10, "chat A's download started")
    uid = env.inject([text(30003, "/start")])["update_ids"][0]
    wait_for(lambda: env.calls(30003), 8, "chat B's reply")
    assert downloading(30002) and not registered(30002), "chat A's download was over before chat B's reply"
    line = wait_for(lambda: re.search(r"update %d chat 30003: \d+ calls, (\d+) ms" % uid, open(env.relay_log).read()),
                    5, "chat B's log line")
    assert int(line.group(1)) < 2000, "the relay took %s ms for chat B" % line.group(1)
    wait_for(lambda: registered(30002), 20, "chat A registered after its slow download")


@case("reply order", "40 alternating updates in one chat, sends of random duration: replies arrive in update order")
def _():
    env.http("/_test/fault", {"method": "sendMessage", "delay_ms": 30, "jitter": True, "times": 40})
    env.inject([text(30010, "/start" if i % 2 == 0 else "/cancel") for i in range(40)])
    wait_for(lambda: len(env.calls(30010)) >= 40, 20, "40 replies")
    texts = [c["params"]["text"] for c in env.calls(30010)]
    assert all(t.startswith("Welcome") == (i % 2 == 0) for i, t in enumerate(texts)), texts


@case("429 retry_after", "sendMessage answered 429 retry_after=1 once -> one reply, >= 1 s later")
def _():
    env.http("/_test/fault", {"method": "sendMessage", "status": 429, "retry_after": 1, "times": 1})
    at = env.inject([text(30004, "/start")])["at"]
    c = wait_for(lambda: env.calls(30004), 10, "reply after the rate limit")
    # the chat's next reply goes out after every send of this update: then count
    env.inject([text(30004, "/cancel")])
    wait_for(lambda: len(env.calls(30004)) >= 2, 10, "the next update's reply")
    assert sum(t.startswith("Welcome") for t in texts(30004)) == 1, "exactly one reply: %s" % texts(30004)
    assert c[0]["at"] - at >= 1.0, "retried too early (%.2f s)" % (c[0]["at"] - at)


@case("SIGKILL and restart", "50 chats, relay killed mid-stream: every update applied exactly once, no reply twice")
def _():
    global relay
    tids = list(range(31000, 31050))
    env.http("/_test/fault", {"method": "sendMessage", "delay_ms": 40, "times": 40})
    env.inject([callback(t, "lang:en") for t in tids])
    wait_for(lambda: len([c for c in env.calls(method="sendMessage")
                          if 31000 <= int(c["params"].get("chat_id", 0)) < 31050]) >= 5, 10, "some replies")
    relay.stop(signal.SIGKILL)
    applied = int(env.sql("SELECT count(*) FROM generate_series(31000, 31049) t WHERE regstage.staged(t) IS NOT NULL"))
    assert 0 < applied < 50, "killed mid-stream (%d of 50 applied)" % applied
    relay = Relay(env)
    wait_for(lambda: env.sql("SELECT count(*) FROM generate_series(31000, 31049) t "
                             "WHERE regstage.staged(t)->>'language' = 'en'") == "50", 20, "all 50 applied")
    time.sleep(0.5)
    counts = [len(env.calls(t, "sendMessage")) for t in tids]
    assert max(counts) == 1, "a reply was sent twice: %s" % counts
    assert counts.count(0) <= 4, "%d replies lost (at most one per worker may die with the relay)" % counts.count(0)


@case("poison update skipped", "handle_update failing (not an outage) is retried RELAY_MAX_ATTEMPTS=3 times, logged, skipped; the chat goes on")
def _():
    env.sql("REVOKE EXECUTE ON FUNCTION regstage.handle_update(jsonb) FROM relay_bot")
    try:
        uid = env.inject([text(30008, "/start")])["update_ids"][0]
        wait_for(lambda: "update %d: skipped after 3 failed attempts" % uid in open(env.relay_log).read(), 20, "skip")
    finally:
        env.sql("GRANT EXECUTE ON FUNCTION regstage.handle_update(jsonb) TO relay_bot")
    env.inject([text(30008, "/start")])
    wait_for(lambda: env.calls(30008), 10, "the next update of the same chat is served")
    assert len(env.calls(30008)) == 1


@case("PostgreSQL restart", "updates sent while the database restarts are held and applied after")
def _():
    env.pg_ctl("stop", "-m", "fast")
    env.inject([text(30005, "/start")])
    time.sleep(2)
    assert not env.calls(30005), "no reply while the database is down"
    env.pg_ctl("start")
    wait_for(lambda: env.calls(30005), 40, "reply after the restart")
    env.inject([text(30006, "/start")])
    wait_for(lambda: env.calls(30006), 10, "next update also served")


@case("https", "Bot API over TLS: RELAY_CA_FILE trusts a private CA -> reply; without it the certificate is refused, logged, no reply")
def _():
    import json
    import ssl
    import urllib.request
    port, ca = os.environ["RELAY_SUITE_TLS_API_PORT"], os.environ["RELAY_SUITE_TLS_CA"]
    api = "https://127.0.0.1:%s" % port
    tls = ssl.create_default_context(cafile=ca)

    def http(path, body=None):
        req = urllib.request.Request(api + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=30, context=tls) as r:
            return json.loads(r.read())

    def replies(chat):
        return [c for c in http("/_test/calls") if str(c["params"].get("chat_id")) == str(chat)]

    # update_ids of their own: handle_update remembers the other stand-in's
    u = text(30501, "/start")
    u["update_id"] = 950001
    http("/_test/updates", [u])
    offset = os.path.getsize(env.relay_log)

    def log_since():
        with open(env.relay_log) as f:
            f.seek(offset)
            return f.read()

    untrusting = Relay(env, extra_env={"TELEGRAM_API_URL": api, "RELAY_CA_FILE": ""})
    try:
        wait_for(lambda: "SSL certificate problem" in log_since(), 15, "a certificate error in the log")
        assert not replies(30501), "a reply through an unverified connection"
    finally:
        untrusting.stop()
    trusting = Relay(env, extra_env={"TELEGRAM_API_URL": api, "RELAY_CA_FILE": ca})
    try:
        wait_for(lambda: replies(30501), 15, "the reply over https")
    finally:
        trusting.stop()


@case("SIGTERM mid-download", "SIGTERM while a commit downloads (its .part file exists): the update completes, "
      "its reply goes out once, exit 0")
def _():
    ups = registration(30007, selfie="dldelay2000_AgACs")
    env.inject(ups[:-1])
    wait_for(lambda: len(env.calls(30007)) >= 5, 10, "at the selfie step")
    env.inject(ups[-1:])
    wait_for(lambda: downloading(30007), 10, "the commit downloading")
    t0 = time.time()
    rc = relay.stop(signal.SIGTERM, timeout=30)
    assert rc == 0, "exit code %s" % rc
    assert time.time() - t0 < 10, "took %.1f s" % (time.time() - t0)
    assert registered(30007), "the in-flight update did not complete"
    assert sum(t.startswith("Registration complete") for t in texts(30007)) == 1, texts(30007)


@case("bad token", "the Bot API answers 401 -> clear message, exit 1, token not printed")
def _():
    bad = Relay(env, token="123456:this-is-not-the-token" + "_" * 14)
    rc = bad.p.wait(15)
    bad.log.close()
    assert rc == 1, "exit code %s" % rc
    log = open(env.relay_log).read()
    assert "refused the token" in log
    assert "this-is-not-the-token" not in log, "token printed"


@case("malformed token refused", "tokens not of Telegram's shape (too short, inside <token>, wrong length, "
      "alphabet or id): exit 2 at once, a message naming TELEGRAM_BOT_TOKEN, the value not printed")
def _():
    for tok in ["token", "12:ab", "123456:" + "A" * 34, "123456:Zyxwvutsrqponmlkjihgfedcba9876543210",
                "123456:" + "A" * 34 + "+", "abc:" + "A" * 35, "123456" + "A" * 35, ""]:
        e = dict(os.environ, TELEGRAM_BOT_TOKEN=tok, TELEGRAM_API_URL=env.api, DATABASE_URL=database_url())
        try:
            out = subprocess.run([env.relay_bin], env=e, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("token %r: still running after 10 s" % tok[:6])
        assert out.returncode == 2, "token %r: exit code %s" % (tok[:6], out.returncode)
        assert "TELEGRAM_BOT_TOKEN" in out.stderr, out.stderr
        assert len(tok) < 6 or tok not in out.stdout + out.stderr, "token printed"


@case("token in a log line", "a Bot API URL holding the token: the log line shows <token>, never the token")
def _():
    path = os.path.join(env.dir, "relay-url-token.log")
    r = Relay(env, extra_env={"TELEGRAM_API_URL": env.api + "/p" + env.token}, log=path)
    rc = r.p.wait(15)
    r.log.close()
    log = open(path).read()
    assert rc == 1, "exit code %s" % rc
    assert "Bot API %s/p<token>" % env.api in log, log
    assert env.token not in log and env.token.split(":")[1] not in log, "token printed"


@case("--help, --version", "print usage (every variable) / the version on stdout, exit 0, no token needed; "
      "an unknown argument exits 2")
def _():
    e = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    h = subprocess.run([env.relay_bin, "--help"], env=e, capture_output=True, text=True, timeout=10)
    assert h.returncode == 0 and h.stdout.startswith("regstage-relay "), (h.returncode, h.stdout[:200])
    for var in ["TELEGRAM_BOT_TOKEN", "TELEGRAM_API_URL", "DATABASE_URL", "RELAY_WORKERS", "RELAY_MAX_ATTEMPTS",
                "RELAY_POLL_TIMEOUT", "RELAY_LOG_LEVEL", "RELAY_CA_FILE", "SIGTERM"]:
        assert var in h.stdout, "--help does not mention %s" % var
    v = subprocess.run([env.relay_bin, "--version"], env=e, capture_output=True, text=True, timeout=10)
    assert v.returncode == 0 and re.fullmatch(r"regstage-relay \d+\.\d+(\.\d+)?\n", v.stdout), (v.returncode, v.stdout)
    u = subprocess.run([env.relay_bin, "--bogus"], env=e, capture_output=True, text=True, timeout=10)
    assert u.returncode == 2 and "unknown argument" in u.stderr, (u.returncode, u.stderr[:200])


relay = Relay(env)


@case("5xx on a send", "sendMessage answered 503 twice: retried with backoff (250 + 500 ms), one reply")
def _():
    since = log_from()
    env.http("/_test/fault", {"method": "sendMessage", "status": 503, "times": 2})
    r = env.inject([text(30011, "/start")])
    c = wait_for(lambda: env.calls(30011), 10, "the reply after two 503s")
    assert c[0]["at"] - r["at"] >= 0.7, "retried without backoff (%.2f s)" % (c[0]["at"] - r["at"])
    for n in (1, 2):
        assert "update %d: sendMessage failed (503 Injected fault), attempt %d of 5" % (r["update_ids"][0], n) in since()
    assert len(env.calls(30011)) == 1


@case("other 4xx not retried", "sendMessage answered 400 once: logged, not retried; the chat goes on")
def _():
    since = log_from()
    env.http("/_test/fault", {"method": "sendMessage", "status": 400, "times": 1,
                              "description": "Bad Request: chat not found"})
    uid = env.inject([text(30012, "/start")])["update_ids"][0]
    wait_for(lambda: "update %d: sendMessage refused (400 Bad Request: chat not found); not retried" % uid in since(),
             10, "the refusal logged")
    # the next update's reply goes out after every send of the first: a retry would be recorded by then
    env.inject([text(30012, "/cancel")])
    wait_for(lambda: env.calls(30012), 10, "the next update's reply")
    assert not any(t.startswith("Welcome") for t in texts(30012)), "the refused send was retried: %s" % texts(30012)
    assert since().count("refused (400") == 1


@case("SIGINT mid-download", "SIGINT while a commit downloads: the update completes, exit 0, 'stopped' logged")
def _():
    since = log_from()
    ups = registration(30016, selfie="dldelay1500_AgACs")
    env.inject(ups[:-1])
    wait_for(lambda: len(env.calls(30016)) >= 5, 10, "at the selfie step")
    env.inject(ups[-1:])
    wait_for(lambda: downloading(30016), 10, "the commit downloading")
    rc = relay.stop(signal.SIGINT, timeout=30)
    assert rc == 0, "exit code %s" % rc
    assert registered(30016), "the in-flight update did not complete"
    assert "regstage-relay INFO: stopped" in since()


@case("statement_timeout is not an outage", "handle_update cancelled by statement_timeout (57014, a slow download): "
      "counted, skipped after RELAY_MAX_ATTEMPTS=3, not held forever; the chat goes on")
def _():
    since = log_from()
    r = Relay(env, extra_env={"DATABASE_URL": database_url(options="'-c statement_timeout=1500'")})
    try:
        ups = registration(30013, selfie="dldelay6000_AgACs")
        env.inject(ups[:-1])
        wait_for(lambda: len(env.calls(30013)) >= 5, 10, "at the selfie step")
        uid = env.inject(ups[-1:])["update_ids"][0]
        wait_for(lambda: "update %d: skipped after 3 failed attempts" % uid in since(), 30, "the update skipped")
        assert since().count("update %d: handle_update failed (57014)" % uid) == 3, since()[-2000:]
        assert "update %d: outage" % uid not in since(), "57014 was held as an outage"
        n = len(env.calls(30013))
        env.inject([text(30013, "/start")])
        wait_for(lambda: len(env.calls(30013)) > n, 10, "the chat's next update served")
    finally:
        r.stop()


@case("libpq timeouts", "a database that accepts and never answers: connect_timeout (10 s) ends the attempt, "
      "DATABASE_URL's connect_timeout=2 wins; TCP connections carry 30 s keepalives, DATABASE_URL's keepalives_idle=7 wins")
def _():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    held, done = [], threading.Event()

    def accept():
        while not done.is_set():
            try:
                held.append(srv.accept()[0])
            except socket.timeout:
                pass
    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    silent = "host=127.0.0.1 port=%d dbname=postgres user=relay_bot" % srv.getsockname()[1]
    logs = [os.path.join(env.dir, "relay-silent-%s.log" % k) for k in ("default", "2s")]
    relays = [Relay(env, workers=1, extra_env={"DATABASE_URL": silent}, log=logs[0]),
              Relay(env, workers=1, extra_env={"DATABASE_URL": silent + " connect_timeout=2"}, log=logs[1])]
    try:
        t0 = time.time()
        env.inject([text(30014, "/start")])
        wait_for(lambda: "timeout expired" in open(logs[1]).read(), 8, "the attempt ended by connect_timeout=2")
        t_user = time.time() - t0
        wait_for(lambda: "timeout expired" in open(logs[0]).read(), 20, "the attempt ended by the default connect_timeout")
        t_default = time.time() - t0
        assert t_user < 6, "connect_timeout=2 took %.1f s" % t_user
        assert t_default > 8, "the default connect_timeout ended after %.1f s" % t_default
    finally:
        for r in relays:
            r.stop(timeout=20)
        done.set()
        acceptor.join()
        for c in held:
            c.close()
        srv.close()

    def keepalive_s(r):
        out = subprocess.run(["ss", "-tnopH", "state", "established", "( dport = :%s )" % env.pg_port],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)ms)?", line)
            if "pid=%d," % r.p.pid in line and m:
                return int(m.group(1) or 0) * 60 + int(m.group(2) or 0) + int(m.group(3) or 0) / 1000.0
    tcp = "host=127.0.0.1 port=%s dbname=postgres user=relay_bot" % env.pg_port
    relays = [Relay(env, workers=1, extra_env={"DATABASE_URL": tcp}),
              Relay(env, workers=1, extra_env={"DATABASE_URL": tcp + " keepalives_idle=7"})]
    try:
        env.inject([text(30017, "/start")])         # both relays take it and connect
        ka = [wait_for(lambda r=r: keepalive_s(r), 15, "the relay's TCP connection") for r in relays]
        assert ka[0] <= 30, "default keepalive timer %.0f s" % ka[0]
        assert ka[1] <= 7, "DATABASE_URL's keepalives_idle=7 lost: timer %.0f s" % ka[1]
    finally:
        for r in relays:
            r.stop()


@case("stop flags race-free", "the relay under ThreadSanitizer: SIGTERM while a worker backs off from an "
      "unreachable database (reading the stop flag) -> exit 0, no data race reported")
def _():
    path = os.path.join(env.dir, "relay-tsan.log")
    closed = socket.socket()                    # bound, not listening: connection refused
    closed.bind(("127.0.0.1", 0))
    try:
        r = Relay(env, bin=os.path.join(env.dir, "bin", "regstage-relay-tsan"), log=path,
                  extra_env={"TSAN_OPTIONS": "halt_on_error=0 exitcode=66",
                             "DATABASE_URL": "host=127.0.0.1 port=%d dbname=postgres user=relay_bot"
                             % closed.getsockname()[1]})
        env.inject([text(30015, "/start")])
        wait_for(lambda: "database unavailable" in open(path).read(), 30, "the worker backing off")
        rc = r.stop(signal.SIGTERM, timeout=30)
    finally:
        closed.close()
    log = open(path).read()
    assert "ThreadSanitizer" not in log, log[log.index("ThreadSanitizer") - 20:][:1500]
    assert rc == 0, "exit code %s: %s" % (rc, log[-500:])


@case("token secrecy", "the bot token appears nowhere in the relay log or the PostgreSQL log")
def _():
    log = open(env.relay_log).read()
    assert env.token not in log
    assert env.token not in open(env.pg_log).read()
    assert "update " in log and " calls, " in log, "one line per update is logged"


@case("a relay left running", "started and not stopped, for test/scripts/relay.sh to check that its cleanup "
      "stops it by the pid file")
def _():
    r = Relay(env)
    with open(os.path.join(env.dir, "left-running.pid"), "w") as f:
        f.write("%d\n" % r.p.pid)


if relay.p.poll() is None:
    relay.stop()
sys.exit(report.finish())
