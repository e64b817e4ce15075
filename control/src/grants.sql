-------------------------------------------------------------------------------
-- Privileges
--
-- PUBLIC gets nothing.  The extension creates no role (roles are cluster-wide
-- and would outlive DROP EXTENSION); a DBA makes the bot's login role and
-- grants it what a bot needs with grant_bot_access().
-------------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA regstage FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA regstage FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA regstage FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA regstage FROM PUBLIC;

-- What a bot (or the relay) may call; the one list grant and revoke share.
-- commit_registration and handle_update are SECURITY DEFINER: the bot
-- itself can read no user or document.
CREATE OR REPLACE FUNCTION regstage.bot_functions()
RETURNS SETOF regprocedure LANGUAGE sql STABLE AS $$
	VALUES ('regstage.stage_language(bigint, text)'::regprocedure),
		   ('regstage.stage_user_data(bigint, jsonb)'),
		   ('regstage.stage_document(bigint, text, text)'),
		   ('regstage.stage_text_answer(bigint, text, text)'),
		   ('regstage.staged(bigint)'),
		   ('regstage.missing(bigint)'),
		   ('regstage.missing_from(jsonb)'),
		   ('regstage.is_registration_complete(bigint)'),
		   ('regstage.extend_ttl(bigint)'),
		   ('regstage.clear_registration(bigint)'),
		   ('regstage.normalize_phone(text)'),
		   ('regstage.is_outage(text)'),
		   ('regstage.commit_registration(bigint)'),
		   ('regstage.handle_update(jsonb)'),
		   ('regstage.store_updates(bigint[], bytea[], boolean)'),
		   ('regstage.process_next(boolean, bigint, boolean)'),
		   ('regstage.process_next_batch(integer, integer, boolean, bigint, integer, bigint)'),
		   ('regstage.xact_changed_outside()'),
		   ('regstage.outbox_claim(integer, interval, integer, bigint, pg_snapshot, bigint[], bigint[])'),
		   ('regstage.outbox_report(bigint, integer, text, integer)'),
		   ('regstage.outbox_report_batch(bigint[], integer[], text[], integer[], bigint[], interval)'),
		   ('regstage.send_message(bigint, text, jsonb)'),
		   ('regstage.queue_call(text, jsonb, bigint)')
$$;
COMMENT ON FUNCTION regstage.bot_functions() IS
	'the functions grant_bot_access() grants and revoke_bot_access() revokes';

CREATE OR REPLACE FUNCTION regstage.grant_bot_access(role regrole)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	f regprocedure;
BEGIN
	EXECUTE format('GRANT USAGE ON SCHEMA regstage TO %s', role);
	EXECUTE format('GRANT SELECT ON regstage.messages TO %s', role);
	FOR f IN SELECT * FROM regstage.bot_functions() LOOP
		EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %s', f, role);
	END LOOP;
END
$$;
COMMENT ON FUNCTION regstage.grant_bot_access(regrole) IS
	'grants a role what a bot needs: stage, commit, handle_update (no table of users or documents)';

CREATE OR REPLACE FUNCTION regstage.revoke_bot_access(role regrole)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT * FROM regstage.bot_functions() LOOP
		EXECUTE format('REVOKE EXECUTE ON ROUTINE %s FROM %s', f, role);
	END LOOP;
	EXECUTE format('REVOKE SELECT ON regstage.messages FROM %s', role);
	EXECUTE format('REVOKE USAGE ON SCHEMA regstage FROM %s', role);
END
$$;
COMMENT ON FUNCTION regstage.revoke_bot_access(regrole) IS
	'revokes what grant_bot_access() granted';

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA regstage FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA regstage FROM PUBLIC;
