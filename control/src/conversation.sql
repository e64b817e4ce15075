-------------------------------------------------------------------------------
-- The bot conversation: handle_update(update) -> Bot API calls
--
-- The current step is never stored: it is the first item of missing(),
-- derived from what Redis holds.  Texts come from regstage.messages.
-------------------------------------------------------------------------------


-- A text in the given language, falling back to en, then to the key itself.
--
-- PL/pgSQL, like the other helpers every update calls that read a table: a
-- SQL function that cannot be inlined (this one reads messages) has its body
-- planned again at every call before PostgreSQL 18, and three texts per
-- update made the planner a third of handle_update's CPU.  PL/pgSQL keeps
-- its plans for the connection.
CREATE OR REPLACE FUNCTION regstage.msg(lang text, msg_key text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
	found_text text;
BEGIN
	SELECT m.text INTO found_text FROM regstage.messages m WHERE m.language = lang AND m.key = msg_key;
	IF found_text IS NULL THEN
		SELECT m.text INTO found_text FROM regstage.messages m WHERE m.language = 'en' AND m.key = msg_key;
	END IF;
	RETURN coalesce(found_text, msg_key);
END
$$;

-- Does this document type take a PDF sent as a file (besides photos and
-- images)?  The setting regstage.pdf_documents lists the types that do.
CREATE OR REPLACE FUNCTION regstage.accepts_pdf(doc_type text)
RETURNS boolean LANGUAGE sql STABLE AS $$
	SELECT doc_type = ANY (string_to_array(replace(
		coalesce(current_setting('regstage.pdf_documents', true), 'passport,licence,contract'), ' ', ''), ','))
$$;

-- One sendMessage call, as handle_update returns it (nothing is queued).
-- STABLE, as jsonb_build_object is: so the planner inlines it (an IMMUTABLE
-- SQL function with a STABLE body is called, and planned, every time).
CREATE OR REPLACE FUNCTION regstage.send_message_call(chat_id bigint, text text, reply_markup jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $$
	SELECT jsonb_build_object('method', 'sendMessage', 'params',
		jsonb_strip_nulls(jsonb_build_object('chat_id', chat_id, 'text', text, 'reply_markup', reply_markup)))
$$;

-- Every language with texts, native names, one button per row.
CREATE OR REPLACE FUNCTION regstage.language_keyboard()
RETURNS jsonb LANGUAGE sql STABLE AS $$
	SELECT jsonb_build_object('inline_keyboard', coalesce(jsonb_agg(jsonb_build_array(
			jsonb_build_object('text', m.text, 'callback_data', 'lang:' || m.language))
			ORDER BY m.language <> 'ru', m.language <> 'en', m.language), '[]'))
	  FROM regstage.messages m WHERE m.key = 'language_name'
$$;

-- The language to greet a sender in before they chose one.
CREATE OR REPLACE FUNCTION regstage.guess_language(language_code text)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT DISTINCT language FROM regstage.messages
					  WHERE language = lower(split_part(language_code, '-', 1))), 'en')
$$;

-- The question for a missing item.
CREATE OR REPLACE FUNCTION regstage.ask(chat_id bigint, lang text, item text, remove_keyboard boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
	remove jsonb := CASE WHEN remove_keyboard THEN '{"remove_keyboard": true}'::jsonb END;
BEGIN
	CASE item
		WHEN 'language' THEN
			RETURN regstage.send_message_call(chat_id, regstage.msg(lang, 'choose_language'), regstage.language_keyboard());
		WHEN 'full_name' THEN
			RETURN regstage.send_message_call(chat_id, regstage.msg(lang, 'ask_full_name'), remove);
		WHEN 'phone' THEN
			RETURN regstage.send_message_call(chat_id, regstage.msg(lang, 'ask_phone'),
				jsonb_build_object('keyboard', jsonb_build_array(jsonb_build_array(
					jsonb_build_object('text', regstage.msg(lang, 'phone_button'), 'request_contact', true))),
					'resize_keyboard', true, 'one_time_keyboard', true));
		ELSE
			IF EXISTS (SELECT 1 FROM regstage.messages WHERE key = 'ask_doc:' || item) THEN
				RETURN regstage.send_message_call(chat_id, regstage.msg(lang, 'ask_doc:' || item), remove);
			END IF;
			RETURN regstage.send_message_call(chat_id, replace(regstage.msg(lang, 'ask_doc'), '{doc}', item), remove);
	END CASE;
END
$$;

-- The file_id of a photo (largest size) or of a document with an accepted
-- MIME type; NULL for anything else.
CREATE OR REPLACE FUNCTION regstage.document_file_id(message jsonb, allow_pdf boolean)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE
		WHEN jsonb_typeof(message->'photo') = 'array' AND jsonb_array_length(message->'photo') > 0 THEN
			(SELECT p->>'file_id' FROM jsonb_array_elements(message->'photo') p
			  WHERE jsonb_typeof(p) = 'object'
			  ORDER BY coalesce(CASE WHEN jsonb_typeof(p->'file_size') = 'number' THEN (p->>'file_size')::numeric END, 0) DESC,
					   coalesce(CASE WHEN jsonb_typeof(p->'width') = 'number' THEN (p->>'width')::numeric END, 0) *
					   coalesce(CASE WHEN jsonb_typeof(p->'height') = 'number' THEN (p->>'height')::numeric END, 0) DESC
			  LIMIT 1)
		WHEN jsonb_typeof(message->'document') = 'object'
			 AND (message->'document'->>'mime_type' LIKE 'image/%'
				  OR (allow_pdf AND message->'document'->>'mime_type' = 'application/pdf')) THEN
			message->'document'->>'file_id'
	END
$$;

-- The one list of outages: errors that say nothing about the update itself,
-- so the update is kept and retried without counting an attempt.  The relay
-- asks this function; nothing else decides it.
--   08 connection (Redis, Bot API, PostgreSQL)   28 Redis refused our password
--   40 serialization failure, deadlock            53 disk full, out of memory
--   57 operator intervention (shutdown ...)       58 I/O error, upload_dir missing
--   25006 a standby refused a write (reconnect to the primary)
-- Not outages: 57014 (statement_timeout or cancel: that update was too slow,
-- it counts as a failed attempt) and XX (an internal error is a bug, not a
-- reason to retry forever).
CREATE OR REPLACE FUNCTION regstage.is_outage(sqlstate text)
RETURNS boolean LANGUAGE sql IMMUTABLE STRICT AS $$
	SELECT left(sqlstate, 2) IN ('08', '28', '40', '53', '58')
		OR (left(sqlstate, 2) = '57' AND sqlstate <> '57014')
		OR sqlstate = '25006'

$$;

-- Not a usable photo/file at a document step: a hint, then the same question.
CREATE OR REPLACE FUNCTION regstage.ask_document_again(chat_id bigint, lang text, doc_type text)
RETURNS jsonb LANGUAGE sql STABLE AS $$
	SELECT jsonb_build_array(
		regstage.send_message_call(chat_id, regstage.msg(lang,
			CASE WHEN regstage.accepts_pdf(doc_type) THEN 'expect_photo' ELSE 'expect_image' END)),
		regstage.ask(chat_id, lang, doc_type))
$$;

-- Commit a complete registration in a subtransaction; the user hears the
-- result, the admins get the review (same calls, same transaction).  A
-- REJECTED user registering again: the old row goes in the same
-- subtransaction (its review history stays in review_log).
CREATE OR REPLACE FUNCTION regstage.finish_registration(tid bigint, chat_id bigint, lang text, remove_keyboard boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	user_id bigint;
	state text;
	message text;
BEGIN
	BEGIN
		DELETE FROM regstage.users u WHERE u.telegram_id = tid AND u.status = 'REJECTED';
		user_id := regstage.commit_registration(tid);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
		-- Redis down: raise, so the relay retries this update later
		PERFORM regstage.staged(tid);
		RAISE LOG 'pg_regstage: telegram_id %: registration failed (%): %', tid, state, message;
		INSERT INTO regstage.registration_events (telegram_id, kind, sqlstate) VALUES (tid, 'failed', state);
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'registration_failed'),
			CASE WHEN remove_keyboard THEN '{"remove_keyboard": true}'::jsonb END));
	END;
	INSERT INTO regstage.registration_events (telegram_id, kind) VALUES (tid, 'completed');
	RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'registration_complete'),
		CASE WHEN remove_keyboard THEN '{"remove_keyboard": true}'::jsonb END))
		|| regstage.review_notifications(user_id);
END
$$;

-- The greeting for someone with nothing staged (a registration starts).
CREATE OR REPLACE FUNCTION regstage.greet(tid bigint, chat_id bigint, lang text)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	PERFORM regstage.record_started(tid);
	RETURN jsonb_build_array(regstage.ask(chat_id, lang, 'language'));
END
$$;

-- Stage one answer and say what comes next: the next question, or the commit.
CREATE OR REPLACE FUNCTION regstage.after_staging(tid bigint, chat_id bigint, lang text, missing text[],
									   done text, remove_keyboard boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	rest text[] := array_remove(missing, done);
BEGIN
	IF cardinality(rest) = 0 THEN
		RETURN regstage.finish_registration(tid, chat_id, lang, remove_keyboard);
	END IF;
	RETURN jsonb_build_array(regstage.ask(chat_id, lang, rest[1], remove_keyboard));
END
$$;

CREATE OR REPLACE FUNCTION regstage.handle_callback(cq jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	tid bigint := (cq->'from'->>'id')::bigint;
	chat_id bigint := coalesce((cq->'message'->'chat'->>'id')::bigint, tid);
	data text := coalesce(cq->>'data', '');
	answer jsonb := jsonb_build_object('method', 'answerCallbackQuery',
									   'params', jsonb_build_object('callback_query_id', cq->>'id'));
	reg record;
	staged jsonb;
	lang text;
	missing text[];
BEGIN
	IF data LIKE 'rv:%' OR data LIKE 'adm:%' THEN
		RETURN regstage.handle_admin_callback(cq);		-- review buttons, also in the admin group
	END IF;
	IF coalesce(cq->'message'->'chat'->>'type', 'private') <> 'private' THEN
		RETURN jsonb_build_array(answer);
	END IF;
	SELECT id, status, language INTO reg FROM regstage.users WHERE telegram_id = tid;
	IF FOUND AND reg.status <> 'REJECTED' THEN		-- a REJECTED user may register again
		RETURN jsonb_build_array(answer, regstage.send_message_call(chat_id, regstage.status_text(reg.id)));
	END IF;
	staged := regstage.staged(tid);
	lang := coalesce(staged->>'language', regstage.guess_language(cq->'from'->>'language_code'));

	IF data LIKE 'lang:%' AND EXISTS (SELECT 1 FROM regstage.messages WHERE language = substr(data, 6)) THEN
		lang := substr(data, 6);
		PERFORM regstage.stage_language(tid, lang);
		RETURN answer || regstage.after_staging(tid, chat_id, lang, regstage.missing(tid), NULL);
	ELSIF data = 'restart' THEN
		PERFORM regstage.clear_registration(tid);
		RETURN answer || regstage.greet(tid, chat_id, lang);
	ELSIF data = 'continue' THEN
		RETURN answer || regstage.after_staging(tid, chat_id, lang, regstage.missing(tid), NULL);
	END IF;
	missing := regstage.missing(tid);
	RETURN jsonb_build_array(answer, regstage.send_message_call(chat_id, regstage.msg(lang, 'unknown_action')),
							 regstage.ask(chat_id, lang, missing[1]));
END
$$;

-- A typed (non-command) answer from someone not registered: one Redis round
-- trip stages it where the conversation stands, then the reply is derived
-- from the state that round trip returned.
CREATE OR REPLACE FUNCTION regstage.answer_text(tid bigint, chat_id bigint, text_in text, sender jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	r jsonb := regstage.stage_text_answer(tid, text_in,
		CASE WHEN jsonb_typeof(sender->'username') = 'string' THEN sender->>'username' END);
	state jsonb := nullif(r->'state', 'null'::jsonb);
	step text := r->>'step';
	lang text := coalesce(state->>'language', regstage.guess_language(sender->>'language_code'));
	missing text[] := regstage.missing_from(state);
BEGIN
	IF state IS NULL THEN
		-- someone we have never seen: greet
		RETURN regstage.greet(tid, chat_id, lang);
	ELSIF step = 'language' THEN
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'expect_language'),
													   regstage.language_keyboard()));
	ELSIF (r->>'staged')::boolean THEN
		RETURN regstage.after_staging(tid, chat_id, lang, missing, NULL, step = 'phone');
	ELSIF step = 'full_name' THEN
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'bad_full_name')));
	ELSIF step = 'phone' THEN
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'bad_phone')),
								 regstage.ask(chat_id, lang, step));
	ELSIF cardinality(missing) = 0 THEN
		-- complete but not committed (an earlier commit failed): try again
		RETURN regstage.finish_registration(tid, chat_id, lang, false);
	END IF;
	RETURN regstage.ask_document_again(chat_id, lang, missing[1]);
END
$$;

CREATE OR REPLACE FUNCTION regstage.handle_message(m jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	tid bigint := (m->'from'->>'id')::bigint;
	chat_id bigint := (m->'chat'->>'id')::bigint;
	text_in text := CASE WHEN jsonb_typeof(m->'text') = 'string' THEN m->>'text' END;
	command text := lower(split_part(split_part(coalesce(text_in, ''), ' ', 1), '@', 1));
	reg record;
	staged jsonb;
	lang text;
	missing text[];
	step text;
	file_id text;
	phone text;
	registered boolean;
	calls jsonb;
BEGIN
	IF regstage.is_admin(tid) THEN
		calls := regstage.handle_admin_message(m);	-- /admin, or a reason an admin types
		IF calls IS NOT NULL THEN
			RETURN calls;
		END IF;
	END IF;
	SELECT id, status, language INTO reg FROM regstage.users WHERE telegram_id = tid;
	registered := FOUND;
	IF registered AND (reg.status <> 'REJECTED' OR command = '/status') THEN
		IF reg.status = 'PENDING' AND command <> '/status' AND EXISTS (SELECT 1 FROM regstage.document_requests r
				WHERE r.user_id = reg.id AND r.received_at IS NULL) THEN
			RETURN regstage.answer_document_request(tid, chat_id, reg.id, reg.language, m);
		END IF;
		IF command = '/start' AND NOT EXISTS (SELECT 1 FROM regstage.document_requests r WHERE r.user_id = reg.id) THEN
			-- a crash between an earlier commit and its Redis DEL left staging behind
			PERFORM regstage.clear_registration(tid);
		END IF;
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.status_text(reg.id)));
	END IF;

	staged := regstage.staged(tid);
	lang := coalesce(staged->>'language', regstage.guess_language(m->'from'->>'language_code'));

	IF registered AND staged IS NULL AND command <> '/start' THEN
		-- REJECTED: /start registers again; anything else hears the status
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.status_text(reg.id)));
	END IF;
	IF command = '/status' THEN
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang,
			CASE WHEN staged IS NULL THEN 'status:none' ELSE 'status:in_progress' END)));
	END IF;

	IF text_in IS NOT NULL AND text_in NOT LIKE '/%' THEN
		RETURN regstage.answer_text(tid, chat_id, text_in, m->'from');
	END IF;

	IF command = '/cancel' THEN
		IF regstage.clear_registration(tid) THEN
			RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'cancelled'),
																 '{"remove_keyboard": true}'));
		END IF;
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'nothing_to_cancel')));
	END IF;

	IF staged IS NULL THEN
		-- /start, or anything else from someone we have never seen: greet
		RETURN regstage.greet(tid, chat_id, lang);
	END IF;

	IF command = '/start' THEN
		PERFORM regstage.extend_ttl(tid);
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'continue_prompt'),
			jsonb_build_object('inline_keyboard', jsonb_build_array(jsonb_build_array(
				jsonb_build_object('text', regstage.msg(lang, 'btn_continue'), 'callback_data', 'continue'),
				jsonb_build_object('text', regstage.msg(lang, 'btn_start_over'), 'callback_data', 'restart'))))));
	END IF;

	missing := regstage.missing_from(staged);
	step := missing[1];
	IF step IS NULL THEN
		-- complete but not committed (an earlier commit failed): try again
		RETURN regstage.finish_registration(tid, chat_id, lang, false);
	END IF;

	IF step = 'language' THEN
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'expect_language'),
													   regstage.language_keyboard()));
	ELSIF step = 'full_name' THEN
		-- typed text never gets here (answer_text); a command or a non-text does
		IF text_in IS NULL THEN
			RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'expect_text')),
									 regstage.ask(chat_id, lang, step));
		END IF;
		RETURN jsonb_build_array(regstage.ask(chat_id, lang, step));
	ELSIF step = 'phone' THEN
		IF jsonb_typeof(m->'contact') = 'object' THEN
			IF (m->'contact'->>'user_id') IS DISTINCT FROM tid::text THEN
				RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'not_your_contact')),
										 regstage.ask(chat_id, lang, step));
			END IF;
			phone := regstage.normalize_phone(coalesce(m->'contact'->>'phone_number', ''));
		ELSIF text_in IS NULL THEN
			RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'expect_text')),
									 regstage.ask(chat_id, lang, step));
		ELSE
			RETURN jsonb_build_array(regstage.ask(chat_id, lang, step));
		END IF;
		IF phone IS NULL THEN
			RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'bad_phone')),
									 regstage.ask(chat_id, lang, step));
		END IF;
		PERFORM regstage.stage_user_data(tid, jsonb_build_object('phone', phone));
		RETURN regstage.after_staging(tid, chat_id, lang, missing, step, true);
	END IF;

	-- a document step
	file_id := regstage.document_file_id(m, regstage.accepts_pdf(step));
	BEGIN
		IF file_id IS NULL THEN
			RAISE invalid_parameter_value;
		END IF;
		PERFORM regstage.stage_document(tid, step, file_id);
	EXCEPTION WHEN invalid_parameter_value THEN
		RETURN regstage.ask_document_again(chat_id, lang, step);
	END;
	RETURN regstage.after_staging(tid, chat_id, lang, missing, step);
END
$$;

-- One decoded update to the conversation: the Bot API calls it answers
-- with.  No dedupe and no error handling: its callers do both
-- (handle_update for a caller driving the conversation itself, process_next
-- for the inbox).
CREATE OR REPLACE FUNCTION regstage.dispatch_update(update jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	IF jsonb_typeof(update->'message') = 'object'
	   AND update->'message'->'chat'->>'type' = 'private'
	   AND jsonb_typeof(update->'message'->'from'->'id') = 'number'
	   AND (update->'message'->'from'->>'id') ~ '^[1-9][0-9]{0,17}$' THEN
		RETURN regstage.handle_message(update->'message');
	ELSIF jsonb_typeof(update->'message') = 'object'
	   AND update->'message'->'chat'->>'type' IN ('group', 'supergroup')
	   AND update->'message'->'chat'->>'id' = current_setting('regstage.admin_chat_id') THEN
		RETURN regstage.handle_admin_group_message(update->'message');
	ELSIF jsonb_typeof(update->'callback_query') = 'object'
	   AND jsonb_typeof(update->'callback_query'->'from'->'id') = 'number'
	   AND (update->'callback_query'->'from'->>'id') ~ '^[1-9][0-9]{0,17}$' THEN
		RETURN regstage.handle_callback(update->'callback_query');
	END IF;
	RETURN '[]';		-- groups, channels, edits and other kinds
END
$$;

-- The whole conversation: one Telegram update in, the Bot API calls to make
-- out (nothing is queued: the caller performs them).
CREATE OR REPLACE FUNCTION regstage.handle_update(update jsonb)
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	update_id bigint;
	result jsonb;
	state text;
	message text;
BEGIN
	IF update IS NULL OR jsonb_typeof(update) <> 'object'
	   OR coalesce(jsonb_typeof(update->'update_id'), '') <> 'number'
	   OR (update->>'update_id') !~ '^[0-9]{1,18}$' THEN
		RETURN '[]';
	END IF;
	update_id := (update->>'update_id')::bigint;

	-- seen before, here or through the inbox: applied once
	INSERT INTO regstage.seen_updates (update_id) VALUES (update_id) ON CONFLICT DO NOTHING;
	IF NOT FOUND THEN
		RETURN '[]';
	END IF;
	IF update_id % 1000 = 0 THEN
		DELETE FROM regstage.seen_updates WHERE seen_at < now() - interval '2 days';
	END IF;

	BEGIN
		result := regstage.dispatch_update(update);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
		IF regstage.is_outage(state) THEN
			RAISE;				-- the caller keeps the update and retries
		END IF;
		RAISE WARNING 'pg_regstage: update % ignored (%): %', update_id, state, message;
		result := '[]';
	END;
	RETURN result;
END
$$;
