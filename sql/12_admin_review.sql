-- Admin review in Telegram: admins get each new registration with its
-- documents and buttons; decisions reach the user through the outbox.
-- (Uses the regstage_test update builders of 05_conversation.)
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
-- what earlier files left waiting is decided (from SQL), so the queue below is this file's
UPDATE regstage.users SET status = 'APPROVED' WHERE status = 'PENDING';
TRUNCATE regstage.outbox;
-- regstage.stats today, before this file: section 13 shows what it added
SELECT started AS s0_started, completed AS s0_completed, failed AS s0_failed, reviews AS s0_reviews,
	   coalesce((failed_by_sqlstate->>'38000')::integer, 0) AS s0_failed_38000
  FROM regstage.stats WHERE day = current_date \gset

-- Every call, one line: method, chat, message, text, media, buttons.
CREATE FUNCTION regstage_test.show(calls jsonb) RETURNS SETOF text LANGUAGE sql AS $$
	SELECT regexp_replace(regexp_replace(
		c->>'method' || ' ' || coalesce(p->>'chat_id', p->>'callback_query_id') ||
		coalesce(' msg ' || (p->>'message_id'), '') ||
		coalesce(': ' || (p->>'text'), '') ||
		CASE WHEN (p->>'show_alert')::boolean THEN ' (alert)' ELSE '' END ||
		coalesce(' [media: ' || (SELECT string_agg((x->>'type') || ' ' || (x->>'media') || ' "' || (x->>'caption') || '"', ', ')
								  FROM jsonb_array_elements(p->'media') x) || ']', '') ||
		coalesce(' [photo ' || (p->>'photo') || ' "' || (p->>'caption') || '"]', '') ||
		coalesce(' [document ' || (p->>'document') || ' "' || (p->>'caption') || '"]', '') ||
		CASE
			WHEN p->'reply_markup' ? 'inline_keyboard' THEN ' [buttons: ' ||
				coalesce((SELECT string_agg(b->>'text' || '=' || (b->>'callback_data'), ', ')
				   FROM jsonb_array_elements(p->'reply_markup'->'inline_keyboard') r,
						jsonb_array_elements(r) b), '') || ']'
			WHEN p->'reply_markup' ? 'force_reply' THEN ' [force reply]'
			ELSE ''
		END,
		'[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}', '<time>', 'g'),
		'(#|rv:[a-z]+:|adm:u:)[0-9]+', '\1<id>', 'g')
	  FROM jsonb_array_elements(calls) WITH ORDINALITY AS a(c, n), LATERAL (SELECT c->'params' AS p) q
	 ORDER BY n
$$;
CREATE FUNCTION regstage_test.run(u jsonb) RETURNS SETOF text LANGUAGE sql AS $$
	SELECT regstage_test.show(regstage.handle_update(u))
$$;
CREATE FUNCTION regstage_test.uid(tid bigint) RETURNS bigint LANGUAGE sql AS $$
	SELECT id FROM regstage.users WHERE telegram_id = tid
$$;
-- What the outbox holds for a chat (the user's notifications), in order.
CREATE FUNCTION regstage_test.outbox_for(tid bigint) RETURNS SETOF text LANGUAGE sql AS $$
	SELECT o.method || ': ' || coalesce(o.params->>'text', '') FROM regstage.outbox o WHERE o.chat_id = tid ORDER BY o.id
$$;
-- A registration typed through handle_update (photos for both documents).
CREATE FUNCTION regstage_test.register(tid bigint, lang text, name text, phone text, first_update bigint)
RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
	PERFORM regstage.handle_update(regstage_test.text(first_update, tid, '/start', lang));
	PERFORM regstage.handle_update(regstage_test.callback(first_update + 1, tid, 'lang:' || lang));
	PERFORM regstage.handle_update(regstage_test.text(first_update + 2, tid, name, lang));
	PERFORM regstage.handle_update(regstage_test.text(first_update + 3, tid, phone, lang));
	PERFORM regstage.handle_update(regstage_test.photo(first_update + 4, tid, 'AgACpassport' || tid));
	RETURN QUERY SELECT regstage_test.run(regstage_test.photo(first_update + 5, tid, 'AgACselfie' || tid));
END
$$;

INSERT INTO regstage.admins (telegram_id, name, language) VALUES (90001, 'Olga', 'ru'), (90002, 'Mark', NULL);

-- 1. A registration commits: the user's answer, then for each admin (in the
-- admin's language) the documents as one album and the summary with buttons
SELECT regstage_test.run(regstage_test.text(12001, 120001, '/start', 'ru'));
SELECT regstage_test.run(regstage_test.callback(12002, 120001, 'lang:ru'));
SELECT regstage_test.run(regstage_test.text(12003, 120001, 'Иван Петров'));
SELECT regstage_test.run(regstage_test.contact(12004, 120001, 120001, '+79161234567'));
SELECT regstage_test.run(regstage_test.photo(12005, 120001, 'AgACpassport120001'));
SELECT regstage_test.run(regstage_test.photo(12006, 120001, 'AgACselfie120001'));
SELECT status, reviewed_by, reviewed_at, reject_reason FROM regstage.users WHERE telegram_id = 120001;
SELECT count(*) AS queued_before_review FROM regstage.outbox;

-- 2. Mark approves: his message shows who decided; the user's notification
-- (in Russian) is queued by the status trigger, once; the row says who, when
SELECT regstage_test.run(regstage_test.callback(12010, 90002, 'rv:a:' || regstage_test.uid(120001)));
SELECT * FROM regstage_test.outbox_for(120001);
SELECT status, reviewed_by, reviewed_at BETWEEN now() - interval '1 minute' AND now() AS reviewed_now, reject_reason
  FROM regstage.users WHERE telegram_id = 120001;
-- 3. Olga presses Approve on her copy: already decided, by Mark; nothing changes
SELECT regstage_test.run(regstage_test.callback(12011, 90001, 'rv:a:' || regstage_test.uid(120001)));
SELECT regstage_test.run(regstage_test.callback(12012, 90001, 'rv:r:' || regstage_test.uid(120001)));
SELECT count(*) AS notifications FROM regstage.outbox WHERE chat_id = 120001;
SELECT status, reviewed_by FROM regstage.users WHERE telegram_id = 120001;

-- 4. Reject with a typed reason: Reject -> reasons -> Other -> the admin's
-- next text is the reason
SELECT count(*) AS calls FROM regstage_test.register(120002, 'en', 'John Smith', '+44 20 7946 0958', 12020);
SELECT regstage_test.run(regstage_test.callback(12030, 90001, 'rv:r:' || regstage_test.uid(120002)));
SELECT regstage_test.run(regstage_test.callback(12031, 90001, 'rv:rr:' || regstage_test.uid(120002) || ':0:other'));
SELECT regstage_test.run(regstage_test.text(12032, 90001, '   '));
SELECT regstage_test.run(regstage_test.text(12033, 90001, 'The selfie is blurred'));
SELECT * FROM regstage_test.outbox_for(120002);
SELECT status, reviewed_by, reject_reason FROM regstage.users WHERE telegram_id = 120002;
SELECT count(*) AS inputs_left FROM regstage.admin_input;
-- a reason from the buttons is kept as the user reads it
SELECT count(*) AS calls FROM regstage_test.register(120003, 'ru', 'Анна Ли', '+79160000003', 12040);
SELECT regstage_test.run(regstage_test.callback(12050, 90002, 'rv:rr:' || regstage_test.uid(120003) || ':0:data'));
SELECT * FROM regstage_test.outbox_for(120003);
SELECT status, reviewed_by, reject_reason FROM regstage.users WHERE telegram_id = 120003;

-- 5. A non-admin presses a forged review button: refused, logged, nothing changes
SELECT count(*) AS calls FROM regstage_test.register(120004, 'en', 'Mallory Doe', '+15550004', 12060);
SELECT regstage_test.run(regstage_test.callback(12070, 120099, 'rv:a:' || regstage_test.uid(120004)));
SELECT regstage_test.run(regstage_test.callback(12071, 120004, 'rv:a:' || regstage_test.uid(120004)));
SELECT status, reviewed_by FROM regstage.users WHERE telegram_id = 120004;
SELECT count(*) AS notifications FROM regstage.outbox WHERE chat_id = 120004;
SELECT admin_id, action, detail ~ '^rv:a:[0-9]+$' AS detail_is_the_button, user_id = regstage_test.uid(120004) AS user_ok
  FROM regstage.review_log WHERE action = 'refused' ORDER BY id;

-- 6. A status change from SQL notifies the same way; a rolled-back one never
BEGIN;
UPDATE regstage.users SET status = 'APPROVED' WHERE telegram_id = 120004;
SELECT * FROM regstage_test.outbox_for(120004);
ROLLBACK;
SELECT count(*) AS after_rollback FROM regstage.outbox WHERE chat_id = 120004;
UPDATE regstage.users SET status = 'REJECTED', reject_reason = 'Duplicate account' WHERE telegram_id = 120004;
SELECT * FROM regstage_test.outbox_for(120004);
SELECT status, reviewed_by, reviewed_at IS NOT NULL AS stamped, reject_reason FROM regstage.users WHERE telegram_id = 120004;
-- an UPDATE that leaves the status as it is notifies no one
UPDATE regstage.users SET status = 'REJECTED' WHERE telegram_id = 120004;
SELECT count(*) AS notifications FROM regstage.outbox WHERE chat_id = 120004;
-- back to PENDING (from SQL): the review is cleared, the user hears it
UPDATE regstage.users SET status = 'PENDING' WHERE telegram_id = 120004;
SELECT status, reviewed_by, reviewed_at, reject_reason FROM regstage.users WHERE telegram_id = 120004;
SELECT * FROM regstage_test.outbox_for(120004);
SELECT telegram_id, admin_id, action, detail FROM regstage.review_log
 WHERE action IN ('approved', 'rejected', 'pending') AND telegram_id BETWEEN 120000 AND 129999 ORDER BY id;

-- 7. /status at any time
SELECT regstage_test.run(regstage_test.text(12080, 120001, '/status'));
SELECT regstage_test.run(regstage_test.text(12081, 120002, '/status', 'en'));
SELECT regstage_test.run(regstage_test.text(12082, 120004, '/status', 'en'));
SELECT regstage_test.run(regstage_test.text(12083, 120005, '/status', 'en'));
SELECT regstage_test.run(regstage_test.text(12084, 120005, '/start', 'en'));
SELECT regstage_test.run(regstage_test.callback(12085, 120005, 'lang:en'));
SELECT regstage_test.run(regstage_test.text(12086, 120005, '/status', 'en'));
SELECT regstage.clear_registration(120005);

-- 8. A REJECTED user registers again: /start starts over; the old row is
-- replaced in the new registration's transaction.  A PDF passport goes to
-- the admins as a document, the selfie as a photo.
SELECT regstage_test.run(regstage_test.text(12090, 120002, 'hello?', 'en'));
SELECT regstage_test.uid(120002) AS old_id \gset
SELECT regstage_test.run(regstage_test.text(12091, 120002, '/start', 'en'));
SELECT regstage_test.run(regstage_test.callback(12092, 120002, 'lang:en'));
SELECT regstage_test.run(regstage_test.text(12093, 120002, 'John Smith', 'en'));
SELECT regstage_test.run(regstage_test.text(12094, 120002, '+44 20 7946 0958', 'en'));
SELECT regstage_test.run(regstage_test.document(12095, 120002, 'pdf_AgACpassport120002b', 'application/pdf'));
SELECT regstage_test.run(regstage_test.photo(12096, 120002, 'AgACselfie120002b'));
SELECT count(*) AS rows, min(status) AS status, min(id) > :old_id AS new_row, min(reviewed_by) AS reviewed_by
  FROM regstage.users WHERE telegram_id = 120002;
SELECT telegram_file_id FROM regstage.documents WHERE user_id = regstage_test.uid(120002) ORDER BY id;

-- 9. Ask for new documents: choose which, then why; the user is asked for
-- exactly those; they are staged in Redis until all are there
SELECT regstage_test.uid(120002) AS u2 \gset
SELECT regstage_test.run(regstage_test.callback(12100, 90002, 'rv:d:' || :u2));
SELECT regstage_test.run(regstage_test.callback(12101, 90002, 'rv:ds:' || :u2 || ':0'));
SELECT regstage_test.run(regstage_test.callback(12102, 90002, 'rv:dt:' || :u2 || ':2'));
SELECT regstage_test.run(regstage_test.callback(12103, 90002, 'rv:dt:' || :u2 || ':3'));
SELECT regstage_test.run(regstage_test.callback(12104, 90002, 'rv:ds:' || :u2 || ':3'));
SELECT regstage_test.run(regstage_test.callback(12105, 90002, 'rv:dr:' || :u2 || ':3:unreadable'));
SELECT * FROM regstage_test.outbox_for(120002);
SELECT status, doc_types, reason, requested_by, received_at FROM regstage.document_requests r
  JOIN regstage.users u ON u.id = r.user_id WHERE u.telegram_id = 120002;
SELECT regstage_test.run(regstage_test.text(12106, 120002, 'which ones?', 'en'));
SELECT regstage_test.run(regstage_test.photo(12107, 120002, 'AgACpassport120002c'));
SELECT regstage_test.run(regstage_test.message(12108, 120002, '{"sticker": {"file_id": "CAACstk"}}'));
SELECT regstage.staged(120002)->'documents' AS staged_documents;
-- the last one: replace_documents() swaps the new files in (one transaction)
-- and the review goes to the admins again
SELECT d.doc_type, d.file_path AS old_path INTO TEMP old_docs FROM regstage.documents d WHERE d.user_id = :u2;
SELECT regstage_test.run(regstage_test.photo(12109, 120002, 'AgACselfie120002c'));
SELECT regstage.staged(120002)->'documents' AS staged_documents;
SELECT d.doc_type, d.telegram_file_id, d.file_path <> o.old_path AS new_file,
	   regstage.document_file_exists(d.file_path) AS new_on_disk,
	   regstage.document_file_exists(o.old_path) AS old_on_disk
  FROM regstage.documents d JOIN old_docs o USING (doc_type) WHERE d.user_id = :u2 ORDER BY 1;
SELECT received_at IS NOT NULL AS received FROM regstage.document_requests WHERE user_id = :u2;
SELECT regstage_test.run(regstage_test.text(12110, 120002, '/status', 'en'));
-- the review is still open; approving it closes the request
SELECT regstage_test.run(regstage_test.callback(12111, 90001, 'rv:a:' || :u2));
SELECT count(*) AS requests, regstage.staged(120002) AS staged FROM regstage.document_requests WHERE user_id = :u2;

-- 10. /admin: what waits, a button per registration, 5 a page
INSERT INTO regstage.users (telegram_id, full_name, phone, language, created_at)
SELECT 120100 + i, 'Waiting User ' || chr(64 + i), '+1555000' || lpad(i::text, 4, '0'), 'en', now() - (10 - i) * interval '1 hour'
  FROM generate_series(1, 6) i;
SELECT regstage_test.run(regstage_test.text(12120, 90002, '/admin', 'en'));
SELECT regstage_test.run(regstage_test.callback(12121, 90002, 'adm:p:1'));
SELECT regstage_test.run(regstage_test.callback(12122, 90002, 'adm:p:99'));
SELECT regstage_test.run(regstage_test.callback(12123, 90001, 'adm:u:' || regstage_test.uid(120101)));
-- a non-admin's /admin is an ordinary message; their queue buttons are refused
SELECT regstage_test.run(regstage_test.text(12124, 120199, '/admin', 'en'));
SELECT regstage_test.run(regstage_test.callback(12125, 120199, 'adm:p:0'));
DELETE FROM regstage.users WHERE telegram_id BETWEEN 120101 AND 120106;
SELECT regstage_test.run(regstage_test.text(12126, 90002, '/admin', 'en'));

-- 11. The admin group: regstage.admin_chat_id (a bigint kept as a string)
SET regstage.admin_chat_id = 'abc';
SET regstage.admin_chat_id = '12 ';
SET regstage.admin_chat_id = '';
SET regstage.admin_chat_id = '99999999999999999999';
SET regstage.admin_chat_id = '-1001234567890';
SELECT * FROM regstage.review_chats();
SELECT * FROM regstage_test.register(120006, 'en', 'Group Case', '+15550006', 12130);
-- "Other" in the group: the question @mentions the admin who pressed (a
-- selective force_reply opens the reply field only for those mentioned);
-- an admin without a username gets a force_reply for the whole group
SELECT regexp_replace(c->'params'->>'text', '#[0-9]+', '#<id>') AS question, c->'params'->'reply_markup' AS markup
  FROM jsonb_array_elements(regstage.ask_admin_reason(90001, regstage_test.uid(120006), 'reject', NULL,
		-1001234567890, 77, 'en', 'cbo', 'olga_r')) c
 WHERE c->>'method' = 'sendMessage';
SELECT regexp_replace(c->'params'->>'text', '#[0-9]+', '#<id>') AS question, c->'params'->'reply_markup' AS markup
  FROM jsonb_array_elements(regstage.ask_admin_reason(90001, regstage_test.uid(120006), 'reject', NULL,
		-1001234567890, 77, 'en', 'cbo', NULL)) c
 WHERE c->>'method' = 'sendMessage';
DELETE FROM regstage.admin_input WHERE admin_id = 90001;
-- an admin's /admin in the group is answered there; anyone else's is not
SELECT regstage_test.show(regstage.handle_update(jsonb_build_object('update_id', 12140, 'message', jsonb_build_object(
	'message_id', 5, 'from', regstage_test.sender(90002, 'en'), 'text', '/admin@regstage_bot', 'date', 1,
	'chat', jsonb_build_object('id', -1001234567890, 'type', 'supergroup', 'title', 'Reviewers')))));
SELECT regstage.handle_update(jsonb_build_object('update_id', 12141, 'message', jsonb_build_object(
	'message_id', 6, 'from', regstage_test.sender(120099, 'en'), 'text', '/admin', 'date', 1,
	'chat', jsonb_build_object('id', -1001234567890, 'type', 'supergroup', 'title', 'Reviewers'))));
-- a button in the group: the message edited is the group's
SELECT regstage_test.show(regstage.handle_update(jsonb_build_object('update_id', 12142, 'callback_query', jsonb_build_object(
	'id', 'cbg', 'from', regstage_test.sender(90001, 'ru'), 'chat_instance', '-1', 'data', 'rv:a:' || regstage_test.uid(120006),
	'message', jsonb_build_object('message_id', 77, 'date', 1,
		'chat', jsonb_build_object('id', -1001234567890, 'type', 'supergroup'))))));
RESET regstage.admin_chat_id;

-- 12. Through the inbox: the completing update's review calls reach the
-- outbox in its transaction, with the user's answer
SELECT regstage.stage_language(120007, 'en');
SELECT regstage.stage_user_data(120007, '{"full_name": "Inbox Person", "phone": "+15550007"}');
SELECT regstage.stage_document(120007, 'passport', 'AgACpassport120007');
SELECT regstage.store_updates(ARRAY[12150], ARRAY[convert_to(regstage_test.photo(12150, 120007, 'AgACselfie120007')::text, 'UTF8')]);
SELECT regstage.process_next() AS handled;
SELECT chat_id, method, update_id FROM regstage.outbox WHERE update_id = 12150 ORDER BY id;

-- 13. A failed commit is counted by SQLSTATE; stats per day
SELECT regstage.stage_language(120008, 'en');
SELECT regstage.stage_user_data(120008, '{"full_name": "Fail Person", "phone": "+15550008"}');
SELECT regstage.stage_document(120008, 'passport', 'AgACpassport120008');
SELECT regstage_test.run(regstage_test.photo(12160, 120008, 'status500_AgACselfie120008'));
SELECT regstage.clear_registration(120008);
INSERT INTO regstage.cleanup_runs (started_at, deleted, kept, errors) VALUES (now() - interval '1 second', 3, 10, 0);
SELECT started - :s0_started AS started, completed - :s0_completed AS completed, failed - :s0_failed AS failed,
	   coalesce((failed_by_sqlstate->>'38000')::integer, 0) - :s0_failed_38000 AS failed_38000,
	   median_time_to_complete >= '0' AS has_median, reviews - :s0_reviews AS reviews,
	   median_time_to_review >= '0' AS has_review_median,
	   pending_now = (SELECT count(*) FROM regstage.users WHERE status = 'PENDING') AS pending_ok,
	   cleanup_last_run IS NOT NULL AS cleanup_recorded, cleanup_last_deleted
  FROM regstage.stats WHERE day = current_date;
SELECT count(*) AS days, count(*) FILTER (WHERE day = current_date) AS today FROM regstage.stats;

-- 14. Personal data: documents of users rejected longer than
-- regstage.rejected_retention ago are deleted; the log has no names
SHOW regstage.rejected_retention;
SELECT count(*) AS documents_of_120003 FROM regstage.documents WHERE user_id = regstage_test.uid(120003);
SELECT regstage.purge_rejected() AS purged_now;
UPDATE regstage.users SET reviewed_at = now() - interval '31 days' WHERE telegram_id = 120003;
SELECT regstage.purge_rejected() AS purged;
SELECT count(*) AS documents_of_120003 FROM regstage.documents WHERE user_id = regstage_test.uid(120003);
SELECT telegram_id, action, detail FROM regstage.review_log WHERE action = 'documents_purged';
-- both retention settings are read as SHOW gives them ('30d', '7d'): the
-- worker's purge of the inbox and outbox runs with its default too
SELECT count(*) AS purge_processed_ran FROM regstage.purge_processed();

-- 15. Every new text in both built-in languages
SELECT key FROM regstage.messages WHERE language = 'en'
EXCEPT SELECT key FROM regstage.messages WHERE language = 'ru';

TRUNCATE regstage.admins, regstage.outbox;
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
