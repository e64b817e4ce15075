-- The inbox and the outbox, driven the way the relay drives them.
-- (Uses the regstage_test update builders of 05_conversation.)
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
TRUNCATE regstage.inbox, regstage.outbox;
ALTER SEQUENCE regstage.outbox_id_seq RESTART;

CREATE FUNCTION regstage_test.raw(u jsonb) RETURNS bytea LANGUAGE sql AS $$
	SELECT convert_to(u::text, 'UTF8')
$$;
CREATE FUNCTION regstage_test.inbox() RETURNS TABLE (update_id bigint, chat_id bigint, status text,
		attempts integer, sqlstate text, last_error text) LANGUAGE sql AS $$
	SELECT update_id, chat_id, status, attempts, sqlstate, last_error FROM regstage.inbox ORDER BY update_id
$$;
CREATE FUNCTION regstage_test.outbox() RETURNS TABLE (id_rank bigint, chat_id bigint, method text, text text,
		status text, update_id bigint) LANGUAGE sql AS $$
	SELECT rank() OVER (ORDER BY id), chat_id, method, left(params->>'text', 40), status, update_id
	  FROM regstage.outbox ORDER BY id
$$;
-- process_next() until nothing is due; the update_ids in the order handled
CREATE FUNCTION regstage_test.drain() RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
	done bigint[] := '{}';
	id bigint;
BEGIN
	LOOP
		id := regstage.process_next();
		EXIT WHEN id IS NULL;
		done := done || id;
	END LOOP;
	RETURN done;
END
$$;

-- 1. Receiving: one batch, raw; duplicates ignored; what cannot be decoded
-- is parked at once with the reason
SELECT regstage.store_updates(
	ARRAY[3001, 3002, 3003, 3004, 3005, 3006, 3001],
	ARRAY[regstage_test.raw(regstage_test.text(3001, 30001, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3002, 30002, '/start', 'en')),
		  '\xff7b7d'::bytea,								-- not UTF-8
		  convert_to('{"update_id": 3004, "message": {"text": "a\u0000b"}}', 'UTF8'),	-- jsonb refuses \u0000
		  convert_to('{"update_id": 9999}', 'UTF8'),		-- not its update_id
		  regstage_test.raw(regstage_test.callback(3006, 30001, 'lang:en')),
		  regstage_test.raw(regstage_test.text(3001, 30001, '/start', 'en'))]) AS stored;
SELECT regstage.store_updates(ARRAY[3001], ARRAY[regstage_test.raw(regstage_test.text(3001, 30001, '/start', 'en'))]) AS stored_again;
SELECT * FROM regstage_test.inbox();
SELECT update_id, sqlstate, left(last_error, 60) AS last_error FROM regstage.failed_updates ORDER BY update_id;
SELECT regstage.store_updates(ARRAY[1, 2], ARRAY['\x00'::bytea]);

-- 2. Processing: each update's replies land in the outbox in its transaction
SELECT regstage_test.drain() AS handled;
SELECT * FROM regstage_test.inbox() WHERE status <> 'failed';
SELECT * FROM regstage_test.outbox();
-- applied once: handle_update() of an update the inbox applied returns []
SELECT regstage.handle_update(regstage_test.text(3001, 30001, '/start', 'en'));

-- 3. Per-chat order: a chat's later update waits for its earlier one; other
-- chats go on.  The earlier one fails (a trigger stands in for a failing
-- step), is retried with backoff, and is parked after regstage.max_attempts.
CREATE FUNCTION regstage_test.poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.update_id = 3010 THEN
		RAISE EXCEPTION 'poisoned update' USING ERRCODE = 'XX000';
	ELSIF NEW.update_id = 3020 THEN
		RAISE EXCEPTION 'Redis is down (test)' USING ERRCODE = '08006';
	ELSIF NEW.update_id = 3030 THEN
		RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled';
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER poison BEFORE INSERT ON regstage.seen_updates FOR EACH ROW EXECUTE FUNCTION regstage_test.poison();
SET regstage.max_attempts = 2;
SELECT regstage.store_updates(ARRAY[3010, 3011, 3012],
	ARRAY[regstage_test.raw(regstage_test.text(3010, 30010, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3011, 30010, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3012, 30011, '/start', 'en'))]);
SELECT regstage_test.drain() AS handled;		-- 3010 fails once, 3011 waits behind it, 3012 goes
SELECT update_id, status, attempts, sqlstate, last_error, next_attempt_at > now() AS backing_off
  FROM regstage.inbox WHERE update_id IN (3010, 3011, 3012) ORDER BY update_id;
UPDATE regstage.inbox SET next_attempt_at = now() WHERE update_id = 3010;	-- skip the backoff
SELECT regstage_test.drain() AS handled;		-- 3010 fails again: parked; then 3011 goes
SELECT update_id, status, attempts, sqlstate FROM regstage.inbox WHERE update_id IN (3010, 3011) ORDER BY update_id;
SELECT update_id, chat_id, attempts, sqlstate, last_error FROM regstage.failed_updates WHERE update_id = 3010;
-- re-queued by hand once the cause is fixed
DROP TRIGGER poison ON regstage.seen_updates;
SELECT regstage.retry_update(3010), regstage.retry_update(3010) AS twice, regstage.retry_update(424242) AS unknown;
SELECT regstage_test.drain() AS handled;
SELECT update_id, status, attempts FROM regstage.inbox WHERE update_id = 3010;
-- an undecodable update re-queued is parked again, not processed
SELECT regstage.retry_update(3003);
SELECT update_id, status, sqlstate FROM regstage.inbox WHERE update_id = 3003;

-- 4. An outage never counts as an attempt; statement_timeout (57014) and
-- internal errors (XX) do: regstage.is_outage() is the one list
CREATE TRIGGER poison BEFORE INSERT ON regstage.seen_updates FOR EACH ROW EXECUTE FUNCTION regstage_test.poison();
SELECT regstage.store_updates(ARRAY[3020, 3030],
	ARRAY[regstage_test.raw(regstage_test.text(3020, 30020, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3030, 30030, '/start', 'en'))]);
SELECT regstage_test.drain() AS handled;
UPDATE regstage.inbox SET next_attempt_at = now() WHERE update_id IN (3020, 3030);
SELECT regstage_test.drain() AS handled;
SELECT update_id, status, attempts, sqlstate FROM regstage.inbox WHERE update_id IN (3020, 3030) ORDER BY 1;
DROP TRIGGER poison ON regstage.seen_updates;
SELECT s, regstage.is_outage(s) FROM unnest(ARRAY['08006', '28000', '40001', '53100', '57P01', '58030', '25006',
	'57014', 'XX000', '22023', '38000', '42501', '55000', '23505']) s;
RESET regstage.max_attempts;

-- 5. Any SQL can queue a message: delivered only if its transaction commits
TRUNCATE regstage.outbox;
BEGIN;
SELECT regstage.send_message(30050, 'rolled back') > 0 AS queued;
ROLLBACK;
SELECT regstage.send_message(30050, 'committed', '{"remove_keyboard": true}') > 0 AS queued;
SELECT regstage.queue_call('sendChatAction', '{"chat_id": 30051, "action": "typing"}') > 0 AS queued;
SELECT chat_id, method, params FROM regstage.outbox ORDER BY id;

-- 6. Sending: one call per chat at a time, in order; 429 delays only its
-- chat; 5xx is retried; a permanent 4xx is parked with the error
SELECT regstage.send_message(30050, 'second for 30050') > 0 AS queued;
SELECT regstage.send_message(30052, 'first for 30052') > 0 AS queued;
SELECT chat_id, method, left(params->>'text', 20) AS text, attempts FROM regstage.outbox_claim(10) ORDER BY id;
SELECT count(*) AS claimed_again FROM regstage.outbox_claim(10);	-- leased: nothing
SELECT regstage.outbox_report(id, CASE chat_id WHEN 30050 THEN 429 WHEN 30051 THEN 200 ELSE 403 END,
	CASE chat_id WHEN 30052 THEN 'Forbidden: bot was blocked by the user' END, 30)
  FROM regstage.outbox WHERE status = 'pending' AND claimed_until IS NOT NULL ORDER BY id;
SELECT chat_id, left(params->>'text', 20) AS text, status, http_status, last_error,
	   next_attempt_at > now() + interval '20 seconds' AS waits_retry_after
  FROM regstage.outbox ORDER BY id;
SELECT count(*) AS due_now FROM regstage.outbox_claim(10);	-- 30050 waits 30 s; its second call waits behind it
UPDATE regstage.outbox SET next_attempt_at = now() WHERE chat_id = 30050;
SELECT left(params->>'text', 20) AS text FROM regstage.outbox_claim(10);
SELECT regstage.outbox_report(id, 502, 'Bad Gateway') FROM regstage.outbox WHERE claimed_until > now();
SELECT left(params->>'text', 20) AS text, status, attempts, http_status FROM regstage.outbox WHERE chat_id = 30050 ORDER BY id;
UPDATE regstage.outbox SET next_attempt_at = now() WHERE chat_id = 30050;
SELECT regstage.outbox_report(id, 200) FROM regstage.outbox_claim(10);
SELECT regstage.outbox_report(id, 200) FROM regstage.outbox_claim(10);
SELECT chat_id, left(params->>'text', 20) AS text, status, attempts FROM regstage.outbox ORDER BY id;
-- a report for a call already sent changes nothing
SELECT regstage.outbox_report(min(id), 500) FROM regstage.outbox WHERE status = 'sent';
-- an edit refused because the message already reads so (two admins deciding
-- one review at once) is done, not parked; another 400 is parked
SELECT regstage.queue_call('editMessageText', '{"chat_id": 30053, "message_id": 7, "text": "Approved"}') > 0 AS queued;
SELECT regstage.outbox_report(id, 400, 'Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message')
  FROM regstage.outbox_claim(10);
SELECT regstage.queue_call('editMessageText', '{"chat_id": 30053, "message_id": 8, "text": "Approved"}') > 0 AS queued;
SELECT regstage.outbox_report(id, 400, 'Bad Request: message to edit not found') FROM regstage.outbox_claim(10);
SELECT params->>'message_id' AS message_id, status, http_status FROM regstage.outbox WHERE chat_id = 30053 ORDER BY id;

-- 7. What an operator reads; retention keeps what failed
SELECT queue, pending, waiting_retry, failed, retried FROM regstage.queue_status;
SELECT * FROM regstage.purge_processed('0');
SELECT status, count(*) FROM regstage.inbox GROUP BY 1 ORDER BY 1;
SELECT status, count(*) FROM regstage.outbox GROUP BY 1 ORDER BY 1;
-- 8. What the relay's sender does: many answers in one outbox_report_batch;
-- a chat's next call is claimed in the same statement only when the one
-- before it is done with (sent or parked) and nothing of the chat is pending
-- before it
TRUNCATE regstage.outbox;
SELECT count(regstage.send_message(c, 'call ' || n)) AS queued
  FROM (VALUES (30060, 1), (30060, 2), (30060, 3), (30061, 1), (30061, 2), (30062, 1), (30063, 1), (30063, 2)) v(c, n);
CREATE TEMP TABLE run AS
SELECT id, chat_id, params->>'text' AS text,
	   row_number() OVER (PARTITION BY chat_id ORDER BY id) AS k
  FROM regstage.outbox_claim(10, '1 minute', 3);
SELECT chat_id, text, k FROM run ORDER BY chat_id, k;
SELECT r.chat_id, r.text, b.status, b.next_claimed
  FROM regstage.outbox_report_batch(
		(SELECT array_agg(id ORDER BY chat_id) FROM run WHERE k = 1),
		ARRAY[200, 429, 400, 403],
		ARRAY[NULL, 'Too Many Requests', 'Bad Request: message is not modified', 'Forbidden: bot was blocked by the user'],
		ARRAY[NULL, 30, NULL, NULL]::integer[],
		(SELECT array_agg(n.id ORDER BY f.chat_id) FROM run f LEFT JOIN run n ON n.chat_id = f.chat_id AND n.k = 2 WHERE f.k = 1)) b
  JOIN run r ON r.id = b.id ORDER BY r.chat_id;
SELECT chat_id, params->>'text' AS text, status, http_status, claimed_until IS NOT NULL AS claimed
  FROM regstage.outbox ORDER BY id;
-- queued after the claim: 30064 with one call, 30065 with three
SELECT count(regstage.send_message(c, 'late ' || n)) AS queued
  FROM (VALUES (30064, 1), (30065, 1), (30065, 2), (30065, 3)) v(c, n);
INSERT INTO run SELECT id, chat_id, params->>'text', row_number() OVER (PARTITION BY chat_id ORDER BY id)
  FROM regstage.outbox WHERE params->>'text' LIKE 'late%';
-- a next of another chat, a next that is not its chat's oldest pending
-- call, a call reported twice: nothing claimed
SELECT r.chat_id, r.text, b.status, b.next_claimed
  FROM regstage.outbox_report_batch(
		ARRAY[(SELECT id FROM run WHERE chat_id = 30063 AND k = 2), (SELECT id FROM run WHERE chat_id = 30065 AND k = 1),
			  (SELECT id FROM run WHERE chat_id = 30062)],
		ARRAY[200, 200, 200], NULL, NULL,
		ARRAY[(SELECT id FROM run WHERE chat_id = 30064), (SELECT id FROM run WHERE chat_id = 30065 AND k = 3),
			  (SELECT id FROM run WHERE chat_id = 30060 AND k = 3)]) b
  JOIN run r ON r.id = b.id ORDER BY r.chat_id;
-- the second call of 30060 sent: its third is claimed
SELECT r.text, b.status, b.next_claimed
  FROM regstage.outbox_report_batch(ARRAY[(SELECT id FROM run WHERE chat_id = 30060 AND k = 2)], ARRAY[200], NULL, NULL,
									ARRAY[(SELECT id FROM run WHERE chat_id = 30060 AND k = 3)]) b
  JOIN run r ON r.id = b.id;
SELECT chat_id, params->>'text' AS text, status, claimed_until IS NOT NULL AS claimed FROM regstage.outbox ORDER BY id;
SELECT * FROM regstage.outbox_report_batch(ARRAY[1, 2], ARRAY[200]);
DROP TABLE run;

-- 9. What the relay's sender claims between full claims: since => the
-- snapshot of its last claim, chats => the chats whose runs it ended.  Only
-- calls committed since, and the chats named; of a chat only its oldest
-- pending call, never one behind a call in flight.
TRUNCATE regstage.outbox;
CREATE TEMP TABLE snap AS SELECT pg_current_snapshot() AS s;
SELECT count(regstage.send_message(c, t)) AS queued
  FROM (VALUES (30070, 'a1'), (30070, 'a2'), (30071, 'b1')) v(c, t);
SELECT regstage.queue_call('getMe', '{}') IS NOT NULL AS queued_no_chat;
-- new since the snapshot: a1 (a2 waits behind it), b1, the call of no chat
SELECT chat_id, method, params->>'text' AS text
  FROM regstage.outbox_claim(10, '1 minute', 1, NULL, (SELECT s FROM snap)) ORDER BY id;
UPDATE snap SET s = pg_current_snapshot();
-- nothing committed since: nothing claimed, though a2 is pending
SELECT count(*) AS claimed FROM regstage.outbox_claim(10, '1 minute', 1, NULL, (SELECT s FROM snap));
-- a1 sent and its chat named: a2 is its oldest now
SELECT regstage.outbox_report((SELECT id FROM regstage.outbox WHERE params->>'text' = 'a1'), 200) AS a1;
SELECT chat_id, params->>'text' AS text
  FROM regstage.outbox_claim(10, '1 minute', 1, NULL, (SELECT s FROM snap), ARRAY[30070]);
-- b2 queued while b1 is in flight: new, but not claimed; b1's chat named
-- once b1 is sent: b2 is claimed
SELECT regstage.send_message(30071, 'b2') IS NOT NULL AS queued;
SELECT count(*) AS claimed FROM regstage.outbox_claim(10, '1 minute', 1, NULL, (SELECT s FROM snap));
SELECT regstage.outbox_report((SELECT id FROM regstage.outbox WHERE params->>'text' = 'b1'), 200) AS b1;
SELECT chat_id, params->>'text' AS text
  FROM regstage.outbox_claim(10, '1 minute', 1, NULL, NULL, ARRAY[30071, 30072, NULL]);
-- max_calls caps it; the oldest come first
UPDATE snap SET s = pg_current_snapshot();
SELECT count(regstage.send_message(c, 'c')) AS queued FROM generate_series(30080, 30084) c;
SELECT chat_id FROM regstage.outbox_claim(2, '1 minute', 1, NULL, (SELECT s FROM snap));
SELECT chat_id, params->>'text' AS text, status, claimed_until IS NOT NULL AS claimed FROM regstage.outbox ORDER BY id;
-- a call held by a 429 comes back once its wait ended, though nothing is
-- new and its chat is not named; the call queued behind it waits for it
UPDATE snap SET s = pg_current_snapshot();
SELECT regstage.outbox_report((SELECT id FROM regstage.outbox WHERE chat_id = 30080), 429, 'Too Many Requests', 1) AS c;
SELECT regstage.send_message(30080, 'd') IS NOT NULL AS queued;
SELECT count(*) AS claimed FROM regstage.outbox_claim(10, '1 minute', 1, NULL, (SELECT s FROM snap));
SELECT pg_sleep(1.1);
SELECT chat_id, params->>'text' AS text, attempts FROM regstage.outbox_claim(10, '1 minute', 1, NULL, (SELECT s FROM snap));
DROP TABLE snap;

-- 10. What the relay's processors claim between walks from the start:
-- process_next(notify, after_update) looks only at updates after it (a
-- chat's next update comes after the one a processor last handled)
TRUNCATE regstage.inbox, regstage.outbox;
SELECT regstage.store_updates(ARRAY[3101, 3102, 3103],
	ARRAY[regstage_test.raw(regstage_test.text(3101, 30101, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3102, 30102, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3103, 30101, '/start', 'en'))]) AS stored;
-- after 3101: 3102; 3103 waits behind its chat's 3101
SELECT regstage.process_next(true, 3101) AS handled;
SELECT regstage.process_next(true, 3101) AS handled;
-- from the start: 3101, then (after it) its chat's 3103
SELECT regstage.process_next(true, NULL) AS handled;
SELECT regstage.process_next(true, 3101) AS handled;
SELECT update_id, status FROM regstage.inbox ORDER BY update_id;

-- 11. process_next_batch(): process_next() up to max_updates times in one
-- call, each update committed on its own; how many, and the last one
TRUNCATE regstage.inbox, regstage.outbox;
SELECT regstage.store_updates(ARRAY[3201, 3202, 3203, 3204],
	ARRAY[regstage_test.raw(regstage_test.text(3201, 30201, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3202, 30202, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3203, 30201, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3204, 30203, '/start', 'en'))]) AS stored;
CALL regstage.process_next_batch(2);
SELECT update_id, status FROM regstage.inbox ORDER BY update_id;
-- after 3202 (its cursor): 3203 (its chat's 3201 is done), then 3204
CALL regstage.process_next_batch(16, 1000, true, 3202);
CALL regstage.process_next_batch();
SELECT count(*) AS replies FROM regstage.outbox;
-- it commits: inside a transaction block it refuses (2D000), nothing applied
SELECT regstage.store_updates(ARRAY[3205], ARRAY[regstage_test.raw(regstage_test.text(3205, 30204, '/start', 'en'))]) AS stored;
\set VERBOSITY terse
BEGIN;
CALL regstage.process_next_batch();
ROLLBACK;
\set VERBOSITY default
SELECT update_id, status FROM regstage.inbox WHERE update_id = 3205;
CALL regstage.process_next_batch();
-- retries_first: after a cursor, an update whose retry wait ended (here
-- 3301, put off a millisecond) comes first; with false it is not looked for
TRUNCATE regstage.inbox, regstage.outbox;
SELECT regstage.store_updates(ARRAY[3301, 3302],
	ARRAY[regstage_test.raw(regstage_test.text(3301, 30301, '/start', 'en')),
		  regstage_test.raw(regstage_test.text(3302, 30302, '/start', 'en'))]) AS stored;
UPDATE regstage.inbox SET next_attempt_at = received_at + interval '1 millisecond' WHERE update_id = 3301;
SELECT pg_sleep(0.01);
SELECT regstage.process_next(true, 3301, false) AS handled;
SELECT regstage.process_next(true, 3302, false) AS handled;
SELECT regstage.process_next(true, 3302) AS handled;

-- Durability.  xact_changed_outside(): a Redis write (or a file) in this
-- transaction, which process_next_batch() then commits synchronously
BEGIN;
SELECT regstage.xact_changed_outside() AS before_any_write;
SELECT regstage.staged(3401) IS NULL AS nothing_staged;	-- a read is no change
SELECT regstage.xact_changed_outside() AS after_a_read;
SELECT regstage.stage_language(3401, 'en');
SELECT regstage.xact_changed_outside() AS after_a_write;
SAVEPOINT s;
SELECT regstage.stage_language(3402, 'en');
ROLLBACK TO s;						-- what reached Redis stays there
SELECT regstage.xact_changed_outside() AS after_a_rolled_back_write;
COMMIT;
SELECT regstage.xact_changed_outside() AS next_transaction;
-- a typed answer that was not staged (a name at the phone step) is no change
SELECT regstage.stage_user_data(3401, '{"full_name": "Ivan Petrov"}');
BEGIN;
SELECT regstage.stage_text_answer(3401, 'Ivan Petrov')->>'staged' AS staged;
SELECT regstage.xact_changed_outside() AS after_an_answer_not_staged;
SELECT regstage.stage_text_answer(3401, '+7 916 123-45-67')->>'staged' AS staged;
SELECT regstage.xact_changed_outside() AS after_an_answer_staged;
ROLLBACK;
SHOW regstage.inbox_async_commit;
-- outbox_claim() commits synchronously when it hands out calls: a call
-- queued by a commit that did not wait for its flush is flushed once the
-- claim returns, before anyone can send it
TRUNCATE regstage.inbox, regstage.outbox;
SET synchronous_commit = off;
SELECT regstage.send_message(3403, 'not flushed yet') > 0 AS queued;
SELECT pg_current_wal_insert_lsn() AS queued_lsn \gset
BEGIN;
SELECT count(*) AS claimed FROM regstage.outbox_claim(10);
SHOW synchronous_commit;				-- raised for this transaction
COMMIT;
SELECT pg_current_wal_flush_lsn() >= :'queued_lsn' AS durable_when_claimed;
SHOW synchronous_commit;				-- the session's own setting is left alone
-- a claim that hands out nothing leaves it alone
BEGIN;
SELECT count(*) AS claimed FROM regstage.outbox_claim(10);
SHOW synchronous_commit;
COMMIT;
-- local (no wait for the standbys) is raised too; a stronger one is kept
SET synchronous_commit = local;
BEGIN;
SELECT regstage.xact_commit_durably();
SHOW synchronous_commit;
COMMIT;
SET synchronous_commit = remote_apply;
BEGIN;
SELECT regstage.xact_commit_durably();
SHOW synchronous_commit;
COMMIT;
RESET synchronous_commit;

SELECT count(*) FROM regstage_test.redis('FLUSHALL');
