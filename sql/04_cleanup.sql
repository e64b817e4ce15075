-- cleanup_orphans(): orphans by age, temporary files, symlinks that
-- point outside, unreadable directories, empty per-user directories.
\set VERBOSITY terse
SELECT current_setting('regstage_test.fixtures') || '/work/cleanup' AS dir \gset
SELECT * FROM regstage_test.sh(format('rm -rf %1$s %1$s-outside && mkdir -p %1$s %1$s-outside/sub', :'dir'));
SET regstage.upload_dir = :'dir';

-- A registered user whose passport file is two days old (referenced: kept)
INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES (6001, 'Old User', '+79160006001', 'ru');
INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
SELECT id, 'passport', 'AgAC_old', '6001/passport-0123456789abcdef.jpg', 5, repeat('a', 64)
  FROM regstage.users WHERE telegram_id = 6001;

SELECT * FROM regstage_test.sh(format($sh$cd %1$s &&
	mkdir 6001 6002 6003 6006 .tmp locked &&
	echo test > 6006/passport-old.jpg && touch -d '3 days ago' 6006/passport-old.jpg 6006 &&
	echo test > 6001/passport-0123456789abcdef.jpg && touch -d '3 days ago' 6001/passport-0123456789abcdef.jpg &&
	echo test > test_orphaned.jpg && touch -d '3 days ago' test_orphaned.jpg &&
	echo test > 6002/selfie-new.jpg &&
	echo partial > .tmp/6004-passport-1-1.part && touch -d '25 hours ago' .tmp/6004-passport-1-1.part &&
	echo partial > .tmp/6005-passport-1-2.part &&
	echo old > %1$s-outside/victim.jpg && touch -d '3 days ago' %1$s-outside/victim.jpg &&
	echo old > %1$s-outside/sub/victim2.jpg && touch -d '3 days ago' %1$s-outside/sub/victim2.jpg &&
	ln -s %1$s-outside/victim.jpg link-to-outside.jpg &&
	ln -s %1$s-outside/sub linkdir &&
	echo x > locked/unreachable.jpg && chmod 000 locked &&
	touch -d '3 days ago' 6003 $sh$, :'dir'));

-- Orphans by age: the old orphan goes, the referenced file of the same age and
-- the recent orphan stay; an old temporary file goes, a recent one stays;
-- the unreadable directory is an error and the walk goes on; a per-user
-- directory found empty (6003) or left empty by the run (6006) goes.
SET client_min_messages = log;
SELECT * FROM regstage.cleanup_orphans();
RESET client_min_messages;
SELECT * FROM regstage_test.sh(format('cd %s && find . | sort', :'dir'));
-- nothing outside upload_dir was touched, through either symlink
SELECT * FROM regstage_test.sh(format('cd %s-outside && find . -type f | sort', :'dir'));

-- upload_files(): the same walk; regular files only (temporary ones too),
-- symlinks neither followed nor listed, an unreadable directory a warning.
-- No pg_ls_dir: a role granted EXECUTE needs no superuser.
SELECT f FROM regstage.upload_files() f ORDER BY f;
CREATE ROLE regstage_test_admin;
GRANT USAGE ON SCHEMA regstage TO regstage_test_admin;
GRANT EXECUTE ON FUNCTION regstage.upload_files() TO regstage_test_admin;
SET ROLE regstage_test_admin;
SELECT count(*) FROM regstage.upload_files();
RESET ROLE;
DROP OWNED BY regstage_test_admin;
DROP ROLE regstage_test_admin;

-- Thresholds are parameters; a second run finds nothing more to delete
SELECT * FROM regstage.cleanup_orphans('48 hours', '24 hours');
SELECT * FROM regstage.cleanup_orphans('0', '0');
SELECT * FROM regstage_test.sh(format('cd %s && find . -type f | sort', :'dir'));
SELECT regstage_test.try($$SELECT regstage.cleanup_orphans('-1 hour')$$);
SELECT regstage_test.try($$SELECT regstage.cleanup_orphans(NULL)$$);
SELECT * FROM regstage_test.sh(format('chmod 755 %s/locked', :'dir'));

-- More referenced paths than regstage.cleanup_memory holds (here: none fit)
-- are checked in batches instead, with the same outcome (6007 left empty: gone)
SHOW regstage.cleanup_memory;
SELECT * FROM regstage_test.sh(format($sh$cd %1$s &&
	echo test > batch_orphan.jpg && touch -d '3 days ago' batch_orphan.jpg &&
	mkdir 6007 && echo test > 6007/old.jpg && touch -d '3 days ago' 6007/old.jpg &&
	mkdir -p 6002 && echo test > 6002/recent_batch_orphan.jpg $sh$, :'dir'));
SET regstage.cleanup_memory = 0;
SELECT * FROM regstage.cleanup_orphans();
RESET regstage.cleanup_memory;
SELECT * FROM regstage_test.sh(format('cd %s && find . | sort', :'dir'));
SELECT * FROM regstage_test.sh(format('rm %s/6002/recent_batch_orphan.jpg', :'dir'));

-- A long scan can be cancelled at any point (statement_timeout here)
SELECT * FROM regstage_test.sh(format('mkdir -p %s/many && cd %s/many && seq 1 20000 | sed "s/$/.jpg/" | xargs touch', :'dir', :'dir'));
SET statement_timeout = '20ms';
SELECT * FROM regstage.cleanup_orphans('1000 days', '1000 days');
RESET statement_timeout;
SELECT * FROM regstage_test.sh(format('rm -rf %s/many', :'dir'));

-- Migration: users stuck in PENDING without documents (the old architecture)
INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES
	(6101, 'Stuck One', '+79160006101', 'ru'), (6102, 'Stuck Two', '+79160006102', 'en');
INSERT INTO regstage.users (telegram_id, full_name, phone, language, status) VALUES
	(6103, 'Approved Without Docs', '+79160006103', 'en', 'APPROVED');
SELECT telegram_id, full_name FROM regstage.purge_stuck_pending(dry_run => true);
SELECT count(*) AS still_there FROM regstage.users WHERE telegram_id IN (6101, 6102);
SELECT regstage.purge_stuck_pending();
SELECT telegram_id FROM regstage.users WHERE telegram_id BETWEEN 6000 AND 6999 ORDER BY 1;

-- fix_document_paths(): a row whose file moved (the old bot's flat layout)
INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES (6201, 'Moved Files', '+79160006201', 'ru');
INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
SELECT id, t, 'AgAC_' || t, p, 5, repeat('b', 64) FROM regstage.users,
	(VALUES ('passport', 'uploads/6201_passport_AgAC.jpg'), ('selfie', 'uploads/6201_selfie_lost.jpg'),
			('licence', '/app/uploads/6201_licence_abs.jpg')) v(t, p)
 WHERE telegram_id = 6201;
SELECT * FROM regstage_test.sh(format('cd %s && mkdir -p 6201 && echo test > 6201/6201_passport_AgAC.jpg && echo test > 6201/6201_licence_abs.jpg', :'dir'));
SELECT old_path, new_path, status FROM regstage.fix_document_paths() WHERE old_path LIKE '%6201%';
SELECT file_path FROM regstage.documents WHERE file_path LIKE '%6201_passport%';
SELECT old_path, new_path, status FROM regstage.fix_document_paths(dry_run => false) WHERE old_path LIKE '%6201%';
SELECT file_path FROM regstage.documents WHERE file_path LIKE '%6201_%' ORDER BY 1;

-- pending_review: PENDING users, their documents, and whether each file is on disk
SELECT telegram_id, full_name, doc_type, file_path, file_exists
  FROM regstage.pending_review WHERE telegram_id BETWEEN 6000 AND 6999 ORDER BY telegram_id, doc_type;
-- document_file_exists(): paths leaving upload_dir are false, also when they
-- reach a real file (each target's existence shown first); the same file
-- named inside upload_dir is true.
SELECT (pg_stat_file(:'dir' || '/../cleanup-outside/victim.jpg')).size > 0 AS sibling_file_exists,
       (pg_stat_file('/etc/passwd')).size > 0 AS etc_passwd_exists,
       (pg_stat_file(:'dir' || '//6201/6201_passport_AgAC.jpg')).size > 0 AS doubled_slash_reaches_a_file;
SELECT regstage.document_file_exists('6201/6201_passport_AgAC.jpg') AS inside;
SELECT regstage.document_file_exists('../cleanup-outside/victim.jpg') AS parent_walk,
       regstage.document_file_exists('6201/../../cleanup-outside/victim.jpg') AS inner_walk,
       regstage.document_file_exists(repeat('../', length(regexp_replace(:'dir', '[^/]', '', 'g'))) || 'etc/passwd') AS walk_to_etc_passwd,
       regstage.document_file_exists(:'dir' || '-outside/victim.jpg') AS absolute_outside,
       regstage.document_file_exists('/6201/6201_passport_AgAC.jpg') AS absolute_inside;

DELETE FROM regstage.users WHERE telegram_id BETWEEN 6000 AND 6999;
RESET regstage.upload_dir;
