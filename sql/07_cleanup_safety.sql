-- The cleanup's safety: one upload directory per database, rows with
-- legacy paths keep their files until fix_document_paths() repairs them,
-- no delete through a directory swapped for a symbolic link, directories
-- below the depth limit reported, and the last-moment check of documents.
-- regstage.test_inject (superuser, test only) runs SQL once per cleanup run
-- between listing a file and its last check before the delete.
\set VERBOSITY terse
SELECT current_database() AS regdb \gset
SELECT current_setting('regstage_test.fixtures') || '/work/safety' AS base \gset
SELECT * FROM regstage_test.sh(format('rm -rf %1$s && mkdir -p %1$s', :'base'));

-------------------------------------------------------------------------------
-- 1. Two databases, one upload_dir: the second is refused, loudly, before
--    anything is listed or deleted.
-------------------------------------------------------------------------------
SELECT :'base' || '/outer/shared' AS shared \gset
SELECT * FROM regstage_test.sh(format('mkdir -p %s %s/other', :'shared', :'base'));
SET regstage.upload_dir = :'shared';
SELECT count(*) FROM regstage_test.redis('FLUSHALL');
SELECT regstage_test.stage_full(7101, 'AgACp_7101', 'AgACs_7101');
SELECT regstage.commit_registration(7101) > 0 AS registered;
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'shared'));
-- the marker names this cluster and this database
SELECT * FROM regstage_test.sh(format('sed -e "s/^system identifier: [0-9]*$/system identifier: N/" %s/.pg_regstage_owner', :'shared'));
SELECT count(*) AS this_cluster FROM regstage_test.sh(format('cat %s/.pg_regstage_owner', :'shared')) l
 WHERE l = 'system identifier: ' || (SELECT system_identifier FROM pg_control_system());
-- this database's own cleanup keeps the marker (neither orphan nor temporary),
-- upload_files() does not list it
SELECT * FROM regstage.cleanup_orphans('0', '0');
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'shared'));
SELECT count(*) AS listed FROM regstage.upload_files() f WHERE f LIKE '%owner%';

CREATE DATABASE regstage_other;
\c regstage_other
\set VERBOSITY terse
CREATE EXTENSION pg_regstage;
CREATE FUNCTION refused(stmt text) RETURNS TABLE (sqlstate text, message text, hint text)
LANGUAGE plpgsql AS $$
DECLARE
	m text;
	h text;
BEGIN
	EXECUTE stmt;
	RETURN QUERY SELECT 'ok', NULL::text, NULL::text;
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
	RETURN QUERY SELECT SQLSTATE,
		replace(m, current_setting('regstage_test.fixtures'), '<fixtures>'),
		replace(h, current_setting('regstage_test.fixtures'), '<fixtures>');
END
$$;
SELECT current_setting('regstage_test.fixtures') || '/work/safety' AS base \gset
SELECT :'base' || '/outer/shared' AS shared \gset
SET regstage.upload_dir = :'shared';
SELECT * FROM refused($$SELECT * FROM regstage.cleanup_orphans('0', '0')$$);
SELECT sqlstate, message FROM refused($$SELECT count(*) FROM regstage.upload_files()$$);
SELECT sqlstate, message FROM refused($$SELECT count(*) FROM regstage.fix_document_paths(false)$$);
SELECT regstage.stage_language(7102, 'en'),
	   regstage.stage_user_data(7102, '{"full_name": "Other Database", "phone": "+79160007102"}'),
	   regstage.stage_document(7102, 'passport', 'AgACp_7102'), regstage.stage_document(7102, 'selfie', 'AgACs_7102');
SELECT sqlstate, message FROM refused($$SELECT regstage.commit_registration(7102)$$);
SELECT regstage.clear_registration(7102);
-- with a directory of its own, this database works too
SELECT set_config('regstage.upload_dir', :'base' || '/other', false) IS NOT NULL AS own_dir;
SELECT * FROM regstage.cleanup_orphans('0', '0');
-- a directory holding the first database's directory: the cleanup does not
-- enter it (a WARNING and an error), so nothing of the first database goes
SELECT set_config('regstage.upload_dir', :'base' || '/outer', false) IS NOT NULL AS enclosing_dir;
SELECT * FROM regstage.cleanup_orphans('0', '0');
\c :regdb
\set VERBOSITY terse
SELECT current_setting('regstage_test.fixtures') || '/work/safety' AS base \gset
SELECT :'base' || '/outer/shared' AS shared \gset
SET regstage.upload_dir = :'shared';
-- nothing of the first database was touched; it still commits and cleans
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'shared'));
SELECT count(*) AS rows_with_file FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
 WHERE u.telegram_id = 7101 AND regstage.document_file_exists(d.file_path);
SELECT * FROM regstage.cleanup_orphans('0', '0');
-- the other database's directory is refused here
SELECT set_config('regstage.upload_dir', :'base' || '/other', false) IS NOT NULL AS other_dir;
SELECT regstage_test.try($$SELECT count(*) FROM regstage.upload_files()$$);
SELECT regstage_test.hint($$SELECT count(*) FROM regstage.upload_files()$$);
SET regstage.upload_dir = :'shared';
DROP DATABASE regstage_other;
DELETE FROM regstage.users WHERE telegram_id = 7101;

-------------------------------------------------------------------------------
-- 2. Rows with legacy paths (absolute, the old bot's flat layout, ./ and //):
--    their files are referenced, so a cleanup before the migration keeps
--    them and fix_document_paths() then fixes every row.
-------------------------------------------------------------------------------
SELECT :'base' || '/legacy' AS dir \gset
SELECT * FROM regstage_test.sh(format('mkdir -p %s', :'dir'));
SET regstage.upload_dir = :'dir';
INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES (7201, 'Legacy Paths', '+79160007201', 'ru');
INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
SELECT id, t, 'AgAC_' || t, p, 5, repeat('c', 64) FROM regstage.users,
	(VALUES ('passport', :'dir' || '//7201/./passport-abs.jpg'),	-- absolute, under upload_dir
			('selfie', '/app/uploads/7201_selfie_old.jpg'),			-- absolute, the old server's directory
			('licence', 'uploads/7201_licence_flat.jpg'),			-- the old bot's flat layout
			('visa', './7201//visa-dup.jpg')) v(t, p)				-- ./ and a double slash
 WHERE telegram_id = 7201;
SELECT * FROM regstage_test.sh(format($sh$cd %s && mkdir 7201 &&
	for f in passport-abs.jpg 7201_selfie_old.jpg 7201_licence_flat.jpg visa-dup.jpg orphan-old.jpg; do
		echo test > 7201/$f && touch -d '3 days ago' 7201/$f; done $sh$, :'dir'));
-- the cleanup runs before the migration, in both ways of checking references:
-- only the real orphan goes
SET regstage.cleanup_memory = 0;
SELECT * FROM regstage.cleanup_orphans();
RESET regstage.cleanup_memory;
SELECT * FROM regstage.cleanup_orphans();
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'dir'));
SELECT regstage_test.mask(old_path) AS old_path, new_path, status
  FROM regstage.fix_document_paths(dry_run => false) WHERE old_path LIKE '%7201%' ORDER BY document_id;
SELECT doc_type, regstage_test.mask(file_path) AS file_path, regstage.document_file_exists(file_path) AS file_exists
  FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id WHERE u.telegram_id = 7201 ORDER BY doc_type;
SELECT * FROM regstage.cleanup_orphans('0', '0');
DELETE FROM regstage.users WHERE telegram_id = 7201;

-------------------------------------------------------------------------------
-- 3. A per-user directory swapped for a symbolic link between the walk and
--    the delete: nothing outside upload_dir is deleted, in either mode.
-------------------------------------------------------------------------------
SELECT :'base' || '/swap' AS dir \gset
SET regstage.upload_dir = :'dir';
CREATE FUNCTION pg_temp.swap_setup(dir text) RETURNS SETOF text LANGUAGE sql AS $$
	SELECT * FROM regstage_test.sh(format($sh$rm -rf %1$s %1$s-outside %1$s-away && mkdir -p %1$s/7301 %1$s-outside/7301 %1$s-away &&
		echo inside > %1$s/7301/passport-old.jpg && echo outside > %1$s-outside/7301/passport-old.jpg &&
		touch -d '3 days ago' %1$s/7301/passport-old.jpg %1$s-outside/7301/passport-old.jpg $sh$, dir))
$$;
SELECT set_config('regstage.test_inject',
	format('SELECT regstage_test.sh(%L)', format('mv %1$s/7301 %1$s-away/ && ln -s %1$s-outside/7301 %1$s/7301', :'dir')),
	false) IS NOT NULL AS hook_set;
-- batch mode: the batch is checked after its directory was closed
SELECT * FROM pg_temp.swap_setup(:'dir');
SET regstage.cleanup_memory = 0;
SELECT * FROM regstage.cleanup_orphans();
RESET regstage.cleanup_memory;
SELECT * FROM regstage_test.sh(format('cd %s-outside && find . -type f | sort', :'dir'));
-- hash mode: the directory is still open when its file is deleted
SELECT * FROM pg_temp.swap_setup(:'dir');
SELECT * FROM regstage.cleanup_orphans();
SELECT * FROM regstage_test.sh(format('cd %s-outside && find . -type f | sort', :'dir'));
RESET regstage.test_inject;
SELECT * FROM regstage_test.sh(format('rm -rf %1$s-outside %1$s-away', :'dir'));

-------------------------------------------------------------------------------
-- 4. A documents row written between the listing and the delete (the
--    last-moment check): its file stays, in either mode.
-------------------------------------------------------------------------------
SELECT :'base' || '/late' AS dir \gset
SET regstage.upload_dir = :'dir';
INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES (7401, 'Late Row', '+79160007401', 'ru');
SELECT set_config('regstage.test_inject',
	$$INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
	  SELECT id, 'passport', 'AgAC_late', '7401/passport-late.jpg', 5, repeat('d', 64)
	    FROM regstage.users WHERE telegram_id = 7401$$, false) IS NOT NULL AS hook_set;
CREATE FUNCTION pg_temp.late_setup(dir text) RETURNS SETOF text LANGUAGE sql AS $$
	SELECT * FROM regstage_test.sh(format($sh$mkdir -p %1$s/7401 && echo test > %1$s/7401/passport-late.jpg &&
		touch -d '3 days ago' %1$s/7401/passport-late.jpg $sh$, dir))
$$;
SELECT * FROM pg_temp.late_setup(:'dir');
SELECT * FROM regstage.cleanup_orphans();
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'dir'));
-- the row goes (and with it, at commit, its file), then the file comes back
DELETE FROM regstage.documents WHERE file_path = '7401/passport-late.jpg';
SELECT * FROM pg_temp.late_setup(:'dir');
SET regstage.cleanup_memory = 0;
SELECT * FROM regstage.cleanup_orphans();
RESET regstage.cleanup_memory;
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'dir'));
RESET regstage.test_inject;
DELETE FROM regstage.users WHERE telegram_id = 7401;

-------------------------------------------------------------------------------
-- 5. A directory below the walk's depth limit (15 levels under upload_dir)
--    is an error with a WARNING naming it, not skipped silently.
-------------------------------------------------------------------------------
SELECT :'base' || '/deep' AS dir \gset
SET regstage.upload_dir = :'dir';
SELECT * FROM regstage_test.sh(format($sh$mkdir -p %1$s/l1/l2/l3/l4/l5/l6/l7/l8/l9/l10/l11/l12/l13/l14/l15/l16 &&
	cd %1$s/l1/l2/l3/l4/l5/l6/l7/l8/l9/l10/l11/l12/l13/l14/l15 && echo x > at15.jpg && echo x > l16/at16.jpg &&
	touch -d '3 days ago' at15.jpg l16/at16.jpg $sh$, :'dir'));
SELECT * FROM regstage.cleanup_orphans();
SELECT f FROM regstage.upload_files() f ORDER BY f;
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'dir'));
RESET regstage.upload_dir;
