-- Setup shared by every pg_regress file: the extension, and helpers that
-- mask per-run paths and ports so the expected output is stable.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_regstage CASCADE;
DROP SCHEMA IF EXISTS regstage_test CASCADE;
RESET client_min_messages;
CREATE TEMP TABLE roles_before AS SELECT count(*) AS n FROM pg_roles;
CREATE EXTENSION pg_regstage;
CREATE SCHEMA regstage_test;
GRANT USAGE ON SCHEMA regstage_test TO PUBLIC;

CREATE FUNCTION regstage_test.mask(t text) RETURNS text LANGUAGE sql AS $$
	SELECT regexp_replace(replace(replace(replace(replace(t,
		current_setting('regstage.upload_dir'), '<upload_dir>'),
		current_setting('regstage_test.fixtures'), '<fixtures>'),
		'127.0.0.1:' || current_setting('regstage.redis_port'), '<redis>'),
		'127.0.0.1:' || current_setting('regstage_test.api_port'), '<api>'),
		'after [0-9]+ ms:', 'after N ms:', 'g')
$$;

-- Run a statement: 'ok[: result]' or 'ERROR <sqlstate>: <message>'.
CREATE FUNCTION regstage_test.try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	r text;
BEGIN
	EXECUTE stmt INTO r;
	RETURN 'ok' || coalesce(': ' || r, '');
EXCEPTION WHEN OTHERS THEN
	RETURN 'ERROR ' || SQLSTATE || ': ' || regstage_test.mask(SQLERRM);
END
$$;

-- The hint of an error, masked.
CREATE FUNCTION regstage_test.hint(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	h text;
BEGIN
	EXECUTE stmt;
	RETURN NULL;
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
	RETURN regstage_test.mask(h);
END
$$;

-- redis-cli against the test Redis, one output line per row.
CREATE FUNCTION regstage_test.redis(cmd text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
	IF to_regclass('pg_temp.redis_out') IS NULL THEN
		CREATE TEMP TABLE redis_out (line text);
	END IF;
	TRUNCATE redis_out;
	EXECUTE format('COPY redis_out FROM PROGRAM %L',
				   format('redis-cli -p %s %s', current_setting('regstage.redis_port'), cmd));
	RETURN QUERY SELECT line FROM redis_out;
END
$$;

-- A shell command run by the server (as its OS user): its output lines,
-- stderr included.  A command that fails raises, with its exit status and
-- output, so a broken fixture cannot pass unnoticed.
CREATE FUNCTION regstage_test.sh(cmd text) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
	status text;
BEGIN
	IF to_regclass('pg_temp.sh_out') IS NULL THEN
		CREATE TEMP TABLE sh_out (n bigserial, line text);
	END IF;
	TRUNCATE sh_out;
	EXECUTE format('COPY sh_out (line) FROM PROGRAM %L',
				   '( ' || cmd || E'\n) 2>&1; echo "regstage_test.sh exit status $?"');
	-- the marker ends the last line (output without a final newline runs into it)
	SELECT substring(line FROM 'regstage_test\.sh exit status ([0-9]+)$') INTO status
	  FROM sh_out ORDER BY n DESC LIMIT 1;
	UPDATE sh_out SET line = regexp_replace(line, 'regstage_test\.sh exit status [0-9]+$', '')
	 WHERE n = (SELECT max(n) FROM sh_out);
	DELETE FROM sh_out WHERE n = (SELECT max(n) FROM sh_out) AND line = '';
	IF status IS DISTINCT FROM '0' THEN
		RAISE EXCEPTION 'fixture command failed (exit status %): %', coalesce(status, 'unknown'), cmd
			USING DETAIL = coalesce((SELECT string_agg(regstage_test.mask(line), E'\n' ORDER BY n) FROM sh_out), '');
	END IF;
	RETURN QUERY SELECT regstage_test.mask(line) FROM sh_out ORDER BY n;
END
$$;

-- Files under upload_dir, relative, sorted (without the ownership marker;
-- none when it is not a directory).
CREATE FUNCTION regstage_test.files() RETURNS SETOF text LANGUAGE sql AS $$
	SELECT * FROM regstage_test.sh(format('if [ -d %1$s ]; then cd %1$s && find . -type f ! -path ./.pg_regstage_owner | sed "s|^\./||" | sort; fi',
										  current_setting('regstage.upload_dir')))
$$;

-- Stage a complete registration with the given file_ids.
CREATE FUNCTION regstage_test.stage_full(tid bigint, passport text, selfie text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM regstage.stage_language(tid, 'en');
	PERFORM regstage.stage_user_data(tid, jsonb_build_object('full_name', 'Test User ' || translate(tid::text, '0123456789', 'abcdefghij'),
								'phone', '+7916' || lpad(tid::text, 7, '0'), 'username', 'user' || tid));
	PERFORM regstage.stage_document(tid, 'passport', passport);
	PERFORM regstage.stage_document(tid, 'selfie', selfie);
END
$$;

-- Every document row checked against its file: exists, size and sha256 match.
CREATE FUNCTION regstage_test.documents_ok(tid bigint) RETURNS TABLE (doc_type text, path_ok boolean,
	size_bytes bigint, size_ok boolean, sha_ok boolean) LANGUAGE sql AS $$
	SELECT d.doc_type,
	       d.file_path ~ ('^' || tid || '/' || d.doc_type || '-[0-9a-f]{16}\.(jpg|png|pdf|bin)$'),
	       d.size_bytes,
	       (pg_stat_file(current_setting('regstage.upload_dir') || '/' || d.file_path)).size = d.size_bytes,
	       encode(sha256(pg_read_binary_file(current_setting('regstage.upload_dir') || '/' || d.file_path)), 'hex') = d.sha256
	  FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
	 WHERE u.telegram_id = tid ORDER BY d.doc_type
$$;

SELECT count(*) FROM regstage_test.redis('FLUSHALL');

-- The schema; the extension creates no role
SELECT nspname FROM pg_namespace WHERE nspname = 'regstage';
SELECT count(*) - (SELECT n FROM roles_before) AS roles_made FROM pg_roles;
SELECT extversion FROM pg_extension WHERE extname = 'pg_regstage';

-- Every table, view and function of the extension explains itself (\d+, \df+)
SELECT pg_describe_object(classid, objid, 0) AS without_comment
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_regstage')
   AND classid IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_namespace'::regclass)
   AND obj_description(objid, classid::regclass::name) IS NULL
 ORDER BY 1;

-- Every GUC of the contract, with its unit and context
SELECT name, setting, unit, context FROM pg_settings
 WHERE name LIKE 'regstage.%'
   AND name NOT IN ('regstage.upload_dir', 'regstage.redis_port', 'regstage.telegram_api_url',
                    'regstage.download_timeout', 'regstage.cleanup_interval')
 ORDER BY name;
SHOW regstage.ttl;
SHOW regstage.max_file_size;
SHOW regstage.redis_timeout;
SET regstage.ttl = '2h';
SHOW regstage.ttl;
RESET regstage.ttl;
SET regstage.required_documents = 'passport,Selfie!';
SET regstage.upload_dir = 'relative/path';
SET regstage.telegram_api_url = 'ftp://example.org';
SET regstage.nonexistent = 1;

-- Secrets: hidden from a non-superuser, also when the bot's access is granted
CREATE ROLE regstage_test_user LOGIN;
SELECT regstage.grant_bot_access('regstage_test_user');
SET ROLE regstage_test_user;
SHOW regstage.bot_token;
SHOW regstage.redis_password;
SELECT count(*) FROM pg_settings WHERE name IN ('regstage.bot_token', 'regstage.redis_password');
SELECT current_setting('regstage.bot_token');
SET regstage.upload_dir = '/tmp';
RESET ROLE;
SELECT length(current_setting('regstage.bot_token')) > 10 AS superuser_sees_token;
SELECT regstage.revoke_bot_access('regstage_test_user');
DROP ROLE regstage_test_user;

-- Privileges: PUBLIC gets nothing; grant_bot_access() lets a role stage and
-- commit but not run admin functions, revoke_bot_access() takes it back
CREATE ROLE regstage_test_outsider LOGIN;
CREATE ROLE regstage_test_bot LOGIN;
SELECT regstage.grant_bot_access('regstage_test_bot');
SET ROLE regstage_test_outsider;
SELECT regstage_test.try('SELECT regstage.staged(1)');
SELECT regstage_test.try('SELECT count(*) FROM regstage.users');
RESET ROLE;
SET ROLE regstage_test_bot;
SELECT regstage_test.try('SELECT regstage.missing(1)');
SELECT regstage_test.try('SELECT regstage.handle_update(''{"update_id": 999999001}'')');
SELECT regstage_test.try('SELECT count(*) FROM regstage.users');
SELECT regstage_test.try('SELECT count(*) FROM regstage.documents');
SELECT regstage_test.try('INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES (1, ''x'', ''y'', ''en'')');
SELECT regstage_test.try('SELECT * FROM regstage.cleanup_orphans()');
SELECT regstage_test.try('SELECT regstage.purge_stuck_pending()');
SELECT regstage_test.try('UPDATE regstage.users SET status = ''APPROVED''');
SELECT regstage_test.try('DELETE FROM regstage.documents');
SELECT regstage_test.try('SELECT regstage.grant_bot_access(''regstage_test_outsider'')');
RESET ROLE;
SELECT regstage.revoke_bot_access('regstage_test_bot');
SET ROLE regstage_test_bot;
SELECT regstage_test.try('SELECT regstage.missing(1)');
RESET ROLE;
-- nothing of the bot's access is left: the role drops without REASSIGN/DROP OWNED
DROP ROLE regstage_test_outsider;
DROP ROLE regstage_test_bot;
