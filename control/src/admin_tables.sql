-------------------------------------------------------------------------------
-- Admin review tables.  In a fresh install after queue_tables.sql; the
-- 1.0 -> 1.1 upgrade runs it too.
-------------------------------------------------------------------------------

-- Who may review: Telegram users.  A DBA keeps this table (pg_dump keeps it).
CREATE TABLE regstage.admins (
	telegram_id bigint PRIMARY KEY,
	name        text,					-- shown to the other admins ("approved by <name>")
	added_at    timestamptz NOT NULL DEFAULT now(),
	language    text					-- of the review messages; NULL: en
);
SELECT pg_catalog.pg_extension_config_dump('regstage.admins', '');

-- One row per review action and per status change (also a change made from
-- SQL), and per refused press of a review button.  No foreign key: the
-- record outlives the user's row (a rejected user who registers again).
CREATE TABLE regstage.review_log (
	id          bigint PRIMARY KEY,
	at          timestamptz NOT NULL DEFAULT now(),
	user_id     bigint,					-- users.id
	telegram_id bigint,					-- the registered user's
	admin_id    bigint,					-- who acted; NULL: SQL
	action      text NOT NULL CHECK (action IN ('approved', 'rejected', 'pending', 'documents_requested',
	                                           'documents_received', 'documents_purged', 'refused')),
	detail      text,
	waited      interval				-- since the registration: how long it waited for this
);
CREATE SEQUENCE regstage.review_log_id_seq OWNED BY regstage.review_log.id;
ALTER TABLE regstage.review_log ALTER COLUMN id SET DEFAULT nextval('regstage.review_log_id_seq');
CREATE INDEX review_log_at ON regstage.review_log (at);
SELECT pg_catalog.pg_extension_config_dump('regstage.review_log', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.review_log_id_seq', '');

-- Registrations started, completed and failed (with the SQLSTATE), for
-- regstage.stats.
CREATE TABLE regstage.registration_events (
	id          bigint PRIMARY KEY,
	at          timestamptz NOT NULL DEFAULT now(),
	telegram_id bigint NOT NULL,
	kind        text NOT NULL CHECK (kind IN ('started', 'completed', 'failed')),
	sqlstate    text						-- failed: why
);
CREATE SEQUENCE regstage.registration_events_id_seq OWNED BY regstage.registration_events.id;
ALTER TABLE regstage.registration_events ALTER COLUMN id SET DEFAULT nextval('regstage.registration_events_id_seq');
CREATE INDEX registration_events_at ON regstage.registration_events (at);
CREATE INDEX registration_events_user ON regstage.registration_events (telegram_id, at);
SELECT pg_catalog.pg_extension_config_dump('regstage.registration_events', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.registration_events_id_seq', '');

-- New documents an admin asked a registered (PENDING) user for, and why.
-- received_at: every requested document is staged in Redis.
CREATE TABLE regstage.document_requests (
	user_id      bigint PRIMARY KEY REFERENCES regstage.users ON DELETE CASCADE,
	doc_types    text[] NOT NULL CHECK (cardinality(doc_types) > 0),
	reason       text,
	requested_by bigint NOT NULL,
	requested_at timestamptz NOT NULL DEFAULT now(),
	received_at  timestamptz
);
SELECT pg_catalog.pg_extension_config_dump('regstage.document_requests', '');

-- An admin who pressed "other": their next text is the reason.
CREATE TABLE regstage.admin_input (
	admin_id   bigint PRIMARY KEY,
	user_id    bigint NOT NULL REFERENCES regstage.users ON DELETE CASCADE,
	action     text NOT NULL CHECK (action IN ('reject', 'documents')),
	doc_types  text[],					-- documents: which ones
	chat_id    bigint NOT NULL,			-- the review message to edit
	message_id bigint,
	asked_at   timestamptz NOT NULL DEFAULT now()
);

-- Runs of the orphan cleanup (the worker and cleanup_orphans() record
-- theirs here), for regstage.stats.
CREATE TABLE regstage.cleanup_runs (
	started_at  timestamptz NOT NULL,
	finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	deleted     bigint NOT NULL,
	kept        bigint NOT NULL,
	errors      bigint NOT NULL
);
CREATE INDEX cleanup_runs_finished ON regstage.cleanup_runs (finished_at);
