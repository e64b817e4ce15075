-------------------------------------------------------------------------------
-- regstage.messages under pg_dump
--
-- CREATE EXTENSION fills messages with the shipped texts; pg_dump keeps only
-- the rows a DBA added or changed (those not equal to a shipped text).  On
-- restore, such a row meets the shipped row CREATE EXTENSION just made for
-- the same key: the trigger lets it replace a row that still holds the
-- shipped text instead of failing on the primary key.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION regstage.messages_replace_shipped()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	UPDATE regstage.messages m SET text = NEW.text
	 WHERE m.language = NEW.language AND m.key = NEW.key
	   AND EXISTS (SELECT 1 FROM regstage.default_messages d
				    WHERE d.language = m.language AND d.key = m.key AND d.text = m.text);
	IF FOUND THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION regstage.messages_replace_shipped() IS
	'trigger: an inserted text replaces the row for its key while that row still holds the shipped text (restoring a dump)';

CREATE OR REPLACE TRIGGER messages_replace_shipped
	BEFORE INSERT ON regstage.messages
	FOR EACH ROW EXECUTE FUNCTION regstage.messages_replace_shipped();

SELECT pg_catalog.pg_extension_config_dump('regstage.messages',
	'WHERE NOT EXISTS (SELECT 1 FROM regstage.default_messages d'
	' WHERE d.language = messages.language AND d.key = messages.key AND d.text = messages.text)');
