-- commit_registration(): success, refusals, and files bound to the
-- caller's (sub)transactions.
SELECT count(*) FROM regstage_test.redis('FLUSHALL');

-- Success: user + documents, files on disk with recorded size and sha256,
-- Redis cleared only after the top-level commit
SELECT regstage_test.stage_full(7001, 'AgACp_c1', 'png_AgACs_c1');
BEGIN;
SELECT regstage.commit_registration(7001) > 0 AS committed;
SELECT regstage.missing(7001) AS still_staged_before_commit;
SELECT * FROM regstage_test.files();
COMMIT;
SELECT regstage.staged(7001) AS staged_after_commit;
SELECT telegram_id, full_name, phone, username, email, language, status FROM regstage.users WHERE telegram_id = 7001;
SELECT * FROM regstage_test.documents_ok(7001);
SELECT telegram_file_id FROM regstage.documents ORDER BY 1;
SELECT * FROM regstage_test.sh(format('cd %s && stat -c "%%a %%n" 7001 7001/*', current_setting('regstage.upload_dir')));

-- Incomplete, or nothing staged: refused with what is missing
SELECT regstage.stage_language(7002, 'en');
SELECT regstage.stage_document(7002, 'passport', 'AgACp_c2');
SELECT regstage_test.try('SELECT regstage.commit_registration(7002)');
SELECT regstage_test.try('SELECT regstage.commit_registration(7999)');
SELECT regstage_test.try('SELECT regstage.commit_registration(NULL)');
SELECT regstage_test.try('SELECT regstage.commit_registration(-1)');

-- Already registered: unique violation, and the stale staged data is cleared
SELECT regstage_test.stage_full(7001, 'AgACp_c1b', 'AgACs_c1b');
SELECT regstage_test.try('SELECT regstage.commit_registration(7001)');
SELECT regstage.staged(7001) AS stale_staging_cleared;
-- ... but not when the row is our own, uncommitted one
SELECT regstage_test.stage_full(7005, 'AgACp_c5', 'AgACs_c5');
BEGIN;
SELECT regstage.commit_registration(7005) > 0 AS first;
SELECT regstage_test.try('SELECT regstage.commit_registration(7005)');
ROLLBACK;
SELECT regstage.missing(7005) AS kept_after_rollback;

-- ROLLBACK after success: no rows, files gone, Redis kept
SELECT regstage_test.stage_full(7003, 'AgACp_c3', 'AgACs_c3');
BEGIN;
SELECT regstage.commit_registration(7003) > 0 AS committed;
SELECT count(*) AS files_in_transaction FROM regstage_test.files() f WHERE f LIKE '7003/%';
ROLLBACK;
SELECT count(*) AS users FROM regstage.users WHERE telegram_id = 7003;
SELECT * FROM regstage_test.files();
SELECT regstage.missing(7003) AS staged_kept;

-- Savepoint rolled back: its files go, the transaction goes on
BEGIN;
SAVEPOINT a;
SELECT regstage.commit_registration(7003) > 0 AS committed;
ROLLBACK TO SAVEPOINT a;
SELECT count(*) AS files_after_rollback_to FROM regstage_test.files() f WHERE f LIKE '7003/%';
COMMIT;
SELECT regstage.missing(7003) AS staged_kept;

-- Savepoint released, then the top level rolls back: files go too
BEGIN;
SAVEPOINT a;
SELECT regstage.commit_registration(7003) > 0 AS committed;
RELEASE SAVEPOINT a;
SAVEPOINT b;
SELECT 1;
ROLLBACK TO SAVEPOINT b;
ROLLBACK;
SELECT count(*) AS files_after_rollback FROM regstage_test.files() f WHERE f LIKE '7003/%';
SELECT regstage.missing(7003) AS staged_kept;

-- A PL/pgSQL exception block that fails after the commit undoes it
DO $$
BEGIN
	PERFORM regstage.commit_registration(7003);
	RAISE EXCEPTION 'a later step failed';
EXCEPTION WHEN OTHERS THEN
	RAISE NOTICE 'caught: %', SQLERRM;
END
$$;
SELECT count(*) AS users FROM regstage.users WHERE telegram_id = 7003;
SELECT count(*) AS files FROM regstage_test.files() f WHERE f LIKE '7003/%';
SELECT regstage.missing(7003) AS staged_kept;

-- Released savepoint + top-level commit: kept, Redis cleared
BEGIN;
SAVEPOINT a;
SELECT regstage.commit_registration(7003) > 0 AS committed;
RELEASE SAVEPOINT a;
COMMIT;
SELECT * FROM regstage_test.documents_ok(7003);
SELECT regstage.staged(7003) AS cleared;

-- PREPARE TRANSACTION with pending files is refused (and rolls back)
SELECT regstage_test.stage_full(7004, 'AgACp_c4', 'AgACs_c4');
BEGIN;
SELECT regstage.commit_registration(7004) > 0 AS committed;
PREPARE TRANSACTION 'regstage_test';
SELECT count(*) AS files FROM regstage_test.files() f WHERE f LIKE '7004/%';
SELECT regstage.missing(7004) AS staged_kept;

-- statement_timeout during a slow download: 57014 fast, nothing left behind
SELECT regstage_test.stage_full(7006, 'AgACp_c6', 'dldelay5000_AgACs_c6');
SET statement_timeout = '300ms';
SELECT clock_timestamp() AS t0 \gset
SELECT regstage_test.try('SELECT regstage.commit_registration(7006)');
RESET statement_timeout;
SELECT clock_timestamp() - :'t0' < interval '800 ms' AS interrupted_within_half_a_second;
SELECT count(*) AS files FROM regstage_test.files() f WHERE f NOT LIKE '7001/%' AND f NOT LIKE '7003/%';
SELECT regstage.missing(7006) AS staged_kept;

-- Content sniffing names the file; a PDF passport
SELECT regstage_test.stage_full(7007, 'pdf_AgACp_c7', 'AgACs_c7');
SELECT regstage.commit_registration(7007) > 0 AS committed;
SELECT regexp_replace(file_path, '-[0-9a-f]{16}', '-<sha>') FROM regstage.documents d
  JOIN regstage.users u ON u.id = d.user_id WHERE u.telegram_id = 7007 ORDER BY 1;

-- A 1 MiB document streams through (and a 20 MB cap holds it)
SELECT regstage_test.stage_full(7008, 'bytes1048576_AgACp_c8', 'AgACs_c8');
SELECT regstage.commit_registration(7008) > 0 AS committed;
SELECT * FROM regstage_test.documents_ok(7008);
