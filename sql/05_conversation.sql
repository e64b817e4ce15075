-- handle_update(): the bot conversation, fed real-shaped Telegram updates.
SELECT count(*) FROM regstage_test.redis('FLUSHALL');

CREATE FUNCTION regstage_test.sender(tid bigint, lang text DEFAULT 'ru') RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('id', tid, 'is_bot', false, 'first_name', 'Ivan', 'last_name', 'Petrov',
							  'username', 'ivan_' || tid, 'language_code', lang)
$$;
CREATE FUNCTION regstage_test.message(uid bigint, tid bigint, body jsonb, lang text DEFAULT 'ru') RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('update_id', uid, 'message', jsonb_build_object(
		'message_id', uid, 'from', regstage_test.sender(tid, lang),
		'chat', jsonb_build_object('id', tid, 'first_name', 'Ivan', 'type', 'private'),
		'date', 1764115200) || body)
$$;
CREATE FUNCTION regstage_test.text(uid bigint, tid bigint, t text, lang text DEFAULT 'ru') RETURNS jsonb LANGUAGE sql AS $$
	SELECT regstage_test.message(uid, tid, jsonb_build_object('text', t) ||
		CASE WHEN t LIKE '/%' THEN jsonb_build_object('entities', jsonb_build_array(jsonb_build_object(
			'offset', 0, 'length', length(split_part(t, ' ', 1)), 'type', 'bot_command'))) ELSE '{}' END, lang)
$$;
-- a photo in the three sizes Telegram sends; the largest is <file_id>
CREATE FUNCTION regstage_test.photo(uid bigint, tid bigint, file_id text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT regstage_test.message(uid, tid, jsonb_build_object('photo', jsonb_build_array(
		jsonb_build_object('file_id', 'AgACsmall' || uid, 'file_unique_id', 'u1', 'file_size', 1234, 'width', 90, 'height', 67),
		jsonb_build_object('file_id', file_id, 'file_unique_id', 'u3', 'file_size', 98765, 'width', 1280, 'height', 960),
		jsonb_build_object('file_id', 'AgACmid' || uid, 'file_unique_id', 'u2', 'file_size', 23456, 'width', 320, 'height', 240))))
$$;
CREATE FUNCTION regstage_test.document(uid bigint, tid bigint, file_id text, mime text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT regstage_test.message(uid, tid, jsonb_build_object('document', jsonb_build_object(
		'file_name', 'scan', 'mime_type', mime, 'file_id', file_id, 'file_unique_id', 'ud', 'file_size', 2048)))
$$;
CREATE FUNCTION regstage_test.contact(uid bigint, tid bigint, owner bigint, phone text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT regstage_test.message(uid, tid, jsonb_build_object('contact', jsonb_build_object(
		'phone_number', phone, 'first_name', 'Ivan', 'user_id', owner)))
$$;
CREATE FUNCTION regstage_test.callback(uid bigint, tid bigint, data text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('update_id', uid, 'callback_query', jsonb_build_object(
		'id', 'cb' || uid, 'from', regstage_test.sender(tid), 'chat_instance', '-1234',
		'message', jsonb_build_object('message_id', 1, 'chat', jsonb_build_object('id', tid, 'type', 'private'),
									  'date', 1764115200, 'text', 'question'),
		'data', data))
$$;
-- The calls handle_update() returns, one line each.
CREATE FUNCTION regstage_test.bot(u jsonb) RETURNS SETOF text LANGUAGE sql AS $$
	SELECT c->>'method' || ' ' || coalesce(c->'params'->>'chat_id', c->'params'->>'callback_query_id') ||
		coalesce(': ' || (c->'params'->>'text'), '') ||
		CASE
			WHEN c->'params'->'reply_markup' ? 'inline_keyboard' THEN ' [buttons: ' ||
				(SELECT string_agg(b->>'text' || '=' || (b->>'callback_data'), ', ')
				   FROM jsonb_array_elements(c->'params'->'reply_markup'->'inline_keyboard') r,
						jsonb_array_elements(r) b) || ']'
			WHEN c->'params'->'reply_markup' ? 'keyboard' THEN ' [keyboard: ' ||
				(SELECT string_agg(b->>'text' || CASE WHEN (b->>'request_contact')::boolean THEN ' (contact)' ELSE '' END, ', ')
				   FROM jsonb_array_elements(c->'params'->'reply_markup'->'keyboard') r,
						jsonb_array_elements(r) b) || ']'
			WHEN c->'params'->'reply_markup' ? 'remove_keyboard' THEN ' [remove keyboard]'
			ELSE ''
		END
	  FROM jsonb_array_elements(regstage.handle_update(u)) WITH ORDINALITY AS a(c, n) ORDER BY n
$$;

-- 1. A whole registration, in Russian
SELECT regstage_test.bot(regstage_test.text(1, 10001, '/start'));
SELECT regstage_test.bot(regstage_test.callback(2, 10001, 'lang:ru'));
SELECT regstage_test.bot(regstage_test.text(3, 10001, 'Иван Петров'));
SELECT regstage.staged(10001)->'data' AS staged_data;
SELECT regstage_test.bot(regstage_test.contact(4, 10001, 10001, '79161234567'));
SELECT regstage_test.bot(regstage_test.photo(5, 10001, 'AgACpassport10001'));
SELECT regstage.staged(10001)->'documents' AS staged_documents;
SELECT regstage_test.bot(regstage_test.photo(6, 10001, 'AgACselfie10001'));
SELECT telegram_id, full_name, phone, username, language, status FROM regstage.users WHERE telegram_id = 10001;
SELECT * FROM regstage_test.documents_ok(10001);
SELECT telegram_file_id FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
 WHERE u.telegram_id = 10001 ORDER BY 1;
SELECT regstage.staged(10001) AS staged_after;
-- /start once registered: the status, in the user's language
SELECT regstage_test.bot(regstage_test.text(7, 10001, '/start'));
UPDATE regstage.users SET status = 'APPROVED' WHERE telegram_id = 10001;
SELECT regstage_test.bot(regstage_test.text(8, 10001, '/start'));
UPDATE regstage.users SET status = 'REJECTED' WHERE telegram_id = 10001;
SELECT regstage_test.bot(regstage_test.text(9, 10001, 'hello?'));
-- a redelivered update is not applied twice
SELECT regstage.handle_update(regstage_test.text(9, 10001, 'hello?'));

-- 2. Interrupted and resumed: the passport is not asked again
SELECT regstage_test.bot(regstage_test.text(20, 10002, '/start', 'en'));
SELECT regstage_test.bot(regstage_test.callback(21, 10002, 'lang:en'));
SELECT regstage_test.bot(regstage_test.text(22, 10002, 'John Smith'));
SELECT regstage_test.bot(regstage_test.text(23, 10002, '+44 20 7946 0958'));
SELECT regstage_test.bot(regstage_test.document(24, 10002, 'pdf_AgACpassport10002', 'application/pdf'));
SELECT regstage_test.bot(regstage_test.text(25, 10002, '/start'));
SELECT regstage_test.bot(regstage_test.callback(26, 10002, 'continue'));
SELECT regstage_test.bot(regstage_test.document(27, 10002, 'AgACselfie10002', 'image/jpeg'));
SELECT regexp_replace(file_path, '-[0-9a-f]{16}', '-<sha>') FROM regstage.documents d
  JOIN regstage.users u ON u.id = d.user_id WHERE u.telegram_id = 10002 ORDER BY 1;

-- 3. The commit fails (Bot API 500), the data is kept; /start -> Continue finishes it
SELECT regstage_test.bot(regstage_test.text(30, 10003, '/start', 'en'));
SELECT regstage_test.bot(regstage_test.callback(31, 10003, 'lang:en'));
SELECT regstage_test.bot(regstage_test.text(32, 10003, 'Anna Lee'));
SELECT regstage_test.bot(regstage_test.contact(33, 10003, 10003, '+1 212 555 0100'));
SELECT regstage_test.bot(regstage_test.photo(34, 10003, 'AgACpassport10003'));
SELECT regstage_test.bot(regstage_test.photo(35, 10003, 'flaky1_AgACselfie10003'));
SELECT count(*) AS users, regstage.is_registration_complete(10003) AS staged_kept
  FROM regstage.users WHERE telegram_id = 10003;
SELECT count(*) AS files FROM regstage_test.files() f WHERE f LIKE '10003/%';
SELECT regstage_test.bot(regstage_test.text(36, 10003, '/start'));
SELECT regstage_test.bot(regstage_test.callback(37, 10003, 'continue'));
SELECT * FROM regstage_test.documents_ok(10003);

-- 4. Start over, and /cancel
SELECT regstage_test.bot(regstage_test.text(40, 10004, '/start', 'en'));
SELECT regstage_test.bot(regstage_test.callback(41, 10004, 'lang:en'));
SELECT regstage_test.bot(regstage_test.text(42, 10004, 'Max Mustermann'));
SELECT regstage_test.bot(regstage_test.text(43, 10004, '/start'));
SELECT regstage_test.bot(regstage_test.callback(44, 10004, 'restart'));
SELECT regstage.staged(10004) AS cleared;
SELECT regstage_test.bot(regstage_test.callback(45, 10004, 'lang:en'));
SELECT regstage_test.bot(regstage_test.text(46, 10004, '/cancel'));
SELECT regstage_test.bot(regstage_test.text(47, 10004, '/cancel'));

-- 5. Wrong input at each step: a hint and the same question, nothing staged
SELECT regstage_test.bot(regstage_test.text(50, 10005, 'hi', 'en'));
SELECT regstage_test.bot(regstage_test.text(51, 10005, '/start', 'en'));
SELECT regstage_test.bot(regstage_test.text(52, 10005, 'English please'));
SELECT regstage_test.bot(regstage_test.callback(53, 10005, 'lang:xx'));
SELECT regstage_test.bot(regstage_test.callback(54, 10005, 'lang:en'));
SELECT regstage_test.bot(regstage_test.photo(55, 10005, 'AgACwrong'));
SELECT regstage_test.bot(regstage_test.text(56, 10005, '12345'));
SELECT regstage_test.bot(regstage_test.text(57, 10005, 'Robert''); DROP TABLE regstage.users;--'));
SELECT regstage_test.bot(regstage_test.text(58, 10005, repeat('Я', 100000)));
SELECT regstage_test.bot(regstage_test.text(59, 10005, '/help'));
SELECT regstage_test.bot(regstage_test.text(60, 10005, 'محمد علي'));
SELECT regstage_test.bot(regstage_test.text(61, 10005, 'call me maybe'));
SELECT regstage_test.bot(regstage_test.contact(62, 10005, 999, '+79160000000'));
SELECT regstage_test.bot(regstage_test.message(63, 10005, '{"sticker": {"file_id": "CAACstk", "emoji": "👍"}}'));
SELECT regstage_test.bot(regstage_test.text(64, 10005, '8 (916) 555-12-34'));
SELECT regstage_test.bot(regstage_test.text(65, 10005, 'here is my passport'));
SELECT regstage_test.bot(regstage_test.message(66, 10005, '{"voice": {"file_id": "AwACvoice", "duration": 3}}'));
SELECT regstage_test.bot(regstage_test.message(67, 10005, '{"location": {"latitude": 55.75, "longitude": 37.61}}'));
SELECT regstage_test.bot(regstage_test.document(68, 10005, 'AgACzip', 'application/zip'));
SELECT regstage_test.bot(regstage_test.callback(69, 10005, 'bogus'));
SELECT regstage_test.bot(regstage_test.photo(70, 10005, 'AgACpassport10005'));
SELECT regstage_test.bot(regstage_test.document(71, 10005, 'AgACselfiepdf', 'application/pdf'));
SELECT regstage.staged(10005) - 'ttl' AS staged;

-- 6. Not ours: groups, channels, edits, other update kinds -> []
SELECT regstage.handle_update(jsonb_build_object('update_id', 80, 'message', jsonb_build_object(
	'message_id', 1, 'from', regstage_test.sender(10006), 'date', 1,
	'chat', jsonb_build_object('id', -100123, 'title', 'Riders', 'type', 'group'), 'text', '/start')));
SELECT regstage.handle_update(jsonb_build_object('update_id', 81, 'edited_message',
	regstage_test.text(0, 10006, 'edited')->'message'));
SELECT regstage.handle_update('{"update_id": 82, "channel_post": {"message_id": 1, "chat": {"id": -1001, "type": "channel"}, "date": 1, "text": "news"}}');
SELECT regstage.handle_update('{"update_id": 83, "my_chat_member": {"chat": {"id": 1, "type": "private"}}}');
SELECT regstage.staged(10006) AS nothing_staged;

-- 7. Hostile shapes never raise and never stage
SELECT regstage.handle_update(NULL);
SELECT regstage.handle_update('[]');
SELECT regstage.handle_update('"update"');
SELECT regstage.handle_update('{}');
SELECT regstage.handle_update('{"update_id": "90"}');
SELECT regstage.handle_update('{"update_id": -1, "message": {}}');
SELECT regstage.handle_update('{"update_id": 91, "message": []}');
SELECT regstage.handle_update('{"update_id": 92, "message": {"chat": {"type": "private", "id": 5}, "from": {"id": "10007"}, "text": "/start"}}');
SELECT regstage.handle_update('{"update_id": 93, "message": {"chat": {"type": "private", "id": "x"}, "from": {"id": 10007}, "text": "/start"}}');
SELECT regstage.handle_update('{"update_id": 94, "message": {"chat": {"type": "private", "id": 10007}, "from": {"id": 10007}, "text": 42}}');
SELECT regstage.handle_update('{"update_id": 95, "message": {"chat": {"type": "private", "id": 10007}, "from": {"id": 10007}, "photo": "nope"}}');
SELECT regstage.handle_update('{"update_id": 96, "callback_query": {"id": "c", "from": {"id": 10007}, "data": 7}}');
SELECT regstage.handle_update('{"update_id": 97, "message": {"chat": {"type": "private", "id": 10007}, "from": {"id": 1e30}, "text": "/start"}}');
SELECT regstage.staged(10007) - 'ttl' AS staged;

-- 8. A DBA adds a language: it appears in the keyboard; missing texts fall back to en
INSERT INTO regstage.messages (language, key, text) VALUES
	('de', 'language_name', 'Deutsch'), ('de', 'ask_full_name', 'Bitte senden Sie Ihren vollständigen Namen.');
SELECT regstage_test.bot(regstage_test.text(100, 10008, '/start', 'de'));
SELECT regstage_test.bot(regstage_test.callback(101, 10008, 'lang:de'));
SELECT regstage_test.bot(regstage_test.text(102, 10008, 'Hans Meier'));
DELETE FROM regstage.messages WHERE language = 'de';

-- 9. Every key exists in both built-in languages
SELECT key FROM regstage.messages WHERE language = 'en'
EXCEPT SELECT key FROM regstage.messages WHERE language = 'ru';
SELECT key FROM regstage.messages WHERE language = 'ru'
EXCEPT SELECT key FROM regstage.messages WHERE language = 'en';

-- 10. Redis down is an outage: handle_update raises (the relay retries),
-- and the update is not marked seen, so the retry is applied
SET regstage.redis_port = 1;
SELECT regstage_test.try($$SELECT regstage.handle_update(regstage_test.text(110, 10010, '/start', 'en'))$$);
RESET regstage.redis_port;
SELECT regstage_test.bot(regstage_test.text(110, 10010, '/start', 'en'));

-- 11. seen update_ids are pruned after two days
UPDATE regstage.seen_updates SET seen_at = now() - interval '3 days' WHERE update_id < 10;
SELECT regstage.handle_update('{"update_id": 1000, "channel_post": {}}');
SELECT count(*) AS old_ids_left FROM regstage.seen_updates WHERE update_id < 10;

-- 12. stage_text_answer(): a typed answer lands where the conversation stands, in one round trip
SELECT regstage.stage_language(10012, 'en');
SELECT r - 'state' AS answer, r->'state'->'data' AS data FROM regstage.stage_text_answer(10012, '12345') r;
SELECT r - 'state' AS answer, r->'state'->'data' AS data FROM regstage.stage_text_answer(10012, ' Anna  Maria ', 'anna_m') r;
SELECT r - 'state' AS answer, r->'state'->'data' AS data FROM regstage.stage_text_answer(10012, 'not a phone') r;
SELECT r - 'state' AS answer, r->'state'->'data' AS data FROM regstage.stage_text_answer(10012, '8 916 555 12 34', 'bad name!') r;
SELECT r - 'state' AS answer FROM regstage.stage_text_answer(10012, 'Anything') r;
SELECT r FROM regstage.stage_text_answer(10013, 'Nobody Yet') r;
