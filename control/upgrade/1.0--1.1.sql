-------------------------------------------------------------------------------
-- 1.0 -> 1.1: tables and objects that change.  The functions, texts, grants
-- and comments of 1.1 follow this part (the same files a fresh install runs).
-------------------------------------------------------------------------------

-- The shipped texts get a table of their own, so pg_dump keeps only what a
-- DBA added or changed in regstage.messages.
CREATE TABLE regstage.default_messages (
	language text NOT NULL,
	key      text NOT NULL,
	text     text NOT NULL,
	PRIMARY KEY (language, key)
);

-- 1.0's send_message(chat_id, text, reply_markup) only built a call as jsonb;
-- that is send_message_call now (send_message queues a message).
DROP FUNCTION regstage.send_message(bigint, text, jsonb);

-- users.id and documents.id: identity columns become plain sequences, which
-- pg_dump keeps with the rows (an identity sequence cannot be registered with
-- pg_extension_config_dump: a restored 1.0 database restarted its ids at 1).
ALTER TABLE regstage.users ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE regstage.users_id_seq OWNED BY regstage.users.id;
SELECT pg_catalog.setval('regstage.users_id_seq', coalesce(max(id), 0) + 1, false) FROM regstage.users;
ALTER TABLE regstage.users ALTER COLUMN id SET DEFAULT nextval('regstage.users_id_seq');
ALTER TABLE regstage.documents ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE regstage.documents_id_seq OWNED BY regstage.documents.id;
SELECT pg_catalog.setval('regstage.documents_id_seq', coalesce(max(id), 0) + 1, false) FROM regstage.documents;
ALTER TABLE regstage.documents ALTER COLUMN id SET DEFAULT nextval('regstage.documents_id_seq');
SELECT pg_catalog.pg_extension_config_dump('regstage.users_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.documents_id_seq', '');

-- Admin review: who decided, when, and why a registration was rejected.
ALTER TABLE regstage.users ADD COLUMN reviewed_by bigint,
	ADD COLUMN reviewed_at timestamptz, ADD COLUMN reject_reason text;
