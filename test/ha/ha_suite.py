"""The high-availability suite (run by test/scripts/ha.sh).

  redis:    master + replica + 3 Sentinels; the extension finds the master
            through the sentinels, refuses a replica (ROLE), drops a
            connection that met READONLY; the master is killed during a
            stream of staging calls and staging goes on on the new master.
  standby:  a plain streaming replica (pg_basebackup -R): every C function
            and the SQL writers fail with 25006, the cleanup worker idles
            and says so once; the relay (multi-host URI,
            target_session_attrs=read-write) registers users while the
            primary is killed and the replica promoted; a relay whose
            DATABASE_URL names the standby alone takes nothing until the
            promote, says why, then carries on.
  relays:   three relays in webhook mode behind HAProxy (health checks,
            retry-on), one database; a Telegram-like poster sends 1,000
            updates of 50 chats through it and one relay is SIGKILLed
            mid-stream: every update stored and applied once, replies in
            update order per chat, double sends only for calls in flight at
            the kill (counted).  Then two relays polling one bot: Telegram's
            409 Conflict is logged with its meaning and backed off.
  patroni:  etcd + 2 Patroni nodes (synchronous_mode) + HAProxy routing to
            the leader; the leader's Patroni and postmaster are killed
            mid-stream, the relay (through HAProxy) and the extension carry on.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from servers import (W, SRC, PG_BIN, AS_PG, log, alive, kill9, wait_for, spawn, rcli, start_redis,  # noqa: E402
                     start_sentinel, Node, initdb, basebackup, start_standin, start_relay, http, chown_pg,
                     record, wait_gone, ConflictingBotApi)
from regstage_testlib import registration, text, callback, contact  # noqa: E402

PORTS = dict(redis=(29401, 29402), sentinel=(29411, 29412, 29413), fake_sentinel=29414,
             pg=(29431, 29432), patroni_pg=(29441, 29442), patroni_api=(29451, 29452),
             etcd=(29461, 29462), haproxy=29471, haproxy_stats=29472, api=29481,
             relay_hook=(29421, 29422, 29423), relay_standby_only=29424, haproxy_hook=29473,
             haproxy_hook_stats=29474, conflict_api=29476)
MASTER = "regstage-ha"
SENTINELS = ",".join("127.0.0.1:%d" % p for p in PORTS["sentinel"])
TOKEN = os.environ["HA_TOKEN"]
SU_PASS = os.environ["HA_SU_PASS"]
API = "http://127.0.0.1:%d" % PORTS["api"]
UPLOADS = os.path.join(W, "uploads")
# the Patroni cluster is another cluster (its own system identifier): an
# upload directory of its own (one cluster's database per directory)
UPLOADS_PATRONI = os.path.join(W, "uploads-patroni")
FAILED = []
WEBHOOK_SECRET = "wh_" + os.urandom(16).hex()


def check(cond, what):
    log(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        FAILED.append(what)
    return cond


class Session:
    """One psql process kept open (one backend, so its Redis connection lives on)."""

    def __init__(self, node):
        env = node.env()
        self.p = subprocess.Popen(["psql", "-X", "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres",
                                   "-d", "postgres", "-Atq", "-v", "VERBOSITY=verbose"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1, env=env)
        self.n = 0

    def run(self, q):
        self.n += 1
        self.p.stdin.write(q.rstrip().rstrip(";") + ";\n\\echo __END_%d__\n" % self.n)
        self.p.stdin.flush()
        lines = []
        while True:
            line = self.p.stdout.readline()
            if not line or line.rstrip("\n") == "__END_%d__" % self.n:
                return lines
            lines.append(line.rstrip("\n"))

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(10)
        except Exception:
            self.p.kill()


def sqlstate(lines):
    for line in lines:
        for tag in ("ERROR:  ", "FATAL:  "):
            if line.startswith(tag):
                return line[len(tag):len(tag) + 5]
    return None


def first_error(lines):
    return next((l for l in lines if l.startswith(("ERROR:", "FATAL:"))), "")


def hint(lines):
    return next((l for l in lines if l.startswith("HINT:")), "")


PG_CONF = """
shared_preload_libraries = 'pg_regstage'
fsync = off
wal_level = replica
max_wal_senders = 5
hot_standby = on
log_min_messages = log
regstage.redis_sentinels = '%(sentinels)s'
regstage.redis_master_name = '%(master)s'
regstage.redis_timeout = '1s'
regstage.telegram_api_url = '%(api)s'
regstage.bot_token = '%(token)s'
regstage.upload_dir = '%(uploads)s'
regstage.download_timeout = '10s'
regstage.cleanup_interval = '2s'
regstage.database = 'postgres'
""" % dict(sentinels=SENTINELS, master=MASTER, api=API, token=TOKEN, uploads=UPLOADS)

ITEMS = [("language", "SELECT regstage.stage_language(%d, 'en')"),
         ("full_name", "SELECT regstage.stage_user_data(%d, '{\"full_name\": \"Test User\"}')"),
         ("phone", "SELECT regstage.stage_user_data(%d, '{\"phone\": \"+79161234567\"}')"),
         ("passport", "SELECT regstage.stage_document(%d, 'passport', 'AgACp_%d')"),
         ("selfie", "SELECT regstage.stage_document(%d, 'selfie', 'AgACs_%d')")]


def stage_sql(tid, item):
    q = dict(ITEMS)[item]
    return q % ((tid, tid) if q.count("%d") == 2 else (tid,))


# ==== Redis Sentinel ==================================================================
class FakeSentinel(threading.Thread):
    """Answers SENTINEL get-master-addr-by-name with a fixed address (a replica's)."""

    def __init__(self, port, answer_port):
        super().__init__(daemon=True)
        self.asked = 0
        self.answer_port = answer_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.recv(4096)
            self.asked += 1
            p = str(self.answer_port)
            c.sendall(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(p), p.encode()))
            c.close()


def part_redis(p1):
    r0, r1 = PORTS["redis"]
    log("== Redis Sentinel: master :%d, replica :%d, sentinels %s" % (r0, r1, SENTINELS))
    s = Session(p1)

    # errors before anything is reachable
    out = s.run("SET regstage.redis_sentinels = '127.0.0.1:29419,127.0.0.1:29418'; SELECT regstage.stage_language(1, 'en')")
    check(sqlstate(out) == "08001" and "127.0.0.1:29419" in first_error(out) and "127.0.0.1:29418" in first_error(out),
          "no sentinel reachable -> 08001 naming the sentinels: %s" % first_error(out))
    out = s.run("SET regstage.redis_sentinels = '%s'; SET regstage.redis_master_name = 'nosuch';"
                " SELECT regstage.stage_language(1, 'en')" % SENTINELS)
    check(sqlstate(out) == "08001" and "nosuch" in first_error(out) and "redis_master_name" in hint(out),
          "master unknown to the sentinels -> 08001 with a hint: %s | %s" % (first_error(out), hint(out)))
    s.run("RESET regstage.redis_master_name")

    # a sentinel naming the replica: ROLE says slave, asked again (bounded), nothing written
    fake = FakeSentinel(PORTS["fake_sentinel"], r1)
    fake.start()
    out = s.run("SET regstage.redis_sentinels = '127.0.0.1:%d'; SELECT regstage.stage_language(777, 'en')"
                % PORTS["fake_sentinel"])
    check(sqlstate(out) == "08001" and "ROLE is slave" in first_error(out) and fake.asked == 3,
          "a sentinel naming a replica: ROLE checked, asked %d times, 08001: %s" % (fake.asked, first_error(out)))
    check(rcli(r1, "EXISTS", "registration:777:language") == "0" and rcli(r0, "EXISTS", "registration:777:language") == "0",
          "nothing was written to the replica (EXISTS registration:777:language = 0 on both)")
    fake.sock.close()

    # plain regstage.redis_host at the replica: READONLY drops the connection
    out = s.run("SET regstage.redis_sentinels = ''; SET regstage.redis_port = %d; SELECT regstage.stage_language(778, 'en')" % r1)
    check(sqlstate(out) == "08006" and "READONLY" in first_error(out),
          "a write to a replica -> 08006 READONLY, connection dropped: %s" % first_error(out))
    s.run("RESET regstage.redis_sentinels; RESET regstage.redis_port")

    # ---- the failover under a stream of staging calls
    users = list(range(1001, 1041))
    lag_user = 1010
    acked = {}           # (tid, item) -> time acknowledged
    errors = []          # (time, tid, item, sqlstate, message)
    t_kill = None
    t_first_ok = None
    master_pid = int(rcli(r0, "INFO", "server").split("process_id:")[1].split()[0])
    for tid in users:
        for item, _ in ITEMS:
            if tid == lag_user and item == "phone":
                # replication lag, made certain: the replica's link is cut and cannot come back
                # (a masterauth the master refuses) while the master acknowledges two writes
                rcli(r1, "CONFIG", "SET", "masterauth", "refused-on-purpose")
                rcli(r1, "CLIENT", "KILL", "TYPE", "master")
                wait_for(lambda: "master_link_status:down" in rcli(r1, "INFO", "replication"), 5, "link down")
                log("replica :%d link cut (and kept down): the next writes reach the master only" % r1)
            while True:
                out = s.run(stage_sql(tid, item))
                st = sqlstate(out)
                if st is None:
                    acked[(tid, item)] = time.time()
                    if t_kill and t_first_ok is None:
                        t_first_ok = time.time()
                        log("first staging call acknowledged after the kill: %.2f s (user %d %s)"
                            % (t_first_ok - t_kill, tid, item))
                    break
                errors.append((time.time(), tid, item, st, first_error(out)))
                if time.time() - (t_kill or time.time()) > 30:
                    raise AssertionError("staging did not resume within 30 s: %s" % first_error(out))
                time.sleep(0.1)     # the conversation asks the user again for this item
            if tid == lag_user and item == "passport":
                t_kill = time.time()
                kill9(master_pid, "Redis master :%d" % r0)
                rcli(r1, "CONFIG", "SET", "masterauth", "")
                log("sentinels fail over to the replica :%d" % r1)
    new_master = rcli(PORTS["sentinel"][0], "SENTINEL", "get-master-addr-by-name", MASTER).split()
    check(new_master == ["127.0.0.1", str(r1)], "sentinels name the replica :%d as master: %s" % (r1, new_master))
    check(t_first_ok is not None and t_first_ok - t_kill < 10,
          "staging continued on the new master %.2f s after kill -9 (< 10 s)" % ((t_first_ok or 0) - (t_kill or 0)))
    states = sorted(set((e[3], e[4].split(":", 2)[-1][:90]) for e in errors))
    log("calls refused during the failover: %d; what the session saw:" % len(errors))
    for st, msg in states:
        log("    %s %s" % (st, msg))
    check(all(e[3] in ("08001", "08006") for e in errors),
          "every refused call was a connection error (08001/08006: an outage, the relay holds and retries)")

    # what asynchronous replication lost: acknowledged writes missing on the new master
    lost = []
    for tid in users:
        miss = s.run("SELECT regstage.missing(%d)" % tid)[0].strip("{}")
        for item in filter(None, miss.split(",")):
            if (tid, item) in acked:
                lost.append((tid, item))
    log("acknowledged by the old master but not on the new one (asynchronous replication): %s"
        % (", ".join("%d:%s" % l for l in lost) or "nothing"))
    check(set(lost) == {(lag_user, "phone"), (lag_user, "passport")},
          "exactly the writes acknowledged while the replica lagged are lost")
    out = s.run("SELECT regstage.commit_registration(%d)" % lag_user)
    check(sqlstate(out) is not None and s.run("SELECT count(*) FROM regstage.users WHERE telegram_id = %d" % lag_user) == ["0"],
          "commit_registration(%d) refuses the incomplete user (%s), no users row: %s"
          % (lag_user, sqlstate(out), first_error(out)[:100]))
    nxt = s.run("SELECT (regstage.missing(%d))[1]" % lag_user)[0]
    log("user %d is asked again for: %s (the conversation's next question), then answers" % (lag_user, nxt))
    for tid, item in lost:
        check(sqlstate(s.run(stage_sql(tid, item))) is None, "re-staged %d %s on the new master" % (tid, item))
    ok = 0
    for tid in users:
        out = s.run("SELECT regstage.commit_registration(%d)" % tid)
        ok += sqlstate(out) is None
    check(ok == len(users), "commit_registration succeeded for %d of %d users after the failover" % (ok, len(users)))
    check_integrity(p1, "after the Redis failover")
    s.close()


def check_integrity(node, when):
    """Every users row has all its documents, every file exists."""
    r = node.psql("SELECT count(*), "
                  " count(*) FILTER (WHERE (SELECT count(*) FROM regstage.documents d WHERE d.user_id = u.id) <> 2)"
                  " FROM regstage.users u")
    users, broken = map(int, r.split("|"))
    files = node.psql("SELECT count(*), count(*) FILTER (WHERE NOT regstage.document_file_exists(file_path))"
                      " FROM regstage.documents")
    docs, missing = map(int, files.split("|"))
    check(broken == 0 and missing == 0,
          "%s on %s: %d users, %d without both documents; %d documents, %d files missing"
          % (when, node.name, users, broken, docs, missing))
    return users


# ==== plain streaming replica ==============================================================
STANDBY_C_CALLS = ["regstage.stage_language(1, 'en')", "regstage.stage_user_data(1, '{}')",
                   "regstage.stage_document(1, 'passport', 'x')", "regstage.staged(1)",
                   "regstage.stage_text_answer(1, 'Test User')", "regstage.missing(1)", "regstage.extend_ttl(1)",
                   "regstage.clear_registration(1)", "regstage.commit_registration(1)", "* FROM regstage.cleanup_orphans()"]
STANDBY_SQL_CALLS = ["regstage.handle_update('{\"update_id\": 1, \"message\": {}}')",
                     "regstage.store_updates(ARRAY[5]::bigint[], ARRAY['{}'::bytea])",
                     "regstage.process_next()", "regstage.retry_update(1)", "* FROM regstage.purge_processed('7 days')",
                     "regstage.purge_stuck_pending()", "* FROM regstage.outbox_claim()"]
STANDBY_READS = ["regstage.normalize_phone('8 916 123-45-67')", "regstage.missing_from('{}')",
                 "regstage.document_file_exists('x')", "count(*) FROM regstage.pending_review",
                 "count(*) FROM regstage.upload_files()"]


def part_standby(p1, p2):
    log("== plain streaming replica: %s :%d -> %s :%d" % (p1.name, p1.port, p2.name, p2.port))
    basebackup(p1, p2)
    p2.start()
    # synchronous replication: a commit the relay saw is on the standby too
    p1.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
    p1.psql("SELECT pg_reload_conf()")
    wait_for(lambda: p1.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = '%s'" % p2.name,
                             check=False) == "sync", 30, "p2 streaming as synchronous standby")
    check(p2.in_recovery() == "t", "%s is a hot standby, synchronous (synchronous_standby_names = '*')" % p2.name)
    s = Session(p2)
    for call in STANDBY_C_CALLS:
        out = s.run("SELECT " + call)
        check(sqlstate(out) == "25006" and "target_session_attrs=read-write" in hint(out),
              "standby: SELECT %s -> %s %s" % (call, sqlstate(out), first_error(out)[15:90]))
    log("   hint: %s" % hint(out))
    for call in STANDBY_SQL_CALLS:
        out = s.run("SELECT " + call)
        check(sqlstate(out) == "25006", "standby, SQL-language: SELECT %s -> %s (by PostgreSQL itself: %s)"
              % (call, sqlstate(out), first_error(out)[15:80]))
    for call in STANDBY_READS:
        out = s.run("SELECT " + call)
        check(sqlstate(out) is None, "standby, read-only: SELECT %s works (%s)" % (call, out[0] if out else ""))
    s.close()
    time.sleep(0.5)
    check(len(p2.log_lines("this server is a standby")) == 1 and not p1.log_lines("this server is a standby"),
          "cleanup worker: %s logged 'standby, idle' once, %s not at all" % (p2.name, p1.name))

    # ---- a relay whose DATABASE_URL names the standby alone: it takes no
    # update while the node is a standby, says why, and carries on once promoted
    only_url = ("postgresql://postgres:%s@127.0.0.1:%d/postgres?connect_timeout=2&application_name=relay-standby-only"
                % (SU_PASS, p2.port))
    only_port = PORTS["relay_standby_only"]
    only = start_relay("standby-only", only_url, API, TOKEN,
                       dict(RELAY_WEBHOOK_LISTEN="127.0.0.1:%d" % only_port, TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET))
    only_log = os.path.join(W, "relay-standby-only.log")
    only_update = dict(text(2901, "/start"), update_id=920001)

    def only_lines(needle):
        with open(only_log, errors="replace") as f:
            return [l.rstrip() for l in f if needle in l]
    wait_for(lambda: len(only_lines("the server is a standby")) >= 6, 15,
             "the standby-only relay's parts (webhook, 4 processors, sender) saying the server is a standby")
    st = post_webhook(only_port, only_update)
    check(st == 503, "a webhook POST to the relay on the standby alone: %s (not stored; Telegram delivers it again)" % st)
    check(p2.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'relay-standby-only'") == "0",
          "the relay holds no connection to the standby (db_usable drops a hot-standby connection)")
    l = only_lines("the server is a standby")[0]
    check(l.find("target_session_attrs=read-write") > 0,
          "its log says why it does nothing: %s" % l[l.find("ERROR:"):][:170])

    # ---- the relay across a failover
    tids = list(range(2001, 2061))
    url = ("postgresql://postgres:%s@127.0.0.1:%d,127.0.0.1:%d/postgres?target_session_attrs=read-write&connect_timeout=2"
           % (SU_PASS, p1.port, p2.port))
    held = 2999         # a commit caught waiting for the synchronous standby when the primary dies
    s1 = Session(p1)
    for item, _ in ITEMS:
        s1.run(stage_sql(held, item))
    s1.close()
    relay = start_relay("standby", url, API, TOKEN)
    # half the registrations now, half once the standby is cut off: those can
    # only complete after the failover (a relay fast enough registered all 60
    # between the fifth and the cut, and the reconnect went unexercised)
    ids = inject_registrations(tids[:len(tids) // 2])
    wait_for(lambda: count_users(p1, tids) >= 5, 60, "5 users registered through the relay", step=0.05)
    # the standby is cut off (the primary refuses replication connections now and ends
    # its walsender): commits on the primary wait for it, and their WAL never reaches it
    hba = os.path.join(p1.data, "pg_hba.conf")
    with open(hba) as f:
        rules = f.read()
    with open(hba, "w") as f:
        f.write("host replication all 127.0.0.1/32 reject\n" + rules)
    p1.psql("SELECT pg_reload_conf()")
    p1.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
    log("%s cut off from %s (replication refused, walsender ended): commits on %s now wait for the synchronous standby"
        % (p2.name, p1.name, p1.name))
    ids = ids + inject_registrations(tids[len(tids) // 2:])
    waiter = subprocess.Popen(["psql", "-X", "-h", "127.0.0.1", "-p", str(p1.port), "-U", "postgres", "-d", "postgres",
                               "-c", "SELECT regstage.commit_registration(%d)" % held],
                              stdout=open(os.path.join(W, "waiter.out"), "w"), stderr=subprocess.STDOUT, env=p1.env())
    try:
        wait_for(lambda: p1.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                                 " AND query LIKE '%%commit_registration(%d)%%'" % held, check=False) == "1",
                 10, "commit_registration(%d) waiting for the synchronous standby" % held)
    except AssertionError:
        log("pg_stat_activity: %s; the commit's output: %s" % (
            p1.psql("SELECT string_agg(coalesce(wait_event, '-') || ' ' || left(query, 60), ' | ') FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend'", check=False), open(os.path.join(W, "waiter.out")).read()))
        raise
    pid = p1.postmaster_pid()
    before = count_users(p1, tids)
    kill9(pid, "primary %s postmaster (commit_registration(%d) and relay commits wait for the standby)" % (p1.name, held))
    waiter.wait(10)
    time.sleep(0.3)     # the orphaned backends finish their commit callbacks
    p2.pg_ctl("promote")
    t_promote = time.time()
    # the promoted node has no synchronous standby left: commit locally
    p2.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
    p2.psql("SELECT pg_reload_conf()")
    log("promoted %s (pg_ctl promote), synchronous_standby_names reset; %d of %d users were registered at the kill"
        % (p2.name, before, len(tids)))
    s2 = Session(p2)
    row = s2.run("SELECT count(*) FROM regstage.users WHERE telegram_id = %d" % held)
    miss = s2.run("SELECT regstage.missing(%d)" % held)
    log("commit_registration(%d): committed on %s, never acknowledged (the wait for the standby was cut): "
        "users rows on %s: %s, staged data in Redis: missing() = %s" % (held, p1.name, p2.name, row[0], miss[0]))
    check(row == ["0"] and miss == ["{}"],
          "a commit cut from its synchronous-standby wait kept its staged data (it is not on the standby)")
    out = s2.run("SELECT regstage.commit_registration(%d) > 0" % held)
    check(out == ["t"], "so commit_registration(%d) on the promoted %s succeeds: %s" % (held, p2.name, out))
    s2.close()
    wait_for(lambda: count_users(p2, tids) == len(tids), 90, "every user registered on the promoted node", step=0.5)
    check(before < len(tids), "all %d users registered, %d of them after the kill: the relay reconnected to %s by itself"
          % (len(tids), len(tids) - before, p2.name))
    check_no_update_lost(p2, ids, tids)
    check_integrity(p2, "after promote")
    wait_for(lambda: p2.log_lines("was promoted to primary"), 10, "the worker noticing the promotion")
    check(len(p2.log_lines("was promoted to primary")) == 1,
          "cleanup worker on %s: logged the promotion once: %s" % (p2.name, p2.log_lines("was promoted to primary")[0][-90:]))
    relay_log = open(os.path.join(W, "relay-standby.log")).read()
    check("skipped" not in relay_log, "the relay skipped no update")
    relay.terminate()
    wait_gone(relay.pid)

    # the standby-only relay carries on on the promoted node: Telegram delivers the update again
    st = wait_for(lambda: post_webhook(only_port, only_update) == 200, 10, "the standby-only relay taking the update")
    wait_for(lambda: p2.psql("SELECT status FROM regstage.inbox WHERE update_id = 920001") == "done", 40,
             "update 920001 processed")
    wait_for(lambda: p2.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'relay-standby-only'")
             == "6", 40, "the standby-only relay's six connections to the promoted node", step=0.5)
    check(True, "the relay on the standby alone carries on on the promoted %s: its webhook answered 200, the update "
          "was processed, its 6 connections (webhook, 4 processors, sender) are back %.1f s after the promote "
          "(the processors' back-off)" % (p2.name, time.time() - t_promote))
    wait_for(lambda: any(c["method"] == "sendMessage" and (c.get("params") or {}).get("chat_id") == 2901
                         for c in http(API + "/_test/calls")), 15, "the reply to chat 2901")
    only.terminate()
    wait_gone(only.pid)


def inject_registrations(tids):
    ups = []
    for tid in tids:        # user after user: registrations complete all along the stream
        ups.extend(registration(tid))
    return http(API + "/_test/updates", ups)["update_ids"]


def count_users(node, tids):
    r = node.psql("SELECT count(*) FROM regstage.users WHERE telegram_id BETWEEN %d AND %d" % (min(tids), max(tids)),
                  check=False)
    return int(r) if r.isdigit() else -1


def check_no_update_lost(node, ids, tids):
    seen = int(node.psql("SELECT count(*) FROM regstage.seen_updates WHERE update_id BETWEEN %d AND %d"
                         % (min(ids), max(ids))))
    check(seen == len(ids), "every injected update was applied on %s: %d of %d in seen_updates" % (node.name, seen, len(ids)))
    # replies leave through the outbox after their update committed: wait for them
    def answered():
        done = set()
        for c in http(API + "/_test/calls"):
            p = c.get("params") or {}
            if c["method"] == "sendMessage" and p.get("chat_id") in tids:
                done.add(p["chat_id"])
        return done
    try:
        # a reply claimed on the primary that died goes out when its lease ends
        wait_for(lambda: answered() == set(tids), 30, "replies to every chat")
    except Exception:
        pass
    done = answered()
    check(done == set(tids), "every user got replies from the bot (%d of %d chats)" % (len(done), len(tids)))


# ==== several relays in webhook mode behind HAProxy =====================================
HAPROXY_WEBHOOK_CFG = """global
    maxconn 200
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout check 1s
    retries 2
    option redispatch 1
frontend telegram_webhook
    bind 127.0.0.1:%(fe)d
    default_backend relays
backend relays
    balance roundrobin
    # a POST whose relay died before answering goes to another relay: the
    # inbox ignores an update_id stored before, so a repeat is harmless
    retry-on conn-failure empty-response response-timeout
    # the relay answers anything but a POST with 405: its HTTP loop is alive
    option httpchk GET /
    http-check expect status 405
    default-server inter 500ms fall 2 rise 2
%(servers)s
listen stats
    bind 127.0.0.1:%(stats)d
    stats enable
    stats uri /stats
"""
NAMES = ["Anna Ivanova", "Boris Petrov", "Clara Smith", "Denis Orlov"]


def chat_script(tid):
    """20 updates of one chat, each changing its state: four rounds of /start,
    language, name, phone, then /cancel (the last round: /status, so the chat
    ends with language, name and phone staged).  With the replies each one
    must get, as (method, text or callback id)."""
    ups, want = [], []
    for r, name in enumerate(NAMES):
        last = r == len(NAMES) - 1
        ups += [text(tid, "/start"), callback(tid, "lang:en"), text(tid, name), contact(tid),
                text(tid, "/status" if last else "/cancel")]
        want += [("sendMessage", "choose_language"), ("answerCallbackQuery", "cb%d" % tid),
                 ("sendMessage", "ask_full_name"), ("sendMessage", "ask_phone"), ("sendMessage", "ask_doc:passport"),
                 ("sendMessage", "status:in_progress" if last else "cancelled")]
    return ups, want


class WebhookPoster:
    """Telegram's side of a webhook: each chat's updates one after another,
    over `conns` connections in parallel; an update that got no 200 (another
    status, a connection error) is delivered again, the same body, until it
    does."""

    def __init__(self, port, secret, conns=8):
        self.port, self.secret, self.conns = port, secret, conns
        self.lock = threading.Lock()
        self.acked = 0
        self.posts = 0
        self.refused = {}            # status or error -> count
        self.errors = []

    def post_group(self, seq):
        import http.client
        conn = None
        for u in seq:
            body = json.dumps(u).encode()
            while True:
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
                    conn.request("POST", "/telegram", body, {"Content-Type": "application/json",
                                                             "X-Telegram-Bot-Api-Secret-Token": self.secret})
                    r = conn.getresponse()
                    r.read()
                    status = r.status
                    if (r.getheader("Connection") or "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as e:
                    status = type(e).__name__
                    if conn:
                        conn.close()
                    conn = None
                with self.lock:
                    self.posts += 1
                    if status == 200:
                        self.acked += 1
                    else:
                        self.refused[status] = self.refused.get(status, 0) + 1
                if status == 200:
                    break
                time.sleep(0.1)          # and then the same update again
        if conn:
            conn.close()

    def start(self, per_chat):
        """per_chat: {chat: [updates in order]}; the chats are split between the connections."""
        chats = sorted(per_chat)
        self.threads = []
        for k in range(self.conns):
            group = chats[k::self.conns]
            seq = sorted((u for t in group for u in per_chat[t]), key=lambda u: u["update_id"])
            th = threading.Thread(target=self._run, args=(seq,), daemon=True)
            th.start()
            self.threads.append(th)

    def _run(self, seq):
        try:
            self.post_group(seq)
        except Exception as e:   # noqa: BLE001 -- reported as a failed check
            self.errors.append(repr(e))

    def join(self, timeout):
        t = time.time()
        for th in self.threads:
            th.join(max(0.1, timeout - (time.time() - t)))
        return not any(th.is_alive() for th in self.threads)


def haproxy_stats(port):
    """{server name: {column: value}} of HAProxy's stats CSV."""
    import csv
    import io
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/stats;csv" % port, timeout=2) as r:
            rows = list(csv.reader(io.StringIO(r.read().decode().lstrip("# "))))
    except OSError:
        return {}       # not listening yet
    head = rows[0]
    return {row[1]: dict(zip(head, row)) for row in rows[1:] if row and row[0] == "relays" and row[1] != "BACKEND"}


def part_relays(pg):
    log("== several relays in webhook mode behind HAProxy, one database (%s :%d)" % (pg.name, pg.port))
    secret = WEBHOOK_SECRET
    ports = PORTS["relay_hook"]
    names = ["relay%d" % (i + 1) for i in range(len(ports))]
    relays = {}
    for name, port in zip(names, ports):
        url = "postgresql://postgres:%s@127.0.0.1:%d/postgres?connect_timeout=2&application_name=%s" % (
            SU_PASS, pg.port, name)
        relays[name] = start_relay(name, url, API, TOKEN, dict(
            RELAY_WEBHOOK_LISTEN="127.0.0.1:%d" % port, TELEGRAM_WEBHOOK_SECRET=secret, RELAY_LOG_LEVEL="debug"))
    cfg = os.path.join(W, "haproxy-webhook.cfg")
    with open(cfg, "w") as f:
        f.write(HAPROXY_WEBHOOK_CFG % dict(
            fe=PORTS["haproxy_hook"], stats=PORTS["haproxy_hook_stats"],
            servers="\n".join("    server %s 127.0.0.1:%d check" % np for np in zip(names, ports))))
    hap = spawn(["haproxy", "-db", "-f", cfg], "haproxy-webhook", os.path.join(W, "haproxy-webhook.log"))
    wait_for(lambda: [s["status"] for s in haproxy_stats(PORTS["haproxy_hook_stats"]).values()] == ["UP"] * len(names),
             15, "HAProxy: the three relays UP")
    log("HAProxy (pid %d) :%d balances %s (round robin, health check GET / -> 405, retry-on empty-response)"
        % (hap.pid, PORTS["haproxy_hook"], ", ".join("%s :%d" % np for np in zip(names, ports))))

    chats = list(range(4001, 4051))
    per_chat, want = {}, {}
    base = 900000
    for t in chats:
        per_chat[t], want[t] = chat_script(t)
    # a user answers quickly: each round's five updates of a chat come one
    # right after the other (consecutive update_ids), so a chat often has
    # several stored and not yet processed
    uid = base
    for r in range(len(NAMES)):
        for t in chats:
            for u in per_chat[t][r * 5:(r + 1) * 5]:
                uid += 1
                u["update_id"] = uid
    ids = sorted(u["update_id"] for t in chats for u in per_chat[t])
    texts = json.loads(pg.psql("SELECT json_object_agg(key, text) FROM regstage.messages WHERE language = 'en'"))
    want = {t: [(m, texts[k] if m == "sendMessage" else k) for m, k in w] for t, w in want.items()}

    poster = WebhookPoster(PORTS["haproxy_hook"], secret)
    t0 = time.time()
    poster.start(per_chat)
    victim = names[1]
    wait_for(lambda: poster.acked >= len(ids) * 2 // 5, 60, "40% of the updates acknowledged", step=0.02)
    # every sendMessage from now on is accepted, then answered 300 ms later: each
    # relay's sender holds calls Telegram took and the relay has not reported
    http(API + "/_test/fault", {"method": "sendMessage", "hold_ms": 300, "times": 200})
    watch = Session(pg)
    inflight = None
    deadline = time.time() + 5
    while time.time() < deadline:          # a moment the victim is storing or processing
        rows = watch.run("SELECT count(*) FILTER (WHERE query LIKE '%%store_updates%%') || ' store_updates, ' || "
                         "count(*) FILTER (WHERE query LIKE '%%process_next%%') || ' process_next' FROM pg_stat_activity "
                         "WHERE application_name = '%s' AND state = 'active'" % victim)
        if rows and rows[0] != "0 store_updates, 0 process_next":
            inflight = rows[0]
            break
    st = haproxy_stats(PORTS["haproxy_hook_stats"])
    pid = relays[victim].pid
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    acked_at_kill = poster.acked
    watch.close()
    wait_gone(pid)
    log("KILLED %s (pid %d) with SIGKILL after %d of %d updates were acknowledged; at the kill its database "
        "connections were running %s; HAProxy had %s request(s) open to it; "
        "sendMessage held 300 ms after acceptance"
        % (victim, pid, acked_at_kill, len(ids), inflight or "none seen", st[victim]["scur"]))
    wait_for(lambda: haproxy_stats(PORTS["haproxy_hook_stats"])[victim]["status"].startswith("DOWN"), 10,
             "HAProxy marking %s DOWN" % victim, step=0.05)
    log("HAProxy marked %s DOWN %.2f s after the kill" % (victim, time.time() - t_kill))
    check(poster.join(120) and not poster.errors, "the poster delivered every update (errors: %s)" % poster.errors)
    log("posted %d updates in %.1f s: %d POSTs, answers other than 200 (delivered again): %s"
        % (len(ids), time.time() - t0, poster.posts, poster.refused or "none"))

    rng = "update_id BETWEEN %d AND %d" % (ids[0], ids[-1])
    cs = ",".join(map(str, chats))
    try:
        wait_for(lambda: pg.psql("SELECT count(*) FROM regstage.inbox WHERE %s AND status = 'done'" % rng)
                 == str(len(ids)), 30, "every update processed", step=0.2)
        wait_for(lambda: pg.psql("SELECT count(*) FROM regstage.outbox WHERE chat_id IN (%s) AND status <> 'sent'" % cs)
                 == "0", 30, "every reply sent (a call the dead relay claimed: after its lease)", step=0.2)
        log("all processed and sent %.1f s after the kill" % (time.time() - t_kill))
    except AssertionError as e:
        check(False, str(e))        # and the checks below say what is missing
    lost = sorted(set(ids) - set(map(int, pg.psql("SELECT update_id FROM regstage.inbox WHERE %s" % rng).split())))
    check(not lost, "no acknowledged update is missing from the inbox (missing: %d%s)"
          % (len(lost), ", e.g. %s" % lost[:8] if lost else ""))

    inbox = pg.psql("SELECT count(*), count(DISTINCT update_id), count(*) FILTER (WHERE status = 'done'), "
                    "count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed'), "
                    "coalesce(max(attempts), 0), array_agg(update_id ORDER BY update_id) = '{%s}' "
                    "FROM regstage.inbox WHERE %s" % (",".join(map(str, ids)), rng))
    n, distinct, done, pending, failed, max_att, same = inbox.split("|")
    check(n == distinct == done == str(len(ids)) and pending == failed == "0" and max_att == "1" and same == "t",
          "inbox: %s rows for the %d update_ids posted (each once: %s), %s done, %s pending, %s failed, "
          "each applied on its first attempt (max attempts %s)" % (n, len(ids), same, done, pending, failed, max_att))
    seen = pg.psql("SELECT count(*) FROM regstage.seen_updates WHERE %s" % rng)
    check(seen == str(len(ids)), "seen_updates: %s of %d (each applied once)" % (seen, len(ids)))

    # the outbox: what each chat's updates decided, in the order they were applied
    outbox = {}
    for l in pg.psql("SELECT chat_id, id, method, coalesce(params->>'text', params->>'callback_query_id'), attempts "
                     "FROM regstage.outbox WHERE chat_id IN (%s) ORDER BY id" % cs).splitlines():
        c, i, m, k, a = l.split("|")
        outbox.setdefault(int(c), []).append((int(i), m, k, int(a)))
    bad = [t for t in chats if [(m, k) for _, m, k, _ in outbox.get(t, [])] != want[t]]
    check(not bad, "outbox: every chat's %d calls are the ones its 20 updates ask for, in update order "
          "(each state change applied once); chats that differ: %s" % (len(want[chats[0]]), bad[:5]))
    # the stand-in: what Telegram received, per chat in arrival order
    got = {t: [] for t in chats}
    cb = {"cb%d" % t: t for t in chats}
    for c in http(API + "/_test/calls"):
        prm = c.get("params") or {}
        if c["method"] == "sendMessage" and prm.get("chat_id") in got:
            got[prm["chat_id"]].append(("sendMessage", prm.get("text"), c["at"]))
        elif c["method"] == "answerCallbackQuery" and prm.get("callback_query_id") in cb:
            got[cb[prm["callback_query_id"]]].append(("answerCallbackQuery", prm["callback_query_id"], c["at"]))
    twice, disorder = [], []
    for t in chats:
        calls, i = outbox.get(t, []), 0
        for m, k, at in got[t]:
            if i < len(calls) and (m, k) == calls[i][1:3]:
                i += 1
            elif i > 0 and (m, k) == calls[i - 1][1:3] and calls[i - 1][3] >= 2 and at > t_kill:
                twice.append((t, m, k[:30]))       # sent again after the lease of the dead relay's claim
            else:
                disorder.append((t, "out of order: %s %s" % (m, k[:30])))
                break
        else:
            if i < len(calls):
                disorder.append((t, "%d calls missing" % (len(calls) - i)))
    resent = pg.psql("SELECT count(*) FROM regstage.outbox WHERE chat_id IN (%s) AND attempts > 1" % cs)
    check(not disorder, "the stand-in got every chat's replies in update order, none missing (%d calls in %d chats)%s"
          % (sum(len(v) for v in got.values()), len(chats), "; first wrong: %s" % disorder[:3] if disorder else ""))
    log("calls the dead relay had claimed, sent again when their lease ended: %s; of them delivered twice "
        "(accepted by Telegram, not yet reported at the kill: the documented window): %d %s"
        % (resent, len(twice), twice[:6]))
    check(len(twice) <= int(resent) and len(twice) <= 32,
          "replies sent twice: %d, only calls in flight at the kill (<= RELAY_SEND_CONCURRENCY 32)" % len(twice))
    staged = pg.psql("SELECT count(*) FROM unnest('{%s}'::bigint[]) t, regstage.staged(t) s "
                     "WHERE s->>'language' = 'en' AND s->'data'->>'full_name' = '%s' AND s->'data' ? 'phone' "
                     "AND regstage.missing(t) = '{passport,selfie}'" % (cs, NAMES[-1]))
    check(staged == str(len(chats)), "staged state: %s of %d chats stand at language, full_name '%s' and phone "
          "staged, passport next" % (staged, len(chats), NAMES[-1]))

    # the balancer spread the load; the relays' own logs say what each stored
    st = haproxy_stats(PORTS["haproxy_hook_stats"])
    stored = {}
    for name in names:
        with open(os.path.join(W, "relay-%s.log" % name), errors="replace") as f:
            lines = f.read()
        stored[name] = (lines.count("stored (new)"), lines.count("stored (seen before)"))
    log("HAProxy per relay: " + "; ".join("%s %s: %s requests, %s retried, %s redispatched" % (
        name, st[name]["status"], st[name]["stot"], st[name]["wretr"], st[name]["wredis"]) for name in names))
    log("relay logs: " + "; ".join("%s stored %d new, %d seen before" % ((name,) + stored[name]) for name in names)
        + " (seen before: a POST the dead relay had stored, delivered again to another)")
    check(all(stored[n][0] > 0 and int(st[n]["stot"]) > 0 for n in names),
          "every relay took webhooks through HAProxy (the killed one too, before the kill)")
    check(sum(stored[n][0] for n in names) <= len(ids), "no update stored as new twice: %d new stores for %d updates"
          % (sum(stored[n][0] for n in names), len(ids)))
    for name in names:
        if name != victim:
            relays[name].terminate()
    for name in names:
        wait_gone(relays[name].pid)
    hap.kill()
    wait_gone(hap.pid)


def post_webhook(port, update, secret=None):
    """One webhook POST straight to a relay: the HTTP status, or the error's name."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/telegram", json.dumps(update).encode(),
                     {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret or WEBHOOK_SECRET})
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()


def part_conflict(pg):
    log("== two relays polling getUpdates for one bot: Telegram ends the older long poll with 409 Conflict")
    port = PORTS["conflict_api"]
    api = ConflictingBotApi(port, TOKEN)
    url = "postgresql://postgres:%s@127.0.0.1:%d/postgres?connect_timeout=2" % (SU_PASS, pg.port)
    names = ["poll1", "poll2"]
    relays = {n: start_relay(n, url, "http://127.0.0.1:%d/%s" % (port, n), TOKEN) for n in names}
    ups = [dict(text(t, "/start"), update_id=910001 + k) for k, t in enumerate(range(4101, 4121))]
    t0 = time.time()
    time.sleep(2)
    api.inject(ups[:10])
    time.sleep(2)
    api.inject(ups[10:])
    rng = "update_id BETWEEN 910001 AND 910020"
    wait_for(lambda: pg.psql("SELECT count(*) FROM regstage.inbox WHERE %s AND status = 'done'" % rng) == "20",
             30, "the 20 updates polled and processed", step=0.2)
    time.sleep(max(0.0, 8 - (time.time() - t0)))
    window = time.time() - t0
    with api.cond:
        polls = {n: list(api.polls.get(n, [])) for n in names}
    for n in names:
        log("%s: %d getUpdates in %.1f s, %d of them ended with 409" % (
            n, len(polls[n]), window, sum(1 for _, st in polls[n] if st == 409)))
    check(all(alive(relays[n].pid) for n in names), "both relays still run (a 409 does not stop a relay)")
    check(sum(len(v) for v in polls.values()) <= 40 and all(len(polls[n]) <= 25 for n in names),
          "no relay spins on 409: %s getUpdates in %.1f s (long poll 2 s, back-off from 1 s)"
          % ("+".join(str(len(polls[n])) for n in names), window))
    stored = pg.psql("SELECT count(*), count(*) FILTER (WHERE status = 'done' AND attempts = 1) FROM regstage.inbox WHERE %s" % rng)
    check(stored == "20|20", "the 20 updates were stored once and processed once, whichever relay polled them: %s" % stored)
    for n in names:
        with open(os.path.join(W, "relay-%s.log" % n), errors="replace") as f:
            lines = [l.rstrip() for l in f if "409" in l]
        check(lines and "only one relay may poll" in lines[0],
              "%s logged the conflict with its cause and what to do (%d lines): %s"
              % (n, len(lines), lines[0][lines[0].find("getUpdates"):][:190] if lines else "nothing"))
    for n in names:
        relays[n].terminate()
    for n in names:
        wait_gone(relays[n].pid)
    api.close()


# ==== Patroni + etcd + HAProxy ==================================================================
def patroni_conf(node, i):
    api = PORTS["patroni_api"][i]
    params = "\n".join("    %s: '%s'" % (k, v) for k, v in [
        ("shared_preload_libraries", "pg_regstage"), ("fsync", "off"), ("log_min_messages", "log"),
        ("logging_collector", "on"), ("log_directory", node.dir), ("log_filename", "postgres.log"),
        ("regstage.redis_sentinels", SENTINELS), ("regstage.redis_master_name", MASTER),
        ("regstage.redis_timeout", "1s"), ("regstage.telegram_api_url", API), ("regstage.bot_token", TOKEN),
        ("regstage.upload_dir", UPLOADS_PATRONI), ("regstage.download_timeout", "10s"),
        ("regstage.cleanup_interval", "2s"), ("regstage.database", "postgres")])
    return """scope: regstage-ha
namespace: /regstage-ha/
name: %(name)s
log: {level: WARNING}
restapi:
  listen: 127.0.0.1:%(api)d
  connect_address: 127.0.0.1:%(api)d
etcd3:
  hosts: 127.0.0.1:%(etcd)d
watchdog: {mode: 'off'}
bootstrap:
  dcs:
    ttl: 5
    loop_wait: 1
    retry_timeout: 2
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
  initdb: [{encoding: UTF8}, {locale: C.UTF-8}]
postgresql:
  listen: 127.0.0.1:%(port)d
  connect_address: 127.0.0.1:%(port)d
  data_dir: %(data)s
  bin_dir: %(bin)s
  pgpass: %(dir)s/pgpass
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 scram-sha-256
  - host all all 127.0.0.1/32 scram-sha-256
  authentication:
    superuser: {username: postgres, password: '%(su)s'}
    replication: {username: replicator, password: rep-pass}
    rewind: {username: rewinder, password: rewind-pass}
  parameters:
    unix_socket_directories: '%(dir)s'
%(params)s
""" % dict(name=node.name, api=api, etcd=PORTS["etcd"][0], port=node.port, data=node.data, bin=PG_BIN,
           dir=node.dir, su=SU_PASS, params=params)


class PatroniNode(Node):
    def __init__(self, i):
        super().__init__("patroni%d" % (i + 1), PORTS["patroni_pg"][i], password=SU_PASS)
        self.i = i
        self.proc = None

    def start_patroni(self):
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "patroni.yml"), "w") as f:
            f.write(patroni_conf(self, self.i))
        chown_pg(self.dir)
        os.chmod(self.dir, 0o700)
        pidfile = os.path.join(self.dir, "patroni.pid")
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}   # PGPASSWORD would break pg_basebackup
        # runuser stays the parent: the shell writes Patroni's own pid before exec
        self.runuser = spawn(["sh", "-c", 'echo $$ > "$1"; exec patroni "$2"', "sh", pidfile,
                              os.path.join(self.dir, "patroni.yml")],
                             "runuser-patroni:%s" % self.name, os.path.join(W, "%s-patroni.log" % self.name),
                             as_pg=True, env=env)
        self.proc = int(wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), 10, "patroni pid"))
        record(self.proc, "patroni:%s" % self.name)
        log("started Patroni %s (pid %d), PostgreSQL :%d, REST :%d" % (self.name, self.proc, self.port,
                                                                      PORTS["patroni_api"][self.i]))

    def alive_or_fail(self):
        if not alive(self.proc):
            raise AssertionError("Patroni %s exited: see %s" % (self.name, os.path.join(W, "%s-patroni.log" % self.name)))
        return True

    def role(self):
        try:
            import urllib.request
            with urllib.request.urlopen("http://127.0.0.1:%d/patroni" % PORTS["patroni_api"][self.i], timeout=2) as r:
                return json.loads(r.read()).get("role")
        except Exception:
            return None


HAPROXY_CFG = """global
    maxconn 200
defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 1s
listen pg_primary
    bind 127.0.0.1:%(fe)d
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server patroni1 127.0.0.1:%(pg1)d check port %(api1)d
    server patroni2 127.0.0.1:%(pg2)d check port %(api2)d
listen stats
    mode http
    bind 127.0.0.1:%(stats)d
    stats enable
    stats uri /stats
"""


def part_patroni():
    log("== Patroni + etcd + HAProxy")
    ec, ep = PORTS["etcd"]
    d = os.path.join(W, "etcd")
    os.makedirs(d, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "PG"))}
    etcd = spawn(["etcd", "--name", "ha-etcd", "--data-dir", os.path.join(d, "data"),
                  "--listen-client-urls", "http://127.0.0.1:%d" % ec, "--advertise-client-urls", "http://127.0.0.1:%d" % ec,
                  "--listen-peer-urls", "http://127.0.0.1:%d" % ep, "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % ep,
                  "--initial-cluster", "ha-etcd=http://127.0.0.1:%d" % ep, "--initial-cluster-state", "new"],
                 "etcd", os.path.join(d, "etcd.log"), env=env)
    wait_for(lambda: b'"health":"true"' in (subprocess.run(["curl", "-fs", "http://127.0.0.1:%d/health" % ec],
                                                           capture_output=True).stdout), 20, "etcd healthy")
    log("etcd up (pid %d)" % etcd.pid)
    nodes = [PatroniNode(0), PatroniNode(1)]
    nodes[0].start_patroni()
    wait_for(lambda: nodes[0].alive_or_fail() and nodes[0].role() in ("master", "primary") and nodes[0].up(), 90, "patroni1 leader", step=0.3)
    nodes[0].psql("CREATE EXTENSION pg_regstage")
    nodes[1].start_patroni()
    wait_for(lambda: nodes[1].alive_or_fail() and
             nodes[0].psql("SELECT sync_state FROM pg_stat_replication", check=False) == "sync", 120,
             "patroni2 streaming as synchronous standby", step=0.5)
    check(nodes[1].in_recovery() == "t", "patroni2 is a synchronous hot standby of patroni1 (synchronous_mode: true)")
    check(nodes[1].psql("SHOW shared_preload_libraries") == "pg_regstage", "shared_preload_libraries reached Patroni's nodes")

    cfg = os.path.join(W, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(HAPROXY_CFG % dict(fe=PORTS["haproxy"], pg1=nodes[0].port, pg2=nodes[1].port,
                                   api1=PORTS["patroni_api"][0], api2=PORTS["patroni_api"][1], stats=PORTS["haproxy_stats"]))
    hap = spawn(["haproxy", "-db", "-f", cfg], "haproxy", os.path.join(W, "haproxy.log"))
    via = Node("haproxy", PORTS["haproxy"], password=SU_PASS)
    wait_for(lambda: via.psql("SELECT inet_server_port()", check=False) == str(nodes[0].port), 20, "haproxy -> leader")
    log("HAProxy (pid %d) :%d routes to the leader :%d (health check GET /primary on Patroni's REST API)"
        % (hap.pid, PORTS["haproxy"], nodes[0].port))
    wait_for(lambda: nodes[1].log_lines("this server is a standby"), 15, "the replica's worker saying it idles")
    check(len(nodes[1].log_lines("this server is a standby")) == 1 and not nodes[0].log_lines("this server is a standby"),
          "exactly one node runs the cleanup worker: patroni2's worker logged 'standby, idle' once, patroni1's not")

    tids = list(range(3001, 3061))
    url = "postgresql://postgres:%s@127.0.0.1:%d/postgres?connect_timeout=2" % (SU_PASS, PORTS["haproxy"])
    relay = start_relay("patroni", url, API, TOKEN)
    ids = inject_registrations(tids[:len(tids) // 2])     # the other half once the leader is dead
    wait_for(lambda: count_users(via, tids) >= 5, 60, "5 users registered through the relay", step=0.05)
    before = count_users(via, tids)
    leader = nodes[0]
    pm = leader.postmaster_pid()
    t_kill = time.time()
    os.kill(leader.proc, signal.SIGKILL)        # both at once: a node dies whole
    os.kill(pm, signal.SIGKILL)
    log("KILLED the leader %s: Patroni (pid %d) and its postmaster (pid %d) with SIGKILL" % (leader.name, leader.proc, pm))
    ids = ids + inject_registrations(tids[len(tids) // 2:])
    wait_for(lambda: nodes[1].in_recovery() == "f", 60, "patroni2 promoted", step=0.2)
    log("patroni2 promoted by Patroni %.1f s after the kill" % (time.time() - t_kill))
    wait_for(lambda: via.psql("SELECT inet_server_port()", check=False) == str(nodes[1].port), 20, "haproxy -> new leader")
    log("HAProxy routes to patroni2 %.1f s after the kill" % (time.time() - t_kill))
    wait_for(lambda: count_users(nodes[1], tids) == len(tids), 120, "every user registered on patroni2", step=0.5)
    check(before < len(tids), "all %d users registered (%d after the kill) %.1f s after the kill; the relay reconnected through HAProxy"
          % (len(tids), len(tids) - before, time.time() - t_kill))
    check_no_update_lost(nodes[1], ids, tids)
    check_integrity(nodes[1], "after the Patroni failover")
    wait_for(lambda: nodes[1].log_lines("was promoted to primary"), 10, "the worker noticing the promotion")
    check(len(nodes[1].log_lines("was promoted to primary")) == 1, "patroni2's cleanup worker logged the promotion once")
    relay.terminate()
    wait_gone(relay.pid)
    check("skipped" not in open(os.path.join(W, "relay-patroni.log")).read(), "the relay skipped no update")

    # the old leader rejoins as a replica (pg_rewind by Patroni): its worker idles
    leader.start_patroni()
    wait_for(lambda: leader.in_recovery() == "t" and
             nodes[1].psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", check=False) == "1",
             90, "patroni1 rejoined as a replica", step=0.5)
    wait_for(lambda: leader.log_lines("this server is a standby"), 15, "patroni1's worker saying it idles")
    check(len(leader.log_lines("this server is a standby")) == 1,
          "patroni1 rejoined as a replica; its cleanup worker idles and said so once")
    check(count_users(leader, tids) == len(tids), "patroni1 (replica) has every user: %d" % count_users(leader, tids))


def main():
    r0, r1 = PORTS["redis"]
    for p in [v for vs in PORTS.values() for v in (vs if isinstance(vs, tuple) else (vs,))]:
        if not __import__("servers").port_free(p):
            raise SystemExit("port %d is in use" % p)
    for d in (UPLOADS, UPLOADS_PATRONI):
        os.makedirs(d, exist_ok=True)
        chown_pg(d)
    start_redis(r0)
    start_redis(r1, replicaof=r0)
    for p in PORTS["sentinel"]:
        start_sentinel(p, MASTER, r0)
    wait_for(lambda: all(rcli(p, "SENTINEL", "ckquorum", MASTER).startswith("OK 3") for p in PORTS["sentinel"]),
             20, "sentinels in quorum")
    wait_for(lambda: "master_link_status:up" in rcli(r1, "INFO", "replication"), 10, "replica linked")
    log("Redis master :%d, replica :%d, sentinels %s in quorum" % (r0, r1, SENTINELS))
    start_standin(PORTS["api"], TOKEN)

    p1 = Node("pg1", PORTS["pg"][0], password=SU_PASS)
    p2 = Node("pg2", PORTS["pg"][1], password=SU_PASS)
    initdb(p1, PG_CONF)
    p1.start()
    p1.psql("ALTER ROLE postgres PASSWORD '%s'; CREATE EXTENSION pg_regstage" % SU_PASS)

    parts = os.environ.get("HA_PARTS", "redis relays standby patroni").split()
    if "redis" in parts:
        part_redis(p1)
    if "relays" in parts:
        part_relays(p1)
        part_conflict(p1)
    if "standby" in parts:
        part_standby(p1, p2)
    for n in (p2, p1):
        if n.postmaster_pid() and alive(n.postmaster_pid()):
            n.pg_ctl("-m", "immediate", "stop")
    if "patroni" in parts:
        part_patroni()
    log("%d checks failed" % len(FAILED) if FAILED else "every check passed")
    for f in FAILED:
        log("  FAILED: %s" % f)
    return 1 if FAILED else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        log("FAIL  %s" % e)
        sys.exit(1)
