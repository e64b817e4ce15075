-------------------------------------------------------------------------------
-- Migration of users left by a bot that saved users before their documents,
-- and what an admin reviews
-------------------------------------------------------------------------------

-- PENDING users without a single document: left behind by the old architecture.
CREATE OR REPLACE VIEW regstage.stuck_pending AS
SELECT u.id, u.telegram_id, u.full_name, u.created_at
  FROM regstage.users u
 WHERE u.status = 'PENDING'
   AND NOT EXISTS (SELECT 1 FROM regstage.documents d WHERE d.user_id = u.id);

-- Dry run (the default) lists them; dry_run => false deletes and lists what it deleted.
CREATE OR REPLACE FUNCTION regstage.purge_stuck_pending(dry_run boolean)
RETURNS TABLE (id bigint, telegram_id bigint, full_name text, created_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	IF dry_run THEN
		RETURN QUERY SELECT s.id, s.telegram_id, s.full_name, s.created_at
					   FROM regstage.stuck_pending s ORDER BY s.id;
	ELSE
		RETURN QUERY DELETE FROM regstage.users u
					  WHERE u.id IN (SELECT s.id FROM regstage.stuck_pending s)
					  RETURNING u.id, u.telegram_id, u.full_name, u.created_at;
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION regstage.purge_stuck_pending()
RETURNS bigint LANGUAGE sql VOLATILE
RETURN (SELECT count(*) FROM regstage.purge_stuck_pending(false));

-- Every regular file under upload_dir, relative to it; symbolic links are
-- neither followed nor listed (the cleanup's walk, no pg_ls_dir).
CREATE OR REPLACE FUNCTION regstage.upload_files()
RETURNS SETOF text LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'regstage_upload_files';

-- Documents whose file is missing at file_path: find a file of the same
-- name under upload_dir and (unless dry_run) point the row at it.
CREATE OR REPLACE FUNCTION regstage.fix_document_paths(dry_run boolean DEFAULT true)
RETURNS TABLE (document_id bigint, old_path text, new_path text, status text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
	d record;
	candidates text[];
BEGIN
	CREATE TEMP TABLE IF NOT EXISTS regstage_fix_files (rel text, name text) ON COMMIT DROP;
	TRUNCATE regstage_fix_files;
	INSERT INTO regstage_fix_files
		SELECT f, regexp_replace(f, '^.*/', '') FROM regstage.upload_files() f
		 WHERE f NOT LIKE '%.part';	-- downloads in progress
	-- one lookup by name per missing document: indexed, or it is quadratic
	CREATE INDEX IF NOT EXISTS regstage_fix_files_name ON regstage_fix_files (name);
	ANALYZE regstage_fix_files;
	FOR d IN SELECT doc.id, doc.file_path FROM regstage.documents doc
			  WHERE NOT regstage.document_file_exists(doc.file_path) ORDER BY doc.id
	LOOP
		candidates := ARRAY(SELECT rel FROM regstage_fix_files
							 WHERE name = regexp_replace(d.file_path, '^.*/', '') ORDER BY rel);
		document_id := d.id;
		old_path := d.file_path;
		IF cardinality(candidates) = 1
		   AND NOT EXISTS (SELECT 1 FROM regstage.documents o WHERE o.file_path = candidates[1]) THEN
			new_path := candidates[1];
			IF dry_run THEN
				status := 'would fix';
			ELSE
				UPDATE regstage.documents SET file_path = new_path WHERE id = d.id;
				status := 'fixed';
			END IF;
		ELSE
			new_path := NULL;
			status := CASE WHEN cardinality(candidates) = 0 THEN 'not found' ELSE 'ambiguous' END;
		END IF;
		RETURN NEXT;
	END LOOP;
END
$$;

-- What an admin reviews: PENDING users with their documents and whether
-- each file is really on disk (instead of "documents not uploaded").
CREATE OR REPLACE VIEW regstage.pending_review AS
SELECT u.id AS user_id, u.telegram_id, u.full_name, u.phone, u.username, u.language,
	   u.created_at, d.doc_type, d.file_path, d.size_bytes,
	   CASE WHEN d.id IS NOT NULL THEN regstage.document_file_exists(d.file_path) END AS file_exists
  FROM regstage.users u
  LEFT JOIN regstage.documents d ON d.user_id = u.id
 WHERE u.status = 'PENDING';


