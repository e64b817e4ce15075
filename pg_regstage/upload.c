/*
 * upload.c — the upload store: safe names, the temporary file of each
 * download, the move into place, fsync.
 *
 * Every file or directory made here is entered in the transaction's
 * pending actions (xact.c) *before* it is made, so the abort of its
 * (sub)transaction removes it; a name that turns out to exist already is
 * taken off again, so an abort never removes what another transaction
 * made.  Per-user directories are opened without following symbolic links
 * and every file is made relative to that open directory; a final name is
 * never replaced (RENAME_NOREPLACE).  Files are written as
 * .<doc_type>-*.part and moved into place, so a crash leaves at most a
 * temporary file for the cleanup to sweep.
 *
 * fsync failures are ordinary ERRORs of the registration (58030, naming
 * the path), never PostgreSQL's data_sync_elevel PANIC: these files are
 * not the cluster's data, and an I/O error on an NFS upload directory must
 * not restart every backend.
 */
#include "postgres.h"

#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "ownership.h"
#include "s3.h"
#include "upload.h"
#include "xact.h"

static uint32 temp_counter = 0;

static const char *
server_os_user(void)
{
	struct passwd *pw = getpwuid(geteuid());

	return pw ? pw->pw_name : "the PostgreSQL server's user";
}

/*
 * The configured upload directory, checked: set, existing, a directory,
 * writable by this server.  A "Permission denied" on the upload directory
 * is caught here, before anything is downloaded or inserted.
 */
const char *
upload_check_dir(void)
{
	const char *dir = regstage_upload_dir;
	struct stat st;

	if (dir == NULL || dir[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("regstage.upload_dir is not set"),
				 errhint("Set it to an absolute directory writable by the OS user \"%s\", e.g. ALTER SYSTEM SET regstage.upload_dir = '/var/lib/regstage/uploads'; SELECT pg_reload_conf();",
						 server_os_user())));
	if (stat(dir, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not access upload directory \"%s\": %m", dir),
				 errhint("Create it and make it writable by the OS user \"%s\".", server_os_user())));
	if (!S_ISDIR(st.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("upload directory \"%s\" is not a directory", dir),
				 errhint("Point regstage.upload_dir at a directory.")));
	if (access(dir, W_OK | X_OK) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write to upload directory \"%s\": %m", dir),
				 errhint("The OS user \"%s\" running PostgreSQL must be able to create files there, e.g. chown %s \"%s\".",
						 server_os_user(), server_os_user(), dir)));
	ownership_check(dir);		/* one database per directory: ownership.c */
	return dir;
}

/* Raise the error of a failed fsync of path (errno set), as 58030. */
static void
fsync_failed(const char *what, const char *path)
{
	int			save_errno = errno;

	errno = save_errno;
	ereport(ERROR,
			(errcode(save_errno == ENOSPC || save_errno == EDQUOT ? ERRCODE_DISK_FULL : ERRCODE_IO_ERROR),
			 errmsg("could not fsync %s \"%s\": %m", what, path),
			 errhint("The registration was not saved and its staged data is kept; check the storage of regstage.upload_dir, then retry.")));
}

/*
 * fsync a directory, so the entries made in it survive a crash.  Runs at
 * pre-commit (xact.c), where an ERROR aborts the transaction cleanly.
 */
void
upload_fsync_dir(const char *path)
{
	int			fd = OpenTransientFile(path, O_RDONLY | O_DIRECTORY);

	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open directory \"%s\" to fsync it: %m", path)));
	/* some systems cannot fsync a directory at all (as fsync_fname_ext allows) */
	if (pg_fsync(fd) != 0 && errno != EBADF && errno != EINVAL)
		fsync_failed("directory", path);
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close directory \"%s\": %m", path)));
}

/*
 * Open <upload_dir>/<telegram_id> without following a symbolic link,
 * making it (with our mode, entered in the pending actions) when absent.
 * A link or a non-directory under that name is refused: following it would
 * store documents wherever it points.  The descriptor is a transient file,
 * closed by PostgreSQL itself if the (sub)transaction aborts.
 */
void
upload_open_user_dir(UploadUserDir *dir, int64 telegram_id)
{
	bool		made = false;
	struct stat st;

	dir->telegram_id = telegram_id;
	snprintf(dir->path, sizeof(dir->path), "%s/" INT64_FORMAT, regstage_upload_dir, telegram_id);
	dir->fd = OpenTransientFile(dir->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
	if (dir->fd < 0 && errno == ENOENT)
	{
		XactAction *action = xact_unlink_on_abort(dir->path, true, true);

		if (mkdir(dir->path, UPLOAD_DIR_MODE) == 0)
			made = true;
		else
		{
			int			save_errno = errno;

			/* made by someone else meanwhile: not ours to remove */
			xact_cancel(action);
			errno = save_errno;
			if (errno != EEXIST)
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not create directory \"%s\": %m", dir->path),
						 errhint("The OS user \"%s\" running PostgreSQL must be able to write to regstage.upload_dir.",
								 server_os_user())));
		}
		dir->fd = OpenTransientFile(dir->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
	}
	if (dir->fd < 0 && (errno == ELOOP || errno == ENOTDIR))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is %s, not a directory", dir->path,
						lstat(dir->path, &st) == 0 && S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory"),
				 errhint("Per-user entries under regstage.upload_dir must be real directories and are never followed; remove it, and the next registration makes the directory.")));
	if (dir->fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open directory \"%s\": %m", dir->path),
				 errhint("The OS user \"%s\" running PostgreSQL must be able to write to regstage.upload_dir.",
						 server_os_user())));
	/* the server's umask (0077) would otherwise decide the mode */
	if (made && fchmod(dir->fd, UPLOAD_DIR_MODE) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not set the mode of directory \"%s\": %m", dir->path)));
}

void
upload_close_user_dir(UploadUserDir *dir)
{
	if (dir->fd >= 0 && CloseTransientFile(dir->fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close directory \"%s\": %m", dir->path)));
	dir->fd = -1;
}

/*
 * Create a fresh temporary file for one download (the caller has run
 * upload_check_dir() once for the registration) in the user's open
 * directory: .<doc_type>-<pid>-<n>.part.  The final move then stays within
 * that directory, and concurrent registrations do not contend for one
 * shared directory.  The descriptor is the caller's to close:
 * upload_finish(), or upload_temp_discard() on an error.
 */
void
upload_temp_create(UploadTemp *tmp, UploadUserDir *dir, const char *doc_type)
{
	XactAction *action;

	snprintf(tmp->name, sizeof(tmp->name), ".%s-%d-%u" UPLOAD_TMP_SUFFIX,
			 doc_type, MyProcPid, ++temp_counter);
	snprintf(tmp->path, sizeof(tmp->path), "%s/%s", dir->path, tmp->name);
	action = xact_unlink_on_abort(tmp->path, false, false);
	tmp->fd = openat(dir->fd, tmp->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
					 UPLOAD_FILE_MODE);
	if (tmp->fd < 0 && errno == ENOENT)
	{
		/* the cleanup removed the (empty) directory just now: make it again */
		upload_close_user_dir(dir);
		upload_open_user_dir(dir, dir->telegram_id);
		tmp->fd = openat(dir->fd, tmp->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
						 UPLOAD_FILE_MODE);
	}
	if (tmp->fd < 0)
	{
		int			save_errno = errno;

		if (save_errno == EEXIST)
			xact_cancel(action);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", tmp->path),
				 errhint("The OS user \"%s\" running PostgreSQL must be able to write to regstage.upload_dir.",
						 server_os_user())));
	}
	if (fchmod(tmp->fd, UPLOAD_FILE_MODE) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not set the mode of \"%s\": %m", tmp->path)));
}

/* Close a temporary file after an error (its pending action unlinks it). */
void
upload_temp_discard(UploadTemp *tmp)
{
	if (tmp->fd >= 0)
		(void) close(tmp->fd);
	tmp->fd = -1;
}

/*
 * Move without ever replacing: RENAME_NOREPLACE, or on file systems without
 * it a hard link (which fails on an existing name too) and an unlink.
 */
static int
rename_noreplace(int dirfd, const char *from, const char *to)
{
	if (renameat2(dirfd, from, dirfd, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -1;
	if (linkat(dirfd, from, dirfd, to, 0) != 0)
		return -1;
	(void) unlinkat(dirfd, from, 0);
	return 0;
}

/*
 * Move a downloaded temporary file, fsync'd, to its final name
 * <telegram_id>/<doc_type>-<sha256 prefix>.<ext>; returns that name
 * relative to upload_dir.  The directory entry is made durable at
 * pre-commit (xact.c).  The name is ours: nothing of Telegram's file_path
 * or file_id reaches the file system.
 *
 * When the name exists already, it holds the same content (the name
 * carries its hash): another transaction's committed document, or an
 * orphan of a crashed one.  It is left alone and not marked for unlinking;
 * the caller's INSERT then fails on the unique path if a row references
 * it, and an abort of this transaction leaves it in place.
 */
char *
upload_finish(UploadTemp *tmp, UploadUserDir *dir, const char *doc_type,
			  const char *sha256_hex, const char *ext)
{
	char		final[MAXPGPATH];
	char	   *relpath;
	const char *name;
	struct stat ours;
	XactAction *action;

	if (pg_fsync(tmp->fd) != 0)
		fsync_failed("file", tmp->path);
	if (fstat(tmp->fd, &ours) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", tmp->path)));
	if (close(tmp->fd) != 0)
	{
		tmp->fd = -1;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", tmp->path)));
	}
	tmp->fd = -1;

	relpath = psprintf(INT64_FORMAT "/%s-%.16s.%s", dir->telegram_id, doc_type, sha256_hex, ext);
	name = strchr(relpath, '/') + 1;
	snprintf(final, sizeof(final), "%s/%s", regstage_upload_dir, relpath);

	action = xact_unlink_on_abort(final, false, true);
	if (rename_noreplace(dir->fd, tmp->name, name) != 0)
	{
		int			save_errno = errno;
		struct stat theirs;

		xact_cancel(action);
		if (save_errno != EEXIST)
		{
			errno = save_errno;
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not rename \"%s\" to \"%s\": %m", tmp->path, final)));
		}
		if (fstatat(dir->fd, name, &theirs, AT_SYMLINK_NOFOLLOW) != 0 ||
			!S_ISREG(theirs.st_mode) || theirs.st_size != ours.st_size)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_FILE),
					 errmsg("\"%s\" exists and is not this document", final),
					 errhint("Remove it if no regstage.documents row references it (regstage.cleanup_orphans() does so once it is old enough).")));
		(void) unlinkat(dir->fd, tmp->name, 0);
		elog(DEBUG1, "pg_regstage: \"%s\" exists already with this content; left as it is", final);
	}
	return relpath;
}

/*
 * Does a documents.file_path stay inside upload_dir?  Not empty, not
 * absolute, no ".." component: checked on the text, without touching the
 * file system.
 */
bool
upload_relpath_is_safe(const char *rel)
{
	size_t		len = strlen(rel);

	return !(rel[0] == '\0' || rel[0] == '/' ||
			 strcmp(rel, "..") == 0 || strncmp(rel, "../", 3) == 0 || strstr(rel, "/../") != NULL ||
			 (len >= 3 && strcmp(rel + len - 3, "/..") == 0));
}

PG_FUNCTION_INFO_V1(regstage_document_file_exists);

/*
 * document_file_exists(file_path): is there a regular file at
 * upload_dir/file_path?  Paths that could leave upload_dir are answered
 * false without touching the file system.  With regstage.storage = 's3':
 * does the object exist (HEAD; a store that fails raises)?
 */
Datum
regstage_document_file_exists(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	char	   *rel = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char		path[MAXPGPATH];
	struct stat st;

	if (regstage_storage == REGSTAGE_STORAGE_S3)
		PG_RETURN_BOOL(s3_key_is_valid(rel) && s3_head(rel, NULL));
	if (regstage_upload_dir[0] == '\0' || !upload_relpath_is_safe(rel))
		PG_RETURN_BOOL(false);
	snprintf(path, sizeof(path), "%s/%s", regstage_upload_dir, rel);
	PG_RETURN_BOOL(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
}

PG_FUNCTION_INFO_V1(regstage_document_url);

/*
 * document_url(document_id, ttl) → text: a presigned GET URL of the
 * document's object, valid for ttl (1 s to 7 days).  Local files have no
 * URL.
 */
Datum
regstage_document_url(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		id;
	Interval   *ttl;
	int64		ttl_s;
	char	   *key;
	bool		isnull;
	Datum		value;

	if (regstage_storage != REGSTAGE_STORAGE_S3)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("regstage.storage is 'local': documents have no URL"),
				 errhint("Documents are files under regstage.upload_dir; with regstage.storage = 's3' they are objects with presigned URLs.")));
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("document_id and ttl must not be NULL")));
	id = PG_GETARG_INT64(0);
	ttl = PG_GETARG_INTERVAL_P(1);
	ttl_s = ttl->time / USECS_PER_SEC + (int64) ttl->day * SECS_PER_DAY +
		(int64) ttl->month * DAYS_PER_MONTH * SECS_PER_DAY;

	SPI_connect();
	if (SPI_execute_with_args("SELECT file_path FROM regstage.documents WHERE id = $1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(id)}, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read regstage.documents");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("document " INT64_FORMAT " does not exist", id),
				 errhint("regstage.documents.id names a document.")));
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	key = isnull ? NULL : TextDatumGetCString(value);
	SPI_finish();
	if (key == NULL || !s3_key_is_valid(key))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("document " INT64_FORMAT " has no object key (file_path %s%s%s)", id,
						key ? "\"" : "", key ? key : "NULL", key ? "\"" : ""),
				 errhint("Its file_path is not a key of the object store: a document saved with regstage.storage = 'local'?")));
	PG_RETURN_TEXT_P(cstring_to_text(s3_presign_get(key, (int) Max(Min(ttl_s, INT_MAX), 0))));
}
