-- 1.0 created the role regstage_bot (1.1 creates none).  A role made by 1.0
-- keeps working: it gets what 1.1 adds for a bot.  It is the DBA's now; DROP
-- EXTENSION leaves it, as it always did.
DO $$
BEGIN
	IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'regstage_bot') THEN
		PERFORM regstage.grant_bot_access('regstage_bot');
	END IF;
END
$$;
