#!/usr/bin/env python3
"""The relay suite: regstage-relay, its own PostgreSQL cluster, the shared
test Redis and its own Bot API stand-in.  Prints a table of cases and exits
non-zero if any failed."""
import os
import signal
import subprocess
import sys
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


@case("chats in parallel", "a 10 s download in chat A delays chat B's reply by < 100 ms")
def _():
    env.inject(registration(30002, selfie="dldelay10000_AgACs")[:-1])
    wait_for(lambda: len(env.calls(30002)) >= 5, 10, "chat A at the selfie step")
    env.inject([registration(30002, selfie="dldelay10000_AgACs")[-1]])
    time.sleep(0.5)                                  # A's commit is now downloading
    at = env.inject([text(30003, "/start")])["at"]
    c = wait_for(lambda: env.calls(30003), 5, "chat B's reply")
    delay = c[0]["at"] - at
    assert delay < 0.1, "chat B waited %.3f s" % delay
    assert not registered(30002), "A still downloading"
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
    time.sleep(0.3)
    assert len(env.calls(30004)) == 1, "exactly one reply"
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


@case("SIGTERM", "in-flight updates finish; exit code 0 within a few seconds")
def _():
    env.inject([text(30007, "/start")])
    wait_for(lambda: env.calls(30007), 10, "reply")
    t0 = time.time()
    rc = relay.stop(signal.SIGTERM)
    assert rc == 0, "exit code %s" % rc
    assert time.time() - t0 < 5, "took %.1f s" % (time.time() - t0)


@case("bad token", "the Bot API answers 401 -> clear message, exit 1, token not printed")
def _():
    bad = Relay(env, token="123456:this-is-not-the-token")
    rc = bad.p.wait(15)
    bad.log.close()
    assert rc == 1, "exit code %s" % rc
    log = open(env.relay_log).read()
    assert "refused the token" in log
    assert "this-is-not-the-token" not in log, "token printed"


@case("token secrecy", "the bot token appears nowhere in the relay log or the PostgreSQL log")
def _():
    log = open(env.relay_log).read()
    assert env.token not in log
    assert env.token not in open(env.pg_log).read()
    assert "update " in log and " calls, " in log, "one line per update is logged"


if relay.p.poll() is None:
    relay.stop()
sys.exit(report.finish())
