#!/usr/bin/env python3
"""The fault, security and load suite.

Every fault is injected where it can happen — while staging, inside the
commit before the inserts, after the inserts before COMMIT, after COMMIT
before the Redis clear — and after every case the product's promise is
checked:

  1. no user without all required documents
  2. every documents row's file exists with the recorded size and sha256
  3. when a commit failed, its staged data is intact in Redis
  4. no file without a row under upload_dir, temporary files included,
     counted by walking the directory before anything sweeps it (only a
     SIGKILLed backend may leave some, in its own directory, and
     cleanup_orphans('0', '0') must then remove exactly those)
  5. every update the relay accepted is applied exactly once (relay cases)

FAULT_SUITE_STORAGE=s3 (test/scripts/faults.sh with REGSTAGE_STORAGE=s3)
runs the matrix against a cluster with regstage.storage = 's3' on the S3
stand-in's "verified" bucket (test/s3/s3_standin.py: every SigV4 signature
checked with the secret; like S3, an interrupted PUT stores nothing, where
s3rver keeps what arrived): "file" then means object, 2. and 4. read the
stand-in's store directly, and 4. also checks that nothing was written
under upload_dir.  The cases only the local
backend has (its file system faults) and those no backend changes are
listed as "n/a" with the reason; the S3 service's own faults (down, 5xx,
bucket missing, access denied, slow with statement_timeout and cancel) are
cases of the s3 run only.

Prints a table (case | result | what was checked) and "N passed, N failed".
REGSTAGE_CASES=<regular expression> runs only the matching cases.
"""
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from regstage_testlib import (Env, Relay, Report, callback, check, message, registration,  # noqa: E402
                              sqlstate, text, wait_for)

env = Env("FAULT_SUITE")
REDIS_PORT = os.environ["FAULT_SUITE_REDIS_PORT"]
SMALL = os.environ["FAULT_SUITE_SMALL"]
UPLOADS = os.path.join(env.dir, "uploads")
REDIS_DIR = os.path.join(env.dir, "redis")
MARKER = ".pg_regstage_owner"
report = Report()
ONLY = [w for w in os.environ.get("FAULT_SUITE_ONLY", "").split("|") if w]   # run only cases naming one of these
STORAGE = os.environ.get("FAULT_SUITE_STORAGE", "local")
S3 = os.environ.get("FAULT_SUITE_S3")                       # test/s3/s3_standin.py: the store and the faults
S3_CLOSED = os.environ.get("FAULT_SUITE_S3_CLOSED")         # nothing listens there
NS = os.environ.get("FAULT_SUITE_S3_NAMESPACE", "")         # the database's object key prefix
s3_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def case(name, checked, local_only=None, neutral=None, s3_only=False):
    """A case of the matrix.  local_only: why only the local backend has
    it; neutral: why no storage backend changes it (run in the local pass
    only); s3_only: a fault of the S3 service.  A case not for this run's
    backend is listed as "n/a" with the reason."""
    if ONLY and not any(w in name for w in ONLY):
        return lambda fn: fn
    why = None
    if STORAGE == "s3" and local_only:
        why = "local backend only: " + local_only
    elif STORAGE == "s3" and neutral:
        why = "run in the local pass: " + neutral
    elif STORAGE == "local" and s3_only:
        why = "s3 backend only: a fault of the S3 service"
    if why:
        if not report.only or re.search(report.only, name):
            report.not_run(name, checked, why)
        return lambda fn: fn
    return report.case(name, checked)


errors_seen = []            # every error text of the suite, grepped for the token at the end
next_tid = [40000]


def new_tid():
    next_tid[0] += 1
    return next_tid[0]


# ---- Redis faults -------------------------------------------------------------
def redis_cli(*args):
    return subprocess.run(["redis-cli", "-p", REDIS_PORT] + list(args), capture_output=True, text=True).stdout.strip()


def redis_pid():
    return int(open(os.path.join(REDIS_DIR, "redis.pid")).read())


def redis_start():
    subprocess.run(["redis-server", "--port", REDIS_PORT, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--daemonize", "yes", "--pidfile", os.path.join(REDIS_DIR, "redis.pid"),
                    "--logfile", os.path.join(REDIS_DIR, "redis.log"), "--dir", REDIS_DIR], check=True)
    wait_for(lambda: redis_cli("PING") == "PONG", 10, "Redis up")


def redis_stop(keep_data=True):
    pid = redis_pid()
    redis_cli("SHUTDOWN", "SAVE" if keep_data else "NOSAVE")
    wait_for(lambda: not os.path.exists("/proc/%d" % pid), 10, "Redis down")
    if not keep_data and os.path.exists(os.path.join(REDIS_DIR, "dump.rdb")):
        os.unlink(os.path.join(REDIS_DIR, "dump.rdb"))


def redis_hang():
    os.kill(redis_pid(), signal.SIGSTOP)


def redis_resume():
    os.kill(redis_pid(), signal.SIGCONT)


# ---- staging and committing ------------------------------------------------
def stage(tid, passport="AgACp", selfie="AgACs"):
    env.sql("SELECT regstage.stage_language(%d, 'en'), "
            "regstage.stage_user_data(%d, '{\"full_name\": \"Fault Case\", \"phone\": \"+79160000001\"}'), "
            "regstage.stage_document(%d, 'passport', '%s_%d'), regstage.stage_document(%d, 'selfie', '%s_%d')"
            % (tid, tid, tid, passport, tid, tid, selfie, tid))


def new_staged():
    """A telegram_id with only its language staged."""
    tid = new_tid()
    env.sql("SELECT regstage.stage_language(%d, 'en')" % tid)
    return tid


def commit(tid, session=None, settings=""):
    s = session or env.session()
    out = s.run(settings + "SELECT regstage.commit_registration(%d)" % tid)
    if session is None:
        s.close()
    errors_seen.extend(out)
    return sqlstate(out), out


def expect_failure(tid, code, settings=""):
    state, out = commit(tid, settings=settings)
    check(state == code, "expected SQLSTATE %s, got %s: %s" % (code, state, " | ".join(out)[:300]))
    return out


def log_since(offset):
    with open(env.pg_log, errors="replace") as f:
        f.seek(offset)
        return f.read()


def registered(tid):
    return env.sql("SELECT count(*) FROM regstage.users WHERE telegram_id = %d" % tid) == "1"


def staged_complete(tid):
    return env.sql("SELECT regstage.is_registration_complete(%d)" % tid) == "t"


# ---- the document store, seen from outside the product ---------------------------------
def s3_objects(prefix=""):
    """{key: (size, sha256)} of every object under the database's namespace +
    prefix (keys relative to the namespace), as the stand-in's store holds
    them (its /_objects view, not the product's listing)."""
    with s3_http.open("%s/_objects?%s" % (S3, urllib.parse.urlencode({"prefix": NS + prefix})), timeout=30) as r:
        return {k[len(NS):]: tuple(v) for k, v in json.loads(r.read()).items()}


def local_files():
    """Every file under upload_dir but the ownership marker, relative to it."""
    return sorted(os.path.relpath(os.path.join(d, f), UPLOADS) for d, _, fs in os.walk(UPLOADS) for f in fs
                  if os.path.relpath(os.path.join(d, f), UPLOADS) != MARKER)


def files_of(tid):
    """The documents of tid in the store: names in <upload_dir>/<tid>, or keys under <tid>/."""
    if STORAGE == "s3":
        return sorted(s3_objects("%d/" % tid))
    p = os.path.join(UPLOADS, str(tid))
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def tmp_files():
    """Downloads in progress (or left by a crash): *.part anywhere under
    upload_dir.  An object store has none: an object exists once its PUT
    has completed."""
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(UPLOADS) for f in fs if f.endswith(".part"))


def start_slow_commit(tid):
    """A session whose commit_registration is downloading a 4 s file right now
    (local: its .part file exists; s3: the passport's object is stored and
    the backend waits, the selfie's download and PUT in flight)."""
    stage(tid, selfie="dldelay4000_AgACs")
    s = env.session()
    n = s.send("SET regstage.download_timeout = '20s'; SELECT regstage.commit_registration(%d)" % tid)
    if STORAGE == "s3":
        wait_for(lambda: files_of(tid), 10, "the download of %d in progress" % tid)
    else:
        wait_for(lambda: any("/%d/" % tid in f for f in tmp_files()), 10, "the download of %d in progress" % tid)
    return s, n


def begin_commit(s, tid):
    """BEGIN; commit_registration(tid) in session s, left open before COMMIT."""
    out = s.run("BEGIN; SELECT regstage.commit_registration(%d)" % tid)
    check(sqlstate(out) is None, "commit_registration(%d) failed: %s" % (tid, " | ".join(out)[:300]))


# ---- the invariants ----------------------------------------------------------
def orphans():
    """Files under upload_dir that no documents row references, temporary
    (*.part) files included — listed by walking the directory here, not by
    the product's own upload_files().  With s3: the objects no row
    references (listed here), and every file under upload_dir (prefixed
    "upload_dir:"; the s3 backend writes none)."""
    referenced = set(env.sql("SELECT file_path FROM regstage.documents").splitlines())
    if STORAGE == "s3":
        return sorted(k for k in s3_objects() if k not in referenced) + ["upload_dir:" + f for f in local_files()]
    return [f for f in local_files() if f not in referenced]


def documents_without_their_bytes():
    """documents rows whose file or object is missing or differs in size or sha256."""
    if STORAGE == "local":
        return int(env.sql(
            "SELECT count(*) FROM regstage.documents d WHERE NOT regstage.document_file_exists(d.file_path) "
            "OR (pg_stat_file(current_setting('regstage.upload_dir') || '/' || d.file_path)).size <> d.size_bytes "
            "OR encode(sha256(pg_read_binary_file(current_setting('regstage.upload_dir') || '/' || d.file_path)), "
            "'hex') <> d.sha256"))
    objects = s3_objects()
    rows = env.sql("SELECT file_path, size_bytes, sha256 FROM regstage.documents").splitlines()
    return sum(1 for key, size, sha in (r.split("|") for r in rows) if objects.get(key) != (int(size), sha))


def invariants(failed=(), crashed=()):
    """The product's promise; raises CheckFailed naming what broke.

    Orphans are counted before anything sweeps them: only a backend that
    could not run (SIGKILL: the telegram_ids in crashed) may leave files
    without a row, and only in its own directory; cleanup_orphans('0', '0')
    must then remove exactly those."""
    incomplete = env.sql("SELECT count(*) FROM regstage.users u WHERE (SELECT count(DISTINCT d.doc_type) "
                         "FROM regstage.documents d WHERE d.user_id = u.id) < 2")
    check(incomplete == "0", "%s users without all documents" % incomplete)
    bad = documents_without_their_bytes()
    check(bad == 0, "%d documents rows without their exact %s" % (bad, "object" if STORAGE == "s3" else "file"))
    for tid in failed:
        check(staged_complete(tid), "staged data of %d lost after a failed commit" % tid)
    left = orphans()
    allowed = tuple("%d/" % t for t in crashed)
    unexpected = [f for f in left if not f.startswith(allowed) or not allowed]
    check(not unexpected, "%d files without a row left by the product: %s" % (len(unexpected), unexpected[:5]))
    if left:
        env.sql("SELECT * FROM regstage.cleanup_orphans('0', '0')")
        check(not orphans(), "files without a row after cleanup_orphans('0', '0'): %s" % orphans()[:5])



def claim_dir(path, db="postgres"):
    """Write the ownership marker a first registration or cleanup in db would write
    (the shim fails every write of the server's under SMALL, so the server cannot)."""
    sysid = env.sql("SELECT system_identifier FROM pg_control_system()")
    with open(os.path.join(path, MARKER), "w") as f:
        f.write("pg_regstage upload directory owner\nsystem identifier: %s\ndatabase: %s\n" % (sysid, db))
    os.chmod(os.path.join(path, MARKER), 0o644)


def orphan_count():
    return int(env.sql("SELECT count(*) FROM regstage.upload_files() f "
                       "WHERE NOT EXISTS (SELECT 1 FROM regstage.documents d WHERE d.file_path = f)"))


# ---- fsync failing (test/faults/eio_shim.c, preloaded into the cluster) -----------------
EIO_CTL = os.path.join(env.dir, "eio.ctl")


def eio_inject(*lines):
    """Fail fsync() with EIO for paths matching lines ("file <prefix>" / "dir <prefix>")."""
    with open(EIO_CTL, "w") as f:
        f.write("".join(l + "\n" for l in lines))
    os.chmod(EIO_CTL, 0o644)


def fsync_on():
    """fsync = on for new sessions (with fsync = off, pg_fsync does nothing)."""
    env.sql("ALTER SYSTEM SET fsync = on")
    env.sql("SELECT pg_reload_conf()")
    wait_for(lambda: env.sql("SHOW fsync") == "on", 10, "fsync = on")


def fsync_restore():
    if os.path.exists(EIO_CTL):
        os.unlink(EIO_CTL)
    env.wait_pg()
    env.sql("ALTER SYSTEM RESET fsync")
    env.sql("SELECT pg_reload_conf()")
    wait_for(lambda: env.sql("SHOW fsync") == "off", 10, "fsync = off")


def cluster_identity(bystander):
    """What a restart of every backend would change: the postmaster's pid, and a bystander session."""
    with open(os.path.join(env.dir, "pgdata", "postmaster.pid")) as f:
        return int(f.readline()), bystander.run("SELECT pg_backend_pid()")


# ===========================================================================
env.sql("CREATE EXTENSION IF NOT EXISTS pg_regstage")
env.sql("DO $$ BEGIN CREATE ROLE relay_bot LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
env.sql("SELECT regstage.grant_bot_access('relay_bot')")
env.sql("CREATE TABLE IF NOT EXISTS public.payroll (name text, salary int)")
redis_cli("FLUSHALL")

# ---- staging ------------------------------------------------------------------


@case("staging: Redis stopped", "stage_* and handle_update raise 08001 at once; staging works once Redis is back",
      neutral="staging writes Redis only; no document is stored")
def _():
    tid = new_tid()
    redis_stop()
    try:
        t0 = time.time()
        out = env.sql("SELECT regstage.stage_language(%d, 'en')" % tid, check=False)
        errors_seen.append(out)
        check("could not connect to Redis" in out, out)
        check(time.time() - t0 < 2, "took %.1f s" % (time.time() - t0))
        s = env.session()
        st = sqlstate(s.run("SELECT regstage.handle_update('%s')" % json.dumps({"update_id": tid, **text(tid, "/start")})))
        s.close()
        check(st == "08001", "handle_update must raise for the relay to retry (got %s)" % st)
    finally:
        redis_start()
    env.sql("SELECT regstage.stage_language(%d, 'en')" % tid)
    invariants()


@case("staging: Redis hung (SIGSTOP)", "stage_* fails with 08006 within redis_timeout; the next call after SIGCONT works",
      neutral="staging writes Redis only; no document is stored")
def _():
    tid = new_tid()
    redis_hang()
    try:
        s = env.session()
        t0 = time.time()
        st = sqlstate(s.run("SELECT regstage.stage_language(%d, 'en')" % tid))
        took = time.time() - t0
    finally:
        redis_resume()
    check(st == "08006", st)
    check(took < 1.5, "took %.1f s" % took)
    check(sqlstate(s.run("SELECT regstage.stage_language(%d, 'en')" % tid)) is None, "same session recovers")
    s.close()
    invariants()


@case("staging: Redis restarted empty", "a half-staged user is asked from the start again; nothing in the database",
      neutral="staging writes Redis only; no document is stored")
def _():
    tid = new_tid()
    env.sql("SELECT regstage.stage_language(%d, 'en'), regstage.stage_user_data(%d, '{\"full_name\": \"Half Way\"}')" % (tid, tid))
    redis_stop(keep_data=False)
    redis_start()
    out = json.loads(env.sql("SELECT regstage.handle_update('%s')" % json.dumps({"update_id": tid, **text(tid, "+79161234567")})))
    check(out and "choose your language" in out[0]["params"]["text"], out)
    check(not registered(tid), "a users row for %d" % tid)
    invariants()

# ---- inside the commit, before the inserts ------------------------------------------


@case("commit: Redis stopped", "08001, no rows, no files; staged data intact after Redis is back")
def _():
    tid = new_tid()
    stage(tid)
    redis_stop()
    try:
        expect_failure(tid, "08001")
    finally:
        redis_start()
    check(not registered(tid) and not files_of(tid), "a row or files left for %d: %s" % (tid, files_of(tid)))
    invariants(failed=[tid])


@case("commit: Redis hung (SIGSTOP)", "08006 within redis_timeout; staged data intact after SIGCONT")
def _():
    tid = new_tid()
    stage(tid)
    redis_hang()
    try:
        t0 = time.time()
        expect_failure(tid, "08006")
        check(time.time() - t0 < 2, "took %.1f s" % (time.time() - t0))
    finally:
        redis_resume()
    check(not registered(tid) and not files_of(tid), "a row or files left for %d: %s" % (tid, files_of(tid)))
    invariants(failed=[tid])


@case("commit: Redis restarted empty", "nothing staged any more: 55000, no rows, no files")
def _():
    tid = new_tid()
    stage(tid)
    redis_stop(keep_data=False)
    redis_start()
    expect_failure(tid, "55000")
    check(not registered(tid) and not files_of(tid), "a row or files left for %d: %s" % (tid, files_of(tid)))
    invariants()


for label, selfie, code, what in [
        ("Bot API 5xx", "status503_AgACs", "38000", "getFile answers HTTP 503"),
        ("Bot API ok=false", "okfalse_AgACs", "38000", "getFile answers ok=false"),
        ("Bot API timeout", "delay5000_AgACs", "08006", "getFile takes longer than download_timeout (3 s)"),
        ("Bot API truncated body", "trunc_AgACs", "08006", "the download closes half way"),
        ("Bot API oversized file", "size30000000_AgACs", "54000", "getFile reports 30 MB"),
        ("Bot API slow drip", "drip300_bytes65536_AgACs", "08006", "1 KiB every 300 ms outlasts download_timeout"),
        ("Bot API download 404", "dlstatus404_AgACs", "38000", "the file download answers 404")]:
    def run(selfie=selfie, code=code):
        tid = new_tid()
        stage(tid, selfie=selfie)
        expect_failure(tid, code)
        check(not registered(tid) and not files_of(tid) and not tmp_files(), "files left: %s" % files_of(tid))
        invariants(failed=[tid])
    case("commit: " + label, what + " -> %s, no rows, no files, staged data kept" % code)(run)


@case("commit: upload_dir not writable", "Permission denied on the upload directory: 42501 naming it; nothing written",
      local_only="the permissions of upload_dir (S3 refusing access: 'commit: S3 access denied')")
def _():
    tid = new_tid()
    stage(tid)
    os.chmod(UPLOADS, 0o550)
    try:
        out = expect_failure(tid, "42501")
        check(any("Permission denied" in l and UPLOADS in l for l in out), out)
    finally:
        os.chmod(UPLOADS, 0o750)
    check(not registered(tid) and not files_of(tid), "a row or files left for %d: %s" % (tid, files_of(tid)))
    invariants(failed=[tid])


@case("commit: upload_dir missing", "58P01 naming the directory; nothing written",
      local_only="upload_dir itself (a missing bucket: 'commit: S3 bucket missing')")
def _():
    tid = new_tid()
    stage(tid)
    os.rename(UPLOADS, UPLOADS + ".away")
    try:
        expect_failure(tid, "58P01")
    finally:
        os.rename(UPLOADS + ".away", UPLOADS)
    check(not registered(tid), "a users row for %d" % tid)
    invariants(failed=[tid])


@case("commit: upload_dir full", "ENOSPC while streaming (%s) -> 53100; the partial files are removed"
      % os.environ["FAULT_SUITE_ENOSPC_MODE"],
      local_only="ENOSPC of the file system under upload_dir")
def _():
    tid = new_tid()
    stage(tid, passport="bytes200000_AgACp", selfie="bytes400000_AgACs")
    claim_dir(SMALL)        # before the disk is full: the ENOSPC under test is the download's
    out = expect_failure(tid, "53100", settings="SET regstage.upload_dir = '%s'; " % SMALL)
    check(any("No space left on device" in l for l in out), out)
    left = [os.path.join(d, f) for d, _, fs in os.walk(SMALL) for f in fs if f != MARKER]
    check(not left, "files left on the full disk: %s" % left)
    check(not registered(tid), "a users row for %d" % tid)
    invariants(failed=[tid])


@case("commit: fsync of a document fails (EIO)", "58030 naming the file; no restart (postmaster pid, other sessions kept); no rows, no files, staged kept",
      local_only="fsync of the document files")
def _():
    tid = new_tid()
    stage(tid)
    bystander = env.session()
    fsync_on()
    try:
        before = cluster_identity(bystander)
        eio_inject("file " + UPLOADS)
        out = expect_failure(tid, "58030")
        check(any("could not fsync file" in l and os.path.join(UPLOADS, str(tid)) + "/" in l for l in out), out)
        check(cluster_identity(bystander) == before, "the cluster restarted")
    finally:
        fsync_restore()
        bystander.close()
    check(not registered(tid) and not files_of(tid) and not tmp_files(), 'check failed: not registered(tid) and not files_of(tid) and not tmp_files()')
    invariants(failed=[tid])


@case("COMMIT: fsync of the directories fails (EIO)", "at pre-commit: 58030 naming the directory, rolled back cleanly; no restart; no rows, no files, staged kept",
      local_only="fsync of the directories under upload_dir")
def _():
    tid, tid2 = new_tid(), new_tid()
    stage(tid)
    stage(tid2)
    bystander = env.session()
    fsync_on()
    try:
        before = cluster_identity(bystander)
        eio_inject("dir " + UPLOADS)
        out = expect_failure(tid, "58030")                      # autocommit: the statement's commit fails
        check(any("could not fsync directory" in l and UPLOADS in l for l in out), out)
        check(cluster_identity(bystander) == before, "the cluster restarted")
        os.unlink(EIO_CTL)
        s = env.session()
        check(sqlstate(s.run("BEGIN; SELECT regstage.commit_registration(%d)" % tid2)) is None, 'check failed: sqlstate(s.run("BEGIN; SELECT regstage.commit_registration(%d)" % tid2)) is None')
        check(len(files_of(tid2)) == 2, 'check failed: len(files_of(tid2)) == 2')
        eio_inject("dir " + os.path.join(UPLOADS, str(tid2)))
        out = s.run("COMMIT")
        errors_seen.extend(out)
        check(sqlstate(out) == "58030", out)
        check(any("could not fsync directory" in l and os.path.join(UPLOADS, str(tid2)) in l for l in out), out)
        check(s.run("SELECT 1") == ["1"], "the session goes on")
        s.close()
        check(cluster_identity(bystander) == before, "the cluster restarted")
    finally:
        fsync_restore()
        bystander.close()
    for t in (tid, tid2):
        check(not registered(t) and not files_of(t), "rows or files of %d left" % t)
    check(not tmp_files(), 'check failed: not tmp_files()')
    invariants(failed=[tid, tid2])


@case("commit: per-user directory is a symlink", "<upload_dir>/<telegram_id> -> elsewhere: 42809 naming it, nothing written through the link, no rows, staged kept",
      local_only="symbolic links under upload_dir (object keys are made by the product)")
def _():
    tid = new_tid()
    stage(tid)
    elsewhere = os.path.join(env.dir, "elsewhere")
    link = os.path.join(UPLOADS, str(tid))
    os.makedirs(elsewhere, 0o750)
    if os.geteuid() == 0:
        shutil.chown(elsewhere, "postgres", "postgres")
    os.symlink(elsewhere, link)
    try:
        out = expect_failure(tid, "42809")
        check(any("symbolic link" in l and link in l for l in out), out)
        check(os.listdir(elsewhere) == [], "written through the link: %s" % os.listdir(elsewhere))
        check(os.path.islink(link), "the link is not ours to remove")
    finally:
        os.unlink(link)
        shutil.rmtree(elsewhere)
    check(not registered(tid) and not files_of(tid), 'check failed: not registered(tid) and not files_of(tid)')
    invariants(failed=[tid])


@case("commit: backend terminated mid-download", "pg_terminate_backend during a download: no rows, no files (the exit aborts), staged kept")
def _():
    tid = new_tid()
    s, n = start_slow_commit(tid)
    env.sql("SELECT pg_terminate_backend(%s)" % s.pid)
    out = s.wait(timeout=20)
    s.close()
    check(any("terminating connection" in l for l in out), out)
    wait_for(lambda: not tmp_files() and not files_of(tid), 5, "the terminated backend's files removed")
    check(not registered(tid), "a users row for %d" % tid)
    invariants(failed=[tid])


@case("commit: cancelled mid-download", "pg_cancel_backend once the download is under way -> 57014 within 0.5 s of the cancel "
      "(sent over an open session, no psql start-up in the time), no rows, no files, staged kept")
def _():
    tid = new_tid()
    canceller = env.session()
    s, n = start_slow_commit(tid)
    t0 = time.monotonic()
    canceller.run("SELECT pg_cancel_backend(%s)" % s.pid)
    out = s.wait(n, timeout=20)
    took = time.monotonic() - t0
    canceller.close()
    s.close()
    check(sqlstate(out) == "57014", out)
    check(took < 0.5, "cancel took %.2f s" % took)
    check(not registered(tid) and not files_of(tid) and not tmp_files(), "a row or files left for %d: %s %s" % (tid, files_of(tid), tmp_files()))
    invariants(failed=[tid])


@case("commit: backend killed mid-download (crash)", "SIGKILL -> crash recovery; no rows; cleanup sweeps the partial files")
def _():
    tid = new_tid()
    s, n = start_slow_commit(tid)
    os.kill(int(s.pid), signal.SIGKILL)
    s.wait(timeout=20)
    s.close()
    env.wait_pg()
    check(not registered(tid), "a users row for %d" % tid)
    if STORAGE == "s3":
        check(files_of(tid), "a killed backend leaves its stored objects (nothing could run)")
    else:
        check(tmp_files(), "a killed backend leaves its partial files (nothing could run)")
    invariants(failed=[tid], crashed=[tid])     # only its files are orphans; cleanup_orphans('0', '0') sweeps them
    check(not tmp_files() and not files_of(tid), "files left: %s %s" % (tmp_files(), files_of(tid)))

# ---- after the inserts, before COMMIT ----------------------------------------------------


@case("after inserts: backend terminated", "BEGIN; commit_registration(); pg_terminate_backend -> rolled back, files removed, staged kept")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    begin_commit(s, tid)
    check(len(files_of(tid)) == 2, "files of %d: %s" % (tid, files_of(tid)))
    env.sql("SELECT pg_terminate_backend(%s)" % s.pid)
    s.wait(s.send("SELECT 1"), timeout=10)
    s.close()
    wait_for(lambda: not files_of(tid), 5, "files removed by the abort")
    check(not registered(tid), "a users row for %d" % tid)
    invariants(failed=[tid])


@case("after inserts: backend killed (crash)", "SIGKILL before COMMIT -> no rows after recovery; cleanup sweeps the files")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    begin_commit(s, tid)
    os.kill(int(s.pid), signal.SIGKILL)
    s.close()
    env.wait_pg()
    check(not registered(tid), "a users row for %d" % tid)
    check(len(files_of(tid)) == 2, "the killed backend could not remove its files")
    invariants(failed=[tid], crashed=[tid])
    check(not files_of(tid), "files of %d left after the sweep: %s" % (tid, files_of(tid)))


@case("after inserts: later statement fails", "an error after commit_registration in the same transaction -> files removed")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    out = s.run("BEGIN; SELECT regstage.commit_registration(%d); SELECT 1/0; COMMIT" % tid)
    s.close()
    check(sqlstate(out) == "22012", out)
    check(not registered(tid) and not files_of(tid), "a row or files left for %d: %s" % (tid, files_of(tid)))
    invariants(failed=[tid])


@case("after inserts: ROLLBACK TO SAVEPOINT", "commit_registration inside a savepoint, rolled back to it: its files "
      "removed at once, the transaction goes on and commits; then committed inside a released savepoint: kept")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    out = s.run("BEGIN; SAVEPOINT a; SELECT regstage.commit_registration(%d) > 0; ROLLBACK TO SAVEPOINT a" % tid)
    check(sqlstate(out) is None, out)
    check(not files_of(tid), "files of a rolled-back savepoint: %s" % files_of(tid))
    out = s.run("SAVEPOINT b; SELECT regstage.commit_registration(%d) > 0; RELEASE SAVEPOINT b; COMMIT" % tid)
    s.close()
    check(sqlstate(out) is None, out)
    check(registered(tid) and len(files_of(tid)) == 2, "after the released savepoint: %s" % files_of(tid))
    invariants()


@case("after inserts: released savepoint, then ROLLBACK", "commit_registration in a savepoint that is released, "
      "then the top level rolls back: the files go too")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    out = s.run("BEGIN; SAVEPOINT a; SELECT regstage.commit_registration(%d) > 0; RELEASE SAVEPOINT a; ROLLBACK" % tid)
    s.close()
    check(sqlstate(out) is None, out)
    check(not registered(tid) and not files_of(tid), "a row or files left for %d: %s" % (tid, files_of(tid)))
    invariants(failed=[tid])


@case("after inserts: PL/pgSQL exception block", "an exception block that fails after commit_registration "
      "undoes it: no row, no files, staged kept")
def _():
    tid = new_tid()
    stage(tid)
    out = env.sql("DO $$ BEGIN BEGIN PERFORM regstage.commit_registration(%d); RAISE EXCEPTION 'after the commit'; "
                  "EXCEPTION WHEN raise_exception THEN NULL; END; END $$" % tid)
    check(not registered(tid) and not files_of(tid), "a row or files left for %d: %s (%s)" % (tid, files_of(tid), out))
    invariants(failed=[tid])


@case("row deletes: the file goes at commit", "DELETE of a documents row rolled back: file kept; in a savepoint rolled "
      "back: kept; committed: gone at commit; then the users row deleted: the other document's file goes with the cascade")
def _():
    tid = new_tid()
    stage(tid)
    check(commit(tid)[0] is None, "commit_registration(%d) failed" % tid)
    path = env.sql("SELECT d.file_path FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id "
                   "WHERE u.telegram_id = %d AND d.doc_type = 'passport'" % tid)
    s = env.session()
    s.run("BEGIN; DELETE FROM regstage.documents WHERE file_path = '%s'; ROLLBACK" % path)
    check(len(files_of(tid)) == 2, "a rolled-back DELETE took the file: %s" % files_of(tid))
    s.run("BEGIN; SAVEPOINT a; DELETE FROM regstage.documents WHERE file_path = '%s'; ROLLBACK TO SAVEPOINT a; COMMIT"
          % path)
    check(len(files_of(tid)) == 2, "a DELETE in a rolled-back savepoint took the file: %s" % files_of(tid))
    s.run("DELETE FROM regstage.documents WHERE file_path = '%s'" % path)
    left = files_of(tid)
    s.run("DELETE FROM regstage.users WHERE telegram_id = %d" % tid)       # no user without all documents
    s.close()
    check(len(left) == 1 and path.split("/")[-1] not in left, "after the committed DELETE: %s" % left)
    check(not files_of(tid), "the cascade left files: %s" % files_of(tid))
    invariants()


@case("at COMMIT: Redis stopped", "COMMIT succeeds with the WARNING naming the telegram_id (client and server log); "
      "the stale staging is cleared by the next /start")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    begin_commit(s, tid)
    offset = os.path.getsize(env.pg_log)
    redis_stop()
    try:
        out = s.run("COMMIT")
    finally:
        redis_start()
    s.close()
    warning = "telegram_id %d: registration committed, user id " % tid
    check(any(l.startswith("WARNING:") and warning in l and "could not be cleared from Redis" in l for l in out),
          "no WARNING to the client: %s" % out)
    check(warning in log_since(offset) and "could not be cleared from Redis" in log_since(offset), "no WARNING in the server log")
    check(registered(tid), "the commit of %d was lost" % tid)
    check(staged_complete(tid), "stale staging survived (Redis was down)")
    reply = json.loads(env.sql("SELECT regstage.handle_update('%s')" % json.dumps({"update_id": tid, **text(tid, "/start")})))
    check("registered" in reply[0]["params"]["text"], reply)
    check(env.sql("SELECT regstage.staged(%d) IS NULL" % tid) == "t", "/start left the stale staging of %d" % tid)
    invariants()


@case("at COMMIT: Redis hung", "COMMIT returns within ~1 s with the WARNING (client and server log) naming the timeout; "
      "commit_registration again -> 23505 and clears")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    begin_commit(s, tid)
    offset = os.path.getsize(env.pg_log)
    redis_hang()
    try:
        t0 = time.monotonic()
        out = s.run("COMMIT")
        took = time.monotonic() - t0
    finally:
        redis_resume()
    s.close()
    check(took < 2, "COMMIT took %.1f s" % took)
    warning = [l for l in out if l.startswith("WARNING:") and "telegram_id %d: registration committed" % tid in l
               and "could not be cleared from Redis" in l]
    check(warning, "no WARNING to the client: %s" % out)
    check("no answer within 500 ms" in warning[0], "the WARNING does not name the timeout: %s" % warning[0])
    check("telegram_id %d: registration committed" % tid in log_since(offset), "no WARNING in the server log")
    check(registered(tid), "the commit of %d was lost" % tid)
    st, out = commit(tid)
    check(st == "23505", out)
    check(env.sql("SELECT regstage.staged(%d) IS NULL" % tid) == "t", "23505 did not clear the staging of %d" % tid)
    invariants()

@case("at COMMIT: Redis hung, 20 registrations", "one transaction, 20 commits, Redis SIGSTOPped: COMMIT within redis_timeout + 1 s, "
      "rows there, one WARNING per registration; the DEL sent before the hang runs when Redis resumes")
def _():
    tids = [new_tid() for _ in range(20)]
    for t in tids:
        stage(t)
    s = env.session()
    check(sqlstate(s.run("BEGIN")) is None, 'check failed: sqlstate(s.run("BEGIN")) is None')
    for t in tids:
        out = s.run("SELECT regstage.commit_registration(%d)" % t)
        check(sqlstate(out) is None, out)
    redis_hang()
    try:
        t0 = time.time()
        out = s.run("COMMIT")
        took = time.time() - t0
        check(took < 0.5 + 1.0, "COMMIT took %.1f s (redis_timeout is 500 ms)" % took)
        check(all(registered(t) for t in tids), "rows missing after COMMIT")
    finally:
        redis_resume()
    errors_seen.extend(out)
    check(sqlstate(out) is None, out)
    warned = [l for l in out if l.startswith("WARNING") and "could not be cleared from Redis" in l]
    check(len(warned) == 20, "%d WARNINGs: %s" % (len(warned), out[:4]))
    for t in tids:
        check(any("telegram_id %d:" % t in l for l in warned), "no WARNING names %d" % t)
    # The DEL reached the stopped Redis's socket before the deadline; Redis runs it once it resumes.
    wait_for(lambda: all(env.sql("SELECT regstage.staged(%d) IS NULL" % t) == "t" for t in tids), 5,
             "the staged keys deleted after SIGCONT")
    check(s.run("SELECT regstage.staged(%d) IS NULL" % tids[0]) == ["t"], "the session reconnects")
    s.close()
    invariants()


# ---- after COMMIT, before the Redis clear --------------------------------------------------


@case("after COMMIT: backend killed before the Redis clear",
      "SIGKILL once the row is visible to others (past the commit record) while the backend waits on Redis for its "
      "DEL (held by CLIENT PAUSE WRITE, keys still there): the commit is durable, the staging left over is cleared by /start")
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    s.run("SET regstage.redis_timeout = '30s'")        # the post-commit DEL waits min(this, 1 s)
    begin_commit(s, tid)
    watcher = env.session()
    check(redis_cli("CLIENT", "PAUSE", "30000", "WRITE") == "OK", "CLIENT PAUSE")
    try:
        s.send("COMMIT")

        # the after-commit DEL waits in poll() (no wait event) for at most 1 s:
        # the row visible to others while the backend is still in its COMMIT
        def past_commit_record_waiting_on_redis():
            row = watcher.run("SELECT (SELECT count(*) FROM regstage.users WHERE telegram_id = %d), state, "
                              "query LIKE 'COMMIT%%' FROM pg_stat_activity WHERE pid = %s" % (tid, s.pid))
            return row == ["1|active|t"]
        wait_for(past_commit_record_waiting_on_redis, 10, "COMMIT of %d visible, its backend waiting on Redis" % tid)
        check(redis_cli("EXISTS", "registration:%d:language" % tid, "registration:%d:data" % tid,
                        "registration:%d:documents" % tid) == "3", "the staged keys were cleared before the kill")
        watcher.close()
        os.kill(int(s.pid), signal.SIGKILL)
        s.close()
    finally:
        redis_cli("CLIENT", "UNPAUSE")
    env.wait_pg()
    check(registered(tid), "the commit was durable before the kill")
    check(staged_complete(tid), "the DEL ran although its backend was killed before Redis answered")
    reply = json.loads(env.sql("SELECT regstage.handle_update('%s')" % json.dumps({"update_id": tid, **text(tid, "/start")})))
    check("registered" in reply[0]["params"]["text"], reply)
    check(env.sql("SELECT regstage.staged(%d) IS NULL" % tid) == "t", "/start left the stale staging of %d" % tid)
    invariants()

# ---- the S3 service (s3 pass only) ---------------------------------------------------------
def at_s3(endpoint, bucket):
    return "SET regstage.s3_endpoint = '%s'; SET regstage.s3_bucket = '%s'; " % (endpoint, bucket)


def s3_standin_puts(tid):
    """PUTs the S3 stand-in has received whole for tid's objects (it logs a request once its body is read)."""
    with s3_http.open(S3 + "/_log", timeout=10) as r:
        return [e for e in json.loads(r.read()) if e["method"] == "PUT" and "/%s%d/" % (NS, tid) in e["path"]]


for label, where, code, texts, what in [
        ("server down", lambda: at_s3(S3_CLOSED, "docs"), "08001", ["could not connect to S3"],
         "nothing listens at regstage.s3_endpoint"),
        ("HTTP 500", lambda: at_s3(S3, "err500"), "08006", ["HTTP 500 InternalError"],
         "every request answered 500 InternalError"),
        ("HTTP 503", lambda: at_s3(S3, "err503"), "08006", ["HTTP 503 SlowDown"],
         "every request answered 503 SlowDown"),
        ("bucket missing", lambda: at_s3(S3, "missing"), "58P01", ['S3 bucket "missing" does not exist'],
         "404 NoSuchBucket"),
        ("access denied", lambda: at_s3(S3, "denied"), "28000", ["HTTP 403 AccessDenied"],
         "403 AccessDenied")]:
    def run(where=where, code=code, texts=texts):
        tid = new_tid()
        stage(tid)
        out = expect_failure(tid, code, settings=where())
        check(all(any(t in l for l in out) for t in texts), "%s not in: %s" % (texts, out))
        check(not registered(tid) and not files_of(tid), "a row or objects left for %d: %s" % (tid, files_of(tid)))
        invariants(failed=[tid])
    case("commit: S3 " + label, what + " -> %s naming it, no rows, no objects, staged data kept" % code,
         s3_only=True)(run)


@case("commit: S3 slow, statement_timeout", "a PUT the service never answers: 57014 within 0.5 s of a 1 s "
      "statement_timeout, no rows, no objects, staged kept", s3_only=True)
def _():
    tid = new_tid()
    stage(tid)
    s = env.session()
    t0 = time.monotonic()
    out = s.run(at_s3(S3, "slow") + "SET statement_timeout = '1s'; SELECT regstage.commit_registration(%d)" % tid)
    took = time.monotonic() - t0
    s.close()
    errors_seen.extend(out)
    check(sqlstate(out) == "57014", out)
    check(took < 1.5, "the statement ended %.2f s after it started (statement_timeout 1 s)" % took)
    check(s3_standin_puts(tid), "no PUT reached the slow service: the timeout struck elsewhere")
    check(not registered(tid) and not files_of(tid), "a row or objects left for %d: %s" % (tid, files_of(tid)))
    invariants(failed=[tid])


@case("commit: S3 slow, cancelled", "pg_cancel_backend while the PUT waits for the service's answer -> 57014 within "
      "0.5 s of the cancel, no rows, no objects, staged kept", s3_only=True)
def _():
    tid = new_tid()
    stage(tid)
    canceller = env.session()
    s = env.session()
    n = s.send(at_s3(S3, "slow") + "SELECT regstage.commit_registration(%d)" % tid)
    wait_for(lambda: s3_standin_puts(tid), 10, "a PUT of %d waiting on the slow service" % tid)
    t0 = time.monotonic()
    canceller.run("SELECT pg_cancel_backend(%s)" % s.pid)
    out = s.wait(n, timeout=20)
    took = time.monotonic() - t0
    canceller.close()
    s.close()
    errors_seen.extend(out)
    check(sqlstate(out) == "57014", out)
    check(took < 0.5, "cancel took %.2f s" % took)
    check(not registered(tid) and not files_of(tid), "a row or objects left for %d: %s" % (tid, files_of(tid)))
    invariants(failed=[tid])


# ---- the cleanup ------------------------------------------------------------------------


def s3_control(path, spec):
    req = urllib.request.Request(S3 + path, data=json.dumps(spec).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with s3_http.open(req, timeout=120) as r:
        r.read()


@case("cleanup: 100,000 objects", "the namespace holds 100,000 objects: 45,000 referenced by rows and 3 days old, "
      "45,000 unreferenced and new, 10,000 unreferenced and 3 days old -> cleanup_orphans('1 hour') lists them in "
      "pages, deletes exactly the 10,000, keeps the rest; the backend's private memory (RssAnon) stays under "
      "48 MB", s3_only=True)
def _():
    users, orphans_old, young = 22500, 10000, 45000
    body_sha = hashlib.sha256(b"x" * 16).hexdigest()
    referenced = ["%d/%s-%032x" % (7000000 + i, t, i) for i in range(users) for t in ("passport", "selfie")]
    old = ["%d/passport-%032x" % (8000000 + i, i) for i in range(orphans_old)]
    new = ["%d/selfie-%032x" % (9000000 + i, i) for i in range(young)]
    s3_control("/_seed", {"keys": [NS + k for k in referenced + old], "size": 16, "age": 3 * 86400})
    s3_control("/_seed", {"keys": [NS + k for k in new], "size": 16, "age": 0})
    env.sql("SET session_replication_role = replica; "   # the rows only: no trigger, no notification
            "INSERT INTO regstage.users (id, telegram_id, full_name, phone, language) "
            "SELECT nextval('regstage.users_id_seq'), 7000000 + i, 'Seeded ' || i, '+7916' || lpad(i::text, 7, '0'), 'en' "
            "FROM generate_series(0, %d) i; "
            "INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256) "
            "SELECT u.id, t, 'seeded', (u.telegram_id)::text || '/' || t || '-' || lpad(to_hex(u.telegram_id - 7000000), 32, '0'), "
            "16, '%s' FROM regstage.users u, unnest(ARRAY['passport', 'selfie']) t WHERE u.telegram_id >= 7000000"
            % (users - 1, body_sha))
    try:
        check(len(s3_objects()) >= 100000, "the store holds %d objects" % len(s3_objects()))
        s = env.session()
        pid = s.run("SELECT pg_backend_pid()")[-1].strip()
        rss = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    with open("/proc/%s/status" % pid) as f:
                        for line in f:
                            if line.startswith("RssAnon:"):
                                rss[0] = max(rss[0], int(line.split()[1]))
                except OSError:
                    pass
                time.sleep(0.05)
        th = threading.Thread(target=sample)
        th.start()
        t0 = time.time()
        out = s.run("SELECT deleted, kept, errors FROM regstage.cleanup_orphans('1 hour', '1 hour')")
        took = time.time() - t0
        done.set()
        th.join()
        s.close()
        print("    100,000 objects: cleanup_orphans took %.1f s, backend RssAnon peak %d kB" % (took, rss[0]))
        check("%d|%d|0" % (orphans_old, young) in out, "cleanup_orphans: %s" % out)
        left = s3_objects()
        check(all(k in left for k in referenced), "a referenced object was deleted")
        check(not any(k in left for k in old), "an old orphan was kept")
        check(all(k in left for k in new), "a young orphan was deleted")
        check(rss[0] < 48 * 1024, "backend RssAnon peaked at %d kB" % rss[0])
    finally:
        env.sql("SET session_replication_role = replica; "
                "DELETE FROM regstage.documents d USING regstage.users u WHERE d.user_id = u.id AND u.telegram_id >= 7000000; "
                "DELETE FROM regstage.users WHERE telegram_id >= 7000000")
        s3_control("/_drop", {"keys": [NS + k for k in referenced + old + new]})
    invariants()


@case("cleanup: worker in a database that does not own upload_dir",
      "the background worker's run fails (55000 naming the owner) before deleting anything; with the marker back it deletes",
      local_only="the ownership marker of upload_dir (in a bucket each database has its own namespace: test/s3 'databases are separate')")
def _():
    marker = os.path.join(UPLOADS, MARKER)
    saved = open(marker).read() if os.path.exists(marker) else None
    orphan = os.path.join(UPLOADS, "77777", "passport-orphan.jpg")
    owner = os.stat(UPLOADS)
    os.makedirs(os.path.dirname(orphan), exist_ok=True)
    with open(orphan, "w") as f:
        f.write("x")
    for p in (os.path.dirname(orphan), orphan):
        os.chown(p, owner.st_uid, owner.st_gid)         # the server's, as its own files
    os.utime(orphan, (time.time() - 3 * 86400,) * 2)
    claim_dir(UPLOADS, db="another_db")     # as if another database had claimed it first
    offset = os.path.getsize(env.pg_log)

    def log_since():
        with open(env.pg_log) as f:
            f.seek(offset)
            return f.read()
    env.sql("ALTER SYSTEM SET regstage.cleanup_interval = 1")
    env.sql("SELECT pg_reload_conf()")
    try:
        try:
            wait_for(lambda: 'cleanup run failed: upload directory "%s" belongs to database "another_db"' % UPLOADS
                     in log_since(), 20, "the worker's refusal in the log")
            check(os.path.exists(orphan), "the worker deleted a file of a directory it does not own")
        finally:
            if saved is None:
                os.unlink(marker)
            else:
                with open(marker, "w") as f:
                    f.write(saved)
        wait_for(lambda: not os.path.exists(orphan), 20, "the worker's next run deleting the old orphan")
    finally:
        env.sql("ALTER SYSTEM RESET regstage.cleanup_interval")
        env.sql("SELECT pg_reload_conf()")
    invariants()

# ---- the relay ------------------------------------------------------------------------


def relay_replies_ok(tids):
    """No update applied twice: each step of a registration has its own reply text."""
    for t in tids:
        texts = [c["params"]["text"] for c in env.calls(t, "sendMessage")]
        check(len(texts) == len(set(texts)), "a reply sent twice for %d: %s" % (t, texts))


@case("relay: PostgreSQL restarted mid-stream", "10 registrations; the cluster restarts while a commit is downloading "
      "and updates are unconfirmed: all registered, each update applied once")
def _():
    offset = os.path.getsize(env.relay_log) if os.path.exists(env.relay_log) else 0
    relay = Relay(env)
    try:
        tids = [new_tid() for _ in range(10)]
        # the first registration's selfie downloads for 2.5 s (download_timeout is 3 s): its commit is in flight at the restart
        ups = [u for i, t in enumerate(tids) for u in registration(t, selfie="dldelay2500_AgACs" if i == 0 else "AgACs")]
        ids = env.inject(ups)["update_ids"]
        if STORAGE == "s3":       # the passport's object stored, the selfie in flight
            wait_for(lambda: files_of(tids[0]), 20, "the slow commit downloading")
        else:
            wait_for(lambda: any("/%d/.selfie-" % tids[0] in f for f in tmp_files()), 20, "the slow commit downloading")

        def applied():
            return int(env.sql("SELECT count(*) FROM regstage.seen_updates WHERE update_id BETWEEN %d AND %d"
                               % (min(ids), max(ids))))
        before = applied()
        env.pg_ctl("restart", "-m", "fast")
        check(before < len(ids), "all %d updates were applied before the restart" % len(ids))
        check(not registered(tids[0]), "the slow registration committed before the restart")
        wait_for(lambda: all(registered(t) for t in tids), 60, "10 registrations")
        wait_for(lambda: applied() == len(ids), 20, "every update applied")
        relay_replies_ok(tids)
        with open(env.relay_log) as f:
            f.seek(offset)
            log = f.read()
        check("process_next failed" in log or "database unavailable" in log, "the relay never saw the restart")
        check("skipped" not in log, "an update was skipped")
    finally:
        check(relay.stop() == 0, 'check failed: relay.stop() == 0')
    invariants()


@case("relay: Redis outage retried", "Redis stopped (the update's processing raises 08001): the update is held "
      "(pending, no attempt counted, past regstage.max_attempts' worth of time), and answered once Redis is back",
      neutral="the relay's delivery and retries; its commits are the commit_registration of the cases above")
def _():
    tid = new_tid()
    relay = Relay(env)
    try:
        redis_stop()
        try:
            uid = env.inject([text(tid, "/start")])["update_ids"][0]
            row = "SELECT status, attempts, sqlstate FROM regstage.inbox WHERE update_id = %d" % uid
            wait_for(lambda: env.sql(row) == "pending|0|08001", 20, "the outage recorded on the update")
            time.sleep(6)       # an outage is retried every 5 s
            check(env.sql(row) == "pending|0|08001", "an outage counted as a failed attempt: %s" % env.sql(row))
            check(not env.calls(tid), "a reply while Redis is down")
        finally:
            redis_start()
        wait_for(lambda: env.calls(tid, "sendMessage"), 40, "the reply once Redis is back")
        check(len(env.calls(tid, "sendMessage")) == 1, 'check failed: len(env.calls(tid, "sendMessage")) == 1')
    finally:
        check(relay.stop() == 0, 'check failed: relay.stop() == 0')
    invariants()


@case("relay: SIGKILL mid-stream", "20 registrations, relay killed and restarted: all registered, no update applied twice",
      neutral="the relay's delivery and retries; its commits are the commit_registration of the cases above")
def _():
    env.http("/_test/fault", {"method": "sendMessage", "delay_ms": 20, "times": 60})
    relay = Relay(env)
    tids = [new_tid() for _ in range(20)]
    ids = env.inject([u for t in tids for u in registration(t)])["update_ids"]
    wait_for(lambda: int(env.sql("SELECT count(*) FROM regstage.seen_updates WHERE update_id >= %d" % min(ids))) >= 20,
             20, "progress")
    relay.stop(signal.SIGKILL)
    relay = Relay(env)
    try:
        wait_for(lambda: all(registered(t) for t in tids), 60, "20 registrations")
        applied = env.sql("SELECT count(*) FROM regstage.seen_updates WHERE update_id BETWEEN %d AND %d"
                          % (min(ids), max(ids)))
        check(applied == str(len(ids)), "%s of %d updates applied" % (applied, len(ids)))
        relay_replies_ok(tids)
    finally:
        relay.stop()
    invariants()

# ---- security ---------------------------------------------------------------------------


@case("security: privileges", "each probe run as superuser and as the relay's role, with rows present: the superuser "
      "reads users, documents, public.payroll and the secrets, runs cleanup_orphans and SETs upload_dir; the relay's "
      "role gets 42501 for each, and its granted calls (staged, missing, handle_update) answer",
      neutral="the privileges of functions and settings, the same for both backends")
def _():
    tid = new_tid()
    stage(tid)
    check(commit(tid)[0] is None, "commit_registration(%d) failed" % tid)
    env.sql("INSERT INTO public.payroll VALUES ('Director', 1000000)")
    su, bot = env.session(), env.session("relay_bot")
    try:
        for q, su_sees in [
                ("SELECT count(*) FROM regstage.users WHERE telegram_id = %d" % tid, lambda o: o == ["1"]),
                ("SELECT count(*) FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id "
                 "WHERE u.telegram_id = %d" % tid, lambda o: o == ["2"]),
                ("SELECT salary FROM public.payroll WHERE name = 'Director'", lambda o: o == ["1000000"]),
                ("SHOW regstage.bot_token", lambda o: o == [env.token]),
                ("SELECT current_setting('regstage.bot_token')", lambda o: o == [env.token]),
                ("SHOW regstage.redis_password", lambda o: sqlstate(o) is None),
                ("SELECT deleted FROM regstage.cleanup_orphans()", lambda o: sqlstate(o) is None and len(o) == 1),
                ("SET regstage.upload_dir = '/tmp'; RESET regstage.upload_dir", lambda o: sqlstate(o) is None)]:
            out = su.run(q)
            check(su_sees(out), "superuser: %s -> %s" % (q, out))
            out = bot.run(q)
            check(sqlstate(out) == "42501", "relay's role: %s -> %s" % (q, out))
        # pg_settings lists neither secret, for anybody (GUC_NO_SHOW_ALL); SHOW above is the privilege probe
        q = "SELECT count(*) FROM pg_settings WHERE name IN ('regstage.bot_token', 'regstage.redis_password')"
        check(su.run(q) == ["0"] and bot.run(q) == ["0"], "pg_settings lists a secret")
        # what the role is granted works, and answers
        check(bot.run("SELECT regstage.staged(%d)->>'language'" % new_staged()) == ["en"], "staged() as the relay's role")
        check(bot.run("SELECT regstage.missing(1)") == ["{language,full_name,phone,passport,selfie}"],
              "missing() as the relay's role")
        check(bot.run("SELECT regstage.handle_update('{\"update_id\": 7}')") == ["[]"], "handle_update as the relay's role")
        check(su.run("SELECT has_schema_privilege('public', 'regstage', 'USAGE')") == ["f"], "PUBLIC may use schema regstage")
    finally:
        su.close()
        bot.close()
    invariants()


@case("security: hostile file_ids and file_paths", "../, absolute, NUL and control characters never reach the file system")
def _():
    before = set(os.listdir(env.dir))
    for fid in ["../../etc/passwd", "/etc/passwd", "a\nb", "a b", "x" * 300]:
        out = env.sql("SELECT regstage.stage_document(1, 'passport', %s)" % ("$q$" + fid + "$q$"), check=False)
        check(out.startswith("ERROR") and "invalid file_id" in out, out)
    tid = new_tid()
    stage(tid)
    redis_cli("HSET", "registration:%d:documents" % tid, "passport", "../../../tmp/evil")   # another client's garbage
    expect_failure(tid, "22023")
    tid = new_tid()
    stage(tid)
    redis_cli("EVAL", "redis.call('HSET', KEYS[1], 'passport', 'AgAC\\0evil')", "1", "registration:%d:documents" % tid)
    out = expect_failure(tid, "22023")                  # a NUL byte is refused, not silently cut
    check(any("NUL byte" in l for l in out), out)
    for bad in ("badpath_AgACp", "abspath_AgACp", "ctlpath_AgACp"):
        tid = new_tid()
        stage(tid, passport=bad)
        out = expect_failure(tid, "38000")
        check(any("getFile for passport" in l for l in out), out)     # refused before any download
    check(set(os.listdir(env.dir)) == before, "new entries beside upload_dir: %s" % (set(os.listdir(env.dir)) - before))
    check(not os.path.exists("/tmp/evil"), "/tmp/evil was written")
    invariants()


@case("security: handle_update fuzzed 10,000 times", "random and mutated real-shaped updates: no crash, no error, no partial registration",
      neutral="handle_update stages only; it stores no document")
def _():
    rnd = random.Random(20261126)
    base = [text(1, "/start"), callback(1, "lang:en"), text(1, "Иван Петров"), text(1, "+79161234567"),
            message(1, {"contact": {"phone_number": "+79160000000", "user_id": 1}}),
            message(1, {"photo": [{"file_id": "AgACfz", "width": 1, "height": 1, "file_size": 1}]}),
            message(1, {"document": {"file_id": "AgACfzdoc", "mime_type": "image/png"}}),
            message(1, {"sticker": {"file_id": "x"}}), {"edited_message": {"chat": {"id": 1}}}]
    junk = [None, True, 0, -1, 1.5, 10 ** 20, "", "💥" * 50, "'; DROP TABLE regstage.users; --", "\u202eRTL",
            [], {}, [1, {"a": None}], "x" * 5000, "/start", "lang:ru", "continue", "restart"]

    def mutate(v, depth=0):
        if isinstance(v, dict):
            v = dict(v)
            for k in list(v):
                r = rnd.random()
                if r < 0.1:
                    del v[k]
                elif r < 0.25:
                    v[k] = rnd.choice(junk)
                else:
                    v[k] = mutate(v[k], depth + 1)
            if rnd.random() < 0.1:
                v[rnd.choice(["text", "photo", "contact", "from", "chat", "data", "message"])] = rnd.choice(junk)
            return v
        if isinstance(v, list):
            return [mutate(x, depth + 1) for x in v if rnd.random() > 0.1]
        return rnd.choice(junk) if rnd.random() < 0.15 else v

    log_offset = os.path.getsize(env.pg_log)
    lines = []
    for i in range(10000):
        u = mutate(rnd.choice(base))
        if isinstance(u, dict):
            tid = 60000 + rnd.randrange(50)
            for k in ("message", "callback_query"):
                if isinstance(u.get(k), dict):
                    if isinstance(u[k].get("from"), dict) and rnd.random() < 0.8:
                        u[k]["from"]["id"] = tid
                    if isinstance(u[k].get("chat"), dict) and rnd.random() < 0.8:
                        u[k]["chat"]["id"] = tid
            if rnd.random() < 0.95:
                u["update_id"] = 5000000 + i
        lines.append("SELECT 1 FROM regstage.handle_update($fz$%s$fz$::jsonb);" % json.dumps(u).replace("$fz$", ""))
    path = os.path.join(env.dir, "fuzz-updates.sql")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    out = subprocess.run(["psql", "-h", env.sock, "-p", env.pg_port, "-U", "relay_bot", "-d", "postgres", "-XAtq",
                          "-f", path], capture_output=True, text=True, timeout=600)
    errs = [l for l in out.stderr.splitlines() if "ERROR" in l or "FATAL" in l or "server closed" in l]
    check(not errs, "handle_update raised: %s" % errs[:3])
    check(out.stdout.count("1") >= 10000, "every call answered")
    with open(env.pg_log) as f:
        f.seek(log_offset)
        check("terminated by signal" not in f.read(), "a backend crashed")
    invariants()


# ---- load ---------------------------------------------------------------------------


@case("load: 200 users register at once", "through relay + stand-in: 200 users, 400 documents, 0 Redis keys, 0 orphan files")
def _():
    env.sql("TRUNCATE regstage.users CASCADE")
    redis_cli("FLUSHALL")
    env.sql("SELECT * FROM regstage.cleanup_orphans('0', '0')")
    relay = Relay(env, workers=8)
    try:
        tids = list(range(70001, 70201))
        env.inject([u for t in tids for u in registration(t)])
        wait_for(lambda: env.sql("SELECT count(*) FROM regstage.users") == "200", 240, "200 registrations")
    finally:
        relay.stop()
    check(env.sql("SELECT count(*) FROM regstage.documents") == "400", "not 400 documents rows")
    check(redis_cli("DBSIZE") == "0", "Redis keys left: %s" % redis_cli("DBSIZE"))
    check(not orphans(), "files without a row: %s" % orphans()[:5])
    invariants()


# With s3 every commit is two PUTs to s3rver: 2,000 commits there keep the s3 pass lean.
MEMORY_COMMITS = 10000 if STORAGE == "local" else 2000


@case("load: memory flat over {:,} commits".format(MEMORY_COMMITS),
      "backend RssAnon after 500 and after {:,} commits{}".format(
          MEMORY_COMMITS, "; relay RssAnon over 10,000 updates" if STORAGE == "local" else
          " (the relay's memory: in the local pass, it stores no document)"))
def _():
    n, clients = MEMORY_COMMITS, 4
    first = 100001
    pipe = []
    for t in range(first, first + n):
        k = "registration:%d:" % t
        pipe.append("SET %slanguage en EX 86400" % k)
        pipe.append("HSET %sdata full_name Load phone +79160000000" % k)
        pipe.append("HSET %sdocuments passport AgACloadp selfie AgACloads" % k)
    subprocess.run(["redis-cli", "-p", REDIS_PORT], input="\n".join(pipe) + "\n", text=True, capture_output=True, check=True)
    sessions = [env.session() for _ in range(clients)]
    per = n // clients

    def loop(s, a, b):
        return s.send("DO $$ BEGIN FOR t IN %d..%d LOOP PERFORM regstage.commit_registration(t); COMMIT; END LOOP; END $$" % (a, b))

    def rss(pid):
        for line in open("/proc/%s/status" % pid):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    for i, s in enumerate(sessions):          # warm-up: the first 500 commits
        s.wait(loop(s, first + i * per, first + i * per + 124))
    start = [rss(s.pid) for s in sessions]
    for i, s in enumerate(sessions):
        loop(s, first + i * per + 125, first + (i + 1) * per - 1)
    for s in sessions:
        out = s.wait(timeout=600)
        check(sqlstate(out) is None, out[:3])
    end = [rss(s.pid) for s in sessions]
    for s in sessions:
        s.close()
    check(env.sql("SELECT count(*) FROM regstage.users WHERE telegram_id >= %d" % first) == str(n), "not %d users" % n)
    growth = max(e - s for s, e in zip(start, end))
    print("    backend RssAnon (kB) after 500 commits: %s, after %d: %s" % (start, n, end))
    check(growth < 2048, "a backend grew by %d kB" % growth)
    if STORAGE == "s3":
        invariants()
        return

    relay = Relay(env, extra_env={"RELAY_LOG_LEVEL": "error"})
    try:
        tids = list(range(80001, 80101))
        env.sql("SELECT regstage.stage_language(t, 'en') FROM generate_series(80001, 80100) t")
        env.http("/_test/reset", {})
        env.inject([text(tids[i % 100], "Ivan Petrov") for i in range(1000)])
        wait_for(lambda: len(env.calls()) >= 1000, 60, "1,000 updates")
        r0 = relay.rss_kb()
        for k in range(9):
            env.inject([text(tids[i % 100], "Ivan Petrov") for i in range(1000)])
        wait_for(lambda: len(env.calls()) >= 10000, 120, "10,000 updates")
        r1 = relay.rss_kb()
    finally:
        relay.stop()
    print("    relay RssAnon (kB) after 1,000 updates: %d, after 10,000: %d" % (r0, r1))
    check(r1 - r0 < 1024, "the relay grew by %d kB" % (r1 - r0))
    invariants()


@case("logging: the registration's events", "download started/finished with size, documents saved, committed with user id, Redis cleared; no name or phone")
def _():
    tid = new_tid()
    offset = os.path.getsize(env.pg_log)
    env.sql("SELECT regstage.stage_language(%d, 'en'), regstage.stage_user_data(%d, "
            "'{\"full_name\": \"Zinaida Logcheck\", \"phone\": \"+79165550101\"}'), "
            "regstage.stage_document(%d, 'passport', 'bytes3000_AgACp'), regstage.stage_document(%d, 'selfie', 'AgACs')"
            % (tid, tid, tid, tid))
    check(commit(tid)[0] is None, "commit_registration(%d) failed" % tid)
    uid = env.sql("SELECT id FROM regstage.users WHERE telegram_id = %d" % tid)
    time.sleep(0.3)
    with open(env.pg_log) as f:
        f.seek(offset)
        log = f.read()
    for line in ["telegram_id %d: downloading passport, selfie" % tid,
                 "telegram_id %d: downloaded passport 3000 bytes, selfie " % tid,
                 "telegram_id %d: 2 documents saved for user id %s, waiting for commit" % (tid, uid),
                 "telegram_id %d: registration committed, user id %s; staged data cleared from Redis" % (tid, uid)]:
        check(line in log, "missing log line: %s" % line)
    # routine lines carry no STATEMENT line (the telegram_id says which call)
    check("commit_registration(%d)" % tid not in log, "a STATEMENT line in a successful commit's log")
    check("Zinaida" not in log and "5550101" not in log, "a name or phone in the log")
    invariants()


@case("security: the token is nowhere", "the stand-in echoes the URL (token included) in its error answers; the "
      "errors that quote them show <token>; neither the token nor its secret half is in the PostgreSQL log, relay log, "
      "stand-in log or any error text of this suite")
def _():
    check(errors_seen, "errors were collected")
    check(any("(POST /bot<token>/getFile)" in e for e in errors_seen),
          "no error quoted the stand-in's echoed URL, redacted: the token checks below would prove nothing")
    if STORAGE == "s3":         # and the S3 secret key neither
        secret = open(os.path.join(env.dir, "keys", "secret")).read().strip()
        for name, content in [("postgres.log", open(env.pg_log).read()), ("error texts", "\n".join(errors_seen))]:
            check(secret not in content, "the S3 secret key appears in %s" % name)
    for name, content in [("postgres.log", open(env.pg_log).read()),
                          ("relay.log", open(env.relay_log).read() if os.path.exists(env.relay_log) else ""),
                          ("standin.log", open(os.path.join(env.dir, "standin", "standin.log")).read()),
                          ("error texts", "\n".join(errors_seen))]:
        check(env.token not in content, "the token appears in %s" % name)
        check(env.token.split(":")[1] not in content, "the token's secret part appears in %s" % name)


sys.exit(report.finish())
