-------------------------------------------------------------------------------
-- Admin review: the registration's other half.
--
--   commit        finish_registration() adds review_calls() for every review
--                 chat (regstage.admin_chat_id, or each admin's own chat) to
--                 the completing update's calls: same transaction
--   buttons       rv:<action>:<users.id>[:<mask>[:<reason>]] and adm:<p|u>:<n>,
--                 handled by handle_admin_callback(); only regstage.admins
--                 rows may press them (anyone else: refused and logged)
--   decision      one conditional UPDATE ... WHERE status = 'PENDING': the row
--                 lock lets exactly one of two admins win
--   notification  the AFTER UPDATE OF status trigger on users queues the
--                 user's message (regstage.send_message): a decision made
--                 with the buttons or from SQL notifies once, a rolled-back
--                 one never
-------------------------------------------------------------------------------

-- Placeholders {name} filled from a jsonb object, in one pass (a value is
-- never scanned for placeholders itself).
CREATE OR REPLACE FUNCTION regstage.fill(template text, vars jsonb)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	rest text := template;
	result text := '';
	m text[];
BEGIN
	LOOP
		m := regexp_match(rest, '^(.*?)\{([a-z_]+)\}(.*)$', 's');
		EXIT WHEN m IS NULL;
		result := result || m[1] || CASE WHEN vars ? m[2] THEN coalesce(vars->>m[2], '') ELSE '{' || m[2] || '}' END;
		rest := m[3];
	END LOOP;
	RETURN result || rest;
END
$$;

-- (PL/pgSQL for its kept plan: asked for every update; see msg())
CREATE OR REPLACE FUNCTION regstage.is_admin(telegram_id bigint)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
	RETURN EXISTS (SELECT 1 FROM regstage.admins a WHERE a.telegram_id = is_admin.telegram_id);
END
$$;

CREATE OR REPLACE FUNCTION regstage.admin_language(telegram_id bigint)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT a.language FROM regstage.admins a WHERE a.telegram_id = admin_language.telegram_id
					  AND EXISTS (SELECT 1 FROM regstage.messages m WHERE m.language = a.language)), 'en')
$$;

-- Who decided, for the other admins: the admin's name, or "SQL".
CREATE OR REPLACE FUNCTION regstage.admin_label(admin_id bigint, lang text)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT CASE WHEN admin_id IS NULL THEN regstage.msg(lang, 'admin:by_sql')
		   ELSE coalesce((SELECT a.name FROM regstage.admins a WHERE a.telegram_id = admin_id), 'id ' || admin_id) END
$$;

-- Where the review of a new registration goes: the admin group
-- (regstage.admin_chat_id, in the language most admins have), or, with 0,
-- each admin's own chat in their language.
CREATE OR REPLACE FUNCTION regstage.review_chats()
RETURNS TABLE (chat_id bigint, language text) LANGUAGE sql STABLE AS $$
	SELECT g.id, coalesce((SELECT mode() WITHIN GROUP (ORDER BY regstage.admin_language(a.telegram_id))
							 FROM regstage.admins a), 'en')
	  FROM (SELECT current_setting('regstage.admin_chat_id')::bigint AS id) g
	 WHERE g.id <> 0
	UNION ALL
	SELECT a.telegram_id, regstage.admin_language(a.telegram_id)
	  FROM regstage.admins a
	 WHERE current_setting('regstage.admin_chat_id')::bigint = 0
	ORDER BY 1
$$;

-- Document types by their name in a language ('doc_name:<type>'), listed.
CREATE OR REPLACE FUNCTION regstage.document_names(doc_types text[], lang text)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT string_agg(CASE WHEN n.t = 'doc_name:' || d THEN d ELSE n.t END, ', ' ORDER BY i)
	  FROM unnest(doc_types) WITH ORDINALITY AS u(d, i),
		   LATERAL (SELECT regstage.msg(lang, 'doc_name:' || d) AS t) n
$$;

-- How a stored file_id must be sent back: 'photo' or 'document' (Telegram
-- refuses a file_id of one kind sent as the other).  A Bot API file_id
-- starts with its file type (base64url of a little-endian int: "Ag" photo,
-- "BQ" document); an id that says neither goes by the file's content.
CREATE OR REPLACE FUNCTION regstage.file_id_kind(file_id text, file_path text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE
		WHEN file_id LIKE 'Ag%' THEN 'photo'
		WHEN file_id LIKE 'BQ%' THEN 'document'
		WHEN file_path LIKE '%.jpg' OR file_path LIKE '%.png' THEN 'photo'
		ELSE 'document' END
$$;

-- A timestamp as admins read it (the session's TimeZone).
CREATE OR REPLACE FUNCTION regstage.review_time(at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT coalesce(to_char(at, 'YYYY-MM-DD HH24:MI'), '—')
$$;

-- The summary of a registration for admins: who, when, which documents.
CREATE OR REPLACE FUNCTION regstage.review_summary(user_id bigint, lang text)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT regstage.fill(regstage.msg(lang, 'admin:summary'), jsonb_build_object(
		'id', u.id, 'full_name', u.full_name, 'phone', u.phone,
		'username', coalesce('@' || u.username, '—'), 'language', u.language,
		'started', regstage.review_time((SELECT max(e.at) FROM regstage.registration_events e
										  WHERE e.telegram_id = u.telegram_id AND e.kind = 'started'
											AND e.at <= u.created_at)),
		'finished', regstage.review_time(u.created_at),
		'documents', coalesce(regstage.document_names(ARRAY(
			SELECT d.doc_type FROM regstage.documents d WHERE d.user_id = u.id ORDER BY d.id), lang), '—')))
	  FROM regstage.users u WHERE u.id = review_summary.user_id
$$;

-- The line under the summary once someone acted: who, when, what.
CREATE OR REPLACE FUNCTION regstage.review_outcome(user_id bigint, lang text)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT CASE
		WHEN u.status IN ('APPROVED', 'REJECTED') THEN
			regstage.fill(regstage.msg(lang, 'admin:decided:' || u.status), jsonb_build_object(
				'admin', regstage.admin_label(u.reviewed_by, lang), 'at', regstage.review_time(u.reviewed_at),
				'reason', coalesce(u.reject_reason, regstage.msg(lang, 'reason_not_given'))))
		WHEN r.user_id IS NOT NULL THEN
			regstage.fill(regstage.msg(lang, 'admin:requested'), jsonb_build_object(
				'admin', regstage.admin_label(r.requested_by, lang), 'at', regstage.review_time(r.requested_at),
				'documents', regstage.document_names(r.doc_types, lang),
				'reason', coalesce(r.reason, regstage.msg(lang, 'reason_not_given'))))
		END
	  FROM regstage.users u
	  LEFT JOIN regstage.document_requests r ON r.user_id = u.id
	 WHERE u.id = review_outcome.user_id
$$;

CREATE OR REPLACE FUNCTION regstage.review_text(user_id bigint, lang text)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT regstage.review_summary(user_id, lang) || coalesce(E'\n\n' || regstage.review_outcome(user_id, lang), '')
$$;

-- The review buttons: main (approve / reject / documents), the reasons to
-- reject, the documents to ask for again (mask: the chosen ones, bit n-1 =
-- the user's n-th document) and the reasons to ask for them.
CREATE OR REPLACE FUNCTION regstage.review_keyboard(user_id bigint, lang text, menu text DEFAULT 'main', mask integer DEFAULT 0)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
	id text := user_id::text;
	rows jsonb;
	code text;
BEGIN
	IF menu = 'main' THEN
		rows := jsonb_build_array(
			jsonb_build_array(
				jsonb_build_object('text', regstage.msg(lang, 'admin:btn_approve'), 'callback_data', 'rv:a:' || id),
				jsonb_build_object('text', regstage.msg(lang, 'admin:btn_reject'), 'callback_data', 'rv:r:' || id)),
			jsonb_build_array(
				jsonb_build_object('text', regstage.msg(lang, 'admin:btn_documents'), 'callback_data', 'rv:d:' || id)));
	ELSIF menu = 'reject' THEN
		rows := '[]';
		FOREACH code IN ARRAY ARRAY['documents', 'data', 'duplicate'] LOOP
			rows := rows || jsonb_build_array(jsonb_build_array(jsonb_build_object(
				'text', regstage.msg(lang, 'reject_reason:' || code), 'callback_data', 'rv:rr:' || id || ':0:' || code)));
		END LOOP;
		rows := rows || jsonb_build_array(jsonb_build_array(
			jsonb_build_object('text', regstage.msg(lang, 'admin:btn_other'), 'callback_data', 'rv:rr:' || id || ':0:other')));
	ELSIF menu = 'documents' THEN
		SELECT coalesce(jsonb_agg(jsonb_build_array(jsonb_build_object(
				'text', CASE WHEN mask & (1 << (n - 1)::integer) <> 0 THEN '☑ ' ELSE '☐ ' END
						|| regstage.document_names(ARRAY[t], lang),
				'callback_data', 'rv:dt:' || id || ':' || (mask # (1 << (n - 1)::integer)))) ORDER BY n), '[]')
		  INTO rows
		  FROM unnest(regstage.review_document_types(user_id)) WITH ORDINALITY AS d(t, n);
		rows := rows || jsonb_build_array(jsonb_build_array(
			jsonb_build_object('text', regstage.msg(lang, 'admin:btn_send'), 'callback_data', 'rv:ds:' || id || ':' || mask)));
	ELSIF menu = 'documents_reason' THEN
		rows := '[]';
		FOREACH code IN ARRAY ARRAY['unreadable', 'expired', 'mismatch', 'other'] LOOP
			rows := rows || jsonb_build_array(jsonb_build_array(jsonb_build_object(
				'text', CASE WHEN code = 'other' THEN regstage.msg(lang, 'admin:btn_other')
						ELSE regstage.msg(lang, 'documents_reason:' || code) END,
				'callback_data', 'rv:dr:' || id || ':' || mask || ':' || code)));
		END LOOP;
	END IF;
	IF menu <> 'main' THEN
		rows := rows || jsonb_build_array(jsonb_build_array(
			jsonb_build_object('text', regstage.msg(lang, 'admin:btn_back'), 'callback_data', 'rv:x:' || id)));
	END IF;
	RETURN jsonb_build_object('inline_keyboard', rows);
END
$$;

-- The document types an admin may ask for again: the user's documents (at
-- most 20: the mask is an integer), else the required ones.
CREATE OR REPLACE FUNCTION regstage.review_document_types(user_id bigint)
RETURNS text[] LANGUAGE sql STABLE AS $$
	SELECT CASE WHEN cardinality(have) > 0 THEN have[1:20]
		   ELSE (string_to_array(replace(current_setting('regstage.required_documents'), ' ', ''), ','))[1:20] END
	  FROM (SELECT ARRAY(SELECT d.doc_type FROM regstage.documents d
						  WHERE d.user_id = review_document_types.user_id ORDER BY d.id) AS have) s
$$;

-- What a review chat gets for a registration: its documents (photos as one
-- album, other files one by one: Telegram mixes neither in an album) and the
-- summary with the decision buttons.
CREATE OR REPLACE FUNCTION regstage.review_calls(user_id bigint, chat_id bigint, lang text)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
	u record;
	title text;
	photos jsonb;
	calls jsonb := '[]';
	d record;
BEGIN
	SELECT * INTO u FROM regstage.users WHERE id = user_id;
	IF NOT FOUND THEN
		RETURN '[]';
	END IF;
	title := u.full_name || ' (#' || u.id || ')';
	SELECT jsonb_agg(jsonb_build_object('type', 'photo', 'media', x.telegram_file_id,
				'caption', CASE WHEN x.n = 1 THEN title || ': ' ELSE '' END || regstage.document_names(ARRAY[x.doc_type], lang))
			ORDER BY x.n)
	  INTO photos
	  FROM (SELECT dd.telegram_file_id, dd.doc_type, row_number() OVER (ORDER BY dd.id) AS n
			  FROM regstage.documents dd
			 WHERE dd.user_id = u.id AND regstage.file_id_kind(dd.telegram_file_id, dd.file_path) = 'photo') x;
	IF jsonb_array_length(photos) = 1 THEN
		calls := calls || jsonb_build_array(jsonb_build_object('method', 'sendPhoto', 'params', jsonb_build_object(
			'chat_id', chat_id, 'photo', photos->0->'media', 'caption', photos->0->'caption')));
	ELSIF jsonb_array_length(photos) > 1 THEN
		calls := calls || jsonb_build_array(jsonb_build_object('method', 'sendMediaGroup', 'params', jsonb_build_object(
			'chat_id', chat_id, 'media', photos)));
	END IF;
	FOR d IN SELECT dd.telegram_file_id, dd.doc_type FROM regstage.documents dd
			  WHERE dd.user_id = u.id AND regstage.file_id_kind(dd.telegram_file_id, dd.file_path) = 'document'
			  ORDER BY dd.id
	LOOP
		calls := calls || jsonb_build_array(jsonb_build_object('method', 'sendDocument', 'params', jsonb_build_object(
			'chat_id', chat_id, 'document', d.telegram_file_id,
			'caption', title || ': ' || regstage.document_names(ARRAY[d.doc_type], lang))));
	END LOOP;
	RETURN calls || jsonb_build_array(regstage.send_message_call(chat_id, regstage.review_text(u.id, lang),
		CASE WHEN u.status = 'PENDING' THEN regstage.review_keyboard(u.id, lang) END));
END
$$;

-- The review of a registration for every review chat (none without admins).
CREATE OR REPLACE FUNCTION regstage.review_notifications(user_id bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$
	SELECT coalesce(jsonb_agg(c ORDER BY r.chat_id, n), '[]')
	  FROM regstage.review_chats() r,
		   jsonb_array_elements(regstage.review_calls(user_id, r.chat_id, r.language)) WITH ORDINALITY AS a(c, n)
$$;

-- Bot API call builders for the review messages.
-- (STABLE like send_message_call: so they are inlined)
CREATE OR REPLACE FUNCTION regstage.answer_callback_call(callback_query_id text, text text DEFAULT NULL,
														 show_alert boolean DEFAULT false)
RETURNS jsonb LANGUAGE sql STABLE AS $$
	SELECT jsonb_build_object('method', 'answerCallbackQuery', 'params', jsonb_strip_nulls(jsonb_build_object(
		'callback_query_id', callback_query_id, 'text', text,
		'show_alert', CASE WHEN show_alert THEN true END)))
$$;

CREATE OR REPLACE FUNCTION regstage.edit_message_call(chat_id bigint, message_id bigint, text text,
													  reply_markup jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $$
	SELECT CASE WHEN text IS NULL THEN
		jsonb_build_object('method', 'editMessageReplyMarkup', 'params', jsonb_strip_nulls(jsonb_build_object(
			'chat_id', chat_id, 'message_id', message_id, 'reply_markup', reply_markup)))
	ELSE
		jsonb_build_object('method', 'editMessageText', 'params', jsonb_strip_nulls(jsonb_build_object(
			'chat_id', chat_id, 'message_id', message_id, 'text', text, 'reply_markup', reply_markup)))
	END
$$;

-- Someone else acted first: say who, and show it on the pressed message.
CREATE OR REPLACE FUNCTION regstage.review_already(user_id bigint, chat_id bigint, message_id bigint,
												   lang text, callback_query_id text)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
	u record;
	note text;
BEGIN
	SELECT * INTO u FROM regstage.users WHERE id = user_id;
	IF NOT FOUND THEN
		note := regstage.msg(lang, 'admin:gone');
	ELSE
		note := regstage.fill(regstage.msg(lang, 'admin:already'), jsonb_build_object(
			'decision', regstage.msg(lang, 'admin:word:' || u.status),
			'admin', regstage.admin_label(u.reviewed_by, lang)));
	END IF;
	RETURN CASE WHEN callback_query_id IS NOT NULL
				THEN jsonb_build_array(regstage.answer_callback_call(callback_query_id, note, true))
				ELSE jsonb_build_array(regstage.send_message_call(chat_id, note)) END
		|| CASE WHEN u.id IS NOT NULL AND message_id IS NOT NULL
				THEN jsonb_build_array(regstage.edit_message_call(chat_id, message_id, regstage.review_text(u.id, lang)))
				ELSE '[]' END;
END
$$;

-- Approve or reject: exactly one admin wins (the row lock of the
-- conditional UPDATE); the user hears it from the status trigger.
CREATE OR REPLACE FUNCTION regstage.decide(user_id bigint, admin_id bigint, new_status text, reason text,
										   chat_id bigint, message_id bigint, lang text, callback_query_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	tid bigint;
	had_request boolean;
BEGIN
	UPDATE regstage.users u SET status = new_status, reviewed_by = admin_id, reviewed_at = now(),
		   reject_reason = CASE WHEN new_status = 'REJECTED' THEN reason END
	 WHERE u.id = decide.user_id AND u.status = 'PENDING'
	RETURNING u.telegram_id INTO tid;
	IF NOT FOUND THEN
		RETURN regstage.review_already(user_id, chat_id, message_id, lang, callback_query_id);
	END IF;
	DELETE FROM regstage.admin_input i WHERE i.user_id = decide.user_id;
	DELETE FROM regstage.document_requests r WHERE r.user_id = decide.user_id;
	had_request := FOUND;
	IF had_request THEN
		PERFORM regstage.clear_registration(tid);	-- documents staged for a request that is moot now
	END IF;
	RETURN CASE WHEN callback_query_id IS NOT NULL
				THEN jsonb_build_array(regstage.answer_callback_call(callback_query_id, regstage.msg(lang, 'admin:done')))
				ELSE '[]' END
		|| CASE WHEN message_id IS NOT NULL
				THEN jsonb_build_array(regstage.edit_message_call(chat_id, message_id, regstage.review_text(user_id, lang)))
				ELSE '[]' END;
END
$$;

-- Ask a PENDING user for new documents (the user hears it from the
-- document_requests trigger); the review stays open.
CREATE OR REPLACE FUNCTION regstage.request_documents(user_id bigint, admin_id bigint, doc_types text[], reason text,
													  chat_id bigint, message_id bigint, lang text, callback_query_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	u record;
BEGIN
	SELECT * INTO u FROM regstage.users x WHERE x.id = request_documents.user_id AND x.status = 'PENDING' FOR UPDATE;
	IF NOT FOUND THEN
		RETURN regstage.review_already(user_id, chat_id, message_id, lang, callback_query_id);
	END IF;
	-- documents staged for an earlier request do not count for this one
	PERFORM regstage.clear_registration(u.telegram_id);
	INSERT INTO regstage.document_requests AS r (user_id, doc_types, reason, requested_by)
	VALUES (u.id, doc_types, reason, admin_id)
	ON CONFLICT ON CONSTRAINT document_requests_pkey DO UPDATE
	   SET doc_types = EXCLUDED.doc_types, reason = EXCLUDED.reason, requested_by = EXCLUDED.requested_by,
		   requested_at = now(), received_at = NULL;
	DELETE FROM regstage.admin_input i WHERE i.user_id = u.id;
	INSERT INTO regstage.review_log (user_id, telegram_id, admin_id, action, detail, waited)
	VALUES (u.id, u.telegram_id, admin_id, 'documents_requested',
			array_to_string(doc_types, ',') || coalesce(': ' || reason, ''), now() - u.created_at);
	RETURN CASE WHEN callback_query_id IS NOT NULL
				THEN jsonb_build_array(regstage.answer_callback_call(callback_query_id, regstage.msg(lang, 'admin:done')))
				ELSE '[]' END
		|| CASE WHEN message_id IS NOT NULL
				THEN jsonb_build_array(regstage.edit_message_call(chat_id, message_id, regstage.review_text(u.id, lang),
																  regstage.review_keyboard(u.id, lang)))
				ELSE '[]' END;
END
$$;

-- The review queue for /admin: how many wait, since when, one button per
-- registration (5 a page).  {text, reply_markup}.
CREATE OR REPLACE FUNCTION regstage.review_queue(lang text, page integer DEFAULT 0)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
	per_page constant integer := 5;
	n bigint;
	oldest timestamptz;
	pages integer;
	rows jsonb;
	nav jsonb := '[]';
BEGIN
	SELECT count(*), min(created_at) INTO n, oldest FROM regstage.users WHERE status = 'PENDING';
	IF n = 0 THEN
		RETURN jsonb_build_object('text', regstage.msg(lang, 'admin:queue_empty'));
	END IF;
	pages := ceil(n::numeric / per_page);
	page := least(greatest(coalesce(page, 0), 0), pages - 1);
	SELECT jsonb_agg(jsonb_build_array(jsonb_build_object(
			'text', p.full_name || ' (#' || p.id || ')' || CASE WHEN p.requested THEN ' 📄' ELSE '' END,
			'callback_data', 'adm:u:' || p.id)) ORDER BY p.created_at, p.id)
	  INTO rows
	  FROM (SELECT u.id, u.full_name, u.created_at,
				   EXISTS (SELECT 1 FROM regstage.document_requests r WHERE r.user_id = u.id) AS requested
			  FROM regstage.users u WHERE u.status = 'PENDING'
			 ORDER BY u.created_at, u.id OFFSET page * per_page LIMIT per_page) p;
	IF page > 0 THEN
		nav := nav || jsonb_build_object('text', regstage.msg(lang, 'admin:btn_prev'), 'callback_data', 'adm:p:' || page - 1);
	END IF;
	IF page < pages - 1 THEN
		nav := nav || jsonb_build_object('text', regstage.msg(lang, 'admin:btn_next'), 'callback_data', 'adm:p:' || page + 1);
	END IF;
	IF jsonb_array_length(nav) > 0 THEN
		rows := rows || jsonb_build_array(nav);
	END IF;
	RETURN jsonb_build_object('text', regstage.fill(regstage.msg(lang, 'admin:queue'), jsonb_build_object(
			'count', n, 'oldest', regstage.review_time(oldest), 'page', page + 1, 'pages', pages)),
		'reply_markup', jsonb_build_object('inline_keyboard', rows));
END
$$;

-- A review button (rv:...) or a queue button (adm:...).  Only admins: a
-- press by anyone else changes nothing, is answered "only admins" and
-- logged (review_log 'refused', and the server log).
CREATE OR REPLACE FUNCTION regstage.handle_admin_callback(cq jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	admin_id bigint := (cq->'from'->>'id')::bigint;
	data text := left(coalesce(cq->>'data', ''), 64);
	part text[] := string_to_array(data, ':');
	cb text := cq->>'id';
	chat_id bigint := CASE WHEN cq->'message'->'chat'->>'id' ~ '^-?[0-9]{1,18}$'
						   THEN (cq->'message'->'chat'->>'id')::bigint ELSE admin_id END;
	message_id bigint := CASE WHEN cq->'message'->>'message_id' ~ '^[0-9]{1,18}$'
							  THEN (cq->'message'->>'message_id')::bigint END;
	uid bigint := CASE WHEN part[3] ~ '^[0-9]{1,18}$' THEN part[3]::bigint END;
	mask integer := CASE WHEN part[4] ~ '^[0-9]{1,7}$' THEN part[4]::integer ELSE 0 END;
	code text := part[5];
	lang text;
	u record;
	chosen text[];
	q jsonb;
BEGIN
	IF NOT regstage.is_admin(admin_id) THEN
		INSERT INTO regstage.review_log (user_id, admin_id, action, detail)
		VALUES (CASE WHEN part[1] = 'rv' THEN uid END, admin_id, 'refused', data);
		RAISE LOG 'pg_regstage: review button "%" pressed by telegram_id %, who is not in regstage.admins: refused',
			data, admin_id;
		RETURN jsonb_build_array(regstage.answer_callback_call(cb,
			regstage.msg(regstage.guess_language(cq->'from'->>'language_code'), 'admin:not_admin'), true));
	END IF;
	lang := regstage.admin_language(admin_id);

	IF part[1] = 'adm' AND part[2] = 'p' THEN
		q := regstage.review_queue(lang, CASE WHEN part[3] ~ '^[0-9]{1,6}$' THEN part[3]::integer ELSE 0 END);
		RETURN jsonb_build_array(regstage.answer_callback_call(cb),
			regstage.edit_message_call(chat_id, message_id, q->>'text', q->'reply_markup'));
	END IF;
	SELECT * INTO u FROM regstage.users x WHERE x.id = uid;
	IF uid IS NULL OR NOT FOUND THEN
		RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'admin:gone'), true));
	END IF;
	IF part[1] = 'adm' AND part[2] = 'u' THEN
		RETURN jsonb_build_array(regstage.answer_callback_call(cb)) || regstage.review_calls(u.id, chat_id, lang);
	END IF;
	IF part[1] <> 'rv' THEN
		RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'unknown_action')));
	END IF;
	IF u.status <> 'PENDING' THEN
		RETURN regstage.review_already(u.id, chat_id, message_id, lang, cb);
	END IF;

	CASE part[2]
	WHEN 'a' THEN
		RETURN regstage.decide(u.id, admin_id, 'APPROVED', NULL, chat_id, message_id, lang, cb);
	WHEN 'r' THEN
		RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'admin:choose_reason')),
			regstage.edit_message_call(chat_id, message_id, NULL, regstage.review_keyboard(u.id, lang, 'reject')));
	WHEN 'rr' THEN
		IF code = 'other' THEN
			RETURN regstage.ask_admin_reason(admin_id, u.id, 'reject', NULL, chat_id, message_id, lang, cb,
											 cq->'from'->>'username');
		ELSIF code IN ('documents', 'data', 'duplicate') THEN
			-- the reason is kept as the user reads it
			RETURN regstage.decide(u.id, admin_id, 'REJECTED', regstage.msg(u.language, 'reject_reason:' || code),
								   chat_id, message_id, lang, cb);
		END IF;
	WHEN 'd' THEN
		RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'admin:choose_documents')),
			regstage.edit_message_call(chat_id, message_id, NULL, regstage.review_keyboard(u.id, lang, 'documents', 0)));
	WHEN 'dt' THEN
		RETURN jsonb_build_array(regstage.answer_callback_call(cb),
			regstage.edit_message_call(chat_id, message_id, NULL, regstage.review_keyboard(u.id, lang, 'documents', mask)));
	WHEN 'ds' THEN
		IF mask = 0 THEN
			RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'admin:choose_documents'), true));
		END IF;
		RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'admin:choose_reason')),
			regstage.edit_message_call(chat_id, message_id, NULL, regstage.review_keyboard(u.id, lang, 'documents_reason', mask)));
	WHEN 'dr' THEN
		chosen := ARRAY(SELECT t FROM unnest(regstage.review_document_types(u.id)) WITH ORDINALITY AS d(t, n)
						 WHERE mask & (1 << (n - 1)::integer) <> 0 ORDER BY n);
		IF cardinality(chosen) = 0 THEN
			RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'admin:choose_documents'), true));
		ELSIF code = 'other' THEN
			RETURN regstage.ask_admin_reason(admin_id, u.id, 'documents', chosen, chat_id, message_id, lang, cb,
											 cq->'from'->>'username');
		ELSIF code IN ('unreadable', 'expired', 'mismatch') THEN
			RETURN regstage.request_documents(u.id, admin_id, chosen, regstage.msg(u.language, 'documents_reason:' || code),
											  chat_id, message_id, lang, cb);
		END IF;
	WHEN 'x' THEN
		RETURN jsonb_build_array(regstage.answer_callback_call(cb),
			regstage.edit_message_call(chat_id, message_id, NULL, regstage.review_keyboard(u.id, lang)));
	ELSE
		NULL;
	END CASE;
	RETURN jsonb_build_array(regstage.answer_callback_call(cb, regstage.msg(lang, 'unknown_action')));
END
$$;

-- "Other": the admin's next text is the reason (asked with force_reply, so
-- in a group with privacy mode the answer still reaches the bot).  In the
-- group the reply field should open for the admin who pressed only: a
-- selective force_reply opens it for the users the text @mentions, and for
-- no one when it mentions no one, so the question starts with the admin's
-- @username; an admin without one gets a force_reply for the whole group.
CREATE OR REPLACE FUNCTION regstage.ask_admin_reason(admin_id bigint, user_id bigint, action text, doc_types text[],
													 chat_id bigint, message_id bigint, lang text, callback_query_id text,
													 admin_username text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	u record;
	mention text := CASE WHEN chat_id <> admin_id AND admin_username ~ '^[A-Za-z0-9_]{1,64}$'
						 THEN '@' || admin_username || ' ' END;
BEGIN
	SELECT x.id, x.full_name INTO u FROM regstage.users x WHERE x.id = ask_admin_reason.user_id;
	INSERT INTO regstage.admin_input AS i (admin_id, user_id, action, doc_types, chat_id, message_id)
	VALUES (admin_id, u.id, action, doc_types, chat_id, message_id)
	ON CONFLICT ON CONSTRAINT admin_input_pkey DO UPDATE
	   SET user_id = EXCLUDED.user_id, action = EXCLUDED.action, doc_types = EXCLUDED.doc_types,
		   chat_id = EXCLUDED.chat_id, message_id = EXCLUDED.message_id, asked_at = now();
	RETURN jsonb_build_array(regstage.answer_callback_call(callback_query_id),
		regstage.send_message_call(chat_id, coalesce(mention, '') || regstage.fill(regstage.msg(lang, 'admin:type_reason'),
			jsonb_build_object('full_name', u.full_name, 'id', u.id)),
			CASE WHEN chat_id = admin_id OR mention IS NOT NULL THEN '{"force_reply": true, "selective": true}'
				 ELSE '{"force_reply": true}' END::jsonb));
END
$$;

-- A message from an admin (private chat, or the admin group): /admin, or
-- the reason an admin was asked to type.  NULL: not an admin matter (the
-- conversation goes on as for anyone).
CREATE OR REPLACE FUNCTION regstage.handle_admin_message(m jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	sender_id bigint := (m->'from'->>'id')::bigint;
	chat_id bigint := (m->'chat'->>'id')::bigint;
	text_in text := CASE WHEN jsonb_typeof(m->'text') = 'string' THEN m->>'text' END;
	command text := lower(split_part(split_part(coalesce(text_in, ''), ' ', 1), '@', 1));
	lang text := regstage.admin_language(sender_id);
	inp record;
	reason text;
	q jsonb;
	calls jsonb;
BEGIN
	IF command = '/admin' THEN
		q := regstage.review_queue(lang, 0);
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, q->>'text', q->'reply_markup'));
	END IF;
	SELECT * INTO inp FROM regstage.admin_input i WHERE i.admin_id = sender_id FOR UPDATE;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	IF m->'chat'->>'type' <> 'private' AND NOT (m ? 'reply_to_message') AND command <> '/cancel' THEN
		RETURN '[]';		-- in the group only a reply to the bot's question is the reason
	END IF;
	IF command = '/cancel' THEN
		DELETE FROM regstage.admin_input i WHERE i.admin_id = sender_id;
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'admin:input_cancelled')));
	END IF;
	reason := btrim(text_in);
	IF reason IS NULL OR reason LIKE '/%' OR length(reason) NOT BETWEEN 1 AND 500 THEN
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'admin:bad_reason'),
			'{"force_reply": true, "selective": true}'));
	END IF;
	DELETE FROM regstage.admin_input i WHERE i.admin_id = sender_id;
	IF inp.action = 'reject' THEN
		calls := regstage.decide(inp.user_id, sender_id, 'REJECTED', reason, inp.chat_id, inp.message_id, lang, NULL);
	ELSE
		calls := regstage.request_documents(inp.user_id, sender_id, inp.doc_types, reason,
											inp.chat_id, inp.message_id, lang, NULL);
	END IF;
	RETURN calls || jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'admin:done')));
END
$$;

-- A message in the admin group: only admins' are read.
CREATE OR REPLACE FUNCTION regstage.handle_admin_group_message(m jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	IF coalesce(jsonb_typeof(m->'from'->'id'), '') <> 'number' OR (m->'from'->>'id') !~ '^[1-9][0-9]{0,17}$'
	   OR NOT regstage.is_admin((m->'from'->>'id')::bigint) THEN
		RETURN '[]';
	END IF;
	RETURN coalesce(regstage.handle_admin_message(m), '[]');
END
$$;

-------------------------------------------------------------------------------
-- The registered user's side
-------------------------------------------------------------------------------

-- Which new documents a user is asked for, and why.
CREATE OR REPLACE FUNCTION regstage.documents_requested_text(user_id bigint)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT regstage.fill(regstage.msg(u.language, 'documents_requested'), jsonb_build_object(
		'documents', regstage.document_names(r.doc_types, u.language),
		'reason', coalesce(r.reason, regstage.msg(u.language, 'reason_not_given'))))
	  FROM regstage.users u JOIN regstage.document_requests r ON r.user_id = u.id
	 WHERE u.id = documents_requested_text.user_id
$$;

-- What a registered user is told about their registration (/status, and
-- any message once registered).
CREATE OR REPLACE FUNCTION regstage.status_text(user_id bigint)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT CASE
		WHEN u.status = 'REJECTED' THEN
			regstage.msg(u.language, 'status:REJECTED') || E'\n' ||
			regstage.fill(regstage.msg(u.language, 'reason'), jsonb_build_object(
				'reason', coalesce(u.reject_reason, regstage.msg(u.language, 'reason_not_given')))) || E'\n' ||
			regstage.msg(u.language, 'register_again')
		WHEN r.received_at IS NOT NULL THEN regstage.msg(u.language, 'documents_received')
		WHEN r.user_id IS NOT NULL THEN regstage.documents_requested_text(u.id)
		ELSE regstage.msg(u.language, 'status:' || u.status) END
	  FROM regstage.users u
	  LEFT JOIN regstage.document_requests r ON r.user_id = u.id
	 WHERE u.id = status_text.user_id
$$;

-- The message a status change sends the user.
CREATE OR REPLACE FUNCTION regstage.status_notice(lang text, status text, reason text)
RETURNS text LANGUAGE sql STABLE AS $$
	SELECT CASE WHEN status = 'REJECTED' THEN
		regstage.fill(regstage.msg(lang, 'notify:REJECTED'), jsonb_build_object(
			'reason', coalesce(reason, regstage.msg(lang, 'reason_not_given')))) || E'\n' ||
		regstage.msg(lang, 'register_again')
	ELSE regstage.msg(lang, 'notify:' || status) END
$$;

-- BEFORE UPDATE OF status: a change that does not say who made it was made
-- from SQL (reviewed_by NULL); the time is stamped; PENDING clears the
-- review, and only REJECTED keeps a reason.
CREATE OR REPLACE FUNCTION regstage.users_review_stamp()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status IS DISTINCT FROM OLD.status THEN
		IF NEW.status = 'PENDING' THEN
			NEW.reviewed_by := NULL;
			NEW.reviewed_at := NULL;
		ELSE
			IF NEW.reviewed_by IS NOT DISTINCT FROM OLD.reviewed_by THEN
				NEW.reviewed_by := NULL;
			END IF;
			IF NEW.reviewed_at IS NOT DISTINCT FROM OLD.reviewed_at THEN
				NEW.reviewed_at := now();
			END IF;
		END IF;
		IF NEW.status <> 'REJECTED' THEN
			NEW.reject_reason := NULL;
		END IF;
	END IF;
	RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER users_review_stamp
	BEFORE UPDATE OF status ON regstage.users
	FOR EACH ROW EXECUTE FUNCTION regstage.users_review_stamp();

-- AFTER UPDATE OF status: the audit row and the user's message, queued in
-- the updating transaction (a rolled-back change notifies no one).  The
-- one place a status change notifies: admin buttons and SQL alike.
CREATE OR REPLACE FUNCTION regstage.users_status_notify()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	INSERT INTO regstage.review_log (user_id, telegram_id, admin_id, action, detail, waited)
	VALUES (NEW.id, NEW.telegram_id, NEW.reviewed_by, lower(NEW.status), NEW.reject_reason, now() - NEW.created_at);
	PERFORM regstage.send_message(NEW.telegram_id, regstage.status_notice(NEW.language, NEW.status, NEW.reject_reason));
	RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER users_status_notify
	AFTER UPDATE OF status ON regstage.users
	FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
	EXECUTE FUNCTION regstage.users_status_notify();

-- AFTER INSERT OR UPDATE on document_requests: the user hears which
-- documents to send and why, and the question for the first.
CREATE OR REPLACE FUNCTION regstage.document_requests_notify()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	u record;
	q jsonb;
BEGIN
	IF NEW.received_at IS NOT NULL THEN
		RETURN NULL;
	END IF;
	SELECT telegram_id, language INTO u FROM regstage.users WHERE id = NEW.user_id;
	PERFORM regstage.send_message(u.telegram_id, regstage.documents_requested_text(NEW.user_id));
	q := regstage.ask(u.telegram_id, u.language, NEW.doc_types[1]);
	PERFORM regstage.queue_call(q->>'method', q->'params', u.telegram_id);
	RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER document_requests_notify
	AFTER INSERT OR UPDATE OF doc_types, reason, requested_at ON regstage.document_requests
	FOR EACH ROW EXECUTE FUNCTION regstage.document_requests_notify();

-- A registered user with an open request for new documents: stage each in
-- Redis (the user's documents hash) until all requested are there.
CREATE OR REPLACE FUNCTION regstage.answer_document_request(tid bigint, chat_id bigint, user_id bigint, lang text, m jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	req record;
	staged jsonb := regstage.staged(tid);
	todo text[];
	file_id text;
	state text;
	message text;
BEGIN
	SELECT * INTO req FROM regstage.document_requests r WHERE r.user_id = answer_document_request.user_id FOR UPDATE;
	todo := ARRAY(SELECT t FROM unnest(req.doc_types) WITH ORDINALITY AS d(t, n)
				   WHERE NOT coalesce(staged->'documents' ? t, false) ORDER BY n);
	IF cardinality(todo) > 0 THEN
		file_id := regstage.document_file_id(m, regstage.accepts_pdf(todo[1]));
		IF file_id IS NULL THEN
			IF jsonb_typeof(m->'text') = 'string' THEN
				RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.documents_requested_text(user_id)),
										 regstage.ask(chat_id, lang, todo[1]));
			END IF;
			RETURN regstage.ask_document_again(chat_id, lang, todo[1]);
		END IF;
		BEGIN
			PERFORM regstage.stage_document(tid, todo[1], file_id);
		EXCEPTION WHEN invalid_parameter_value THEN
			RETURN regstage.ask_document_again(chat_id, lang, todo[1]);
		END;
		todo := todo[2:];
		IF cardinality(todo) > 0 THEN
			RETURN jsonb_build_array(regstage.ask(chat_id, lang, todo[1]));
		END IF;
	END IF;
	UPDATE regstage.document_requests r SET received_at = now() WHERE r.user_id = answer_document_request.user_id;
	INSERT INTO regstage.review_log (user_id, telegram_id, action, detail)
	VALUES (user_id, tid, 'documents_received', array_to_string(req.doc_types, ','));
	-- the new files replace the old ones in this transaction (a subtransaction:
	-- a failed download keeps the staged documents and tells the user)
	BEGIN
		PERFORM regstage.replace_documents(tid);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
		IF regstage.is_outage(state) THEN
			RAISE;
		END IF;
		RAISE LOG 'pg_regstage: telegram_id %: replacing documents failed (%): %', tid, state, message;
		RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'registration_failed')));
	END;
	RETURN jsonb_build_array(regstage.send_message_call(chat_id, regstage.msg(lang, 'documents_received')))
		|| regstage.review_notifications(user_id);
END
$$;

-- A registration just started (the greeting sent to someone with nothing
-- staged): recorded for regstage.stats, at most once per 10 minutes a user.
CREATE OR REPLACE FUNCTION regstage.record_started(tid bigint)
RETURNS void LANGUAGE sql AS $$
	INSERT INTO regstage.registration_events (telegram_id, kind)
	SELECT tid, 'started'
	 WHERE NOT EXISTS (SELECT 1 FROM regstage.registration_events e
						WHERE e.telegram_id = tid AND e.kind = 'started' AND e.at > now() - interval '10 minutes')
$$;

-------------------------------------------------------------------------------
-- Operations
-------------------------------------------------------------------------------

-- Per day: registrations started, completed, failed (by SQLSTATE), median
-- time from the start to the commit, reviews done, median time to a
-- decision; and, the same on every row, what waits now and the cleanup's
-- last run.  Today always has a row.
CREATE OR REPLACE VIEW regstage.stats AS
WITH ev AS (
	SELECT e.at::date AS day, e.kind, e.telegram_id, e.sqlstate,
		   CASE WHEN e.kind = 'completed' THEN e.at - (SELECT max(s.at) FROM regstage.registration_events s
														 WHERE s.telegram_id = e.telegram_id AND s.kind = 'started'
														   AND s.at <= e.at) END AS took
	  FROM regstage.registration_events e
), ev_day AS (
	SELECT day, count(DISTINCT telegram_id) FILTER (WHERE kind = 'started') AS started,
		   count(*) FILTER (WHERE kind = 'completed') AS completed,
		   count(*) FILTER (WHERE kind = 'failed') AS failed,
		   percentile_cont(0.5) WITHIN GROUP (ORDER BY took) AS median_time_to_complete
	  FROM ev GROUP BY day
), fails AS (
	SELECT day, jsonb_object_agg(sqlstate, n ORDER BY sqlstate) AS failed_by_sqlstate
	  FROM (SELECT day, coalesce(sqlstate, '?') AS sqlstate, count(*) AS n FROM ev WHERE kind = 'failed' GROUP BY 1, 2) f
	 GROUP BY day
), rv_day AS (
	SELECT r.at::date AS day, count(*) AS reviews,
		   percentile_cont(0.5) WITHIN GROUP (ORDER BY r.waited)
			   FILTER (WHERE r.action IN ('approved', 'rejected')) AS median_time_to_review
	  FROM regstage.review_log r
	 WHERE r.action IN ('approved', 'rejected', 'documents_requested')
	 GROUP BY 1
), days AS (
	SELECT day FROM ev_day UNION SELECT day FROM rv_day UNION SELECT current_date
)
SELECT d.day, coalesce(e.started, 0) AS started, coalesce(e.completed, 0) AS completed,
	   coalesce(e.failed, 0) AS failed, coalesce(f.failed_by_sqlstate, '{}') AS failed_by_sqlstate,
	   e.median_time_to_complete, coalesce(r.reviews, 0) AS reviews, r.median_time_to_review,
	   (SELECT count(*) FROM regstage.users u WHERE u.status = 'PENDING') AS pending_now,
	   c.finished_at AS cleanup_last_run, c.deleted AS cleanup_last_deleted, c.errors AS cleanup_last_errors
  FROM days d
  LEFT JOIN ev_day e USING (day)
  LEFT JOIN fails f USING (day)
  LEFT JOIN rv_day r USING (day)
  LEFT JOIN LATERAL (SELECT * FROM regstage.cleanup_runs ORDER BY finished_at DESC LIMIT 1) c ON true;

-- Personal data: the documents of users REJECTED longer ago than
-- regstage.rejected_retention (0: kept) are deleted (their files go with the
-- rows: at commit by the upload store's hook, else by the orphan cleanup).
-- Logs users.id, the document types and counts: no names, no phones.
-- Returns how many documents were deleted.  The background worker calls it.
CREATE OR REPLACE FUNCTION regstage.purge_rejected()
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	retention interval := current_setting('regstage.rejected_retention')::interval;	-- shown with a unit: '30d'
	r record;
	total bigint := 0;
BEGIN
	IF retention = interval '0' THEN
		RETURN 0;
	END IF;
	FOR r IN
		WITH gone AS (
			DELETE FROM regstage.documents d
			 USING regstage.users u
			 WHERE d.user_id = u.id AND u.status = 'REJECTED'
			   AND coalesce(u.reviewed_at, u.created_at) < now() - retention
			RETURNING d.user_id, d.doc_type)
		SELECT g.user_id, u.telegram_id, u.reviewed_at, count(*) AS n, string_agg(g.doc_type, ',' ORDER BY g.doc_type) AS types
		  FROM gone g JOIN regstage.users u ON u.id = g.user_id
		 GROUP BY g.user_id, u.telegram_id, u.reviewed_at ORDER BY g.user_id
	LOOP
		INSERT INTO regstage.review_log (user_id, telegram_id, action, detail)
		VALUES (r.user_id, r.telegram_id, 'documents_purged', r.types);
		RAISE LOG 'pg_regstage: purge_rejected: user id %: % documents deleted (%), rejected at %',
			r.user_id, r.n, r.types, r.reviewed_at;
		total := total + r.n;
	END LOOP;
	RETURN total;
END
$$;
