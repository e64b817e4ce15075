-- README promises, each tested where it can break: SECURITY DEFINER
-- functions immune to a caller's search_path; Redis refusing our password
-- (28000, an outage: handle_update raises) and dropping the connection
-- mid-command (08006); a staged key of the wrong type (38000); the Bot API
-- host not resolving (08001); upload_dir not a directory (42809, not an
-- outage: the user hears "something went wrong"); /start extending the TTL;
-- fix_document_paths() answering "ambiguous".
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
SELECT current_setting('regstage_test.fixtures') || '/work/promises' AS workdir \gset
SELECT * FROM regstage_test.sh(format('rm -rf %1$s && mkdir -p %1$s', :'workdir'));

-- An update from telegram_id tid: a text message, or a photo.
CREATE FUNCTION regstage_test.update(update_id bigint, tid bigint, body jsonb) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object('update_id', update_id, 'message',
		jsonb_build_object('message_id', 1, 'date', 1,
						   'from', jsonb_build_object('id', tid, 'is_bot', false, 'first_name', 'Test', 'language_code', 'en'),
						   'chat', jsonb_build_object('id', tid, 'type', 'private')) || body)
$$;

-- commit_registration(tid): its result, and what it left behind.
CREATE FUNCTION regstage_test.commit_outcome(tid bigint, both_fail boolean DEFAULT false)
RETURNS TABLE (result text, rows_left bigint, files_left bigint)
LANGUAGE plpgsql AS $$
BEGIN
	result := regstage_test.try(format('SELECT regstage.commit_registration(%s)', tid));
	IF both_fail THEN	-- both documents fail at once; either may be reported first
		result := regexp_replace(result, '(of|for) (passport|selfie)', '\1 <document>');
	END IF;
	rows_left := (SELECT count(*) FROM regstage.users WHERE telegram_id = tid);
	files_left := (SELECT count(*) FROM regstage_test.files() f WHERE f LIKE tid || '/%');
	RETURN NEXT;
END
$$;

-------------------------------------------------------------------------------
-- search_path: a bot role puts its own schema before pg_catalog, with
-- look-alikes of what the conversation and the commit call (=, ->>, now(),
-- jsonb_typeof ...).  None of them may run inside the SECURITY DEFINER
-- functions.  This comes first in the file: plans are made on first use.
-------------------------------------------------------------------------------
SELECT regstage_test.stage_full(9701, 'AgACp_h1', 'AgACs_h1');
CREATE ROLE regstage_test_hijacker LOGIN;
SELECT regstage.grant_bot_access('regstage_test_hijacker');
CREATE SCHEMA hijack AUTHORIZATION regstage_test_hijacker;
SET ROLE regstage_test_hijacker;
CREATE TABLE hijack.ran (what text);
CREATE FUNCTION hijack.note(what text) RETURNS void LANGUAGE sql AS $$ INSERT INTO hijack.ran VALUES (what) $$;
CREATE FUNCTION hijack.int8eq(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hijack.note('bigint = bigint'); RETURN pg_catalog.int8eq(a, b); END $$;
CREATE OPERATOR hijack.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = hijack.int8eq);
CREATE FUNCTION hijack.texteq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hijack.note('text = text'); RETURN pg_catalog.texteq(a, b); END $$;
CREATE OPERATOR hijack.= (LEFTARG = text, RIGHTARG = text, FUNCTION = hijack.texteq);
CREATE FUNCTION hijack.jsonb_field(j jsonb, k text) RETURNS text LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hijack.note('jsonb ->> text'); RETURN pg_catalog.jsonb_object_field_text(j, k); END $$;
CREATE OPERATOR hijack.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = hijack.jsonb_field);
CREATE FUNCTION hijack.jsonb_typeof(j jsonb) RETURNS text LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hijack.note('jsonb_typeof'); RETURN pg_catalog.jsonb_typeof(j); END $$;
CREATE FUNCTION hijack.now() RETURNS timestamptz LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hijack.note('now'); RETURN pg_catalog.now(); END $$;
SET search_path = hijack, pg_catalog, public;
-- the look-alikes are live for the role's own statements
SELECT 1::bigint = 1::bigint AS eq, 'a'::text = 'a' AS texteq, '{"a": "b"}'::jsonb ->> 'a' AS field,
       jsonb_typeof('{}') AS typeof, now() IS NOT NULL AS now;
SELECT what FROM hijack.ran ORDER BY what;
TRUNCATE hijack.ran;
SHOW search_path;
-- the conversation: /start from a new user, and from one with staged data
SELECT jsonb_array_length(regstage.handle_update(regstage_test.update(906001, 9702, '{"text": "/start"}'))) AS replies;
SELECT jsonb_array_length(regstage.handle_update(regstage_test.update(906002, 9701, '{"text": "/start"}'))) AS replies;
-- the commit
SELECT regstage.commit_registration(9701) IS NOT NULL AS committed;
RESET ROLE;
RESET search_path;
-- none of the look-alikes ran
SELECT what, count(*) FROM hijack.ran GROUP BY what ORDER BY what;
SELECT count(*) AS registered FROM regstage.users WHERE telegram_id = 9701;
DROP SCHEMA hijack CASCADE;
SELECT regstage.revoke_bot_access('regstage_test_hijacker');
DROP ROLE regstage_test_hijacker;

-------------------------------------------------------------------------------
-- Redis refuses our password: 28000, an outage (the relay retries), so
-- handle_update raises instead of answering.
-------------------------------------------------------------------------------
SELECT * FROM regstage_test.sh(format('redis-server --port 26395 --bind 127.0.0.1 --requirepass s3cret --save "" --daemonize yes --pidfile %1$s/redis.pid --dir %1$s --logfile %1$s/redis.log && for i in $(seq 50); do redis-cli -p 26395 -a s3cret --no-auth-warning ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done', :'workdir'));
SET regstage.redis_port = 26395;
-- no password: NOAUTH
SELECT regstage_test.try($$SELECT regstage.stage_language(9711, 'en')$$);
SELECT regstage_test.hint($$SELECT regstage.stage_language(9711, 'en')$$);
-- a wrong password: WRONGPASS
SET regstage.redis_password = 'wrong';
SELECT regstage_test.try($$SELECT regstage.stage_language(9711, 'en')$$);
SELECT regstage_test.hint($$SELECT regstage.stage_language(9711, 'en')$$);
SELECT regstage.is_outage('28000') AS outage;
-- handle_update raises it, and the update is not marked seen (it is retried)
SELECT regstage_test.try($$SELECT regstage.handle_update(regstage_test.update(906011, 9711, '{"text": "/start"}'))$$);
SELECT count(*) AS seen FROM regstage.seen_updates WHERE update_id = 906011;
-- the retry, once the password is right, is answered
SET regstage.redis_password = 's3cret';
SELECT regstage.handle_update(regstage_test.update(906011, 9711, '{"text": "/start"}'))->0->>'method' AS answered;
RESET regstage.redis_password;
RESET regstage.redis_port;
SELECT * FROM regstage_test.sh(format('pid=$(cat %1$s/redis.pid) && kill $pid && for i in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done', :'workdir'));

-------------------------------------------------------------------------------
-- upload_dir is a file: 42809, not an outage: the user hears "something
-- went wrong" and the update is handled.
-------------------------------------------------------------------------------
SELECT regstage_test.stage_full(9721, 'AgACp_n1', 'AgACs_n1');
SELECT set_config('regstage.upload_dir', current_setting('regstage_test.fixtures') || '/notadir', false) IS NOT NULL AS set;
SELECT * FROM regstage_test.commit_outcome(9721);
SELECT regstage_test.hint('SELECT regstage.commit_registration(9721)');
SELECT regstage.is_outage('42809') AS outage;
SELECT regstage.clear_registration(9721);
SELECT regstage.stage_language(9721, 'en'),
       regstage.stage_user_data(9721, '{"full_name": "Not Adir", "phone": "+79160009721"}'),
       regstage.stage_document(9721, 'passport', 'AgACp_n2');
SELECT regstage.handle_update(regstage_test.update(906021, 9721,
	'{"photo": [{"file_id": "AgACs_n2", "file_unique_id": "u", "width": 90, "height": 90, "file_size": 2048}]}'))->0->'params'->>'text'
	= regstage.msg('en', 'registration_failed') AS user_hears_something_went_wrong;
SELECT count(*) AS seen FROM regstage.seen_updates WHERE update_id = 906021;
RESET regstage.upload_dir;
SELECT regstage.is_registration_complete(9721) AS staged_kept;
SELECT regstage.clear_registration(9721);

-------------------------------------------------------------------------------
-- Redis drops the connection mid-command: a server that reads the command
-- and closes.  08006; the next call, on the real Redis, reconnects.
-------------------------------------------------------------------------------
SELECT * FROM regstage_test.sh(format($sh$cat > %1$s/drop.py <<'PY'
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 26396))
s.listen(8)
with open(sys.argv[1] + ".new", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".new", sys.argv[1])
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.close()
PY
python3 %1$s/drop.py %1$s/drop.pid >/dev/null 2>&1 &
for i in $(seq 50); do [ -s %1$s/drop.pid ] && break; sleep 0.1; done; [ -s %1$s/drop.pid ]$sh$, :'workdir'));
SET regstage.redis_port = 26396;
SELECT regstage_test.try($$SELECT regstage.stage_language(9731, 'en')$$);
RESET regstage.redis_port;
SELECT regstage_test.stage_full(9731, 'AgACp_d1', 'AgACs_d1');
SET regstage.redis_port = 26396;
SELECT * FROM regstage_test.commit_outcome(9731);
RESET regstage.redis_port;
SELECT regstage.is_registration_complete(9731) AS staged_kept;
SELECT regstage.clear_registration(9731);
SELECT * FROM regstage_test.sh(format('kill $(cat %1$s/drop.pid) && rm %1$s/drop.pid', :'workdir'));

-------------------------------------------------------------------------------
-- WRONGTYPE during a commit: another client left the data key as a string.
-- 38000 naming the Redis error; nothing written, the keys untouched.
-------------------------------------------------------------------------------
SELECT regstage_test.stage_full(9741, 'AgACp_w1', 'AgACs_w1');
SELECT * FROM regstage_test.redis('DEL registration:9741:data');
SELECT * FROM regstage_test.redis('SET registration:9741:data not-a-hash');
SELECT * FROM regstage_test.commit_outcome(9741);
SELECT * FROM regstage_test.redis('TYPE registration:9741:data');
SELECT * FROM regstage_test.redis('EXISTS registration:9741:language registration:9741:documents');
SELECT * FROM regstage_test.redis('DEL registration:9741:data registration:9741:language registration:9741:documents');

-------------------------------------------------------------------------------
-- The Bot API host does not resolve: 08001 naming the host.
-------------------------------------------------------------------------------
SELECT regstage_test.stage_full(9751, 'AgACp_x1', 'AgACs_x1');
SET regstage.telegram_api_url = 'http://regstage-no-such-host.invalid:28080';
SELECT * FROM regstage_test.commit_outcome(9751, both_fail => true);
RESET regstage.telegram_api_url;
SELECT regstage.is_registration_complete(9751) AS staged_kept;
SELECT regstage.clear_registration(9751);

-------------------------------------------------------------------------------
-- /start with staged data extends the TTL of every key.
-------------------------------------------------------------------------------
SELECT regstage.stage_language(9761, 'en'), regstage.stage_user_data(9761, '{"full_name": "Ttl Check"}');
SELECT count(*) FROM regstage_test.redis('EXPIRE registration:9761:language 100');
SELECT count(*) FROM regstage_test.redis('EXPIRE registration:9761:data 100');
SELECT (regstage.staged(9761)->>'ttl')::int <= 100 AS short_ttl;
SELECT regstage.handle_update(regstage_test.update(906061, 9761, '{"text": "/start"}'))->0->'params'->'reply_markup'
	->'inline_keyboard'->0->0->>'callback_data' AS asks;
SELECT (regstage.staged(9761)->>'ttl')::int > 86000 AS ttl_extended;
SELECT * FROM regstage_test.redis('TTL registration:9761:language') t WHERE t::int <= 86000;
SELECT * FROM regstage_test.redis('TTL registration:9761:data') t WHERE t::int <= 86000;
SELECT regstage.clear_registration(9761);

-------------------------------------------------------------------------------
-- fix_document_paths(): "ambiguous" when two files carry the name, or the
-- only one is another row's; such rows are left as they are.
-------------------------------------------------------------------------------
SELECT * FROM regstage_test.sh(format('cd %1$s && mkdir -p up/a up/b up/c && echo 1 > up/a/dup.jpg && echo 2 > up/b/dup.jpg && echo 3 > up/c/taken.jpg && echo 4 > up/c/single.jpg', :'workdir'));
SELECT set_config('regstage.upload_dir', :'workdir' || '/up', false) IS NOT NULL AS set;
INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES (9771, 'Ambiguous Files', '+79160009771', 'en');
INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
SELECT id, t, 'AgAC_' || t, p, 2, repeat('c', 64) FROM regstage.users,
	(VALUES ('passport', 'old/dup.jpg'), ('selfie', 'c/taken.jpg'), ('licence', 'old/taken.jpg'),
			('visa', 'old/single.jpg')) v(t, p)
 WHERE telegram_id = 9771;
SELECT old_path, new_path, status FROM regstage.fix_document_paths() WHERE old_path LIKE 'old/%' ORDER BY old_path;
SELECT old_path, new_path, status FROM regstage.fix_document_paths(dry_run => false) WHERE old_path LIKE 'old/%' ORDER BY old_path;
SELECT doc_type, file_path FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
 WHERE u.telegram_id = 9771 ORDER BY doc_type;
DELETE FROM regstage.users WHERE telegram_id = 9771;
RESET regstage.upload_dir;

-- nothing of this file is left
SELECT count(*) FROM regstage.users WHERE telegram_id BETWEEN 9700 AND 9799 AND telegram_id <> 9701;
SELECT * FROM regstage_test.redis('KEYS registration:97*');
SELECT * FROM regstage_test.sh(format('rm -rf %s', :'workdir'));
