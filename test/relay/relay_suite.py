#!/usr/bin/env python3
"""The relay suite: regstage-relay, its own PostgreSQL cluster, the shared
test Redis and its own Bot API stand-in.  Prints a table of cases and exits
non-zero if any failed."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

W = os.environ["RELAY_SUITE_DIR"]
PG_PORT = os.environ["RELAY_SUITE_PG_PORT"]
API = "http://127.0.0.1:%s" % os.environ["RELAY_SUITE_API_PORT"]
TOKEN = os.environ["RELAY_SUITE_TOKEN"]
RELAY = os.environ["RELAY_SUITE_BIN"]
PG_BIN = os.environ["PG_BIN"]
RELAY_LOG = os.path.join(W, "relay.log")
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

results = []


def sql(q, db="postgres", user="postgres"):
    out = subprocess.run(["psql", "-h", os.path.join(W, "sock"), "-p", PG_PORT, "-U", user, "-d", db,
                          "-AtX", "-v", "ON_ERROR_STOP=1", "-c", q],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("psql failed: %s" % out.stderr.strip())
    return out.stdout.strip()


def http(path, body=None):
    req = urllib.request.Request(API + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def inject(updates):
    return http("/_test/updates", updates)


def calls(chat=None):
    cs = http("/_test/calls")
    if chat is None:
        return cs
    return [c for c in cs if str(c["params"].get("chat_id")) == str(chat)]


def wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def sender(tid):
    return {"id": tid, "is_bot": False, "first_name": "Test", "username": "t%d" % tid, "language_code": "en"}


def msg(tid, body):
    m = {"message_id": 1, "from": sender(tid), "chat": {"id": tid, "type": "private", "first_name": "Test"},
         "date": int(time.time())}
    m.update(body)
    return {"message": m}


def text(tid, t):
    return msg(tid, {"text": t})


def photo(tid, file_id):
    return msg(tid, {"photo": [{"file_id": "AgACsmall%d" % tid, "file_unique_id": "a", "file_size": 100, "width": 90, "height": 90},
                               {"file_id": file_id, "file_unique_id": "b", "file_size": 9999, "width": 1280, "height": 960}]})


def contact(tid):
    return msg(tid, {"contact": {"phone_number": "+7916%07d" % (tid % 10000000), "first_name": "Test", "user_id": tid}})


def callback(tid, data):
    return {"callback_query": {"id": "cb%d" % tid, "from": sender(tid), "chat_instance": "1",
                               "message": {"message_id": 1, "chat": {"id": tid, "type": "private"}, "date": 1},
                               "data": data}}


def registration(tid, passport="AgACp", selfie="AgACs"):
    return [text(tid, "/start"), callback(tid, "lang:en"), text(tid, "Test User"), contact(tid),
            photo(tid, "%s_%d" % (passport, tid)), photo(tid, "%s_%d" % (selfie, tid))]


class Relay:
    def __init__(self, token=TOKEN, workers=4, extra_env=None):
        env = dict(os.environ, TELEGRAM_BOT_TOKEN=token, TELEGRAM_API_URL=API,
                   DATABASE_URL="host=%s port=%s dbname=postgres user=relay_bot application_name=relay-suite"
                   % (os.path.join(W, "sock"), PG_PORT),
                   RELAY_WORKERS=str(workers), RELAY_POLL_TIMEOUT="5", RELAY_MAX_ATTEMPTS="3")
        env.update(extra_env or {})
        self.log = open(RELAY_LOG, "a")
        self.p = subprocess.Popen([RELAY], env=env, stdout=self.log, stderr=self.log)

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


def registered(tid):
    return sql("SELECT count(*) FROM regstage.users u JOIN regstage.documents d ON d.user_id = u.id "
               "WHERE u.telegram_id = %d" % tid) == "2"


def case(name, checked):
    def deco(fn):
        t0 = time.time()
        try:
            fn()
            results.append((name, "ok", checked, time.time() - t0))
        except Exception as e:      # a failed case is reported, the suite goes on
            results.append((name, "FAILED: %s" % e, checked, time.time() - t0))
        return fn
    return deco


def pg_ctl(*args):
    subprocess.run(AS_POSTGRES + [os.path.join(PG_BIN, "pg_ctl"), "-D", os.path.join(W, "pgdata"),
                                  "-l", os.path.join(W, "log", "postgres.log"), "-w", "-t", "60"] + list(args),
                   check=True, capture_output=True, cwd=W)


# ---------------------------------------------------------------------------
sql("CREATE EXTENSION IF NOT EXISTS pg_regstage")
sql("DO $$ BEGIN CREATE ROLE relay_bot LOGIN IN ROLE regstage_bot; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
subprocess.run(["redis-cli", "-p", os.environ["REDIS_PORT"], "EVAL",
                "for _,k in ipairs(redis.call('KEYS','relaysuite:*')) do redis.call('DEL',k) end", "0"],
               capture_output=True)
http("/_test/reset", {})

relay = Relay()


@case("full registration", "6 updates -> user + 2 documents; replies in order; staging cleared")
def _():
    inject(registration(30001))
    wait_for(lambda: registered(30001), 20, "user 30001 registered")
    texts = [c["params"].get("text", "") for c in calls(30001) if c["method"] == "sendMessage"]
    assert texts[0].startswith("Welcome"), texts
    assert texts[-1].startswith("Registration complete"), texts
    assert [c["method"] for c in calls() if c["method"] == "answerCallbackQuery"], "callback answered"
    assert sql("SELECT regstage.staged(30001) IS NULL") == "t"


@case("chats in parallel", "a 10 s download in chat A delays chat B's reply by < 100 ms")
def _():
    inject(registration(30002, selfie="dldelay10000_AgACs")[:-1])
    wait_for(lambda: len(calls(30002)) >= 5, 10, "chat A at the selfie step")
    inject([registration(30002, selfie="dldelay10000_AgACs")[-1]])
    time.sleep(0.5)                                  # A's commit is now downloading
    at = inject([text(30003, "/start")])["at"]
    c = wait_for(lambda: calls(30003), 5, "chat B's reply")
    delay = c[0]["at"] - at
    assert delay < 0.1, "chat B waited %.3f s" % delay
    assert not registered(30002), "A still downloading"
    wait_for(lambda: registered(30002), 20, "chat A registered after its slow download")


@case("429 retry_after", "sendMessage answered 429 retry_after=1 once -> one reply, >= 1 s later")
def _():
    http("/_test/fault", {"method": "sendMessage", "status": 429, "retry_after": 1, "times": 1})
    at = inject([text(30004, "/start")])["at"]
    c = wait_for(lambda: calls(30004), 10, "reply after the rate limit")
    time.sleep(0.3)
    assert len(calls(30004)) == 1, "exactly one reply"
    assert c[0]["at"] - at >= 1.0, "retried too early (%.2f s)" % (c[0]["at"] - at)


@case("SIGKILL and restart", "50 chats, relay killed mid-stream: every update applied exactly once, no reply twice")
def _():
    global relay
    tids = list(range(31000, 31050))
    http("/_test/fault", {"method": "sendMessage", "delay_ms": 40, "times": 40})
    inject([callback(t, "lang:en") for t in tids])
    wait_for(lambda: len([c for c in calls() if c["method"] == "sendMessage"
                          and 31000 <= int(c["params"].get("chat_id", 0)) < 31050]) >= 5, 10, "some replies")
    relay.stop(signal.SIGKILL)
    applied_before = int(sql("SELECT count(*) FROM generate_series(31000, 31049) t WHERE regstage.staged(t) IS NOT NULL"))
    assert 0 < applied_before < 50, "killed mid-stream (%d of 50 applied)" % applied_before
    relay = Relay()
    wait_for(lambda: sql("SELECT count(*) FROM generate_series(31000, 31049) t "
                         "WHERE regstage.staged(t)->>'language' = 'en'") == "50", 20, "all 50 applied")
    time.sleep(0.5)
    counts = [len([c for c in calls(t) if c["method"] == "sendMessage"]) for t in tids]
    assert max(counts) == 1, "a reply was sent twice: %s" % counts
    lost = counts.count(0)
    assert lost <= 4, "%d replies lost (at most one per worker may die with the relay)" % lost


@case("PostgreSQL restart", "updates sent while the database restarts are held and applied after")
def _():
    pg_ctl("stop", "-m", "fast")
    at = inject([text(30005, "/start")])["at"]
    time.sleep(2)
    assert not calls(30005), "no reply while the database is down"
    pg_ctl("start")
    wait_for(lambda: calls(30005), 40, "reply after the restart")
    inject([text(30006, "/start")])
    wait_for(lambda: calls(30006), 10, "next update also served")


@case("SIGTERM", "in-flight updates finish; exit code 0 within a few seconds")
def _():
    global relay
    inject([text(30007, "/start")])
    wait_for(lambda: calls(30007), 10, "reply")
    t0 = time.time()
    rc = relay.stop(signal.SIGTERM)
    assert rc == 0, "exit code %s" % rc
    assert time.time() - t0 < 5, "took %.1f s" % (time.time() - t0)


@case("bad token", "the Bot API answers 401 -> clear message, exit 1, token not printed")
def _():
    bad = Relay(token="123456:this-is-not-the-token")
    rc = bad.p.wait(15)
    bad.log.close()
    assert rc == 1, "exit code %s" % rc
    log = open(RELAY_LOG).read()
    assert "refused the token" in log
    assert "this-is-not-the-token" not in log, "token printed"


@case("token secrecy", "the bot token appears nowhere in the relay log or the PostgreSQL log")
def _():
    log = open(RELAY_LOG).read()
    assert TOKEN not in log
    assert TOKEN not in open(os.path.join(W, "log", "postgres.log")).read()
    assert "update " in log and " calls, " in log, "one line per update is logged"


if relay.p.poll() is None:
    relay.stop()
w = max(len(r[0]) for r in results)
print("\n%-*s | %-8s | %s" % (w, "case", "result", "what was checked"))
print("-" * (w + 60))
for name, res, checked, dt in results:
    print("%-*s | %-8s | %s (%.1f s)" % (w, name, res if res == "ok" else "FAILED", checked, dt))
    if res != "ok":
        print("%*s   %s" % (w, "", res))
failed = sum(1 for r in results if r[1] != "ok")
print("%d passed, %d failed" % (len(results) - failed, failed))
sys.exit(1 if failed else 0)
