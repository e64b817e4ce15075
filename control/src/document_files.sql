-------------------------------------------------------------------------------
-- A document's file goes with its row: deleting a documents row (by hand, by
-- the cascade from users, by a retention job, by replaced documents) deletes
-- its file once the deleting transaction commits; a row that references the
-- file again in the same transaction keeps it.  (C: docfiles.c)
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION regstage.document_file_trigger()
RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'regstage_document_file_trigger';
COMMENT ON FUNCTION regstage.document_file_trigger() IS
	'trigger: a deleted document''s file is deleted at commit; a row referencing it again keeps it';

CREATE OR REPLACE TRIGGER document_file
	AFTER INSERT OR UPDATE OF file_path OR DELETE ON regstage.documents
	FOR EACH ROW EXECUTE FUNCTION regstage.document_file_trigger();
