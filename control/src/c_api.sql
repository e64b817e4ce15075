-------------------------------------------------------------------------------
-- Staging API (C, hiredis): one Redis round trip each
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION regstage.stage_language(telegram_id bigint, language text)
RETURNS void LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_stage_language';

CREATE OR REPLACE FUNCTION regstage.stage_user_data(telegram_id bigint, data jsonb)
RETURNS void LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_stage_user_data';

CREATE OR REPLACE FUNCTION regstage.stage_document(telegram_id bigint, doc_type text, file_id text)
RETURNS void LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_stage_document';

CREATE OR REPLACE FUNCTION regstage.staged(telegram_id bigint)
RETURNS jsonb LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_staged';

-- A typed answer staged as full_name or phone, whichever is next (one round trip).
CREATE OR REPLACE FUNCTION regstage.stage_text_answer(telegram_id bigint, answer text, username text DEFAULT NULL)
RETURNS jsonb LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_stage_text_answer';

CREATE OR REPLACE FUNCTION regstage.missing(telegram_id bigint)
RETURNS text[] LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_missing';

CREATE OR REPLACE FUNCTION regstage.is_registration_complete(telegram_id bigint)
RETURNS boolean LANGUAGE sql VOLATILE
RETURN cardinality(regstage.missing(telegram_id)) = 0;

-- missing() over a staged() value already at hand (no second round trip).
CREATE OR REPLACE FUNCTION regstage.missing_from(staged jsonb)
RETURNS text[] LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'regstage_missing_from';

CREATE OR REPLACE FUNCTION regstage.extend_ttl(telegram_id bigint)
RETURNS boolean LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_extend_ttl';

CREATE OR REPLACE FUNCTION regstage.clear_registration(telegram_id bigint)
RETURNS boolean LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_clear_registration';

-- Has this transaction changed anything outside the database (a Redis
-- write, a file, an object)?  process_next_batch() commits it synchronously.
CREATE OR REPLACE FUNCTION regstage.xact_changed_outside()
RETURNS boolean LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_xact_changed_outside';

-- This transaction's commit waits for its flush (and the synchronous
-- standbys), whatever the session's synchronous_commit: outbox_claim().
CREATE OR REPLACE FUNCTION regstage.xact_commit_durably()
RETURNS void LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_xact_commit_durably';

-- Validation helpers shared by the staging API and the conversation.
CREATE OR REPLACE FUNCTION regstage.normalize_phone(phone text)
RETURNS text LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'regstage_normalize_phone';

-------------------------------------------------------------------------------
-- Commit (C: Redis + Bot API + upload store + SPI, in the caller's transaction)
-------------------------------------------------------------------------------
-- SECURITY DEFINER: a bot role commits registrations without being able to
-- read or write regstage.users / regstage.documents itself.
-- The documents an admin asked a registered user for again, swapped in within
-- the caller's transaction (old files go at commit, new ones on abort).
CREATE OR REPLACE FUNCTION regstage.replace_documents(telegram_id bigint)
RETURNS integer LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'regstage_replace_documents';

CREATE OR REPLACE FUNCTION regstage.commit_registration(telegram_id bigint)
RETURNS bigint LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'regstage_commit_registration';

-------------------------------------------------------------------------------
-- Cleanup (C: the orphan scan shared with the background worker)
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION regstage.cleanup_orphans(max_age interval DEFAULT '48 hours',
										 tmp_max_age interval DEFAULT '24 hours')
RETURNS TABLE (deleted bigint, kept bigint, errors bigint)
LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_cleanup_orphans';

CREATE OR REPLACE FUNCTION regstage.document_file_exists(file_path text)
RETURNS boolean LANGUAGE c VOLATILE STRICT AS 'MODULE_PATHNAME', 'regstage_document_file_exists';

-- A presigned GET URL of a document's object (regstage.storage = 's3'):
-- superusers and admins, never the bot (no grant).
CREATE OR REPLACE FUNCTION regstage.document_url(document_id bigint, ttl interval DEFAULT '15 minutes')
RETURNS text LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'regstage_document_url';


-- Object storage: a probe a superuser runs to check the settings and the
-- bucket policy (PUT, HEAD, LIST, a presigned GET, DELETE of one object).
CREATE OR REPLACE FUNCTION regstage.s3_check()
RETURNS text LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_s3_check';
