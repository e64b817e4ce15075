-- commit_registration() failures: each with its SQLSTATE, a message naming
-- what failed, no rows, no files, and the staged data kept.
SELECT count(*) FROM regstage_test.redis('FLUSHALL');

-- both_fail: both downloads fail at once, and either may be reported first
CREATE FUNCTION regstage_test.commit_fails(tid bigint, passport text, selfie text, both_fail boolean DEFAULT false)
RETURNS TABLE (result text, rows_left bigint, files_left bigint, staged_kept boolean)
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM regstage_test.stage_full(tid, passport, selfie);
	result := regstage_test.try(format('SELECT regstage.commit_registration(%s)', tid));
	IF both_fail THEN
		result := regexp_replace(result, '(of|for) (passport|selfie)', '\1 <document>');
	END IF;
	rows_left := (SELECT count(*) FROM regstage.users WHERE telegram_id = tid);
	files_left := (SELECT count(*) FROM regstage_test.files() f WHERE f LIKE tid || '/%' OR f LIKE '.tmp/%');
	staged_kept := regstage.is_registration_complete(tid);
	RETURN NEXT;
END
$$;

\x on
-- getFile answered ok=false: Telegram's description in the message
SELECT * FROM regstage_test.commit_fails(8001, 'okfalse_AgACp', 'AgACs_e1');
SELECT regstage_test.hint('SELECT regstage.commit_registration(8001)');
-- getFile HTTP error status
SELECT * FROM regstage_test.commit_fails(8002, 'AgACp_e2', 'status502_AgACs');
-- the download's HTTP status
SELECT * FROM regstage_test.commit_fails(8003, 'dlstatus404_AgACp', 'AgACs_e3');
-- timeout (regstage.download_timeout)
SET regstage.download_timeout = '400ms';
SELECT * FROM regstage_test.commit_fails(8004, 'delay3000_AgACp', 'AgACs_e4');
SELECT * FROM regstage_test.commit_fails(8005, 'AgACp_e5', 'drip200_bytes65536_AgACs');
RESET regstage.download_timeout;
-- truncated body
SELECT * FROM regstage_test.commit_fails(8006, 'trunc_AgACp', 'AgACs_e6');
-- truncated without a Content-Length check: getFile's file_size disagrees
SELECT * FROM regstage_test.commit_fails(8007, 'size4096_AgACp', 'AgACs_e7');
-- oversized: refused from getFile's file_size, and again while streaming
SELECT * FROM regstage_test.commit_fails(8008, 'size30000000_AgACp', 'AgACs_e8');
SET regstage.max_file_size = '1kB';
SELECT * FROM regstage_test.commit_fails(8009, 'nosize_bytes4096_AgACp', 'bytes500_AgACs_e9');
RESET regstage.max_file_size;
-- empty file
SELECT * FROM regstage_test.commit_fails(8010, 'empty_AgACp', 'AgACs_e10');
-- a hostile file_path from the server never reaches the file system
SELECT * FROM regstage_test.commit_fails(8011, 'badpath_AgACp', 'AgACs_e11');
-- connection refused
SET regstage.telegram_api_url = 'http://127.0.0.1:1';
SELECT * FROM regstage_test.commit_fails(8012, 'AgACp_e12', 'AgACs_e12', both_fail => true);
RESET regstage.telegram_api_url;
-- no bot token
SET regstage.bot_token = '';
SELECT * FROM regstage_test.commit_fails(8013, 'AgACp_e13', 'AgACs_e13');
RESET regstage.bot_token;
-- the wrong bot token: the Bot API says 401
SET regstage.bot_token = '123:wrong';
SELECT * FROM regstage_test.commit_fails(8014, 'AgACp_e14', 'AgACs_e14', both_fail => true);
RESET regstage.bot_token;

-- upload_dir unset, missing, not a directory, not writable (Permission denied)
SET regstage.upload_dir = '';
SELECT * FROM regstage_test.commit_fails(8020, 'AgACp_e20', 'AgACs_e20');
SELECT regexp_replace(regstage_test.hint('SELECT regstage.commit_registration(8020)'), '"[a-z_]+"', '"<os user>"');
SET regstage.upload_dir = '/nonexistent/uploads';
SELECT * FROM regstage_test.commit_fails(8021, 'AgACp_e21', 'AgACs_e21');
SELECT set_config('regstage.upload_dir', current_setting('regstage_test.fixtures') || '/notadir', false) IS NOT NULL AS set;
SELECT * FROM regstage_test.commit_fails(8022, 'AgACp_e22', 'AgACs_e22');
SELECT set_config('regstage.upload_dir', current_setting('regstage_test.fixtures') || '/readonly', false) IS NOT NULL AS set;
SELECT * FROM regstage_test.commit_fails(8023, 'AgACp_e23', 'AgACs_e23');
SELECT regexp_replace(regexp_replace(regstage_test.hint('SELECT regstage.commit_registration(8023)'),
	'"[a-z_]+"', '"<os user>"'), 'chown [a-z_]+', 'chown <os user>');
RESET regstage.upload_dir;

-- Redis unreachable
SET regstage.redis_port = 1;
SELECT regstage_test.try('SELECT regstage.commit_registration(8001)');
RESET regstage.redis_port;
\x off

-- After all that: no rows, no files, nothing temporary left, all staged data kept
SELECT count(*) AS users FROM regstage.users WHERE telegram_id BETWEEN 8000 AND 8999;
SELECT * FROM regstage_test.files() f WHERE f NOT SIMILAR TO '700[1378]/%';
SELECT count(*) AS complete_staged FROM generate_series(8001, 8023) t WHERE regstage.is_registration_complete(t);

-- and a retry after the fault is gone succeeds (the user's "try again with /start")
SELECT regstage.stage_document(8023, 'passport', 'AgACp_retry');
SELECT regstage.commit_registration(8023) > 0 AS retried;
SELECT * FROM regstage_test.documents_ok(8023);
