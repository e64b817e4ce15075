/*
 * upload.c — the upload store and its transaction-bound pending list.
 *
 * Every file or directory this backend creates is entered in pending_files
 * *before* it is created, tagged with the current subtransaction:
 *
 *   ABORT_SUB   unlink the entries of that subtransaction
 *   COMMIT_SUB  hand them to the parent
 *   ABORT       unlink everything
 *   COMMIT      forget everything (the files are now referenced by rows)
 *   PRE_PREPARE refuse: the files could not follow a prepared transaction
 *
 * The list lives in TopMemoryContext and is emptied at every terminal
 * event.  Files are written as .<doc_type>-*.part and renamed into place,
 * so a crash leaves at most a temporary file for the cleanup to sweep.
 */
#include "postgres.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "guc.h"
#include "upload.h"

typedef struct PendingFile
{
	struct PendingFile *next;
	SubTransactionId subid;		/* owner; reassigned to the parent on subcommit */
	bool		is_dir;			/* rmdir (only if empty) instead of unlink */
	char		path[FLEXIBLE_ARRAY_MEMBER];
} PendingFile;

/* newest first, so files are removed before the directories holding them */
static PendingFile *pending_files = NULL;
static uint32 temp_counter = 0;

static void
pending_add(const char *path, bool is_dir)
{
	PendingFile *p = MemoryContextAlloc(TopMemoryContext,
										offsetof(PendingFile, path) + strlen(path) + 1);

	p->subid = GetCurrentSubTransactionId();
	p->is_dir = is_dir;
	strcpy(p->path, path);
	p->next = pending_files;
	pending_files = p;
}

/*
 * Remove the entries matching subid (or all, with InvalidSubTransactionId),
 * unlinking their files when unlink_files.  Never raises: this runs during
 * abort processing.
 */
static void
pending_release(SubTransactionId subid, bool unlink_files)
{
	PendingFile **link = &pending_files;

	while (*link)
	{
		PendingFile *p = *link;

		if (subid != InvalidSubTransactionId && p->subid != subid)
		{
			link = &p->next;
			continue;
		}
		if (unlink_files)
		{
			int			rc = p->is_dir ? rmdir(p->path) : unlink(p->path);

			if (rc == 0)
				elog(DEBUG1, "pg_regstage: removed \"%s\" of an aborted transaction", p->path);
			else if (errno != ENOENT && !(p->is_dir && (errno == ENOTEMPTY || errno == EEXIST)))
				ereport(WARNING,
						(errcode_for_file_access(),
						 errmsg("could not remove \"%s\" of an aborted registration: %m", p->path),
						 errhint("regstage.cleanup_orphans() will remove it once it is old enough.")));
		}
		*link = p->next;
		pfree(p);
	}
}

static void
upload_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			pending_release(InvalidSubTransactionId, true);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			pending_release(InvalidSubTransactionId, false);
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (pending_files != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has run regstage.commit_registration()"),
						 errhint("Commit registrations in an ordinary transaction.")));
			break;
		default:
			break;
	}
}

static void
upload_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	PendingFile *p;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			pending_release(mySubid, true);
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			for (p = pending_files; p; p = p->next)
				if (p->subid == mySubid)
					p->subid = parentSubid;
			break;
		default:
			break;
	}
}

void
upload_register_callbacks(void)
{
	RegisterXactCallback(upload_xact_callback, NULL);
	RegisterSubXactCallback(upload_subxact_callback, NULL);
}

static const char *
server_os_user(void)
{
	struct passwd *pw = getpwuid(geteuid());

	return pw ? pw->pw_name : "the PostgreSQL server's user";
}

/*
 * The configured upload directory, checked: set, existing, a directory,
 * writable by this server.  This is the seed's "Permission denied", caught
 * before anything is downloaded.
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
	return dir;
}

/*
 * mkdir with our mode, entered in the pending list when created.  The
 * server's umask (0077) would otherwise decide the mode.
 */
static void
ensure_dir(const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return;
	pending_add(path, true);
	if (mkdir(path, UPLOAD_DIR_MODE) != 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", path),
				 errhint("The OS user \"%s\" running PostgreSQL must be able to write to regstage.upload_dir.",
						 server_os_user())));
	if (chmod(path, UPLOAD_DIR_MODE) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not set the mode of directory \"%s\": %m", path)));
}

/*
 * Create a fresh temporary file for one download (the caller has run
 * upload_check_dir() once for the registration), in the user's own
 * directory (<telegram_id>/.<doc_type>-<pid>-<n>.part): the final rename
 * then stays within one directory, and concurrent registrations do not
 * contend for one shared directory.
 */
void
upload_temp_create(UploadTemp *tmp, int64 telegram_id, const char *doc_type)
{
	char		userdir[MAXPGPATH];

	snprintf(userdir, sizeof(userdir), "%s/" INT64_FORMAT, regstage_upload_dir, telegram_id);
	ensure_dir(userdir);
	snprintf(tmp->path, sizeof(tmp->path), "%s/.%s-%d-%u" UPLOAD_TMP_SUFFIX,
			 userdir, doc_type, MyProcPid, ++temp_counter);
	pending_add(tmp->path, false);
	/* a transient file is closed by PostgreSQL itself if the transaction aborts */
	tmp->fd = OpenTransientFilePerm(tmp->path, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY,
									UPLOAD_FILE_MODE);
	if (tmp->fd < 0 && errno == ENOENT)
	{
		/* the cleanup removed the (empty) directory just now: make it again */
		ensure_dir(userdir);
		tmp->fd = OpenTransientFilePerm(tmp->path, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY,
										UPLOAD_FILE_MODE);
	}
	if (tmp->fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", tmp->path),
				 errhint("The OS user \"%s\" running PostgreSQL must be able to write to regstage.upload_dir.",
						 server_os_user())));
	if (fchmod(tmp->fd, UPLOAD_FILE_MODE) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not set the mode of \"%s\": %m", tmp->path)));
}

/*
 * Move a downloaded temporary file, fsync'd, to its final name
 * <telegram_id>/<doc_type>-<sha256 prefix>.<ext>; returns that name
 * relative to upload_dir.  upload_sync_user_dir() makes the rename durable.  The name is ours: nothing of Telegram's
 * file_path or file_id reaches the file system.
 */
char *
upload_finish(UploadTemp *tmp, int64 telegram_id, const char *doc_type,
			  const char *sha256_hex, const char *ext)
{
	const char *dir = regstage_upload_dir;
	char		userdir[MAXPGPATH];
	char		final[MAXPGPATH];
	char	   *relpath;

	if (pg_fsync(tmp->fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", tmp->path)));
	if (CloseTransientFile(tmp->fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", tmp->path)));
	tmp->fd = -1;

	snprintf(userdir, sizeof(userdir), "%s/" INT64_FORMAT, dir, telegram_id);
	relpath = psprintf(INT64_FORMAT "/%s-%.16s.%s", telegram_id, doc_type, sha256_hex, ext);
	snprintf(final, sizeof(final), "%s/%s", dir, relpath);

	pending_add(final, false);
	if (rename(tmp->path, final) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not rename \"%s\" to \"%s\": %m", tmp->path, final)));
	return relpath;
}

/*
 * Make the renames into <telegram_id>/ durable: fsync that directory once
 * for all documents, and upload_dir too when this transaction created the
 * user directory (its entry is then new as well).
 */
void
upload_sync_user_dir(int64 telegram_id)
{
	char		userdir[MAXPGPATH];

	snprintf(userdir, sizeof(userdir), "%s/" INT64_FORMAT, regstage_upload_dir, telegram_id);
	fsync_fname(userdir, true);
	for (PendingFile *p = pending_files; p; p = p->next)
		if (p->is_dir && strcmp(p->path, userdir) == 0)
		{
			fsync_fname(regstage_upload_dir, true);
			break;
		}
}

PG_FUNCTION_INFO_V1(regstage_document_file_exists);

/*
 * document_file_exists(file_path): is there a regular file at
 * upload_dir/file_path?  Paths that could leave upload_dir are answered
 * false without touching the file system.
 */
Datum
regstage_document_file_exists(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	char	   *rel = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char		path[MAXPGPATH];
	struct stat st;

	if (regstage_upload_dir[0] == '\0' || rel[0] == '\0' || rel[0] == '/' ||
		strcmp(rel, "..") == 0 || strncmp(rel, "../", 3) == 0 || strstr(rel, "/../") != NULL ||
		(strlen(rel) >= 3 && strcmp(rel + strlen(rel) - 3, "/..") == 0))
		PG_RETURN_BOOL(false);
	snprintf(path, sizeof(path), "%s/%s", regstage_upload_dir, rel);
	PG_RETURN_BOOL(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
}
