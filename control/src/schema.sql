-------------------------------------------------------------------------------
-- Schema and tables (a fresh install; control/upgrade/ brings older ones here)
-------------------------------------------------------------------------------
CREATE SCHEMA regstage;
REVOKE ALL ON SCHEMA regstage FROM PUBLIC;

-- ids come from plain sequences (not identity columns): a sequence can be
-- registered with pg_extension_config_dump, so a restored database goes on
-- from the restored ids.
CREATE TABLE regstage.users (
	id          bigint PRIMARY KEY,
	telegram_id bigint NOT NULL UNIQUE,
	full_name   text NOT NULL,
	phone       text NOT NULL,
	username    text,
	email       text,
	language    text NOT NULL,
	status      text NOT NULL DEFAULT 'PENDING'
	            CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED')),
	created_at  timestamptz NOT NULL DEFAULT now(),
	reviewed_by   bigint,		-- the admin's telegram_id; NULL: decided from SQL (or not yet)
	reviewed_at   timestamptz,
	reject_reason text
);

CREATE TABLE regstage.documents (
	id               bigint PRIMARY KEY,
	user_id          bigint NOT NULL REFERENCES regstage.users ON DELETE CASCADE,
	doc_type         text NOT NULL,
	telegram_file_id text NOT NULL,
	file_path        text NOT NULL UNIQUE,		-- relative to regstage.upload_dir
	size_bytes       bigint NOT NULL,
	sha256           text NOT NULL,				-- lowercase hex
	created_at       timestamptz NOT NULL DEFAULT now(),
	UNIQUE (user_id, doc_type)
);

-- Every text the bot sends, per language; a language exists once it has
-- rows.  The texts this release ships are in regstage.default_messages and
-- copied here at install; what a DBA adds or edits here is theirs and kept by
-- pg_dump (the rows still equal to a shipped text are not dumped: CREATE
-- EXTENSION makes them again).
CREATE TABLE regstage.messages (
	language text NOT NULL CHECK (language ~ '^[a-z]{2,3}(-[a-z0-9]+)?$'),
	key      text NOT NULL,
	text     text NOT NULL,
	PRIMARY KEY (language, key)
);

CREATE TABLE regstage.default_messages (
	language text NOT NULL,
	key      text NOT NULL,
	text     text NOT NULL,
	PRIMARY KEY (language, key)
);

CREATE SEQUENCE regstage.users_id_seq OWNED BY regstage.users.id;
ALTER TABLE regstage.users ALTER COLUMN id SET DEFAULT nextval('regstage.users_id_seq');
CREATE SEQUENCE regstage.documents_id_seq OWNED BY regstage.documents.id;
ALTER TABLE regstage.documents ALTER COLUMN id SET DEFAULT nextval('regstage.documents_id_seq');

SELECT pg_catalog.pg_extension_config_dump('regstage.users', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.users_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.documents', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.documents_id_seq', '');

-- update_ids already handled (idempotent redelivery).  Telegram keeps an
-- update for at most 24 hours, so two days of memory is enough; older rows
-- are pruned as new ones arrive.
CREATE TABLE regstage.seen_updates (
	update_id bigint PRIMARY KEY,
	seen_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON regstage.seen_updates (seen_at);
