-- A documents row takes its file with it when the deleting transaction
-- commits (not 48 hours later through the orphan cleanup); a rollback, or a
-- row that references the file again, keeps it.
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
CREATE FUNCTION regstage_test.register(tid bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
	PERFORM regstage.stage_language(tid, 'en');
	PERFORM regstage.stage_user_data(tid, jsonb_build_object('full_name', 'File Owner', 'phone', '+15550000' || (tid % 1000)));
	PERFORM regstage.stage_document(tid, 'passport', 'AgACpassport' || tid);
	PERFORM regstage.stage_document(tid, 'selfie', 'AgACselfie' || tid);
	RETURN regstage.commit_registration(tid);
END
$$;
CREATE FUNCTION regstage_test.files(tid bigint) RETURNS TABLE (doc_type text, on_disk boolean) LANGUAGE sql AS $$
	SELECT d.doc_type, regstage.document_file_exists(d.file_path)
	  FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
	 WHERE u.telegram_id = tid ORDER BY 1
$$;
SELECT regstage_test.register(13001) > 0 AS registered;
CREATE TEMP TABLE paths AS
	SELECT d.doc_type, d.file_path FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
	 WHERE u.telegram_id = 13001;

-- rolled back: the file stays
BEGIN;
DELETE FROM regstage.documents WHERE file_path = (SELECT file_path FROM paths WHERE doc_type = 'selfie');
SELECT doc_type, regstage.document_file_exists(file_path) AS on_disk_before_commit FROM paths ORDER BY 1;
ROLLBACK;
SELECT * FROM regstage_test.files(13001);

-- deleted and committed: the file goes at commit
DELETE FROM regstage.documents WHERE file_path = (SELECT file_path FROM paths WHERE doc_type = 'selfie');
SELECT doc_type, regstage.document_file_exists(file_path) AS on_disk FROM paths ORDER BY 1;

-- deleted, then referenced again in the same transaction: kept
BEGIN;
DELETE FROM regstage.documents WHERE file_path = (SELECT file_path FROM paths WHERE doc_type = 'passport');
INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
SELECT u.id, 'passport', 'AgACpassport13001', p.file_path, 1, repeat('0', 64)
  FROM regstage.users u, paths p WHERE u.telegram_id = 13001 AND p.doc_type = 'passport';
COMMIT;
SELECT doc_type, regstage.document_file_exists(file_path) AS on_disk FROM paths ORDER BY 1;

-- a user deleted: the cascade takes the files, at commit
DELETE FROM regstage.users WHERE telegram_id = 13001;
SELECT doc_type, regstage.document_file_exists(file_path) AS on_disk FROM paths ORDER BY 1;

-- in a savepoint that rolls back: kept
SELECT regstage_test.register(13002) > 0 AS registered;
BEGIN;
SAVEPOINT s;
DELETE FROM regstage.users WHERE telegram_id = 13002;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT * FROM regstage_test.files(13002);
-- an old absolute path (outside upload_dir) is never deleted through the trigger
UPDATE regstage.documents SET file_path = current_setting('regstage_test.fixtures') || '/notadir'
 WHERE doc_type = 'selfie' AND user_id = (SELECT id FROM regstage.users WHERE telegram_id = 13002);
DELETE FROM regstage.users WHERE telegram_id = 13002;
SELECT (pg_stat_file(current_setting('regstage_test.fixtures') || '/notadir', true)).size IS NOT NULL AS outside_file_still_there;
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
