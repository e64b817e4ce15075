#!/usr/bin/env python3
"""The extension's commit path and cleanup with regstage.storage = 's3'
(run by test/scripts/s3.sh after s3_suite.py): a database with
pg_regstage installed, documents from the Bot API stand-in of
scripts/test.sh streamed into s3rver.  Objects follow their
(sub)transaction; a deleted row's object goes after commit; the cleanup
deletes unreferenced objects; document_url() fetches the object.
Prints a table of cases; exits non-zero if any failed."""
import hashlib
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from regstage_testlib import Report, check  # noqa: E402
from s3lib import D, S3RVER, SECRET_FILE, STANDIN, fetch, http, outputs  # noqa: E402,F401
import s3lib  # noqa: E402

DB = "s3_commit"
report = Report()
case = report.case


def psql(sql, stop=True):
    return s3lib.psql(sql, DB, stop=stop)


def ok(sql):
    rc, out, err = psql(sql)
    check(rc == 0, "failed: %s" % err)
    return out


def fails(sql, state, *texts):
    rc, out, err = psql(sql)
    check(rc != 0, "succeeded, wanted %s: %s" % (state, out))
    m = re.search(r"ERROR:  ([0-9A-Z]{5}): ", err)
    check(m and m.group(1) == state, "wanted %s, got: %s" % (state, err))
    for t in texts:
        check(t in err, "%r not in: %s" % (t, err))
    return err


def stage(tid, passport="AgACpassport123", selfie="AgACselfie123"):
    return ("SELECT regstage.stage_language(%d, 'en');"
            "SELECT regstage.stage_user_data(%d, jsonb_build_object('full_name', 'Test User', 'phone', '+79160000%03d'));"
            "SELECT regstage.stage_document(%d, 'passport', '%s');"
            "SELECT regstage.stage_document(%d, 'selfie', '%s');\n"
            % (tid, tid, tid % 1000, tid, passport, tid, selfie))


def objects(prefix):
    """keys under prefix in the database's namespace (LIST, every page)"""
    out = ok("SELECT key FROM s3test.list('%s', 1000) ORDER BY 1;" % prefix)
    return out.splitlines() if out else []


# ---- setup ------------------------------------------------------------------
ok_db = subprocess.run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-U", "postgres", "-c",
                        "DROP DATABASE IF EXISTS %s" % DB, "-c", "CREATE DATABASE %s" % DB, "-c",
                        "ALTER DATABASE %s SET regstage.storage = 's3'" % DB, "-c",
                        "ALTER DATABASE %s SET regstage.s3_endpoint = '%s'" % (DB, S3RVER), "-c",
                        "ALTER DATABASE %s SET regstage.s3_bucket = 'docs'" % DB, "-c",
                        "ALTER DATABASE %s SET regstage.s3_access_key = 'S3RVER'" % DB, "-c",
                        "ALTER DATABASE %s SET regstage.s3_prefix = 'commit'" % DB, "-c",
                        "ALTER DATABASE %s SET regstage.s3_secret_key_file = '%s'" % (DB, SECRET_FILE)],
                       capture_output=True, text=True)
if ok_db.returncode != 0:
    sys.exit("setup failed: %s" % ok_db.stderr)
ok("""CREATE EXTENSION pg_regstage;
CREATE SCHEMA s3test;
CREATE FUNCTION s3test.put(key text, data bytea) RETURNS text LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_put';
CREATE FUNCTION s3test.head(key text) RETURNS bigint LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_head';
CREATE FUNCTION s3test.delete(key text) RETURNS void LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_delete';
CREATE FUNCTION s3test.list(prefix text, max_keys int)
  RETURNS TABLE(key text, last_modified timestamptz, size bigint, page int) LANGUAGE c STRICT
  AS '$libdir/pg_regstage', 'regstage_s3_list';
""")
for tid in range(93001, 93010):
    ok("SELECT regstage.clear_registration(%d);" % tid)


@case("commit streams into the store", "file_path = the object key; HEAD gives size_bytes; the bytes hash to sha256")
def _():
    ok(stage(93001) + "SELECT regstage.commit_registration(93001) > 0;")
    rows = ok("SELECT d.doc_type, d.file_path, d.size_bytes, d.sha256 FROM regstage.documents d "
              "JOIN regstage.users u ON u.id = d.user_id WHERE u.telegram_id = 93001 ORDER BY 1;").splitlines()
    check(len(rows) == 2, rows)
    for r in rows:
        doc_type, path, size, sha = r.split("|")
        check(re.fullmatch(r"93001/%s-[0-9a-f]{32}" % doc_type, path), path)
        check(ok("SELECT s3test.head('%s');" % path) == size, "HEAD size of %s" % path)
        status, body = fetch(ok("SELECT regstage.document_url(id) FROM regstage.documents WHERE file_path = '%s';"
                                % path))
        check(status == 200 and hashlib.sha256(body).hexdigest() == sha and len(body) == int(size),
              "document_url of %s: %s, %d bytes" % (path, status, len(body)))
        check(ok("SELECT regstage.document_file_exists('%s');" % path) == "t", "document_file_exists")
    check(objects("93001/") == sorted(r.split("|")[1] for r in rows), objects("93001/"))
    check(ok("SELECT regstage.staged(93001) IS NULL;") == "t", "staged data cleared after commit")


@case("ROLLBACK and ROLLBACK TO SAVEPOINT", "objects made in the (sub)transaction exist inside it and are gone after")
def _():
    out = ok(stage(93002) + """BEGIN;
SELECT regstage.commit_registration(93002) > 0;
SELECT count(*) FROM s3test.list('93002/', 1000);
ROLLBACK;
BEGIN;
SAVEPOINT a;
SELECT regstage.commit_registration(93002) > 0;
SELECT count(*) FROM s3test.list('93002/', 1000);
ROLLBACK TO SAVEPOINT a;
SELECT count(*) FROM s3test.list('93002/', 1000);
COMMIT;
""").splitlines()
    check(out == ["t", "2", "t", "2", "0"], out)
    check(objects("93002/") == [], objects("93002/"))
    check(ok("SELECT regstage.staged(93002) IS NOT NULL;") == "t", "staged data kept")


@case("failed commit leaves no object", "getFile 500, or a download cut off after the other document was stored")
def _():
    fails(stage(93003, passport="status500_x") + "SELECT regstage.commit_registration(93003);", "38000",
          "HTTP 500")
    check(objects("93003/") == [], objects("93003/"))
    fails(stage(93003, selfie="dldelay700_trunc_x") + "SELECT regstage.commit_registration(93003);", "08006")
    check(objects("93003/") == [], objects("93003/"))
    check(ok("SELECT regstage.staged(93003) IS NOT NULL;") == "t", "staged data kept")
    check(ok("SELECT count(*) FROM regstage.users WHERE telegram_id = 93003;") == "0", "no row")


@case("pending_review and fix_document_paths", "file_exists by HEAD; an object moved to another key of the same "
      "name: file_exists false, upload_files() lists the namespace, fix_document_paths finds it, repairs the row")
def _():
    ok(stage(93004) + "SELECT regstage.commit_registration(93004) > 0;")
    out = ok("SELECT doc_type, file_exists FROM regstage.pending_review WHERE telegram_id = 93004 ORDER BY 1;")
    check(out.splitlines() == ["passport|t", "selfie|t"], out)
    doc_id, path = ok("SELECT d.id, d.file_path FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id "
                      "WHERE u.telegram_id = 93004 AND d.doc_type = 'passport';").split("|")
    status, body = fetch(ok("SELECT regstage.document_url(%s);" % doc_id))
    check(status == 200, "document_url: %s" % status)
    moved = "restored/" + path.split("/")[-1]
    ok("SELECT s3test.put('%s', '\\x%s'::bytea); SELECT s3test.delete('%s');" % (moved, body.hex(), path))
    out = ok("SELECT doc_type, file_exists FROM regstage.pending_review WHERE telegram_id = 93004 ORDER BY 1;")
    check(out.splitlines() == ["passport|f", "selfie|t"], "after the move: %s" % out)
    files = ok("SELECT f FROM regstage.upload_files() f ORDER BY 1;").splitlines()
    check(moved in files and path not in files and sorted(files) == objects(""), "upload_files(): %s" % files)
    check(ok("SELECT document_id, old_path, new_path, status FROM regstage.fix_document_paths();")
          == "%s|%s|%s|would fix" % (doc_id, path, moved), "dry run")
    check(ok("SELECT status FROM regstage.fix_document_paths(false);") == "fixed", "repair")
    check(ok("SELECT file_path FROM regstage.documents WHERE id = %s;" % doc_id) == moved, "row not repaired")
    out = ok("SELECT doc_type, file_exists FROM regstage.pending_review WHERE telegram_id = 93004 ORDER BY 1;")
    check(out.splitlines() == ["passport|t", "selfie|t"], "after the repair: %s" % out)
    status, again = fetch(ok("SELECT regstage.document_url(%s);" % doc_id))
    check(status == 200 and again == body, "the repaired row's URL gives the document")


@case("a deleted row's object goes after commit", "rolled-back DELETE keeps it; committed DELETE removes it")
def _():
    path = ok("SELECT file_path FROM regstage.documents WHERE file_path LIKE '93001/passport-%';")
    ok("BEGIN; DELETE FROM regstage.documents WHERE file_path = '%s'; ROLLBACK;" % path)
    check(ok("SELECT s3test.head('%s');" % path) != "", "object kept after a rolled-back delete")
    out = ok("BEGIN; DELETE FROM regstage.documents WHERE file_path = '%s';"
             "SELECT s3test.head('%s') IS NOT NULL; COMMIT;" % (path, path))
    check(out == "t", "object present until the commit")
    check(ok("SELECT s3test.head('%s');" % path) == "", "object deleted after commit")
    check(ok("SELECT regstage.document_file_exists('%s');" % path) == "f", "document_file_exists after delete")


@case("cleanup deletes orphan objects", "unreferenced objects older than max_age go, referenced ones stay; young ones kept")
def _():
    referenced = sorted(ok("SELECT file_path FROM regstage.documents ORDER BY 1;").splitlines())
    check(referenced, "no referenced objects to keep")
    ok("SELECT s3test.put('93009/passport-0123', 'orphan');"
       "SELECT s3test.put('93009/selfie-4567', 'orphan');"
       "SELECT s3test.put('other/x', 'orphan');")
    orphans = len(set(objects("")) - set(referenced))
    check(orphans >= 3, "orphans: %d" % orphans)
    young = ok("SELECT deleted, kept, errors FROM regstage.cleanup_orphans('1 hour', '1 hour');")
    check(young == "0|%d|0" % orphans, "young orphans kept: %s" % young)
    out = ok("SELECT deleted, kept, errors FROM regstage.cleanup_orphans('0', '0');")
    check(out == "%d|0|0" % orphans, "cleanup: %s" % out)
    check(objects("") == referenced, "left: %s, referenced: %s" % (objects(""), referenced))
    check(ok("SELECT deleted, errors FROM regstage.cleanup_runs ORDER BY finished_at DESC LIMIT 1;")
          == "%d|0" % orphans, "run recorded")


@case("document_url with local storage", "0A000 naming the storage, with a hint")
def _():
    err = fails("SET regstage.storage = 'local'; SELECT regstage.document_url(1);", "0A000",
                "regstage.storage is 'local': documents have no URL")
    check("HINT:" in err, err)
    fails("SELECT regstage.document_url(-5);", "P0002", "does not exist")


sys.exit(report.finish())
