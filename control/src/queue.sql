-------------------------------------------------------------------------------
-- Inbox and outbox: what the relay (or any other client) calls.
--
--   receive   store_updates(ids, bodies)   one transaction per getUpdates
--                                           batch or webhook POST
--   process   process_next()               one update of one chat, its state
--                                           change and its replies in one
--                                           transaction
--   send      outbox_claim() / outbox_report()
--   any SQL   send_message(), queue_call()  delivered only if it commits
--
-- Order per chat comes from the database: a processor (or sender) takes only
-- the oldest pending row of a chat, locked FOR UPDATE SKIP LOCKED, so any
-- number of them, in any number of processes, never run two rows of one chat
-- at once and never skip ahead.
-------------------------------------------------------------------------------

-- The conversation a Telegram update belongs to (a private chat's id is its
-- user's id); NULL when it has none (channel posts, polls ...).  PL/pgSQL:
-- asked for every update stored, and as SQL (not inlinable: it names the id
-- twice) its body was planned at every call (see regstage.msg).
CREATE OR REPLACE FUNCTION regstage.update_chat_id(update jsonb)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	id text := coalesce(
		update->'callback_query'->'from'->>'id',
		update->'message'->'chat'->>'id',
		update->'edited_message'->'chat'->>'id',
		update->'my_chat_member'->'chat'->>'id',
		update->'channel_post'->'chat'->>'id');
BEGIN
	RETURN CASE WHEN id ~ '^-?[0-9]{1,18}$' THEN id::bigint END;
END
$$;

-- BEFORE INSERT on inbox: decode the raw body once.  What cannot be decoded
-- (not UTF-8, not JSON, a \u0000 jsonb refuses, not an object, a body whose
-- update_id is not the row's) is parked at once with the reason: it never
-- blocks anything.
CREATE OR REPLACE FUNCTION regstage.inbox_decode()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	upd jsonb;
	state text;
	message text;
BEGIN
	BEGIN
		upd := convert_from(NEW.body, 'UTF8')::jsonb;
		IF jsonb_typeof(upd) <> 'object' THEN
			RAISE EXCEPTION 'not a JSON object but %', jsonb_typeof(upd) USING ERRCODE = 'invalid_text_representation';
		END IF;
		IF (upd->>'update_id') IS DISTINCT FROM NEW.update_id::text THEN
			RAISE EXCEPTION 'its update_id is % (stored as %)', coalesce(upd->>'update_id', 'missing'), NEW.update_id
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		NEW.chat_id := regstage.update_chat_id(upd);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
		NEW.status := 'failed';
		NEW.sqlstate := state;
		NEW.last_error := 'undecodable update: ' || message;
		NEW.processed_at := now();
		RAISE WARNING 'pg_regstage: update % parked: undecodable (%): %', NEW.update_id, state, message;
	END;
	RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER inbox_decode
	BEFORE INSERT ON regstage.inbox
	FOR EACH ROW EXECUTE FUNCTION regstage.inbox_decode();

-- Receive: the raw updates of one batch, in one transaction; an update_id
-- stored before is ignored.  Returns how many were new.
CREATE OR REPLACE FUNCTION regstage.store_updates(update_ids bigint[], bodies bytea[], notify boolean DEFAULT true)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	stored integer;
BEGIN
	IF cardinality(update_ids) IS DISTINCT FROM cardinality(bodies) THEN
		RAISE EXCEPTION 'store_updates: % update_ids but % bodies', cardinality(update_ids), cardinality(bodies)
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO regstage.inbox (update_id, body)
	SELECT u.id, u.body FROM unnest(update_ids, bodies) AS u(id, body)
	 WHERE u.id IS NOT NULL AND u.body IS NOT NULL
	ON CONFLICT (update_id) DO NOTHING;
	GET DIAGNOSTICS stored = ROW_COUNT;
	IF stored > 0 AND notify AND current_setting('regstage.queue_notify')::boolean THEN
		PERFORM pg_notify('regstage_inbox', '');	-- sent at commit: processors wake
	END IF;
	RETURN stored;
END
$$;

-- Process: claim the oldest due update of a chat no one else is processing,
-- apply it, write its Bot API calls to the outbox, mark it done — all in the
-- caller's transaction.  A failure is retried with backoff and parked after
-- regstage.max_attempts; an outage (is_outage) is retried without counting.
-- Returns the update_id handled, or NULL when nothing is due.
--
-- The claim runs in inbox_claim(), written so that its only plan walks
-- inbox_pending in update_id order and asks inbox_pending_chat for each
-- candidate's chat: a processor's connection plans it once and keeps the
-- plan, and with the planner free to choose, a plan made while the inbox
-- was empty (a relay started on an empty queue) compared every pending
-- update with every other — 0.3 s per update with 3,000 queued.  A chat's
-- first pending update is looked up as the first at or after its chat_id
-- in (chat_id, update_id) order, an order no other index gives.
--
-- Due: next_attempt_at <= greatest(now(), received_at) — a row never put
-- off (next_attempt_at is still its received_at) is due whatever the clock.
-- now() is when the claiming transaction started, and a row committed after
-- that, by a transaction that started after it, has a later next_attempt_at:
-- "not due yet", while the claimer's snapshot sees it, so the cursor (or
-- the sender's snapshot) moved past it and it waited for the next walk from
-- the start, up to 10 s, under load.  The outbox says the same with
-- created_at.
--
-- plan_cache_mode: the queue's functions take their plans from the settings
-- above, not from their arguments, so a generic plan is made once per
-- connection.  Left to choose, PL/pgSQL planned a statement with an array
-- argument (outbox_report_batch's next calls) afresh at every call, the
-- generic plan looking dearer than one made for a one-element array: a
-- quarter of the sender's CPU went to the planner.
--
-- The update claimed is marked done at once, in the statement that locks
-- it: one statement, not a lock and an update (it was a tenth of
-- process_next's work), and in the caller's transaction, so nobody sees it
-- done before that commits; process_next puts it back when applying it
-- fails.  attempts comes back as it was before the claim.
--
-- after_update: only updates after it are looked at.  A transaction held
-- open (a commit blocked on a lock, a slow download) keeps every update
-- processed meanwhile in inbox_pending, and a walk from the first one steps
-- over all of them; the relay's processors walk from the update they last
-- handled instead (a chat's next update comes after its last), lowered to
-- the first of each batch their receiver stores, and from the start every
-- 10 s (updates stored out of order, those of a processor that died).  With
-- after_update, an update whose retry wait ended (inbox_deferred) comes
-- first, unless retries_first is false: process_next_batch() looks for one
-- once per call, not before every update (the look is a statement, a few
-- per cent of an update's work).
CREATE OR REPLACE FUNCTION regstage.inbox_claim(after_update bigint DEFAULT NULL, retries_first boolean DEFAULT true,
											   OUT update_id bigint, OUT chat_id bigint, OUT body bytea,
											   OUT attempts integer)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_sort = off SET plan_cache_mode = force_generic_plan AS $$
BEGIN
	IF after_update IS NOT NULL AND retries_first THEN
		UPDATE regstage.inbox d SET status = 'done', attempts = d.attempts + 1, processed_at = now(),
			   sqlstate = NULL, last_error = NULL
		 WHERE d.update_id = (SELECT i.update_id FROM regstage.inbox i
							   WHERE i.status = 'pending' AND i.next_attempt_at > i.received_at
								 AND i.next_attempt_at <= now()
								 AND (i.chat_id IS NULL
									  OR (i.chat_id, i.update_id) = (SELECT e.chat_id, e.update_id FROM regstage.inbox e
																	  WHERE e.status = 'pending' AND e.chat_id >= i.chat_id
																	  ORDER BY e.chat_id, e.update_id LIMIT 1))
							   ORDER BY i.next_attempt_at
							   LIMIT 1
							   FOR UPDATE SKIP LOCKED)
		RETURNING d.update_id, d.chat_id, d.body, d.attempts - 1 INTO update_id, chat_id, body, attempts;
		IF update_id IS NOT NULL THEN
			RETURN;
		END IF;
	END IF;
	UPDATE regstage.inbox d SET status = 'done', attempts = d.attempts + 1, processed_at = now(),
		   sqlstate = NULL, last_error = NULL
	 WHERE d.update_id = (SELECT i.update_id FROM regstage.inbox i
						   WHERE i.status = 'pending' AND i.update_id > coalesce(after_update, -9223372036854775808)
							 AND i.next_attempt_at <= greatest(now(), i.received_at)
							 AND (i.chat_id IS NULL			-- no chat: no order to keep
								  OR (i.chat_id, i.update_id) = (SELECT e.chat_id, e.update_id FROM regstage.inbox e
																  WHERE e.status = 'pending' AND e.chat_id >= i.chat_id
																  ORDER BY e.chat_id, e.update_id LIMIT 1))
						   ORDER BY i.update_id
						   LIMIT 1
						   FOR UPDATE SKIP LOCKED)
	RETURNING d.update_id, d.chat_id, d.body, d.attempts - 1 INTO update_id, chat_id, body, attempts;
END
$$;

CREATE OR REPLACE FUNCTION regstage.process_next(notify boolean DEFAULT true, after_update bigint DEFAULT NULL,
												 retries_first boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	u record;
	calls jsonb;
	state text;
	message text;
	max_attempts integer := current_setting('regstage.max_attempts')::integer;
	notify_was text;
BEGIN
	-- claimed, and marked done (put back below if applying it fails); an
	-- assignment, which PL/pgSQL evaluates without starting an executor
	-- (a SELECT from the function materialized its one row per update)
	u := regstage.inbox_claim(after_update, retries_first);
	IF u.update_id IS NULL THEN
		RETURN NULL;
	END IF;
	IF NOT notify THEN
		-- the caller wakes its senders itself (the outbox trigger reads it);
		-- put back below, so the rest of the caller's transaction notifies
		notify_was := current_setting('regstage.queue_notify');
		PERFORM set_config('regstage.queue_notify', 'off', true);
	END IF;

	BEGIN
		-- applied once, however it arrived (handle_update shares seen_updates)
		INSERT INTO regstage.seen_updates (update_id) VALUES (u.update_id) ON CONFLICT DO NOTHING;
		IF FOUND THEN
			calls := regstage.dispatch_update(convert_from(u.body, 'UTF8')::jsonb);
		ELSE
			calls := '[]';
		END IF;
		INSERT INTO regstage.outbox (chat_id, method, params, update_id)
		SELECT coalesce(CASE WHEN c->'params'->>'chat_id' ~ '^-?[0-9]{1,18}$'
							 THEN (c->'params'->>'chat_id')::bigint END, u.chat_id),
			   c->>'method', coalesce(c->'params', '{}'), u.update_id
		  FROM jsonb_array_elements(calls) WITH ORDINALITY AS a(c, n)
		 ORDER BY n;
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
		-- (the claim marked it done: put back as it should be, its wait
		-- counted from no earlier than its arrival, so that it is "put off"
		-- even for a claimer whose transaction began before it came.  In
		-- this transaction, not in the block's subtransaction: a row this
		-- transaction changed and its subtransaction changed again would get
		-- a MultiXact as its xmax, which every other claim looks up)
		IF regstage.is_outage(state) THEN
			UPDATE regstage.inbox SET status = 'pending', attempts = u.attempts, processed_at = NULL,
				   next_attempt_at = greatest(now(), received_at) + interval '5 seconds',
				   sqlstate = state, last_error = message
			 WHERE update_id = u.update_id;
			RAISE LOG 'pg_regstage: update % waits for an outage to end (%): %', u.update_id, state, message;
		ELSIF u.attempts + 1 >= max_attempts THEN
			UPDATE regstage.inbox SET status = 'failed', attempts = u.attempts + 1, processed_at = now(),
				   sqlstate = state, last_error = message
			 WHERE update_id = u.update_id;
			RAISE WARNING 'pg_regstage: update % parked after % failed attempts (%): %',
				u.update_id, u.attempts + 1, state, message;
		ELSE
			UPDATE regstage.inbox SET status = 'pending', attempts = u.attempts + 1, processed_at = NULL,
				   sqlstate = state, last_error = message,
				   next_attempt_at = greatest(now(), received_at)
									 + least(power(2, u.attempts + 1), 300) * interval '1 second'
			 WHERE update_id = u.update_id;
			RAISE LOG 'pg_regstage: update % failed, attempt % of % (%): %',
				u.update_id, u.attempts + 1, max_attempts, state, message;
		END IF;
	END;
	IF notify_was IS NOT NULL THEN
		PERFORM set_config('regstage.queue_notify', notify_was, true);
	END IF;
	RETURN u.update_id;
END
$$;

-- Process in a loop: process_next() up to max_updates times in one call,
-- each update in its own transaction (committed here, so what one update
-- decided goes out whatever the next one does).  For a processor that
-- keeps up with a busy bot, the round trip per update (the statement sent,
-- parsed and answered, both ends woken) cost about as much as the claim;
-- here it is paid once per call.  Stops when nothing is due, after
-- max_updates, or once max_ms have passed (the caller, who wakes its sender
-- after each call, hears of the replies that much later).  after_update as
-- process_next's; each next update is looked for after the one handled
-- before it.  Returns how many were handled and the last one's update_id.
-- A procedure that commits: CALL it outside a transaction block.
--
-- Commits without waiting for their WAL flush (regstage.inbox_async_commit,
-- on by default), unless the update changed something outside the database
-- (xact_changed_outside(): a Redis write, a registration's files): one
-- flush per update was what a processor waited for most, 40 % of its time
-- at 1,000 chats.  A crash can then forget the last updates processed, with
-- their state changes and their replies alike, and they are processed
-- again.  No reply of such a commit can have gone out: outbox_claim()
-- commits synchronously whenever it hands out calls, and its commit record
-- follows the commit of every call it saw, so the flush it waits for makes
-- them durable before any sender has them.  An update that wrote to Redis
-- commits as the session's synchronous_commit says, as before: a crash
-- between its Redis write and its flush would otherwise see it answered
-- again at the conversation's next step.
CREATE OR REPLACE PROCEDURE regstage.process_next_batch(max_updates integer DEFAULT 16, max_ms integer DEFAULT 5,
														 notify boolean DEFAULT true, after_update bigint DEFAULT NULL,
														 INOUT handled integer DEFAULT NULL,
														 INOUT last_update bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
	-- (float8: an integer * interval has no operator in pg_catalog, and this
	-- procedure, which commits, cannot pin its search_path with SET)
	stop_at timestamptz := clock_timestamp()
						   + greatest(coalesce(max_ms, 5), 0)::float8 * interval '1 millisecond';
	done_update bigint;
	async_commit boolean := current_setting('regstage.inbox_async_commit')::boolean;
BEGIN
	max_updates := coalesce(max_updates, 16);
	handled := 0;
	last_update := NULL;
	LOOP
		-- updates whose retry wait ended: looked for before the first only
		done_update := regstage.process_next(notify, coalesce(last_update, after_update), last_update IS NULL);
		EXIT WHEN done_update IS NULL;
		IF async_commit AND NOT regstage.xact_changed_outside() THEN
			PERFORM set_config('synchronous_commit', 'off', true);	-- this transaction only
		END IF;
		COMMIT;
		handled := handled + 1;
		last_update := done_update;
		EXIT WHEN handled >= max_updates OR clock_timestamp() >= stop_at;
	END LOOP;
END
$$;

-- Re-queue a parked (or any) update: processed again as if new.
CREATE OR REPLACE FUNCTION regstage.retry_update(id bigint)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	UPDATE regstage.inbox i SET status = 'pending', attempts = 0, next_attempt_at = now(),
		   processed_at = NULL, sqlstate = NULL, last_error = NULL
	 WHERE i.update_id = retry_update.id AND i.status = 'failed';
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	-- a parked undecodable body stays undecodable: decode again, park again
	UPDATE regstage.inbox i SET status = 'failed', processed_at = now(),
		   sqlstate = '22P02', last_error = 'undecodable update (retried)'
	 WHERE i.update_id = retry_update.id
	   AND NOT regstage.body_is_update(i.body, i.update_id);
	DELETE FROM regstage.seen_updates s WHERE s.update_id = retry_update.id;
	PERFORM pg_notify('regstage_inbox', '');
	RETURN true;
END
$$;

-- Is this raw body a decodable update with this update_id?
CREATE OR REPLACE FUNCTION regstage.body_is_update(body bytea, update_id bigint)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	upd jsonb;
BEGIN
	upd := convert_from(body, 'UTF8')::jsonb;
	RETURN jsonb_typeof(upd) = 'object' AND (upd->>'update_id') = update_id::text;
EXCEPTION WHEN OTHERS THEN
	RETURN false;
END
$$;

-- Queue any Bot API call, in the caller's transaction: delivered only if it
-- commits, in order with the other calls of its chat.
CREATE OR REPLACE FUNCTION regstage.queue_call(method text, params jsonb, chat_id bigint DEFAULT NULL)
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	INSERT INTO regstage.outbox (chat_id, method, params)
	VALUES (coalesce(queue_call.chat_id,
					 CASE WHEN params->>'chat_id' ~ '^-?[0-9]{1,18}$' THEN (params->>'chat_id')::bigint END),
			method, params)
	RETURNING id
$$;

CREATE OR REPLACE FUNCTION regstage.send_message(chat_id bigint, text text, reply_markup jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT regstage.queue_call('sendMessage',
		regstage.send_message_call(send_message.chat_id, send_message.text, send_message.reply_markup)->'params',
		send_message.chat_id)
$$;

-- AFTER INSERT on outbox: wake the senders (NOTIFY is sent at commit, so a
-- call queued in a transaction that rolls back wakes no one).
CREATE OR REPLACE FUNCTION regstage.outbox_notify()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('regstage_outbox', '');
	RETURN NULL;
END
$$;

-- (the setting is read in WHEN: with it off, as in the relay's own
-- transactions, no function is called at all)
CREATE OR REPLACE TRIGGER outbox_notify
	AFTER INSERT ON regstage.outbox
	FOR EACH STATEMENT WHEN (current_setting('regstage.queue_notify')::boolean)
	EXECUTE FUNCTION regstage.outbox_notify();

-- Send: claim due calls of up to max_calls chats, for lease.  Of each chat
-- its oldest pending call is claimed (leased, its attempt counted); with
-- per_chat > 1 up to per_chat - 1 calls queued right after it come too,
-- unclaimed: the sender sends them one after the other, and
-- outbox_report_batch() claims each one (next_ids) in the statement that
-- reports the call before it.  So a chat never has more than one call in
-- flight, and one busy chat costs one claim per per_chat calls.
--
-- Which chats: with neither since nor chats given, every chat, by a loose
-- index scan over outbox_pending_chat, one probe per chat, in chat_id order
-- from after_chat on and round again (a sender passes the last chat it
-- claimed: every chat gets its turn), stopping once max_calls chats are
-- found; calls of no chat come last.  The cost does not depend on how many
-- calls a chat has queued, but it does on how many chats have calls sent
-- that some snapshot still sees: a transaction open for 30 s keeps every
-- call sent meanwhile in the index, and each scan steps over them all.
--
-- So a sender asks for what is new instead: since => the snapshot its last
-- claim ran in (pg_current_snapshot()), chats => the chats whose runs it has
-- ended since.  Only calls queued by transactions that snapshot did not see
-- (xid8 at or past its xmax, or in its xip list: outbox_queued) and
-- those chats are looked at — the way PgQ cuts its event batches.  A call
-- found not claimable then (its chat busy or held for a retry) is the
-- business of whoever ends that chat's run, or of the next such claim once
-- its retry wait ended (outbox_deferred: the only pending calls whose
-- next_attempt_at moved), or of the sender's periodic full claim (leases of
-- a sender that died, calls committed out of order).  A snapshot
-- taken at the start of the claiming statement is older than the scans in
-- it: what they missed, it has not seen, so the next claim looks again.
--
-- A sender that dies leaves its claims to expire; they are sent again then
-- (at most what it had in flight).
CREATE OR REPLACE FUNCTION regstage.outbox_claim(max_calls integer DEFAULT 50, lease interval DEFAULT '1 minute',
												 per_chat integer DEFAULT 1, after_chat bigint DEFAULT NULL,
												 since pg_snapshot DEFAULT NULL, chats bigint[] DEFAULT NULL,
												 chats_after bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, chat_id bigint, method text, params jsonb, attempts integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- plans pinned to the indexes, whatever the outbox held when a sender's
-- connection planned them (see inbox_claim), and made once (see
-- plan_cache_mode at inbox_claim)
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
	heads bigint[] := '{}';
	more bigint[];
	pass integer;
	lo bigint;					-- chats after lo (NULL: from the first) ...
	hi bigint;					-- ... up to hi (NULL: to the last)
BEGIN
	-- on a standby an empty outbox would claim nothing without an error;
	-- say what is wrong, as every writing function does there
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION 'cannot claim outbox calls on a standby: this server is in recovery'
			USING ERRCODE = 'read_only_sql_transaction',
				  HINT = 'Connect the sender to the primary (libpq: target_session_attrs=read-write with every host in the URI).';
	END IF;
	IF max_calls IS NULL OR max_calls < 1 THEN
		RETURN;
	END IF;
	IF since IS NOT NULL OR chats IS NOT NULL THEN
		-- what is new: calls queued since the snapshot, the chats named, the
		-- calls whose retry wait ended (outbox_deferred)
		WITH news AS (
			-- (coalesce: outbox_queued, not outbox_pending_chat read whole)
			SELECT o.id, o.chat_id FROM regstage.outbox o
			 WHERE o.queued_by >= pg_snapshot_xmax(since) AND coalesce(o.status, '') = 'pending'
			UNION ALL
			SELECT o.id, o.chat_id FROM regstage.outbox o
			 WHERE o.queued_by = ANY (ARRAY(SELECT pg_snapshot_xip(since))) AND coalesce(o.status, '') = 'pending'),
		deferred AS (
			SELECT o.id, o.chat_id FROM regstage.outbox o
			 WHERE o.status = 'pending' AND o.next_attempt_at > o.created_at AND o.next_attempt_at <= now()
			   AND (o.claimed_until IS NULL OR o.claimed_until < now())),
		-- the chats to look at, each with where its calls may start: a
		-- chat named starts after chats_after (every call of it before was
		-- sent or parked; from the chat's first entry the lookup stepped
		-- over each call of it sent while some transaction stayed open)
		looked AS (
			SELECT c.chat_id, max(c.after_id) AS after_id, min(c.id) AS first_id
			  FROM (SELECT n.chat_id, NULL::bigint AS after_id, n.id FROM news n
					UNION ALL
					SELECT u.chat_id, u.after_id, u.after_id FROM unnest(chats, chats_after) AS u(chat_id, after_id)
					UNION ALL
					SELECT d.chat_id, NULL, d.id FROM deferred d) c
			 WHERE c.chat_id IS NOT NULL
			 GROUP BY c.chat_id)
		SELECT array_agg(x.id) INTO heads
		  FROM ((-- of each chat its oldest pending call (only it may go), if
				 -- due and unclaimed; looked up chat by chat, the oldest
				 -- first, only until max_calls are found
				 SELECT r.id
				   FROM (SELECT * FROM looked ORDER BY first_id) l
						CROSS JOIN LATERAL (SELECT e.id FROM regstage.outbox e
											 WHERE e.status = 'pending' AND e.chat_id = l.chat_id
											   AND e.id > coalesce(l.after_id, -9223372036854775808)
											 ORDER BY e.chat_id, e.id LIMIT 1) h
						CROSS JOIN LATERAL (SELECT o.id FROM regstage.outbox o
											 WHERE o.id = h.id AND coalesce(o.status, '') = 'pending'
											   AND o.next_attempt_at <= greatest(now(), o.created_at)
											   AND (o.claimed_until IS NULL OR o.claimed_until < now())) r)
				UNION ALL
				-- a call of no chat goes on its own
				(SELECT r.id
				   FROM (SELECT n.id FROM news n WHERE n.chat_id IS NULL
						 UNION ALL
						 SELECT d.id FROM deferred d WHERE d.chat_id IS NULL) c
						CROSS JOIN LATERAL (SELECT o.id FROM regstage.outbox o
											 WHERE o.id = c.id AND coalesce(o.status, '') = 'pending'
											   AND o.next_attempt_at <= greatest(now(), o.created_at)
											   AND (o.claimed_until IS NULL OR o.claimed_until < now())) r)
				LIMIT max_calls) x;
		heads := coalesce(heads, '{}');
	ELSE
		IF after_chat = 9223372036854775807 THEN
			after_chat := NULL;		-- no chat after it: start at the first
		END IF;
		FOR pass IN 1 .. 2 LOOP
			IF pass = 1 THEN
				lo := after_chat; hi := NULL;
			ELSIF after_chat IS NULL THEN
				EXIT;
			ELSE
				lo := NULL; hi := after_chat;
			END IF;
			WITH RECURSIVE chats AS (
				(SELECT o.chat_id, o.id,
						o.next_attempt_at <= greatest(now(), o.created_at)
							AND (o.claimed_until IS NULL OR o.claimed_until < now()) AS ready
				   FROM regstage.outbox o
				  WHERE o.status = 'pending' AND o.chat_id >= coalesce(lo + 1, -9223372036854775808)
				  ORDER BY o.chat_id, o.id LIMIT 1)
				UNION ALL
				SELECT n.chat_id, n.id, n.ready
				  FROM chats h,
					   LATERAL (SELECT o.chat_id, o.id,
									   o.next_attempt_at <= greatest(now(), o.created_at)
										   AND (o.claimed_until IS NULL OR o.claimed_until < now())
								  FROM regstage.outbox o
								 WHERE o.status = 'pending' AND o.chat_id > h.chat_id
								 ORDER BY o.chat_id, o.id LIMIT 1) n(chat_id, id, ready)
				 WHERE hi IS NULL OR n.chat_id <= hi
			)
			SELECT array_agg(c.id) INTO more
			  FROM (SELECT c.id FROM chats c WHERE c.ready AND (hi IS NULL OR c.chat_id <= hi)
					 LIMIT max_calls - cardinality(heads)) c;
			heads := heads || coalesce(more, '{}');
			EXIT WHEN cardinality(heads) >= max_calls;
		END LOOP;
		IF cardinality(heads) < max_calls THEN
			-- calls of no chat: no order to keep, each its own
			SELECT array_agg(o.id) INTO more
			  FROM (SELECT o.id FROM regstage.outbox o
					 WHERE o.status = 'pending' AND o.chat_id IS NULL
					   AND o.next_attempt_at <= greatest(now(), o.created_at)
					   AND (o.claimed_until IS NULL OR o.claimed_until < now())
					 ORDER BY o.id LIMIT max_calls - cardinality(heads)) o;
			heads := heads || coalesce(more, '{}');
		END IF;
	END IF;
	IF cardinality(heads) = 0 THEN
		RETURN;
	END IF;
	-- lock what nobody else is claiming; a head another sender claimed or
	-- sent since is rechecked here and left out
	SELECT array_agg(l.id) INTO heads
	  FROM (SELECT o.id FROM regstage.outbox o
			 WHERE o.id = ANY (heads) AND coalesce(o.status, '') = 'pending'
			   AND o.next_attempt_at <= greatest(now(), o.created_at)
			   AND (o.claimed_until IS NULL OR o.claimed_until < now())
			   FOR UPDATE SKIP LOCKED) l;
	IF heads IS NULL THEN
		RETURN;
	END IF;
	-- What is handed out must be durable before anyone sends it: a call
	-- queued by a commit that did not wait for its flush (process_next_batch)
	-- is, once this claim's commit is flushed (its commit record comes after
	-- theirs) and, with synchronous standbys, on them.  So this transaction
	-- commits synchronously even when the caller's session says off (the
	-- relay's sender does, for its reports); send after it committed.
	PERFORM regstage.xact_commit_durably();
	RETURN QUERY
	WITH claimed AS (
		UPDATE regstage.outbox o SET claimed_until = now() + lease, attempts = o.attempts + 1
		 WHERE o.id = ANY (heads)
		RETURNING o.id, o.chat_id, o.method, o.params, o.attempts),
	run AS (
		SELECT c.id AS head, c.id, c.chat_id, c.method, c.params, c.attempts, true AS ready FROM claimed c
		UNION ALL
		SELECT c.id, f.id, f.chat_id, f.method, f.params, f.attempts,
			   f.next_attempt_at <= greatest(now(), f.created_at) AND (f.claimed_until IS NULL OR f.claimed_until < now())
		  FROM claimed c,
			   -- the calls after it in its chat: a range of outbox_pending_chat
			   -- that ends with the chat (read on into the next chats, it
			   -- stepped over every call they sent while a long transaction
			   -- kept those visible)
			   LATERAL (SELECT f.id, f.chat_id, f.method, f.params, f.attempts, f.next_attempt_at, f.created_at,
							   f.claimed_until
						  FROM regstage.outbox f
						 WHERE f.status = 'pending' AND f.chat_id = c.chat_id AND f.id > c.id
						 ORDER BY f.chat_id, f.id LIMIT per_chat - 1) f
		 WHERE per_chat > 1 AND c.chat_id IS NOT NULL),
	prefix AS (			-- a run stops before the first call that is not due
		SELECT r.*, bool_and(r.ready) OVER (PARTITION BY r.head ORDER BY r.id) AS keep FROM run r)
	SELECT p.id, p.chat_id, p.method, p.params, p.attempts FROM prefix p WHERE p.keep ORDER BY p.head, p.id;
END
$$;

-- A sender's answers, one statement for many: outbox_report() for each
-- ids[i]; and when that call is done with (sent, or parked as failed) and
-- next_ids[i] is the call the sender holds next for that chat, that call is
-- claimed (leased, its attempt counted) — only if it is now the chat's
-- oldest pending call, due and unclaimed.  The sender sends it only if
-- next_claimed: so calls of one chat keep their order, and an answer that
-- was never recorded is the only way a call goes out twice.
CREATE OR REPLACE FUNCTION regstage.outbox_report_batch(ids bigint[], http_statuses integer[],
														errors text[] DEFAULT NULL, retry_afters integer[] DEFAULT NULL,
														next_ids bigint[] DEFAULT NULL,
														lease interval DEFAULT '1 minute')
RETURNS TABLE (id bigint, status text, next_claimed boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
	n integer := coalesce(cardinality(ids), 0);
	answered bigint[];			-- 2xx (or "message is not modified"): sent
	sent bigint[];
	statuses text[];
	nexts bigint[];				-- next_ids[i] of each call now done with ...
	prevs bigint[];				-- ... and that call
	claimed bigint[];
BEGIN
	IF cardinality(ids) IS DISTINCT FROM cardinality(http_statuses) THEN
		RAISE EXCEPTION 'outbox_report_batch: % ids but % http_statuses', cardinality(ids), cardinality(http_statuses)
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- What a busy sender reports is nearly all "sent": those in one
	-- statement (a statement per call was most of the sender's cost).  Every
	-- statement here finds its rows by id from arrays, with no join the
	-- planner could turn around (a plan that walked the pending calls and
	-- looked each up in the answers took a report from 1 ms to 50 ms), and
	-- says "pending" as coalesce(status, '') = 'pending', which no partial
	-- index's predicate matches: so the primary key is the only index it can
	-- use.  The pending indexes look tiny to the planner, and a plan that
	-- reads one whole with the ids as a filter steps over every row a long
	-- transaction keeps visible (a blocked chat took the sender to 300
	-- calls/s).
	SELECT array_agg(u.id) INTO answered
	  FROM unnest(ids, http_statuses, errors) AS u(id, st, err)
	 WHERE u.st BETWEEN 200 AND 299 OR (u.st = 400 AND u.err LIKE '%message is not modified%');
	IF answered IS NOT NULL THEN
		WITH upd AS (
			UPDATE regstage.outbox o SET status = 'sent', sent_at = now(), claimed_until = NULL,
				   http_status = http_statuses[array_position(ids, o.id)],
				   last_error = errors[array_position(ids, o.id)]
			 WHERE o.id = ANY (answered) AND coalesce(o.status, '') = 'pending'
			RETURNING o.id)
		SELECT array_agg(upd.id) INTO sent FROM upd;
	END IF;
	-- ... the rest (retries, 429s, parked calls) one by one, as outbox_report says
	statuses := array_fill(NULL::text, ARRAY[n]);
	FOR i IN 1 .. n LOOP
		IF ids[i] = ANY (sent) THEN
			statuses[i] := 'sent';
		ELSIF NOT ids[i] = ANY (coalesce(answered, '{}')) THEN
			statuses[i] := regstage.outbox_report(ids[i], http_statuses[i], errors[i], retry_afters[i]);
		END IF;
		IF next_ids[i] IS NOT NULL AND statuses[i] IN ('sent', 'failed') THEN
			nexts := nexts || next_ids[i];
			prevs := prevs || ids[i];
		END IF;
	END LOOP;
	-- the next call a sender holds for a chat whose call is done with:
	-- claimed only if it is now the chat's oldest pending call (nothing of
	-- the chat pending between the two), due and unclaimed
	IF nexts IS NOT NULL THEN
		WITH upd AS (
			UPDATE regstage.outbox o SET claimed_until = now() + lease, attempts = o.attempts + 1
			 WHERE o.id = ANY (nexts) AND coalesce(o.status, '') = 'pending'
			   AND o.next_attempt_at <= greatest(now(), o.created_at)
			   AND (o.claimed_until IS NULL OR o.claimed_until < now())
			   AND o.id > prevs[array_position(nexts, o.id)]
			   AND o.chat_id = (SELECT p.chat_id FROM regstage.outbox p WHERE p.id = prevs[array_position(nexts, o.id)])
			   -- a scalar subquery, not NOT EXISTS: an anti join may scan a
			   -- pending index whole instead of probing this chat's range
			   AND (SELECT e.id FROM regstage.outbox e
					 WHERE e.status = 'pending' AND e.chat_id = o.chat_id
					   AND e.id > prevs[array_position(nexts, o.id)] AND e.id < o.id
					 LIMIT 1) IS NULL
			RETURNING o.id)
		SELECT array_agg(upd.id) INTO claimed FROM upd;
	END IF;
	RETURN QUERY
	SELECT u.id, u.st, coalesce(u.next = ANY (claimed) AND u.st IN ('sent', 'failed'), false)
	  FROM unnest(ids, statuses, next_ids) AS u(id, st, next);
END
$$;

-- What the Bot API answered for a claimed call (http_status 0: no answer,
-- a network error).  2xx: sent.  429: this chat waits retry_after seconds,
-- no other chat does.  5xx, 0: retried with backoff (at most 60 s).  Any
-- other status (blocked by the user, chat not found, bad request): parked as
-- failed with the error — except an edit Telegram refuses with "message is
-- not modified": the message already reads so (two admins deciding the same
-- review at once edit it to the same text), which is what the call wanted.
-- Returns the call's new status.
CREATE OR REPLACE FUNCTION regstage.outbox_report(id bigint, http_status integer, error text DEFAULT NULL,
												  retry_after integer DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off SET enable_bitmapscan = off SET plan_cache_mode = force_generic_plan
AS $$	-- by primary key, whatever the queue held at the first call
DECLARE
	new_status text;
BEGIN
	IF outbox_report.http_status BETWEEN 200 AND 299 OR
	   (outbox_report.http_status = 400 AND outbox_report.error LIKE '%message is not modified%') THEN
		UPDATE regstage.outbox o SET status = 'sent', sent_at = now(), claimed_until = NULL,
			   http_status = outbox_report.http_status, last_error = outbox_report.error
		 WHERE o.id = outbox_report.id AND coalesce(o.status, '') = 'pending'
		RETURNING o.status INTO new_status;
	ELSIF outbox_report.http_status = 429 OR outbox_report.http_status >= 500 OR outbox_report.http_status = 0 THEN
		UPDATE regstage.outbox o SET claimed_until = NULL,
			   http_status = outbox_report.http_status, last_error = outbox_report.error,
			   next_attempt_at = now() + CASE
					WHEN outbox_report.http_status = 429 THEN greatest(coalesce(retry_after, 1), 1) * interval '1 second'
					ELSE least(power(2, least(o.attempts, 6)), 60) * interval '1 second' END
		 WHERE o.id = outbox_report.id AND coalesce(o.status, '') = 'pending'
		RETURNING o.status INTO new_status;
	ELSE
		UPDATE regstage.outbox o SET status = 'failed', claimed_until = NULL,
			   http_status = outbox_report.http_status, last_error = outbox_report.error
		 WHERE o.id = outbox_report.id AND coalesce(o.status, '') = 'pending'
		RETURNING o.status INTO new_status;
		IF FOUND THEN
			RAISE WARNING 'pg_regstage: outbox call % to chat % parked (HTTP %): %', outbox_report.id,
				(SELECT o.chat_id FROM regstage.outbox o WHERE o.id = outbox_report.id),
				outbox_report.http_status, outbox_report.error;
		END IF;
	END IF;
	RETURN new_status;
END
$$;

-- Retention: processed inbox rows and sent outbox rows older than
-- regstage.retention go (failed ones stay until someone handles them);
-- the background worker calls this each regstage.cleanup_interval.
CREATE OR REPLACE FUNCTION regstage.purge_processed(older_than interval DEFAULT NULL)
RETURNS TABLE (inbox_deleted bigint, outbox_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	cutoff timestamptz := now() - coalesce(older_than,
		current_setting('regstage.retention')::interval);	-- shown with a unit: '7d'
BEGIN
	DELETE FROM regstage.inbox i WHERE i.status = 'done' AND i.processed_at < cutoff;
	GET DIAGNOSTICS inbox_deleted = ROW_COUNT;
	DELETE FROM regstage.outbox o WHERE o.status = 'sent' AND o.sent_at < cutoff;
	GET DIAGNOSTICS outbox_deleted = ROW_COUNT;
	DELETE FROM regstage.seen_updates s WHERE s.seen_at < now() - interval '2 days';
	RETURN NEXT;
END
$$;

-- For the operator: updates parked as failed, oldest first.
CREATE OR REPLACE VIEW regstage.failed_updates AS
SELECT i.update_id, i.chat_id, i.attempts, i.sqlstate, i.last_error, i.received_at,
	   i.processed_at AS failed_at, left(encode(i.body, 'escape'), 2000) AS body
  FROM regstage.inbox i
 WHERE i.status = 'failed';

-- For the operator: how both queues stand right now.
CREATE OR REPLACE VIEW regstage.queue_status AS
SELECT 'inbox'::text AS queue, count(*) FILTER (WHERE status = 'pending') AS pending,
	   count(*) FILTER (WHERE status = 'pending' AND next_attempt_at > now()) AS waiting_retry,
	   count(*) FILTER (WHERE status = 'failed') AS failed,
	   now() - min(received_at) FILTER (WHERE status = 'pending') AS oldest_pending_age,
	   count(*) FILTER (WHERE status = 'done' AND attempts > 1) AS retried
  FROM regstage.inbox
UNION ALL
SELECT 'outbox', count(*) FILTER (WHERE status = 'pending'),
	   count(*) FILTER (WHERE status = 'pending' AND next_attempt_at > now()),
	   count(*) FILTER (WHERE status = 'failed'),
	   now() - min(created_at) FILTER (WHERE status = 'pending'),
	   count(*) FILTER (WHERE status = 'sent' AND attempts > 1)
  FROM regstage.outbox;
