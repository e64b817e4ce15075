-------------------------------------------------------------------------------
-- What \d+ and \df+ say: every table, view and function of the extension.
-- (sql/00_setup.sql checks that none is left without a comment.)
-------------------------------------------------------------------------------
COMMENT ON SCHEMA regstage IS 'pg_regstage: Redis-staged Telegram registrations';

COMMENT ON TABLE regstage.users IS 'registered users; a row exists only together with all its documents';
COMMENT ON TABLE regstage.documents IS 'document files of a user; file_path is relative to regstage.upload_dir';
COMMENT ON TABLE regstage.messages IS 'bot texts per language; INSERT a language''s rows to offer it (missing keys fall back to en); kept by pg_dump';
COMMENT ON TABLE regstage.default_messages IS 'the texts this release ships; read-only reference for messages (rows equal to these are not dumped)';
COMMENT ON TABLE regstage.seen_updates IS 'update_ids handle_update() has applied (two days), so a redelivered update is applied once';
COMMENT ON VIEW regstage.stuck_pending IS 'PENDING users without a single document (left by a registration that saved the user before its documents)';
COMMENT ON VIEW regstage.pending_review IS 'PENDING users with their documents and whether each file is on disk';

-- Staging (C, one Redis round trip each)
COMMENT ON FUNCTION regstage.stage_language(bigint, text) IS 'stages the chosen language; refreshes the TTL';
COMMENT ON FUNCTION regstage.stage_user_data(bigint, jsonb) IS 'merges full_name, phone, username, email into the staged data; refreshes the TTL';
COMMENT ON FUNCTION regstage.stage_document(bigint, text, text) IS 'stages a document type''s Telegram file_id; refreshes the TTL';
COMMENT ON FUNCTION regstage.stage_text_answer(bigint, text, text) IS 'stages a typed answer as full_name or phone, whichever is missing first; returns the staged state';
COMMENT ON FUNCTION regstage.staged(bigint) IS 'what is staged: language, data, documents, ttl; NULL when nothing is';
COMMENT ON FUNCTION regstage.missing(bigint) IS 'what a registration still needs, in asking order';
COMMENT ON FUNCTION regstage.missing_from(jsonb) IS 'missing() over a staged() value already at hand';
COMMENT ON FUNCTION regstage.is_registration_complete(bigint) IS 'true when nothing is missing';
COMMENT ON FUNCTION regstage.extend_ttl(bigint) IS 'refreshes the TTL of the staged keys; false when nothing is staged';
COMMENT ON FUNCTION regstage.clear_registration(bigint) IS 'deletes the staged keys; false when nothing was staged';
COMMENT ON FUNCTION regstage.normalize_phone(text) IS 'a phone number in E.164 (+ and up to 15 digits), or an error';

-- Commit and files (C)
COMMENT ON FUNCTION regstage.replace_documents(bigint) IS 'swaps in the documents an admin asked for again, in the caller''s transaction; returns how many';
COMMENT ON FUNCTION regstage.commit_registration(bigint) IS 'downloads the staged documents and inserts the user and documents in the caller''s transaction; returns users.id';
COMMENT ON FUNCTION regstage.cleanup_orphans(interval, interval) IS 'deletes files under upload_dir no documents row references (older than max_age) and partial downloads (older than tmp_max_age)';
COMMENT ON FUNCTION regstage.document_file_exists(text) IS 'is there a regular file at this path relative to upload_dir (no escape outside it); with storage = s3: does the object exist (HEAD)';
COMMENT ON FUNCTION regstage.document_url(bigint, interval) IS 'a presigned GET URL of the document''s object, valid for ttl (1 s to 7 days); storage = s3 only (0A000 with local storage)';
COMMENT ON FUNCTION regstage.upload_files() IS 'every regular file under upload_dir, relative to it (symbolic links neither followed nor listed); with storage = s3: every object key of the database''s namespace';

-- Migration and review
COMMENT ON FUNCTION regstage.purge_stuck_pending(boolean) IS 'lists (dry_run) or deletes the users of stuck_pending';
COMMENT ON FUNCTION regstage.purge_stuck_pending() IS 'deletes the users of stuck_pending; returns how many';
COMMENT ON FUNCTION regstage.fix_document_paths(boolean) IS 'points documents rows whose file is missing at the one file of the same name under upload_dir';

-- Conversation
COMMENT ON FUNCTION regstage.handle_update(jsonb) IS 'the whole conversation: one Telegram update in, the Bot API calls to make out (jsonb array); applies an update_id once';
COMMENT ON FUNCTION regstage.handle_message(jsonb) IS 'conversation: a message from a private chat';
COMMENT ON FUNCTION regstage.handle_callback(jsonb) IS 'conversation: an inline button press';
COMMENT ON FUNCTION regstage.answer_text(bigint, bigint, text, jsonb) IS 'conversation: a typed answer staged where the conversation stands';
COMMENT ON FUNCTION regstage.after_staging(bigint, bigint, text, text[], text, boolean) IS 'conversation: the next question, or the commit when nothing is missing';
COMMENT ON FUNCTION regstage.finish_registration(bigint, bigint, text, boolean) IS 'conversation: commit_registration in a subtransaction and the user''s answer';
COMMENT ON FUNCTION regstage.ask(bigint, text, text, boolean) IS 'conversation: the question for a missing item';
COMMENT ON FUNCTION regstage.ask_document_again(bigint, text, text) IS 'conversation: not a usable photo or file, ask again';
COMMENT ON FUNCTION regstage.accepts_pdf(text) IS 'does this document type take a PDF file (regstage.pdf_documents)';
COMMENT ON FUNCTION regstage.document_file_id(jsonb, boolean) IS 'the file_id of the largest photo, or of an image (or PDF) document; NULL otherwise';
COMMENT ON FUNCTION regstage.msg(text, text) IS 'a text in a language, falling back to en, then to the key';
COMMENT ON FUNCTION regstage.send_message_call(bigint, text, jsonb) IS 'one sendMessage call as jsonb (builds it; queues nothing)';
COMMENT ON FUNCTION regstage.language_keyboard() IS 'inline keyboard with every language that has texts';
COMMENT ON FUNCTION regstage.guess_language(text) IS 'the language to greet a sender in before they chose one';
COMMENT ON FUNCTION regstage.is_outage(text) IS 'is this SQLSTATE an outage (retry, do not count an attempt) rather than a failure of the update';
COMMENT ON SEQUENCE regstage.users_id_seq IS 'users.id (kept by pg_dump with the rows)';
COMMENT ON SEQUENCE regstage.documents_id_seq IS 'documents.id (kept by pg_dump with the rows)';

-- Inbox and outbox
COMMENT ON TABLE regstage.inbox IS 'every Telegram update received, raw; pending -> done, or failed with its error';
COMMENT ON TABLE regstage.outbox IS 'every Bot API call decided, written in the deciding transaction; pending -> sent, or failed';
COMMENT ON SEQUENCE regstage.outbox_id_seq IS 'outbox.id: the order calls of one chat go out in';
COMMENT ON VIEW regstage.failed_updates IS 'updates parked as failed (after regstage.max_attempts, or undecodable), with SQLSTATE and error';
COMMENT ON VIEW regstage.queue_status IS 'inbox and outbox now: pending, waiting for a retry, failed, oldest pending, retried';
COMMENT ON FUNCTION regstage.update_chat_id(jsonb) IS 'the chat an update belongs to (the order key of the inbox)';
COMMENT ON FUNCTION regstage.inbox_decode() IS 'trigger: decodes a raw update as it is stored; parks what cannot be decoded';
COMMENT ON FUNCTION regstage.store_updates(bigint[], bytea[], boolean) IS 'stores raw updates in the inbox in the caller''s transaction; returns how many were new';
COMMENT ON FUNCTION regstage.inbox_claim(bigint, boolean) IS 'process_next''s claim: the oldest due pending update (after after_update) of a chat nobody is processing, locked and marked done (process_next puts it back if applying it fails)';
COMMENT ON FUNCTION regstage.process_next(boolean, bigint, boolean) IS 'applies the oldest due update (after after_update; retries whose wait ended first unless retries_first is false) of one chat and queues its replies; NULL when nothing is due';
COMMENT ON PROCEDURE regstage.process_next_batch(integer, integer, boolean, bigint, integer, bigint) IS
	'process_next() up to max_updates times (or max_ms), committing each: one round trip for many updates; an update that changed nothing outside the database commits without waiting for its WAL flush (regstage.inbox_async_commit)';
COMMENT ON FUNCTION regstage.xact_changed_outside() IS 'has this transaction written staged data to Redis or made, marked or put files or objects (then its commit must be synchronous)';
COMMENT ON FUNCTION regstage.xact_commit_durably() IS 'this transaction commits synchronously (synchronous_commit raised to on, or to the server''s remote_apply), whatever the session says';
COMMENT ON FUNCTION regstage.dispatch_update(jsonb) IS 'conversation: one decoded update to its Bot API calls (no dedupe, no error handling)';
COMMENT ON FUNCTION regstage.retry_update(bigint) IS 're-queues an update parked as failed; false when there is none';
COMMENT ON FUNCTION regstage.body_is_update(bytea, bigint) IS 'is this raw body a decodable update with this update_id';
COMMENT ON FUNCTION regstage.queue_call(text, jsonb, bigint) IS 'queues a Bot API call in the caller''s transaction; delivered only if it commits';
COMMENT ON FUNCTION regstage.send_message(bigint, text, jsonb) IS 'queues a sendMessage in the caller''s transaction; delivered only if it commits';
COMMENT ON FUNCTION regstage.outbox_notify() IS 'trigger: wakes the senders when calls are queued (at commit)';
COMMENT ON FUNCTION regstage.outbox_claim(integer, interval, integer, bigint, pg_snapshot, bigint[], bigint[]) IS 'claims due calls for a sender, the oldest pending of each chat, for a lease; with per_chat > 1 also the calls queued right after it (claimed one by one by outbox_report_batch); commits synchronously when it hands out calls, so they are durable before they are sent';
COMMENT ON FUNCTION regstage.outbox_report(bigint, integer, text, integer) IS 'records what the Bot API answered for a claimed call: sent, retry later, or failed';
COMMENT ON FUNCTION regstage.outbox_report_batch(bigint[], integer[], text[], integer[], bigint[], interval) IS 'outbox_report for many calls in one statement; claims the next call of a chat once the one before it is done';
COMMENT ON FUNCTION regstage.purge_processed(interval) IS 'deletes done inbox rows and sent outbox rows older than regstage.retention';

-- Admin review
COMMENT ON TABLE regstage.admins IS 'Telegram users who review registrations (language: of their review messages, NULL = en); kept by pg_dump';
COMMENT ON TABLE regstage.review_log IS 'audit: every review action, status change (admin_id NULL: made from SQL) and refused review button press';
COMMENT ON SEQUENCE regstage.review_log_id_seq IS 'review_log.id (kept by pg_dump with the rows)';
COMMENT ON TABLE regstage.registration_events IS 'registrations started, completed and failed (with SQLSTATE), for regstage.stats';
COMMENT ON SEQUENCE regstage.registration_events_id_seq IS 'registration_events.id (kept by pg_dump with the rows)';
COMMENT ON TABLE regstage.document_requests IS 'new documents an admin asked a PENDING user for, and why; received_at once all are staged';
COMMENT ON TABLE regstage.admin_input IS 'admins who pressed "other": their next text is the reason';
COMMENT ON TABLE regstage.cleanup_runs IS 'runs of the orphan cleanup (deleted, kept, errors), for regstage.stats';
COMMENT ON VIEW regstage.stats IS 'per day: registrations started, completed, failed (by SQLSTATE), median time to complete, reviews, median time to review; pending now and the cleanup''s last run';
COMMENT ON FUNCTION regstage.fill(text, jsonb) IS 'a text with its {placeholders} filled from a jsonb object, in one pass';
COMMENT ON FUNCTION regstage.is_admin(bigint) IS 'is this Telegram user in regstage.admins';
COMMENT ON FUNCTION regstage.admin_language(bigint) IS 'the language of an admin''s review messages (en when unset or without texts)';
COMMENT ON FUNCTION regstage.admin_label(bigint, text) IS 'who decided, as admins read it: the admin''s name, or SQL';
COMMENT ON FUNCTION regstage.review_chats() IS 'where reviews go: regstage.admin_chat_id, or (0) each admin''s own chat; with the language';
COMMENT ON FUNCTION regstage.document_names(text[], text) IS 'document types by their doc_name: text in a language, listed';
COMMENT ON FUNCTION regstage.file_id_kind(text, text) IS 'photo or document: how a stored Telegram file_id must be sent back';
COMMENT ON FUNCTION regstage.review_time(timestamptz) IS 'a timestamp as review messages show it';
COMMENT ON FUNCTION regstage.review_summary(bigint, text) IS 'a registration for admins: name, phone, username, language, started, finished, documents';
COMMENT ON FUNCTION regstage.review_outcome(bigint, text) IS 'who decided what and when (or asked for documents); NULL while nobody acted';
COMMENT ON FUNCTION regstage.review_text(bigint, text) IS 'the review message: the summary and the outcome';
COMMENT ON FUNCTION regstage.review_keyboard(bigint, text, text, integer) IS 'review buttons: main, reject reasons, documents to ask for (mask), their reasons';
COMMENT ON FUNCTION regstage.review_document_types(bigint) IS 'the document types an admin may ask a user for again';
COMMENT ON FUNCTION regstage.review_calls(bigint, bigint, text) IS 'the review for one chat: photos as an album, other files one by one, the summary with buttons';
COMMENT ON FUNCTION regstage.review_notifications(bigint) IS 'the review calls for every review chat (none without admins)';
COMMENT ON FUNCTION regstage.answer_callback_call(text, text, boolean) IS 'one answerCallbackQuery call as jsonb';
COMMENT ON FUNCTION regstage.edit_message_call(bigint, bigint, text, jsonb) IS 'one editMessageText call (editMessageReplyMarkup when text is NULL) as jsonb';
COMMENT ON FUNCTION regstage.review_already(bigint, bigint, bigint, text, text) IS 'someone acted first: who, shown on the pressed message';
COMMENT ON FUNCTION regstage.decide(bigint, bigint, text, text, bigint, bigint, text, text) IS 'approve or reject a PENDING user (one conditional UPDATE: exactly one admin wins)';
COMMENT ON FUNCTION regstage.request_documents(bigint, bigint, text[], text, bigint, bigint, text, text) IS 'asks a PENDING user for new documents; the review stays open';
COMMENT ON FUNCTION regstage.review_queue(text, integer) IS '/admin: how many wait, the oldest, a button per registration (5 a page)';
COMMENT ON FUNCTION regstage.handle_admin_callback(jsonb) IS 'a review or queue button; pressed by a non-admin: refused, logged, nothing changes';
COMMENT ON FUNCTION regstage.ask_admin_reason(bigint, bigint, text, text[], bigint, bigint, text, text, text) IS '"other": the admin''s next text becomes the reason';
COMMENT ON FUNCTION regstage.handle_admin_message(jsonb) IS 'an admin''s /admin or typed reason; NULL when not an admin matter';
COMMENT ON FUNCTION regstage.handle_admin_group_message(jsonb) IS 'a message in the admin group: admins'' only';
COMMENT ON FUNCTION regstage.status_text(bigint) IS 'what a registered user is told about their registration (/status)';
COMMENT ON FUNCTION regstage.documents_requested_text(bigint) IS 'which new documents a user is asked for, and why';
COMMENT ON FUNCTION regstage.status_notice(text, text, text) IS 'the message a status change sends the user';
COMMENT ON FUNCTION regstage.users_review_stamp() IS 'trigger: stamps reviewed_at; a status change not naming its admin was made from SQL';
COMMENT ON FUNCTION regstage.users_status_notify() IS 'trigger: a status change is logged and queues the user''s message in its transaction';
COMMENT ON FUNCTION regstage.document_requests_notify() IS 'trigger: a request for new documents queues the user''s message and first question';
COMMENT ON FUNCTION regstage.answer_document_request(bigint, bigint, bigint, text, jsonb) IS 'conversation: stages the requested new documents of a registered user';
COMMENT ON FUNCTION regstage.record_started(bigint) IS 'records a registration start for regstage.stats (once per 10 minutes a user)';
COMMENT ON FUNCTION regstage.greet(bigint, bigint, text) IS 'conversation: the greeting for someone with nothing staged (records the start)';
COMMENT ON FUNCTION regstage.purge_rejected() IS 'deletes the documents of users rejected longer than regstage.rejected_retention ago; logs no names or phones';
COMMENT ON FUNCTION regstage.s3_check() IS 'superuser: PUTs, HEADs, LISTs, fetches by a presigned URL and DELETEs a probe object; names the step that fails';
