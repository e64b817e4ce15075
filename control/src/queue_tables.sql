-------------------------------------------------------------------------------
-- Inbox and outbox tables (both edges of the bot, durable in PostgreSQL).
-- In a fresh install after schema.sql; the 1.0 -> 1.1 upgrade runs it too.
-------------------------------------------------------------------------------

-- Every update Telegram delivered, raw, exactly as received (bytea: also what
-- is not UTF-8, not JSON or not jsonb is kept, and parked with the reason).
CREATE TABLE regstage.inbox (
	update_id       bigint PRIMARY KEY,
	chat_id         bigint,			-- whose conversation it belongs to; NULL: none
	body            bytea NOT NULL,
	status          text NOT NULL DEFAULT 'pending'
	                CHECK (status IN ('pending', 'done', 'failed')),
	attempts        integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	sqlstate        text,
	last_error      text,
	received_at     timestamptz NOT NULL DEFAULT now(),
	processed_at    timestamptz
);
-- what a processor claims: O(pending), not O(history)
CREATE INDEX inbox_pending ON regstage.inbox (update_id) WHERE status = 'pending';
CREATE INDEX inbox_pending_chat ON regstage.inbox (chat_id, update_id) WHERE status = 'pending';
CREATE INDEX inbox_processed ON regstage.inbox (processed_at) WHERE status = 'done';
-- updates waiting for a retry (a failure's backoff, an outage, retry_update):
-- the only pending updates whose next_attempt_at moved.  Found here, a
-- processor need not walk every pending update to see whose wait ended.
CREATE INDEX inbox_deferred ON regstage.inbox (next_attempt_at)
	WHERE status = 'pending' AND next_attempt_at > received_at;

-- Every Bot API call the bot decided, written in the transaction that
-- decided it; a sender delivers them in order per chat.
CREATE TABLE regstage.outbox (
	id              bigint PRIMARY KEY,
	chat_id         bigint,			-- order key: calls of one chat go out in id order
	method          text NOT NULL,
	params          jsonb NOT NULL,
	update_id       bigint,			-- the inbox update that produced it, if any
	status          text NOT NULL DEFAULT 'pending'
	                CHECK (status IN ('pending', 'sent', 'failed')),
	attempts        integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	claimed_until   timestamptz,	-- a sender is delivering it until then
	http_status     integer,
	last_error      text,
	created_at      timestamptz NOT NULL DEFAULT now(),
	sent_at         timestamptz,
	queued_by       xid8 NOT NULL DEFAULT pg_current_xact_id()	-- the transaction that queued it
)
-- room on each page for the claim's update (claimed_until, attempts: no
-- indexed column) to stay on it, a HOT update that adds no index entry;
-- full pages made every claim one more entry in each of the three indexes
WITH (fillfactor = 70);
CREATE SEQUENCE regstage.outbox_id_seq OWNED BY regstage.outbox.id;
ALTER TABLE regstage.outbox ALTER COLUMN id SET DEFAULT nextval('regstage.outbox_id_seq');
CREATE INDEX outbox_pending_chat ON regstage.outbox (chat_id, id) WHERE status = 'pending';
CREATE INDEX outbox_sent ON regstage.outbox (sent_at) WHERE status = 'sent';
-- What committed since a sender's last claim: outbox_claim(since =>
-- snapshot).  Not a partial index of pending calls: with two of those, the
-- planner (which takes them for tiny) read the wrong one whole, filtering,
-- to find one chat's pending calls; so outbox_pending_chat is the outbox's
-- only one, and whatever looks for pending calls by chat finds that index.
CREATE INDEX outbox_queued ON regstage.outbox (queued_by);
-- calls waiting for a retry (429, 5xx, no answer), as inbox_deferred
CREATE INDEX outbox_deferred ON regstage.outbox (next_attempt_at)
	WHERE status = 'pending' AND next_attempt_at > created_at;

-- Both edges are data a dump must keep (pending updates, unsent replies),
-- and the memory of applied update_ids with them.
SELECT pg_catalog.pg_extension_config_dump('regstage.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('regstage.seen_updates', '');
