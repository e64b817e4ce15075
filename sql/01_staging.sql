-- The Redis staging API: writes, reads, TTL, interop with other clients,
-- bad input (nothing written) and an unreachable Redis.
SELECT count(*) FROM regstage_test.redis('FLUSHALL');

-- Nothing staged yet
SELECT regstage.staged(1001);
SELECT regstage.missing(1001);
SELECT regstage.is_registration_complete(1001);

-- Stage step by step, the way the bot does
SELECT regstage.stage_language(1001, 'ru');
SELECT regstage.missing(1001);
SELECT regstage.stage_user_data(1001, '{"full_name": "  Иван   Петров ", "username": "@ivan_p"}');
SELECT regstage.stage_user_data(1001, '{"phone": "8 (916) 123-45-67"}');
SELECT regstage.missing(1001);
SELECT regstage.stage_document(1001, 'passport', 'AgACAgIAAxkBAANEpassport');
SELECT regstage.missing(1001);
SELECT regstage.is_registration_complete(1001);
SELECT regstage.stage_document(1001, 'selfie', 'AgACAgIAAxkBAANJselfie');
SELECT regstage.missing(1001), regstage.is_registration_complete(1001);
SELECT s - 'ttl' AS staged, (s->>'ttl')::int BETWEEN 86390 AND 86400 AS ttl_is_24h
  FROM regstage.staged(1001) s;

-- The contract's Redis layout, as any client sees it
SELECT * FROM regstage_test.redis('GET registration:1001:language');
SELECT * FROM regstage_test.redis('HGETALL registration:1001:data') ORDER BY 1;
SELECT * FROM regstage_test.redis('HGETALL registration:1001:documents') ORDER BY 1;
SELECT (x::int BETWEEN 86390 AND 86400) AS ttl_set FROM regstage_test.redis('TTL registration:1001:language') x
UNION ALL SELECT (x::int BETWEEN 86390 AND 86400) FROM regstage_test.redis('TTL registration:1001:data') x
UNION ALL SELECT (x::int BETWEEN 86390 AND 86400) FROM regstage_test.redis('TTL registration:1001:documents') x;

-- Each write refreshes the TTL of all three keys
SET regstage.ttl = '1h';
SELECT regstage.stage_language(1001, 'en');
SELECT (s->>'ttl')::int BETWEEN 3590 AND 3600 AS ttl_refreshed FROM regstage.staged(1001) s;
SELECT x::int BETWEEN 3590 AND 3600 AS documents_ttl_refreshed FROM regstage_test.redis('TTL registration:1001:documents') x;
RESET regstage.ttl;
SELECT regstage.extend_ttl(1001);
SELECT (s->>'ttl')::int BETWEEN 86390 AND 86400 AS ttl_extended FROM regstage.staged(1001) s;
SELECT regstage.extend_ttl(424242) AS extend_nothing;

-- Interop: another client (redis-cli) stages, the extension reads it
SELECT count(*) FROM regstage_test.redis('SET registration:2002:language en EX 600');
SELECT count(*) FROM regstage_test.redis('HSET registration:2002:data full_name "Jane Doe" phone +441234567890');
SELECT count(*) FROM regstage_test.redis('HSET registration:2002:documents passport AgAC_p');
SELECT s - 'ttl' AS staged FROM regstage.staged(2002) s;
SELECT regstage.missing(2002);

-- A different key prefix
SET regstage.key_prefix = 'other';
SELECT regstage.stage_language(1001, 'en');
SELECT * FROM regstage_test.redis('GET other:1001:language');
RESET regstage.key_prefix;

-- Clear
SELECT regstage.clear_registration(1001);
SELECT regstage.clear_registration(1001);
SELECT regstage.staged(1001);
SELECT * FROM regstage_test.redis('EXISTS registration:1001:data');

-- Bad input: invalid_parameter_value, and nothing written
SELECT regstage_test.try($$SELECT regstage.stage_language(NULL, 'en')$$);
SELECT regstage_test.try($$SELECT regstage.stage_language(0, 'en')$$);
SELECT regstage_test.try($$SELECT regstage.stage_language(-5, 'en')$$);
SELECT regstage_test.try($$SELECT regstage.stage_language(3003, 'xx')$$);
SELECT regstage_test.try($$SELECT regstage.stage_language(3003, NULL)$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"full_name": ""}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"full_name": "A"}')$$);
SELECT regstage_test.try(format($$SELECT regstage.stage_user_data(3003, '{"full_name": "%s"}')$$, repeat('a', 129)));
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"full_name": "Ivan\u0007Petrov"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"full_name": "Robert''); DROP TABLE x;--"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"phone": "call me"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"phone": "123"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"phone": "+1234567890123456789"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"full_name": "Ivan Petrov", "password": "x"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"full_name": 42}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '[1, 2]')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"email": "not-an-email"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(3003, '{"username": "bad name"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_document(3003, 'visa', 'AgAC')$$);
SELECT regstage_test.try($$SELECT regstage.stage_document(3003, 'passport', '')$$);
SELECT regstage_test.try($$SELECT regstage.stage_document(3003, 'passport', '../../etc/passwd')$$);
SELECT regstage_test.try(format($$SELECT regstage.stage_document(3003, 'passport', '%s')$$, repeat('A', 257)));
SELECT regstage.staged(3003) AS nothing_written;

-- Valid names in any script; phones normalised
SELECT regstage.stage_user_data(3003, '{"full_name": "O''Brien-Smith Jr."}');
SELECT regstage.stage_user_data(3003, '{"full_name": "محمد علي"}');
SELECT regstage.staged(3003)->'data'->>'full_name';
SELECT p, regstage.normalize_phone(p) FROM (VALUES ('+7 916 123-45-67'), ('8 916 1234567'),
	('0044 20 7946 0958'), ('(212) 555-0100'), ('12'), ('+0123456789'), ('abc')) v(p);

-- A language becomes available when regstage.messages has rows for it
INSERT INTO regstage.messages VALUES ('de', 'greeting', 'Hallo');
SELECT regstage.stage_language(3003, 'de');
DELETE FROM regstage.messages WHERE language = 'de';

-- Wrong type under our key (another client's mistake): a clear error
SELECT count(*) FROM regstage_test.redis('SET registration:4004:data oops');
SELECT regstage_test.try($$SELECT regstage.stage_user_data(4004, '{"phone": "+79161234567"}')$$);

-- Redis unreachable: connection exception naming host:port, within the timeout
SET regstage.redis_port = 1;
SET regstage.redis_timeout = '500ms';
SELECT regstage_test.try($$SELECT regstage.staged(1001)$$);
SELECT regstage_test.hint($$SELECT regstage.staged(1001)$$);
SELECT regstage_test.try($$SELECT regstage.stage_language(1001, 'en')$$);
RESET regstage.redis_port;
RESET regstage.redis_timeout;
-- the first call after Redis is back succeeds
SELECT regstage.stage_language(5005, 'en');
SELECT regstage.staged(5005)->>'language';
-- Redis hung (accepts, never answers): an error within regstage.redis_timeout
SELECT * FROM regstage_test.sh('python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", 26399)); s.listen(); c=s.accept(); time.sleep(5)" >/dev/null 2>&1 & sleep 0.3');
SET regstage.redis_port = 26399;
SET regstage.redis_timeout = '300ms';
SELECT clock_timestamp() AS t0 \gset
SELECT regstage_test.try($$SELECT regstage.staged(1001)$$);
SELECT clock_timestamp() - :'t0' < interval '2 seconds' AS within_timeout;
RESET regstage.redis_port;
RESET regstage.redis_timeout;
SELECT regstage.staged(5005)->>'language' AS back_again;
-- AUTH, SELECT and a unix socket: a second Redis that wants a password
SELECT current_setting('regstage_test.fixtures') || '/work/redis-auth' AS authdir \gset
SELECT * FROM regstage_test.sh(format('rm -rf %1$s && mkdir -p %1$s && redis-server --port 26397 --bind 127.0.0.1 --requirepass s3cret --unixsocket %1$s/redis.sock --unixsocketperm 700 --save "" --daemonize yes --pidfile %1$s/redis.pid --dir %1$s --logfile %1$s/redis.log && sleep 0.3', :'authdir'));
SET regstage.redis_port = 26397;
SELECT regstage_test.try($$SELECT regstage.stage_language(6006, 'en')$$);
SET regstage.redis_password = 'wrong';
SELECT regstage_test.try($$SELECT regstage.stage_language(6006, 'en')$$);
SET regstage.redis_password = 's3cret';
SET regstage.redis_db = 3;
SELECT regstage.stage_language(6006, 'ru');
SELECT * FROM regstage_test.sh('redis-cli -p 26397 -a s3cret --no-auth-warning -n 3 GET registration:6006:language');
SELECT * FROM regstage_test.sh('redis-cli -p 26397 -a s3cret --no-auth-warning -n 0 EXISTS registration:6006:language');
SELECT set_config('regstage.redis_host', :'authdir' || '/redis.sock', false) IS NOT NULL AS via_socket;
SELECT regstage.staged(6006)->>'language' AS read_over_the_socket;
SELECT * FROM regstage_test.sh(format('redis-cli -p 26397 -a s3cret --no-auth-warning shutdown nosave; rm -rf %s', :'authdir'));
RESET regstage.redis_host;
RESET regstage.redis_port;
RESET regstage.redis_password;
RESET regstage.redis_db;
-- a unix socket path that does not exist
SET regstage.redis_host = '/nonexistent/redis.sock';
SELECT regstage_test.try($$SELECT regstage.staged(1001)$$);
RESET regstage.redis_host;
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
