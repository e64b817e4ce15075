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
from regstage_testlib import (Env, Relay, Report, callback, check, registration, text, wait_for)  # noqa: E402

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
    out = subprocess.run([os.path.join(env.dir, "bin", "relay_unit")], capture_output=True, text=True, errors="replace",
                         timeout=60)
    fails = [l for l in out.stdout.splitlines() if l.startswith("FAIL")]
    assert out.returncode == 0 and not fails, "exit %d: %s %s" % (out.returncode, fails[:5], out.stderr[-1500:])


@case("full registration", "6 updates -> user + 2 documents; the 6 replies in update order; staging cleared")
def _():
    env.inject(registration(30001))
    wait_for(lambda: registered(30001), 20, "user 30001 registered")
    # the last reply leaves the outbox after the commit that registered the user
    wait_for(lambda: len(env.calls(30001, "sendMessage")) >= 6, 5, "the 6 replies")
    texts = [c["params"].get("text", "") for c in env.calls(30001, "sendMessage")]
    expected = ["Welcome", "Please send your full name", "Please share your phone", "Please send a photo of your passport",
                "Now please send a selfie", "Registration complete"]
    assert len(texts) == len(expected) and all(t.startswith(e) for t, e in zip(texts, expected)), \
        "replies out of order: %s" % texts
    assert env.calls(method="answerCallbackQuery"), "callback answered"
    assert env.sql("SELECT regstage.staged(30001) IS NULL") == "t"


def replies_at(chat, prefix=None):
    """When each sendMessage of a chat arrived at the stand-in."""
    return [c["at"] for c in env.calls(chat, "sendMessage") if prefix is None or c["params"]["text"].startswith(prefix)]


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


@case("a blocked chat stalls no other", "chat A's commit downloads for 30 s (its .part file exists) while 200 other "
      "chats write: each of their replies measured, p99 <= 2 s, all while A is still downloading; A completes after")
def _():
    ups = registration(30002, selfie="dldelay30000_AgACs")
    env.inject(ups[:-1])
    wait_for(lambda: len(env.calls(30002)) >= 5, 10, "chat A at the selfie step")
    env.inject(ups[-1:])
    wait_for(lambda: downloading(30002), 10, "chat A's download started")
    chats = list(range(32000, 32200))
    at = env.inject([text(t, "/start") for t in chats])["at"]
    wait_for(lambda: all(replies_at(t) for t in chats), 25, "200 replies")
    lat = [replies_at(t)[0] - at for t in chats]
    print("    200 chats while one is blocked: reply latency p50 %.3f s, p99 %.3f s, max %.3f s"
          % (sorted(lat)[100], p99(lat), max(lat)))
    assert downloading(30002) and not registered(30002), "chat A's download was over before the 200 replies"
    assert p99(lat) <= 2.0, "p99 %.2f s" % p99(lat)
    wait_for(lambda: registered(30002), 45, "chat A registered after its slow download")


@case("reply order", "40 alternating updates in one chat, sends of random duration: replies arrive in update order")
def _():
    env.http("/_test/fault", {"method": "sendMessage", "delay_ms": 30, "jitter": True, "times": 40})
    env.inject([text(30010, "/start" if i % 2 == 0 else "/cancel") for i in range(40)])
    wait_for(lambda: len(env.calls(30010)) >= 40, 20, "40 replies")
    texts = [c["params"]["text"] for c in env.calls(30010)]
    assert all(t.startswith("Welcome") == (i % 2 == 0) for i, t in enumerate(texts)), texts


@case("long poll while idle", "no updates for 3 s (RELAY_POLL_TIMEOUT=5): at most 2 getUpdates requests, "
      "no busy re-fetching")
def _():
    time.sleep(1)
    n0 = env.http("/_test/stats")["getupdates"]
    time.sleep(3)
    n1 = env.http("/_test/stats")["getupdates"]
    assert n1 - n0 <= 2, "%d getUpdates in 3 idle seconds" % (n1 - n0)


def raw(b, uid=None):
    import base64
    return {"update_id": uid, "raw_b64": base64.b64encode(b).decode()}


def inbox(uid, cols="status"):
    return env.sql("SELECT %s FROM regstage.inbox WHERE update_id = %d" % (cols, uid))


@case("poison updates parked", "in a stream of 100 chats: updates jansson/jsonb refuse (\\u0000, invalid UTF-8, a lone "
      "surrogate), one without update_id and one that always fails (a trigger): the 100 are answered, the 4 parked "
      "with reasons in regstage.failed_updates; retry_update() after the trigger is dropped -> its reply arrives")
def _():
    chats = list(range(33000, 33100))
    env.inject([text(t, "/start") for t in chats[:50]])
    bad = env.http("/_test/raw_updates", [
        raw(b'{"update_id":%d,"message":{"chat":{"id":33900},"text":"nul \\u0000 here"}}' % 880001, 880001),
        raw(b'{"update_id":%d,"message":{"chat":{"id":33901},"text":"bad \xff\xfe utf8"}}' % 880002, 880002),
        raw(b'{"update_id":%d,"message":{"chat":{"id":33902},"text":"lone \\ud800"}}' % 880003, 880003),
        raw(b'{"message":{"chat":{"id":33903},"text":"no update_id"}}', 880004)])["update_ids"]
    env.sql("CREATE SCHEMA IF NOT EXISTS regstage_test")
    env.sql("CREATE OR REPLACE FUNCTION regstage_test.poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.update_id = 880005 THEN RAISE EXCEPTION 'poisoned update' USING ERRCODE = 'XX000'; END IF; "
            "RETURN NEW; END $$")
    env.sql("CREATE TRIGGER poison BEFORE INSERT ON regstage.seen_updates FOR EACH ROW EXECUTE FUNCTION regstage_test.poison()")
    try:
        u = text(33904, "/start")
        u["update_id"] = 880005
        env.inject([u])
        env.inject([text(t, "/start") for t in chats[50:]])
        wait_for(lambda: all(replies_at(t) for t in chats), 30, "the 100 other chats answered")
        wait_for(lambda: inbox(880005) == "failed", 30, "the failing update parked after regstage.max_attempts")
        failed = env.sql("SELECT update_id, attempts, sqlstate, last_error FROM regstage.failed_updates "
                         "WHERE update_id BETWEEN 880001 AND 880005 ORDER BY 1").splitlines()
        print("    parked: %s" % failed)
        got = {int(l.split("|")[0]): l for l in failed}
        assert sorted(got) == [880001, 880002, 880003, 880005], failed
        assert all("undecodable update" in got[i] for i in (880001, 880002, 880003)), failed
        assert got[880005].split("|")[1:3] == ["3", "XX000"] and "poisoned update" in got[880005], got[880005]
        assert "an update without an update_id cannot be stored" in open(env.relay_log).read()
        assert env.calls(33904) == [], "a reply for the failing update"
    finally:
        env.sql("DROP TRIGGER IF EXISTS poison ON regstage.seen_updates")
    assert env.sql("SELECT regstage.retry_update(880005)") == "t"
    wait_for(lambda: replies_at(33904), 10, "the retried update's reply")
    assert inbox(880005) == "done"
    # the offset passed the batch with the update without update_id: the next one is served
    env.inject([text(33905, "/start")])
    wait_for(lambda: replies_at(33905), 10, "the next update after the poison")


def sigkill_stages():
    # a dead relay's claim ends 7 s later; 8 calls in flight, so that the kill
    # in (4) falls mid-stream (50 sends of 0.5 s each take 3.5 s)
    fast = {"RELAY_SEND_TIMEOUT": "2", "RELAY_SEND_CONCURRENCY": "8"}
    twice = 0
    # (1) stored, not processed: processors lack process_next
    env.sql("REVOKE EXECUTE ON FUNCTION regstage.process_next(boolean, bigint, boolean) FROM relay_bot")
    try:
        r = Relay(env, extra_env=fast)
        uid = env.inject([text(34001, "/start")])["update_ids"][0]
        wait_for(lambda: inbox(uid) == "pending", 10, "the update stored")
        r.stop(signal.SIGKILL)
    finally:
        env.sql("GRANT EXECUTE ON FUNCTION regstage.process_next(boolean, bigint, boolean) TO relay_bot")
    r = Relay(env, extra_env=fast)
    wait_for(lambda: replies_at(34001), 10, "(1) the reply after the restart")
    # (2) mid-processing
    ups = registration(34002, selfie="dldelay3000_AgACs")
    env.inject(ups[:-1])
    wait_for(lambda: len(env.calls(34002)) >= 5, 10, "at the selfie step")
    env.inject(ups[-1:])
    wait_for(lambda: downloading(34002), 10, "(2) the commit downloading")
    r.stop(signal.SIGKILL)
    r = Relay(env, extra_env=fast)
    wait_for(lambda: registered(34002), 20, "(2) registered")
    wait_for(lambda: replies_at(34002, "Registration complete"), 10, "(2) the final reply")
    # (3) mid-send: the stand-in records the call, then holds its answer
    env.http("/_test/fault", {"method": "sendMessage", "chat_id": 34003, "hold_ms": 3000, "times": 1})
    env.inject([text(34003, "/start")])
    wait_for(lambda: replies_at(34003), 10, "(3) the call accepted")
    r.stop(signal.SIGKILL)
    r = Relay(env, extra_env=fast)
    wait_for(lambda: len(replies_at(34003)) >= 2, 20, "(3) the call sent again once its claim ended")
    twice += len(replies_at(34003)) - 1
    assert env.sql("SELECT status, attempts FROM regstage.outbox WHERE chat_id = 34003") == "sent|2"
    # (4) mid-stream
    tids = list(range(34100, 34150))
    env.http("/_test/fault", {"method": "sendMessage", "delay_ms": 500, "times": 50})
    ids = env.inject([callback(t, "lang:en") for t in tids])["update_ids"]
    wait_for(lambda: sum(1 for t in tids if replies_at(t)) >= 5, 10, "some replies")
    r.stop(signal.SIGKILL)
    answered = sum(1 for t in tids if replies_at(t))
    assert answered < 50, "killed mid-stream (%d of 50 answered)" % answered
    r = Relay(env, extra_env=fast)
    wait_for(lambda: all(replies_at(t) for t in tids), 30, "every chat answered")
    time.sleep(0.5)
    assert env.sql("SELECT count(*) FROM regstage.inbox WHERE status = 'done' AND attempts = 1 AND update_id BETWEEN %d AND %d"
                   % (min(ids), max(ids))) == "50", "an update processed twice or not at all"
    counts = [len(replies_at(t)) for t in tids]
    resent = int(env.sql("SELECT count(*) FROM regstage.outbox WHERE attempts > 1 AND chat_id BETWEEN 34100 AND 34149"))
    assert max(counts) <= 2 and sum(counts) - 50 <= resent, "replies sent twice %d, re-sent calls %d" % (sum(counts) - 50, resent)
    twice += sum(counts) - 50
    print("    replies sent twice (a kill between Telegram's accept and the outbox report): %d" % twice)
    r.stop()


@case("SIGKILL at every stage", "the relay killed (1) after the inbox insert, before processing, (2) mid-processing "
      "(a commit downloading), (3) mid-send (Telegram accepted, its answer held), (4) mid-stream of 50 chats: "
      "nothing lost, nothing applied twice; a reply sent twice only for a kill between Telegram's accept and the report")
def _():
    global relay
    relay.stop()
    try:
        sigkill_stages()
    finally:
        relay = Relay(env)


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def post_webhook(port, update, secret, timeout=10):
    """POST one update as Telegram does; returns the HTTP status."""
    import http.client
    import json
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        c.request("POST", "/", body=json.dumps(update).encode(), headers=headers)
        return c.getresponse().status
    finally:
        c.close()


@case("webhook: two relays, one database", "1,000 updates of 50 chats posted alternately to two relays in webhook "
      "mode (every 10th posted to both): each processed exactly once, replies in update order per chat; "
      "wrong or missing secret -> 401 and nothing stored; no secret configured -> exit 2")
def _():
    secret = "s3cret_" + "x" * 20
    e = dict(os.environ, TELEGRAM_BOT_TOKEN=env.token, TELEGRAM_API_URL=env.api, DATABASE_URL=database_url(),
             RELAY_WEBHOOK_LISTEN="127.0.0.1:%d" % free_port())
    out = subprocess.run([env.relay_bin], env=e, capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "TELEGRAM_WEBHOOK_SECRET" in out.stderr, (out.returncode, out.stderr)
    ports = [free_port(), free_port()]
    hooks = [Relay(env, extra_env={"RELAY_WEBHOOK_LISTEN": "127.0.0.1:%d" % p, "TELEGRAM_WEBHOOK_SECRET": secret})
             for p in ports]
    try:
        wait_for(lambda: open(env.relay_log).read().count("webhook: listening on") >= 2, 10, "both listening")
        u = text(35999, "/start")
        u["update_id"] = 890000
        assert post_webhook(ports[0], u, "wrong") == 401
        assert post_webhook(ports[1], u, None) == 401
        assert post_webhook(ports[0], u, secret[:-1]) == 401
        assert inbox(890000) == "", "stored despite a wrong secret"
        chats = list(range(35000, 35050))
        per_chat = {t: [] for t in chats}
        uid = 890001
        for i in range(20):
            for t in chats:
                u = text(t, "/start" if i % 2 == 0 else "/cancel")
                u["update_id"] = uid
                per_chat[t].append(u)
                uid += 1

        def post_chats(group, k):
            n = 0
            for i in range(20):
                for t in group:
                    u = per_chat[t][i]
                    assert post_webhook(ports[n % 2], u, secret) == 200
                    if u["update_id"] % 10 == 0:        # Telegram delivering it again, to the other relay
                        assert post_webhook(ports[(n + 1) % 2], u, secret) == 200
                    n += 1
        threads = [threading.Thread(target=post_chats, args=(chats[k::5], k)) for k in range(5)]
        errors = []
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors
        wait_for(lambda: all(len(env.calls(t, "sendMessage")) >= 20 for t in chats), 60, "20 replies in each of 50 chats")
        time.sleep(1)
        for t in chats:
            ts = [c["params"]["text"] for c in env.calls(t, "sendMessage")]
            assert len(ts) == 20, "chat %d: %d replies" % (t, len(ts))
            assert all(x.startswith("Welcome") == (i % 2 == 0) for i, x in enumerate(ts)), "chat %d out of order" % t
        assert env.sql("SELECT count(*), sum(attempts) FROM regstage.inbox WHERE update_id BETWEEN 890001 AND 891000 "
                       "AND status = 'done'") == "1000|1000"
    finally:
        for h in hooks:
            assert h.stop() == 0


def raw_http(port, data, timeout=5):
    """Send raw bytes as one request; the status line's code, or None if the relay closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as so:
        so.sendall(data)
        answer = so.recv(4096)
    m = re.match(rb"HTTP/1\.1 (\d+) ", answer)
    return int(m.group(1)) if m else None


@case("webhook: slow clients, framing", "100 connections that send half a request and wait (slow loris) while "
      "Telegram posts: its update is answered 200 and stored within 2 s; two Content-Length headers -> 400, "
      "Transfer-Encoding -> 411, a 9 KiB head -> 431, a 2 MiB body -> 413; nothing of those stored")
def _():
    secret = "s3cret_" + "y" * 20
    port = free_port()
    hook = Relay(env, extra_env={"RELAY_WEBHOOK_LISTEN": "127.0.0.1:%d" % port, "TELEGRAM_WEBHOOK_SECRET": secret})
    slow = []
    try:
        wait_for(lambda: open(env.relay_log).read().count("webhook: listening on 127.0.0.1:%d" % port) >= 1, 10,
                 "listening")
        for _ in range(100):
            so = socket.create_connection(("127.0.0.1", port), timeout=5)
            so.sendall(b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Len")
            slow.append(so)
        time.sleep(0.5)
        u = text(37001, "/start")
        u["update_id"] = 895001
        t0 = time.time()
        assert post_webhook(port, u, secret, timeout=5) == 200
        took = time.time() - t0
        print("    with 100 slow connections open: answered in %.3f s" % took)
        assert took < 2, "the post waited %.1f s behind slow connections" % took
        assert inbox(895001) != "", "answered 200 but not stored"
        body = b'{"update_id":895002,"message":{"chat":{"id":37002}}}'
        head = "POST / HTTP/1.1\r\nX-Telegram-Bot-Api-Secret-Token: %s\r\n" % secret
        assert raw_http(port, (head + "Content-Length: %d\r\nContent-Length: 2\r\n\r\n" % len(body)).encode()
                        + body) == 400
        assert raw_http(port, (head + "Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body)).encode()
                        + body + b"\r\n0\r\n\r\n") == 411
        assert raw_http(port, (head + "X-Pad: %s\r\n\r\n" % ("p" * 9000)).encode()) == 431
        assert raw_http(port, (head + "Content-Length: %d\r\n\r\n" % (2 * 1024 * 1024)).encode()) == 413
        assert inbox(895002) == "", "a refused request was stored"
    finally:
        for so in slow:
            so.close()
        assert hook.stop() == 0


@case("a message queued from SQL", "regstage.send_message() committed in psql reaches the stand-in within 1 s; one "
      "queued in a transaction that rolls back never does")
def _():
    t0 = time.time()
    env.sql("SELECT regstage.send_message(36001, 'from SQL')")
    c = wait_for(lambda: env.calls(36001), 5, "the message")
    print("    queued -> at the stand-in: %.3f s" % (c[0]["at"] - t0))
    assert c[0]["at"] - t0 <= 1.0, "took %.2f s" % (c[0]["at"] - t0)
    env.sql("BEGIN; SELECT regstage.send_message(36002, 'rolled back'); ROLLBACK")
    time.sleep(2)
    assert not env.calls(36002), "a rolled-back message was sent"


@case("429 on one chat", "sendMessage to one chat answered 429 retry_after=3: that chat's reply comes >= 3 s later, "
      "once; 20 other chats' replies meanwhile within 1.5 s")
def _():
    env.http("/_test/fault", {"method": "sendMessage", "chat_id": 36010, "status": 429, "retry_after": 3, "times": 1})
    at = env.inject([text(36010, "/start")] + [text(t, "/start") for t in range(36011, 36031)])["at"]
    wait_for(lambda: all(replies_at(t) for t in range(36011, 36031)), 5, "the other chats' replies")
    worst = max(replies_at(t)[0] - at for t in range(36011, 36031))
    assert worst <= 1.5, "another chat waited %.2f s" % worst
    c = wait_for(lambda: replies_at(36010), 10, "the limited chat's reply")
    assert c[0] - at >= 3.0, "retried too early (%.2f s)" % (c[0] - at)
    time.sleep(0.5)
    assert len(replies_at(36010)) == 1


@case("one busy chat", "1,000 messages queued for one chat in one transaction, a 429 (retry_after=3) on the 500th: "
      "the 1,000 arrive once each, in order, the first 499 within 5 s, the 500th >= 3 s after the 499th; 20 other "
      "chats' messages queued while the busy chat waits out its 429 arrive within 1.5 s, before its 500th; only the "
      "500th has 2 attempts")
def _():
    chat, n = 36100, 1000
    env.http("/_test/fault", {"method": "sendMessage", "chat_id": chat, "text": "busy 500", "status": 429,
                              "retry_after": 3, "times": 1})
    t0 = time.time()
    env.sql("SELECT count(regstage.send_message(%d, 'busy ' || g)) FROM generate_series(1, %d) g" % (chat, n))
    wait_for(lambda: env.sql("SELECT http_status FROM regstage.outbox WHERE chat_id = %d AND params->>'text' = "
                             "'busy 500'" % chat) == "429", 15, "the 429 on the 500th")
    t1 = time.time()
    env.sql("SELECT count(regstage.send_message(t, 'other')) FROM generate_series(36101, 36120) t")
    wait_for(lambda: len(env.calls(chat, "sendMessage")) >= n, 30, "the busy chat's %d messages" % n)
    calls = env.calls(chat, "sendMessage")
    got = [c["params"]["text"] for c in calls]
    assert got == ["busy %d" % i for i in range(1, n + 1)], \
        "out of order or twice: %s" % [(i, t) for i, t in enumerate(got) if t != "busy %d" % (i + 1)][:5]
    at = {c["params"]["text"]: c["at"] for c in calls}
    others = max(replies_at(t)[0] for t in range(36101, 36121))
    print("    the first 499 in %.2f s, all %d in %.2f s; the 500th %.2f s after the 499th; the other chats "
          "within %.2f s" % (at["busy 499"] - t0, n, at["busy %d" % n] - t0, at["busy 500"] - at["busy 499"],
                             others - t1))
    assert at["busy 499"] - t0 <= 5.0, "499 messages of one chat took %.2f s" % (at["busy 499"] - t0)
    assert at["busy 500"] - at["busy 499"] >= 3.0, "the 429's retry_after was not kept"
    assert others - t1 <= 1.5 and others < at["busy 500"], \
        "another chat waited %.2f s behind the busy one's 429" % (others - t1)
    assert env.sql("SELECT count(*), sum(attempts) FROM regstage.outbox WHERE chat_id = %d AND status = 'sent'"
                   % chat) == "%d|%d" % (n, n + 1), "attempts: a call counted without being sent"


@case("a batch the database refuses is held", "store_updates refused (EXECUTE revoked from the relay's role): the "
      "batch is retried and not confirmed to Telegram; once granted again its update is answered")
def _():
    since = log_from()
    env.sql("REVOKE EXECUTE ON FUNCTION regstage.store_updates(bigint[], bytea[], boolean) FROM relay_bot")
    try:
        env.inject([text(30018, "/start")])
        wait_for(lambda: "store_updates failed" in since(), 10, "the refused store logged")
        time.sleep(1)
        assert not env.calls(30018), "answered while the store was refused"
    finally:
        env.sql("GRANT EXECUTE ON FUNCTION regstage.store_updates(bigint[], bytea[], boolean) TO relay_bot")
    wait_for(lambda: env.calls(30018), 20, "the reply once store_updates is allowed again")


@case("a report the database refuses", "outbox_report_batch refused (EXECUTE revoked): the call Telegram took "
      "stays leased, not sent again meanwhile; SIGTERM still stops the relay within the 5 s drain, logging the "
      "unreported call; after its lease (RELAY_SEND_TIMEOUT=2 + 5 s) the next relay sends it again and marks it sent")
def _():
    global relay
    report = "regstage.outbox_report_batch(bigint[], integer[], text[], integer[], bigint[], interval)"
    relay.stop()
    since = log_from()
    short = Relay(env, extra_env={"RELAY_SEND_TIMEOUT": "2"})
    env.sql("REVOKE EXECUTE ON FUNCTION %s FROM relay_bot" % report)
    try:
        env.sql("SELECT regstage.send_message(36201, 'unreported')")
        wait_for(lambda: env.calls(36201), 5, "the message at the stand-in")
        wait_for(lambda: "outbox_report_batch of 1 calls failed" in since(), 10, "the refused report logged")
        time.sleep(1.5)
        assert len(env.calls(36201)) == 1, "sent again while its lease holds"
        t0 = time.time()
        rc = short.stop(signal.SIGTERM, timeout=30)
        took = time.time() - t0
        print("    stopped in %.1f s with the report refused" % took)
        assert rc == 0, "exit code %s" % rc
        assert took < 9, "stopping took %.1f s" % took
        assert "answered 200 but not reported" in since(), since()[-2000:]
        assert env.sql("SELECT status FROM regstage.outbox WHERE chat_id = 36201") == "pending"
    finally:
        env.sql("GRANT EXECUTE ON FUNCTION %s TO relay_bot" % report)
        relay = Relay(env, extra_env={"RELAY_SEND_TIMEOUT": "2"})
    wait_for(lambda: env.sql("SELECT status FROM regstage.outbox WHERE chat_id = 36201") == "sent", 30,
             "the call sent again after its lease and marked sent")
    assert len(env.calls(36201)) == 2, "sent %d times" % len(env.calls(36201))
    relay.stop()
    relay = Relay(env)


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


def walwriter():
    out = env.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'", check=False)
    return int(out) if out.isdigit() else 0         # 0 also while the server restarts


def hold_wal():
    """Stop the WAL writer: a commit that does not wait for its flush stays in
    the WAL buffers (shared memory) until someone's synchronous commit writes
    them.  Returns its pid."""
    pid = walwriter()
    os.kill(pid, signal.SIGSTOP)
    return pid


def crash_postgres(held):
    """A crash: the held WAL writer killed, so PostgreSQL restarts (restart_after_crash)
    from what reached the WAL files; what was only in the WAL buffers is lost."""
    os.kill(held, signal.SIGKILL)
    wait_for(lambda: walwriter() not in (0, held), 60, "PostgreSQL restarted after the crash")
    env.wait_pg()


def at_phone_step(tids):
    env.sql("SELECT regstage.stage_language(t, 'en'), regstage.stage_user_data(t, '{\"full_name\": \"Ivan Petrov\"}') "
            "FROM unnest(ARRAY%s::bigint[]) t" % tids)


@case("a database crash", "PostgreSQL crashed (its WAL writer stopped, then killed: what only the WAL buffers held is lost), "
      "synchronous_commit on: "
      "(1) 20 names staged in Redis while no sender may claim, the crash once all are processed: each chat then gets "
      "'share your phone' once (an update that wrote to Redis is flushed at its commit); (2) 30 chats' typed "
      "answers (no Redis write, asynchronous commits) answered, the crash at once: none processed again (a reply goes "
      "out only once its commit is durable); (3) the same crashed before any claim: what the crash forgot is "
      "processed again, each chat gets its 2 replies once")
def _():
    global relay
    fast = {"RELAY_SEND_TIMEOUT": "2"}
    env.sql("ALTER SYSTEM SET synchronous_commit = on")     # the test clusters run with it off
    env.sql("SELECT pg_reload_conf()")
    held = 0
    relay.stop()
    claim = "regstage.outbox_claim(integer, interval, integer, bigint, pg_snapshot, bigint[], bigint[])"
    try:
        # (1) names: a Redis write each; processed, not sent
        tids = list(range(36500, 36520))
        env.sql("SELECT regstage.stage_language(t, 'en') FROM unnest(ARRAY%s::bigint[]) t" % tids)
        env.sql("REVOKE EXECUTE ON FUNCTION %s FROM relay_bot" % claim)
        relay = Relay(env, extra_env=fast)
        held = hold_wal()
        ids = env.inject([text(t, "Ivan Petrov") for t in tids])["update_ids"]
        wait_for(lambda: env.sql("SELECT count(*) FROM regstage.inbox WHERE status = 'done' AND update_id BETWEEN %d AND %d"
                                 % (min(ids), max(ids))) == "20", 15, "(1) the 20 names processed")
        relay.stop(signal.SIGKILL)
        crash_postgres(held)
        env.sql("GRANT EXECUTE ON FUNCTION %s TO relay_bot" % claim)
        relay = Relay(env, extra_env=fast)
        wait_for(lambda: all(texts(t) for t in tids), 20, "(1) the 20 replies")
        time.sleep(1)
        got = {t: texts(t) for t in tids}
        bad = {t: x for t, x in got.items() if len(x) != 1 or not x[0].startswith("Please share your phone")}
        assert not bad, "(1) a staged name processed again after the crash: %s" % bad
        # (2) typed answers at the phone step: no Redis write, commits not
        # waiting for their flush; every reply sent, then the crash at once:
        # a commit whose replies went out was durable, so none is run again
        tids = list(range(36600, 36630))
        at_phone_step(tids)
        held = hold_wal()
        ids = env.inject([text(t, "Ivan Petrov") for t in tids])["update_ids"]
        wait_for(lambda: all(len(texts(t)) >= 2 for t in tids), 15, "(2) the 30 answers")
        crashed_at = env.sql("SELECT clock_timestamp()")
        relay.stop(signal.SIGKILL)
        crash_postgres(held)
        relay = Relay(env, extra_env=fast)
        time.sleep(9)           # a call whose report the crash lost is sent again after its lease (7 s)
        wait_for(lambda: env.sql("SELECT count(*) FROM regstage.outbox WHERE status = 'pending' AND chat_id BETWEEN "
                                 "36600 AND 36629") == "0", 20, "(2) the outbox sent")
        print("    (2) %d replies for 60 calls (a call whose report the crash lost goes again)"
              % sum(len(texts(t)) for t in tids))
        assert env.sql("SELECT count(*) FROM regstage.inbox WHERE status = 'done' AND processed_at < '%s' "
                       "AND update_id BETWEEN %d AND %d" % (crashed_at, min(ids), max(ids))) == "30", \
            "(2) an update whose replies had gone out was processed again after the crash: " + \
            env.sql("SELECT string_agg(update_id || ' at ' || processed_at, ', ') FROM regstage.inbox WHERE "
                    "update_id BETWEEN %d AND %d AND processed_at >= '%s'" % (min(ids), max(ids), crashed_at))
        assert env.sql("SELECT count(*) FROM regstage.outbox WHERE chat_id BETWEEN 36600 AND 36629 AND created_at < '%s'"
                       % crashed_at) == "60", "(2) replies queued again after the crash"
        # (3) the same, crashed before any sender could claim: commits the
        # crash forgot are run again, and each chat still gets its 2 replies
        tids = list(range(36700, 36730))
        at_phone_step(tids)
        env.sql("REVOKE EXECUTE ON FUNCTION %s FROM relay_bot" % claim)
        held = hold_wal()
        ids = env.inject([text(t, "Ivan Petrov") for t in tids])["update_ids"]
        wait_for(lambda: env.sql("SELECT count(*) FROM regstage.inbox WHERE status = 'done' AND update_id BETWEEN %d AND %d"
                                 % (min(ids), max(ids))) == "30", 15, "(3) the 30 answers processed")
        crashed_at = env.sql("SELECT clock_timestamp()")
        relay.stop(signal.SIGKILL)
        crash_postgres(held)
        env.sql("GRANT EXECUTE ON FUNCTION %s TO relay_bot" % claim)
        relay = Relay(env, extra_env=fast)
        wait_for(lambda: all(len(texts(t)) >= 2 for t in tids), 20, "(3) the 30 answers")
        time.sleep(1)
        again = env.sql("SELECT count(*) FROM regstage.inbox WHERE processed_at >= '%s' AND update_id BETWEEN %d AND %d"
                        % (crashed_at, min(ids), max(ids)))
        print("    (3) %s of 30 updates processed again after the crash (their commits had not reached the WAL file)"
              % again)
        # (all of them, unless an autovacuum's commit flushed some meanwhile)
        assert int(again) > 0, "(3) every commit waited for its flush: none was lost with the WAL buffers"
        bad = {t: len(texts(t)) for t in tids if len(texts(t)) != 2}
        assert not bad, "(3) replies per chat: %s" % bad
    finally:
        if held:
            try:
                os.kill(held, signal.SIGCONT)
            except ProcessLookupError:
                pass
        env.sql("GRANT EXECUTE ON FUNCTION %s TO relay_bot" % claim, check=False)
        env.sql("ALTER SYSTEM RESET synchronous_commit", check=False)
        env.sql("SELECT pg_reload_conf()", check=False)
        relay.stop(signal.SIGKILL)
        relay = Relay(env)


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

    # one database, one outbox: the suite's relay would send this reply to the http stand-in
    global relay
    relay.stop()
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
        relay = Relay(env)


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
                "RELAY_POLL_TIMEOUT", "RELAY_LOG_LEVEL", "RELAY_CA_FILE", "RELAY_WEBHOOK_LISTEN",
                "TELEGRAM_WEBHOOK_SECRET", "RELAY_SEND_CONCURRENCY", "RELAY_SEND_TIMEOUT", "SIGTERM"]:
        assert var in h.stdout, "--help does not mention %s" % var
    v = subprocess.run([env.relay_bin, "--version"], env=e, capture_output=True, text=True, timeout=10)
    assert v.returncode == 0 and re.fullmatch(r"regstage-relay \d+\.\d+(\.\d+)?\n", v.stdout), (v.returncode, v.stdout)
    u = subprocess.run([env.relay_bin, "--bogus"], env=e, capture_output=True, text=True, timeout=10)
    assert u.returncode == 2 and "unknown argument" in u.stderr, (u.returncode, u.stderr[:200])


relay = Relay(env)


@case("5xx on a send", "sendMessage answered 503 twice: retried with the outbox's backoff (2 s, 4 s), one reply; "
      "the outbox row sent after 3 attempts")
def _():
    env.http("/_test/fault", {"method": "sendMessage", "chat_id": 30011, "status": 503, "times": 2})
    r = env.inject([text(30011, "/start")])
    c = wait_for(lambda: env.calls(30011), 15, "the reply after two 503s")
    assert c[0]["at"] - r["at"] >= 5.5, "retried without backoff (%.2f s)" % (c[0]["at"] - r["at"])
    assert len(env.calls(30011)) == 1
    assert env.sql("SELECT status, attempts, http_status FROM regstage.outbox WHERE chat_id = 30011") == "sent|3|200"


@case("other 4xx not retried", "sendMessage answered 400 once: parked as failed in the outbox with the error, not "
      "retried; the chat goes on")
def _():
    env.http("/_test/fault", {"method": "sendMessage", "chat_id": 30012, "status": 400, "times": 1,
                              "description": "Bad Request: chat not found"})
    env.inject([text(30012, "/start")])
    # the stand-in quotes the request URL after the description, as proxies do:
    # what is stored is the description, with the token redacted
    wait_for(lambda: env.sql("SELECT status, http_status, left(last_error, 27) FROM regstage.outbox "
                             "WHERE chat_id = 30012 AND status = 'failed'") == "failed|400|Bad Request: chat not found",
             10, "the call parked")
    stored = env.sql("SELECT last_error FROM regstage.outbox WHERE chat_id = 30012 AND status = 'failed'")
    check(env.token.split(":")[1] not in stored, "the token is in outbox.last_error")
    env.inject([text(30012, "/cancel")])
    wait_for(lambda: env.calls(30012), 10, "the next update's reply")
    time.sleep(0.5)
    assert not any(t.startswith("Welcome") for t in texts(30012)), "the refused send was retried: %s" % texts(30012)


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


@case("statement_timeout is not an outage", "process_next's update cancelled by statement_timeout (57014, a slow "
      "download): counted, parked after regstage.max_attempts = 3, not held forever; the chat goes on")
def _():
    r = Relay(env, extra_env={"DATABASE_URL": database_url(options="'-c statement_timeout=1500'")})
    try:
        ups = registration(30013, selfie="dldelay6000_AgACs")
        env.inject(ups[:-1])
        wait_for(lambda: len(env.calls(30013)) >= 5, 10, "at the selfie step")
        uid = env.inject(ups[-1:])["update_ids"][0]
        wait_for(lambda: inbox(uid) == "failed", 40, "the update parked")
        assert inbox(uid, "attempts, sqlstate") == "3|57014", inbox(uid, "attempts, sqlstate, last_error")
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
    assert "update " in log and " processed, " in log, "one line per update is logged"


@case("a relay left running", "started and not stopped, for test/scripts/relay.sh to check that its cleanup "
      "stops it by the pid file")
def _():
    r = Relay(env)
    with open(os.path.join(env.dir, "left-running.pid"), "w") as f:
        f.write("%d\n" % r.p.pid)


if relay.p.poll() is None:
    relay.stop()
sys.exit(report.finish())
