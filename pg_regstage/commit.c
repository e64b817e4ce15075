/*
 * commit.c — regstage.commit_registration(telegram_id): the atomic commit.
 *
 * Read this file first.  In the caller's transaction:
 *
 *   1. lock      a transaction-level advisory lock on the telegram_id, so
 *                two sessions committing the same user serialise
 *   2. check     not registered yet (else: clear stale staging, 23505)
 *   3. staged    language + data + documents from Redis, one round trip;
 *                complete and valid, or refuse listing what is missing
 *   4. files     every document fetched concurrently from the Bot API into
 *                temporary files in the user's directory, fsync'd, moved
 *                to their final names (upload.c; each file is bound to this
 *                (sub)transaction, xact.c; the directories are fsync'd at
 *                pre-commit) -- or, with regstage.storage = 's3', streamed
 *                into new objects (s3.c), each bound to this
 *                (sub)transaction before its PUT starts
 *   5. rows      INSERT users + documents via SPI
 *   6. Redis     the DEL of the staged keys is queued for after the
 *                top-level commit (xact.c); a failure there is a WARNING
 *
 * Any error rolls everything back: no rows, files unlinked by the abort
 * (xact.c), staged data untouched.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "botapi.h"
#include "guc.h"
#include "plans.h"
#include "primary.h"
#include "redis_staging.h"
#include "s3.h"
#include "staging.h"
#include "upload.h"
#include "validate.h"
#include "xact.h"

/* advisory lock class used for per-telegram_id commit locks */
#define REGSTAGE_LOCK_CLASS 0x5247

PG_FUNCTION_INFO_V1(regstage_commit_registration);

static void
lock_telegram_id(int64 telegram_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (telegram_id >> 32),
						 (uint32) telegram_id, REGSTAGE_LOCK_CLASS);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * Refuse an already registered telegram_id.  If the row was committed by
 * an earlier transaction, the staged keys are stale (a crash between that
 * commit and its Redis DEL): clear them now, best effort.
 */
static void
refuse_if_registered(int64 telegram_id)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(telegram_id)};
	bool		isnull;
	int64		user_id;
	TransactionId xmin;
	char		errbuf[256];

	static SPIPlanPtr plan = NULL;

	if (SPI_execute_plan(regstage_plan(&plan, "SELECT id, xmin::text::bigint FROM regstage.users WHERE telegram_id = $1",
									   1, argtypes),
						 values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up regstage.users");
	if (SPI_processed == 0)
		return;
	user_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	xmin = (TransactionId) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

	if (TransactionIdIsCurrentTransactionId(xmin))
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("telegram_id " INT64_FORMAT " was already registered in this transaction (user id " INT64_FORMAT ")",
						telegram_id, user_id)));

	if (!redis_clear_nothrow(telegram_id, errbuf, sizeof(errbuf)))
		ereport(WARNING,
				(errmsg("could not clear stale staged data of telegram_id " INT64_FORMAT ": %s",
						telegram_id, errbuf)));
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("telegram_id " INT64_FORMAT " is already registered (user id " INT64_FORMAT ")",
					telegram_id, user_id),
			 errhint("Stale staged data of this telegram_id was cleared; check regstage.users.status instead.")));
}

/* The storage is usable before anything is fetched (S3: checked at use). */
static void
check_storage(void)
{
	if (regstage_storage == REGSTAGE_STORAGE_LOCAL)
		(void) upload_check_dir();
}

/* Staged values were possibly written by another client: check them again. */
static void
refuse_if_incomplete(int64 telegram_id, StagedRegistration *s)
{
	List	   *missing = staging_missing_items(s);

	if (missing != NIL)
	{
		StringInfoData list;
		ListCell   *lc;

		initStringInfo(&list);
		foreach(lc, missing)
			appendStringInfo(&list, "%s%s", foreach_current_index(lc) ? ", " : "", (char *) lfirst(lc));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registration of telegram_id " INT64_FORMAT " is incomplete: missing %s",
						telegram_id, list.data),
				 errhint(s->exists ? "Stage the missing items first; regstage.missing() lists them."
						 : "Nothing is staged for this telegram_id (or it expired after regstage.ttl).")));
	}
	validate_language(s->language);
}

static SPIPlanPtr insert_user_plan = NULL;

static void insert_document(int64 user_id, BotApiFile *file, const char *relpath);

static int64
insert_rows(int64 telegram_id, StagedRegistration *s, BotApiFile *files, char **relpaths, int nfiles)
{
	Oid			user_types[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		user_values[6];
	char		user_nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	const char *username = redis_staged_field(s->data, "username");
	const char *email = redis_staged_field(s->data, "email");
	bool		isnull;
	int64		user_id;

	user_values[0] = Int64GetDatum(telegram_id);
	user_values[1] = CStringGetTextDatum(validate_full_name(redis_staged_field(s->data, "full_name")));
	user_values[2] = CStringGetTextDatum(validate_phone(redis_staged_field(s->data, "phone")));
	if (username)
		user_values[3] = CStringGetTextDatum(validate_username(username));
	else
		user_nulls[3] = 'n';
	if (email)
		user_values[4] = CStringGetTextDatum(validate_email(email));
	else
		user_nulls[4] = 'n';
	user_values[5] = CStringGetTextDatum(s->language);

	if (SPI_execute_plan(regstage_plan(&insert_user_plan,
									   "INSERT INTO regstage.users (telegram_id, full_name, phone, username, email, language) "
									   "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id", 6, user_types),
						 user_values, user_nulls, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into regstage.users");
	user_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	for (int i = 0; i < nfiles; i++)
		insert_document(user_id, &files[i], relpaths[i]);
	return user_id;
}

/*
 * Download files[0..nfiles) (doc_type and file_id set) into the user's
 * directory, or into new objects, bound to this (sub)transaction; returns
 * their paths relative to upload_dir, or their keys (s3.h).
 */
static char **
fetch_documents(int64 telegram_id, BotApiFile *files, int nfiles)
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

Datum
regstage_commit_registration(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id;
	StagedRegistration *staged;
	List	   *doc_types;
	ListCell   *lc;
	BotApiFile *files;
	char	  **relpaths;
	int			nfiles;
	int64		user_id;

	primary_required(fcinfo);
	validate_telegram_id(PG_ARGISNULL(0), PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0));
	telegram_id = PG_GETARG_INT64(0);
	check_storage();

	/* 1-2: one committer per telegram_id; refuse the registered */
	lock_telegram_id(telegram_id);
	SPI_connect();
	refuse_if_registered(telegram_id);

	/* 3: the staged registration, complete and valid */
	staged = redis_fetch_staged(telegram_id);
	refuse_if_incomplete(telegram_id, staged);
	doc_types = regstage_required_document_list();
	nfiles = list_length(doc_types);
	files = palloc0(sizeof(BotApiFile) * nfiles);
	foreach(lc, doc_types)
	{
		int			i = foreach_current_index(lc);

		files[i].doc_type = lfirst(lc);
		files[i].file_id = redis_staged_field(staged->documents, files[i].doc_type);
		validate_file_id(files[i].file_id);
	}

	/* 4: the files, bound to this (sub)transaction */
	relpaths = fetch_documents(telegram_id, files, nfiles);

	/* 5: the rows */
	user_id = insert_rows(telegram_id, staged, files, relpaths, nfiles);
	SPI_finish();

	/* 6: Redis after the top-level commit */
	xact_clear_redis_on_commit(telegram_id, user_id);
	ereport(LOG,
			(errmsg("pg_regstage: telegram_id " INT64_FORMAT ": %d documents saved for user id " INT64_FORMAT ", waiting for commit",
					telegram_id, nfiles, user_id),
			 errhidestmt(true)));
	PG_RETURN_INT64(user_id);
}

PG_FUNCTION_INFO_V1(regstage_replace_documents);

/*
 * replace_documents(telegram_id): the documents an admin asked a registered
 * user to send again (regstage.document_requests), swapped in within the
 * caller's transaction.  The new files are downloaded exactly as a
 * registration's; the old rows are deleted and the new ones inserted, so the
 * old files go only once this transaction commits (docfiles.c), and the new
 * ones are unlinked if it aborts.  The staged data is cleared after commit.
 * Returns how many documents were replaced.
 */
Datum
regstage_replace_documents(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id;
	StagedRegistration *staged;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1];
	bool		isnull;
	int64		user_id;
	Datum	   *types;
	int			nfiles;
	BotApiFile *files;
	char	  **relpaths;
	StringInfoData missing;

	primary_required(fcinfo);
	validate_telegram_id(PG_ARGISNULL(0), PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0));
	telegram_id = PG_GETARG_INT64(0);
	check_storage();
	lock_telegram_id(telegram_id);
	SPI_connect();

	args[0] = Int64GetDatum(telegram_id);
	if (SPI_execute_with_args("SELECT u.id, r.doc_types FROM regstage.users u"
							  " JOIN regstage.document_requests r ON r.user_id = u.id"
							  " WHERE u.telegram_id = $1 FOR UPDATE OF u",
							  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read regstage.document_requests");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("telegram_id " INT64_FORMAT " has no request for new documents", telegram_id),
				 errhint("An admin asks for new documents from the review message; regstage.document_requests holds the request.")));
	user_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
					  TEXTOID, -1, false, TYPALIGN_INT, &types, NULL, &nfiles);

	staged = redis_fetch_staged(telegram_id);
	files = palloc0(sizeof(BotApiFile) * nfiles);
	initStringInfo(&missing);
	for (int i = 0; i < nfiles; i++)
	{
		files[i].doc_type = TextDatumGetCString(types[i]);
		files[i].file_id = redis_staged_field(staged->documents, files[i].doc_type);
		if (files[i].file_id == NULL)
			appendStringInfo(&missing, "%s%s", missing.len ? ", " : "", files[i].doc_type);
		else
			validate_file_id(files[i].file_id);
	}
	if (missing.len > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("telegram_id " INT64_FORMAT ": new documents not staged yet: %s", telegram_id, missing.data),
				 errhint("Stage them with regstage.stage_document() first.")));

	relpaths = fetch_documents(telegram_id, files, nfiles);

	if (SPI_execute_with_args("DELETE FROM regstage.documents d USING regstage.document_requests r"
							  " WHERE r.user_id = $1 AND d.user_id = r.user_id AND d.doc_type = ANY (r.doc_types)",
							  1, argtypes, (Datum[]) {Int64GetDatum(user_id)}, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete the replaced documents");
	for (int i = 0; i < nfiles; i++)
		insert_document(user_id, &files[i], relpaths[i]);
	SPI_finish();

	xact_clear_redis_on_commit(telegram_id, user_id);
	ereport(LOG,
			(errmsg("pg_regstage: telegram_id " INT64_FORMAT ": %d documents replaced for user id " INT64_FORMAT ", waiting for commit",
					telegram_id, nfiles, user_id),
			 errhidestmt(true)));
	PG_RETURN_INT32(nfiles);
}
