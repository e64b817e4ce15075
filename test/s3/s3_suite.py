#!/usr/bin/env python3
"""The S3 storage suite (run by test/scripts/s3.sh): pg_regstage/s3.c
against s3rver and the stand-in test/s3/s3_standin.py, through the SQL
entry points in s3.c.  Prints a table of cases; exits non-zero if any
failed."""
import hashlib
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from regstage_testlib import Report  # noqa: E402
from s3lib import D, S3RVER, SECRET_FILE, STANDIN, fetch, http, outputs  # noqa: E402,F401
import s3lib  # noqa: E402

SECRET = os.environ["S3_SUITE_SECRET"]
WRONG_SECRET = "Wrong" + SECRET[::-1] + "x"
CLOSED = "http://127.0.0.1:%s" % os.environ["S3_SUITE_CLOSED_PORT"]
DB_A, DB_B = "s3_regression", "s3_regression_b"
ROOT = os.geteuid() == 0
report = Report()
case = report.case


def psql(sql, db=DB_A, user="postgres", stop=True):
    return s3lib.psql(sql, db, user, stop)


def ok(sql, **kw):
    rc, out, err = psql(sql, **kw)
    assert rc == 0, "failed: %s" % err
    return out


def fails(sql, state, *texts, hint=True, **kw):
    rc, out, err = psql(sql, **kw)
    assert rc != 0, "succeeded, wanted %s: %s" % (state, out)
    m = re.search(r"(?:ERROR|FATAL):  ([0-9A-Z]{5}): ", err)
    assert m and m.group(1) == state, "wanted %s, got: %s" % (state, err)
    for t in texts:
        assert t in err, "%r not in: %s" % (t, err)
    if hint:
        assert "\nHINT:  " in err, "no hint: %s" % err
    for s in (SECRET, WRONG_SECRET):
        assert s not in err, "the secret is in the error"
    return err


def at(endpoint, bucket):
    return "SET regstage.s3_endpoint = '%s'; SET regstage.s3_bucket = '%s';\n" % (endpoint, bucket)


def blob(n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"regstage-%d" % i).digest()
        i += 1
    return bytes(out[:n])


def standin_log():
    import json
    return json.loads(fetch(STANDIN + "/_log")[1])


def write_secret(value):
    with open(SECRET_FILE, "w") as f:     # keeps the file's owner and mode
        f.write(value + "\n")


# ---- setup: two databases, the entry points in each ---------------------------
FUNCS = """
CREATE SCHEMA s3test;
GRANT USAGE ON SCHEMA s3test TO PUBLIC;
CREATE FUNCTION s3test.put(key text, data bytea) RETURNS text LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_put';
CREATE FUNCTION s3test.head(key text) RETURNS bigint LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_head';
CREATE FUNCTION s3test.delete(key text) RETURNS void LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_delete';
CREATE FUNCTION s3test.presign(key text, ttl int) RETURNS text LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_presign';
CREATE FUNCTION s3test.list(prefix text, max_keys int)
  RETURNS TABLE(key text, last_modified timestamptz, size bigint, page int) LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_list';
CREATE FUNCTION s3test.stream_put(key text, url text, size bigint)
  RETURNS TABLE(bytes bigint, buffer_high_water bigint) LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_stream_put';
CREATE FUNCTION s3test.check() RETURNS text LANGUAGE c
  AS '$libdir/pg_regstage', 'regstage_s3_check';
CREATE FUNCTION s3test.document_key(bigint, text) RETURNS text LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_document_key';
CREATE FUNCTION s3test.try(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || SQLERRM; END $$;
"""
for db in (DB_A, DB_B):
    ok("DROP DATABASE IF EXISTS %s;" % db, db="postgres")
    ok("CREATE DATABASE %s;" % db, db="postgres")
    ok("""ALTER DATABASE %s SET regstage.storage = 's3';
ALTER DATABASE %s SET regstage.s3_endpoint = '%s';
ALTER DATABASE %s SET regstage.s3_bucket = 'docs';
ALTER DATABASE %s SET regstage.s3_access_key = 'S3RVER';
ALTER DATABASE %s SET regstage.s3_prefix = 'suite/';
ALTER DATABASE %s SET regstage.s3_secret_key_file = '%s';""" % (db, db, S3RVER, db, db, db, db, SECRET_FILE),
       db="postgres")
    ok(FUNCS, db=db)
ok("DO $$ BEGIN CREATE ROLE s3_suite_user LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;", db="postgres")


@case("SigV4 vectors", "s3_sign.c reproduces AWS's test-suite, S3 API and presigned-URL signatures")
def _():
    p = subprocess.run([os.environ["S3_SUITE_VECTORS"]], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
    assert p.stdout.count("\nok ") >= 20, p.stdout


@case("settings", "checked values; the secret file setting hidden from non-superusers; entry points superuser-only")
def _():
    assert ok("SHOW regstage.storage;") == "s3"
    assert ok("SHOW regstage.s3_region;") == "us-east-1"
    fails("SET regstage.storage = 'ftp';", "22023", hint=False)
    fails("SET regstage.s3_endpoint = 'ftp://x';", "22023", hint=False)
    fails("SET regstage.s3_endpoint = 'http://h/some/path';", "22023", hint=False)
    fails("SET regstage.s3_prefix = 'a/../b';", "22023", hint=False)
    fails("SET regstage.s3_bucket = 'Bad_Bucket';", "22023", hint=False)
    fails("SET regstage.s3_secret_key_file = 'relative/secret';", "22023", hint=False)
    fails("SHOW regstage.s3_secret_key_file;", "42501", user="s3_suite_user", hint=False)
    fails("SELECT s3test.head('x');", "42501", "permission denied", user="s3_suite_user")


@case("PUT, HEAD, presigned GET, DELETE", "s3rver: object key <prefix>/<db>/<key>, bytes back via presigned URL, idempotent DELETE")
def _():
    assert ok("SELECT s3test.put('c/one', 'hello S3'::bytea);") == "suite/s3_regression/c/one"
    assert ok("SELECT s3test.head('c/one');") == "8"
    url = ok("SELECT s3test.presign('c/one', 60);")
    assert url.startswith(S3RVER + "/docs/suite/s3_regression/c/one?X-Amz-Algorithm=AWS4-HMAC-SHA256&"), url
    assert fetch(url) == (200, b"hello S3")
    ok("SELECT s3test.delete('c/one');")
    assert ok("SELECT s3test.head('c/one');") == ""
    ok("SELECT s3test.delete('c/one');")
    key = ok("SELECT s3test.document_key(42, 'passport');")
    assert re.fullmatch(r"42/passport-[0-9a-f]{32}", key), key
    assert key != ok("SELECT s3test.document_key(42, 'passport');")


@case("keys are checked", "a key with '..', '//', a leading '/' or a space is refused before any request")
def _():
    for k in ("../x", "a//b", "/a", "a b", "a/./b", ""):
        fails("SELECT s3test.put('%s', '\\x00');" % k, "22023", "invalid S3 key", hint=False)


@case("list > 1000 objects", "s3rver: 1100 objects in 2 pages of 1000 and 5 of 250 via continuation tokens; sizes, dates")
def _():
    ok("DO $$ BEGIN FOR i IN 1..1100 LOOP "
       "PERFORM s3test.put(format('many/%s', lpad(i::text, 5, '0')), '\\x0102'); END LOOP; END $$;")
    assert ok("SELECT count(*), count(DISTINCT key), max(page), min(key), max(key), sum(size) "
              "FROM s3test.list('many/', 1000);") == "1100|1100|2|many/00001|many/01100|2200"
    assert ok("SELECT count(*), max(page) FROM s3test.list('many/', 250);") == "1100|5"
    assert ok("SELECT bool_and(abs(extract(epoch FROM now() - last_modified)) < 600) "
              "FROM s3test.list('many/', 1000);") == "t"


@case("databases are separate", "an object of one database is invisible (LIST, HEAD) to another; same key, two objects")
def _():
    ok("SELECT s3test.put('iso/a', 'A');", db=DB_A)
    assert ok("SELECT count(*) FROM s3test.list('', 1000);", db=DB_B) == "0"
    assert ok("SELECT s3test.head('iso/a');", db=DB_B) == ""
    assert ok("SELECT s3test.put('iso/a', 'BB');", db=DB_B) == "suite/s3_regression_b/iso/a"
    assert ok("SELECT s3test.head('iso/a');", db=DB_A) == "1"
    assert ok("SELECT s3test.head('iso/a');", db=DB_B) == "2"


@case("streamed PUT, 5 MB", "download -> PUT on one multi: all bytes, buffer <= 256 KiB, backend peak RSS + < 2 MB, same sha256")
def _():
    n = 5 * 1024 * 1024
    out = ok("""SELECT * FROM s3test.stream_put('big/warm', '%s/_blob/300000', 300000);
SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\\s+(\\d+)'))[1]::bigint AS before \\gset
SELECT * FROM s3test.stream_put('big/five', '%s/_blob/%d', %d);
SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\\s+(\\d+)'))[1]::bigint - :before;
""" % (STANDIN, STANDIN, n, n)).splitlines()
    bytes_, high = map(int, out[1].split("|"))
    grew_kb = int(out[2])
    assert bytes_ == n, out
    assert 0 < high <= 256 * 1024, "buffer high water %d" % high
    assert grew_kb < 2048, "backend peak RSS grew by %d kB for a 5 MB object" % grew_kb
    status, body = fetch(ok("SELECT s3test.presign('big/five', 60);"))
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(blob(n)).digest()
    assert ok("SELECT s3test.head('big/five');") == str(n)
    sys.stderr.write("       5 MB streamed: buffer high water %d bytes, peak RSS +%d kB\n" % (high, grew_kb))


@case("streamed PUT, wrong size", "fewer (08006) or more (38000) bytes than declared: error; a strict store keeps nothing")
def _():
    v = at(STANDIN, "verified")
    fails(v + "SELECT * FROM s3test.stream_put('big/short', '%s/_blob/1000', 1001);" % STANDIN, "08006",
          "got 1000 of its 1001 bytes")
    assert ok(v + "SELECT s3test.head('big/short');") == ""
    fails(v + "SELECT * FROM s3test.stream_put('big/long', '%s/_blob/300000', 200000);" % STANDIN, "38000",
          "more than its 200000 bytes")
    assert ok(v + "SELECT s3test.head('big/long');") == ""
    # s3rver, for the record: does it keep the body of a PUT the client aborted?
    psql("SELECT * FROM s3test.stream_put('big/short', '%s/_blob/1000', 1001);" % STANDIN)
    sys.stderr.write("       s3rver after an aborted PUT: HEAD gives size %r\n"
                     % ok("SELECT s3test.head('big/short');"))


VERIFIED = at(STANDIN, "verified")


@case("signatures verified", "stand-in checks every SigV4 signature with the secret: PUT/HEAD/LIST (tokens with +/=)/DELETE")
def _():
    ok(VERIFIED + "DO $$ BEGIN FOR i IN 1..5 LOOP PERFORM s3test.put('v/' || i, 'x'); END LOOP; END $$;")
    assert ok(VERIFIED + "SELECT s3test.head('v/1');") == "1"
    assert ok(VERIFIED + "SELECT count(*), max(page) FROM s3test.list('v/', 2);") == "5|3"
    ok(VERIFIED + "SELECT s3test.delete('v/1');")
    seen = [e for e in standin_log() if e["path"].startswith("/verified")]
    assert seen and all(e.get("signature") == "ok" for e in seen), [e for e in seen if e.get("signature") != "ok"]
    puts = [e for e in seen if e["method"] == "PUT"]
    assert puts and all(e["if_none_match"] == "*" and e["content_sha256"] == "UNSIGNED-PAYLOAD" for e in puts)
    others = [e for e in seen if e["method"] != "PUT"]
    assert all(e["content_sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
               for e in others)
    tokens = [e["query"] for e in seen if "continuation-token" in e["query"]]
    assert len(tokens) == 2 and all("%2B" in t or "%2F" in t for t in tokens), tokens


@case("never overwritten", "If-None-Match: * on every PUT; an existing key -> 412 -> 42710")
def _():
    ok(VERIFIED + "SELECT s3test.put('dup/a', 'first');")
    fails(VERIFIED + "SELECT s3test.put('dup/a', 'second');", "42710", "already exists")
    status, body = fetch(ok(VERIFIED + "SELECT s3test.presign('dup/a', 60);"))
    assert (status, body) == (200, b"first")


@case("presigned URL expiry", "stand-in checks signature and expiry: fetched at once, refused 2 s after X-Amz-Expires=1")
def _():
    ok(VERIFIED + "SELECT s3test.put('exp/a', 'soon gone');")
    url = ok(VERIFIED + "SELECT s3test.presign('exp/a', 1);")
    assert "X-Amz-Expires=1&" in url
    assert fetch(url) == (200, b"soon gone")
    assert fetch(url.replace("/exp/a?", "/exp/b?"))[0] == 403, "a URL for another key"
    time.sleep(2.2)
    status, body = fetch(url)
    assert status == 403 and b"expired" in body, (status, body)
    fails("SELECT s3test.presign('exp/a', 0);", "22023", hint=False)
    fails("SELECT s3test.presign('exp/a', 604801);", "22023", hint=False)
    # what s3rver does with an expired URL (it is not the proof; the stand-in is)
    ok("SELECT s3test.put('exp/s', 'x');")
    url = ok("SELECT s3test.presign('exp/s', 1);")
    time.sleep(2.2)
    sys.stderr.write("       s3rver answers HTTP %d to an expired presigned URL\n" % fetch(url)[0])


@case("secret file re-read", "a changed file is read again in the same session: wrong key -> 28000, right key -> ok")
def _():
    with open(os.path.join(D, "wrong"), "w") as f:
        f.write(WRONG_SECRET + "\n")
    out = ok(VERIFIED + """SELECT s3test.try($$SELECT s3test.put('rot/1', 'x')$$);
\\! cp %s/wrong %s
SELECT s3test.try($$SELECT s3test.put('rot/2', 'x')$$);
\\! cp %s/standin-secret %s
SELECT s3test.try($$SELECT s3test.put('rot/3', 'x')$$);
""" % (D, SECRET_FILE, D, SECRET_FILE)).splitlines()
    assert out[0] == "ok" and out[2] == "ok", out
    assert out[1].startswith("28000 S3 refused PUT") and "SignatureDoesNotMatch" in out[1], out


@case("secret file checks", "not set 55000, missing 58P01, mode 0644 / empty / two lines F0000, not the server "
      "user's 42501; the same checks and texts as the bot token file (one reader, guc.c)")
def _():
    keys = os.path.join(D, "keys")

    def make(name, content, mode, owner_pg=True):
        p = os.path.join(keys, name)
        with open(p, "w") as f:
            f.write(content)
        os.chmod(p, mode)
        if ROOT and owner_pg:
            subprocess.run(["chown", "postgres:postgres", p], check=True)
        return p
    use = "SET regstage.s3_secret_key_file = '%s'; SELECT s3test.put('k', 'x');"
    fails("SET regstage.s3_secret_key_file = ''; SELECT s3test.put('k', 'x');", "55000", "is not set")
    fails(use % os.path.join(keys, "absent"), "58P01", "could not open")
    fails(use % make("loose", SECRET, 0o644), "F0000", "has group or other permissions (mode 0644)")
    fails(use % make("empty", "\n", 0o600), "F0000", "is empty")
    fails(use % make("twolines", SECRET + "\n" + SECRET + "\n", 0o600), "F0000", "has more than one line")
    if ROOT:
        fails(use % make("rootowned", SECRET, 0o600, owner_pg=False), "42501", "could not open")


@case("server down", "connection refused -> 08001 naming the operation, key and endpoint")
def _():
    fails(at(CLOSED, "docs") + "SELECT s3test.put('d/x', 'x');", "08001", "could not connect to S3",
          "PUT of \"suite/s3_regression/d/x\"")
    fails(at(CLOSED, "docs") + "SELECT count(*) FROM s3test.list('', 10);", "08001", "LIST")


@case("HTTP 500 / 503", "-> 08006 with the service's Code and Message (HEAD: no body, still 08006)")
def _():
    fails(at(STANDIN, "err500") + "SELECT s3test.put('e/x', 'x');", "08006", "HTTP 500 InternalError",
          "internal error")
    fails(at(STANDIN, "err503") + "SELECT s3test.delete('e/x');", "08006", "HTTP 503 SlowDown")
    fails(at(STANDIN, "err500") + "SELECT s3test.head('e/x');", "08006", "HTTP 500")


@case("slow server: statement_timeout", "a PUT to a server that never answers: 57014 within 0.5 s of a 300 ms timeout")
def _():
    rc, out, err = psql(at(STANDIN, "slow") + """SELECT clock_timestamp() AS t0 \\gset
SET statement_timeout = '300ms';
SELECT s3test.put('slow/x', 'x');
RESET statement_timeout;
SELECT extract(epoch FROM clock_timestamp() - :'t0');
""", stop=False)
    assert "ERROR:  57014: canceling statement due to statement timeout" in err, err
    assert float(out) < 0.8, "took %s s" % out


@case("slow server: pg_cancel_backend", "a waiting PUT ends with 57014 within 0.5 s of the cancel")
def _():
    p = subprocess.Popen(["psql", "-X", "-At", "-v", "VERBOSITY=verbose", "-d", DB_A, "-U", "postgres", "-c",
                          "SET regstage.s3_endpoint = '%s'; SET regstage.s3_bucket = 'slow'; "
                          "SELECT s3test.put('slow/cancel', 'x');" % STANDIN],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = None
    for _ in range(100):
        pid = ok("SELECT pid FROM pg_stat_activity WHERE query LIKE '%%slow/cancel%%' AND pid <> pg_backend_pid();",
                 db="postgres")
        if pid:
            break
        time.sleep(0.05)
    assert pid, "the PUT did not start"
    time.sleep(0.5)
    t0 = time.time()
    ok("SELECT pg_cancel_backend(%s);" % pid, db="postgres")
    _, err = p.communicate(timeout=10)
    took = time.time() - t0
    outputs.write(err)
    assert "57014" in err, err
    assert took < 0.5, "took %.2f s" % took


@case("bucket missing", "s3rver NoSuchBucket -> 58P01 for PUT, LIST and DELETE; HEAD reads it as a missing key")
def _():
    m = at(S3RVER, "missing")
    fails(m + "SELECT s3test.put('b/x', 'x');", "58P01", "S3 bucket \"missing\" does not exist")
    fails(m + "SELECT count(*) FROM s3test.list('', 10);", "58P01", "does not exist")
    fails(m + "SELECT s3test.delete('b/x');", "58P01")
    assert ok(m + "SELECT s3test.head('b/x');") == ""


@case("access denied", "403 AccessDenied -> 28000 with the bucket policy in the hint")
def _():
    fails(at(STANDIN, "denied") + "SELECT s3test.put('a/x', 'x');", "28000", "HTTP 403 AccessDenied",
          "s3:PutObject, s3:GetObject, s3:DeleteObject and s3:ListBucket")
    fails(at(STANDIN, "denied") + "SELECT count(*) FROM s3test.list('', 10);", "28000", "LIST")


@case("unreadable answer", "a 200 LIST answer that is not XML -> 08P01")
def _():
    fails(at(STANDIN, "garbage") + "SELECT count(*) FROM s3test.list('', 10);", "08P01",
          "unreadable ListBucketResult")


@case("regstage.s3_check()", "s3rver and the verifying stand-in: ok; denied bucket: error naming the step")
def _():
    assert ok("SELECT s3test.check();").startswith("ok: PUT, HEAD, LIST, presigned GET, DELETE of docs/suite/s3_regression/")
    assert ok(VERIFIED + "SELECT s3test.check();").startswith("ok:")
    fails(at(STANDIN, "denied") + "SELECT s3test.check();", "28000", "regstage.s3_check step: PUT")
    fails("SELECT s3test.check();", "42501", user="s3_suite_user")


@case("no descriptor leak", "40 failing requests of every kind leave the backend's open descriptors as they were")
def _():
    out = ok("""SELECT count(*) FROM pg_ls_dir('/proc/self/fd') \\gset before_
SET regstage.s3_endpoint = '%s';
DO $$ BEGIN FOR i IN 1..10 LOOP
  SET LOCAL regstage.s3_bucket = 'err500'; PERFORM s3test.try($q$SELECT s3test.put('l/x', 'x')$q$);
  SET LOCAL regstage.s3_bucket = 'denied'; PERFORM s3test.try($q$SELECT count(*) FROM s3test.list('', 5)$q$);
  SET LOCAL regstage.s3_bucket = 'garbage'; PERFORM s3test.try($q$SELECT count(*) FROM s3test.list('', 5)$q$);
  PERFORM s3test.try($q$SELECT * FROM s3test.stream_put('l/y', '%s/_blob/10', 11)$q$);
END LOOP; END $$;
SELECT count(*) - :before_count FROM pg_ls_dir('/proc/self/fd');
""" % (STANDIN, STANDIN))
    assert int(out) <= 4, "%s more open descriptors" % out    # the multi keeps up to 4 connections


@case("secret never shown", "the secret (right or wrong) is in no output, server log, stand-in or s3rver log")
def _():
    outputs.flush()
    for path in (os.path.join(D, "outputs.log"), os.environ["S3_SUITE_PG_LOG"],
                 os.path.join(D, "standin.log"), os.path.join(D, "s3rver.log")):
        with open(path, errors="replace") as f:
            text = f.read()
        for s in (SECRET, WRONG_SECRET):
            assert s not in text, "the secret is in %s" % path


sys.exit(report.finish())
