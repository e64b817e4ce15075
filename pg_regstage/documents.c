/*
 * documents.c — the steps commit_registration() (commit.c) and
 * replace_documents() (replace.c) share: begin (one committer per
 * telegram_id), the staged file_ids, the files fetched into storage bound to
 * the caller's (sub)transaction, and their rows.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/builtins.h"

#include "documents.h"
#include "guc.h"
#include "plans.h"
#include "primary.h"
#include "s3.h"
#include "upload.h"
#include "validate.h"
#include "xact.h"

/* advisory lock class used for per-telegram_id commit locks */
#define REGSTAGE_LOCK_CLASS 0x5247

static void
lock_telegram_id(int64 telegram_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (telegram_id >> 32),
						 (uint32) telegram_id, REGSTAGE_LOCK_CLASS);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/* The storage is usable before anything is fetched (S3: checked at use). */
static void
check_storage(void)
{
	if (regstage_storage == REGSTAGE_STORAGE_LOCAL)
		(void) upload_check_dir();
}

/*
 * The start of both paths: on the primary, a valid telegram_id (argument 0),
 * usable storage, this telegram_id's lock (two sessions committing one user
 * serialise; held to the end of the transaction), SPI connected.
 */
int64
documents_begin(FunctionCallInfo fcinfo)
{
	int64		telegram_id;

	primary_required(fcinfo);
	validate_telegram_id(PG_ARGISNULL(0), PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0));
	telegram_id = PG_GETARG_INT64(0);
	check_storage();
	lock_telegram_id(telegram_id);
	SPI_connect();
	return telegram_id;
}

/*
 * One BotApiFile per doc_type, its file_id from the staged documents and
 * checked again (another client may have written it); refuses listing the
 * doc_types not staged.
 */
BotApiFile *
documents_staged_files(int64 telegram_id, StagedRegistration *staged, List *doc_types)
{
	BotApiFile *files = palloc0(sizeof(BotApiFile) * list_length(doc_types));
	StringInfoData missing;
	ListCell   *lc;

	initStringInfo(&missing);
	foreach(lc, doc_types)
	{
		BotApiFile *file = &files[foreach_current_index(lc)];

		file->doc_type = lfirst(lc);
		file->file_id = redis_staged_field(staged->documents, file->doc_type);
		if (file->file_id == NULL)
			appendStringInfo(&missing, "%s%s", missing.len ? ", " : "", file->doc_type);
		else
			validate_file_id(file->file_id);
	}
	if (missing.len > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("telegram_id " INT64_FORMAT ": documents not staged yet: %s", telegram_id, missing.data),
				 errhint("Stage them with regstage.stage_document() first.")));
	return files;
}

/*
 * Download files[0..nfiles) (doc_type and file_id set) into the user's
 * directory, or into new objects, bound to this (sub)transaction; returns
 * their paths relative to upload_dir, or their keys (s3.h).
 */
char **
documents_fetch(int64 telegram_id, BotApiFile *files, int nfiles)
{
	UploadUserDir userdir;
	UploadTemp *temps;
	char	  **relpaths = palloc0(sizeof(char *) * nfiles);

	if (regstage_storage == REGSTAGE_STORAGE_S3)
	{
		/*
		 * A fresh key per document, its delete-on-abort queued before the
		 * PUT starts: whatever of it reaches the store goes with an abort.
		 */
		for (int i = 0; i < nfiles; i++)
		{
			relpaths[i] = s3_document_key(telegram_id, files[i].doc_type);
			xact_s3_delete_on_abort(relpaths[i]);
			files[i].s3_key = relpaths[i];
			files[i].fd = -1;
		}
		botapi_fetch_files(telegram_id, files, nfiles);
		return relpaths;
	}

	temps = palloc0(sizeof(UploadTemp) * nfiles);

	for (int i = 0; i < nfiles; i++)
		temps[i].fd = -1;
	upload_open_user_dir(&userdir, telegram_id);
	PG_TRY();
	{
		for (int i = 0; i < nfiles; i++)
		{
			upload_temp_create(&temps[i], &userdir, files[i].doc_type);
			files[i].fd = temps[i].fd;
			files[i].fd_path = temps[i].path;
		}
		botapi_fetch_files(telegram_id, files, nfiles);
		for (int i = 0; i < nfiles; i++)
			relpaths[i] = upload_finish(&temps[i], &userdir, files[i].doc_type,
										files[i].sha256_hex, files[i].ext);
	}
	PG_CATCH();
	{
		/* plain descriptors: close them here; the abort unlinks the files */
		for (int i = 0; i < nfiles; i++)
			upload_temp_discard(&temps[i]);
		PG_RE_THROW();
	}
	PG_END_TRY();
	upload_close_user_dir(&userdir);
	return relpaths;
}

static SPIPlanPtr insert_one_document_plan = NULL;

static void
insert_document(int64 user_id, BotApiFile *file, const char *relpath)
{
	Oid			types[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID};
	Datum		values[6];

	values[0] = Int64GetDatum(user_id);
	values[1] = CStringGetTextDatum(file->doc_type);
	values[2] = CStringGetTextDatum(file->file_id);
	values[3] = CStringGetTextDatum(relpath);
	values[4] = Int64GetDatum(file->size);
	values[5] = CStringGetTextDatum(file->sha256_hex);
	if (SPI_execute_plan(regstage_plan(&insert_one_document_plan,
									   "INSERT INTO regstage.documents "
									   "(user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256) "
									   "VALUES ($1, $2, $3, $4, $5, $6)", 6, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert into regstage.documents");
}

/* The documents' rows of user_id; SPI connected. */
void
documents_insert(int64 user_id, BotApiFile *files, char **relpaths, int nfiles)
{
	for (int i = 0; i < nfiles; i++)
		insert_document(user_id, &files[i], relpaths[i]);
}
