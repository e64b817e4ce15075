/*
 * commit.c — regstage.commit_registration(telegram_id): the atomic commit.
 *
 * Read this file first.  In the caller's transaction:
 *
 *   1. lock      a transaction-level advisory lock on the telegram_id, so
 *                two sessions committing the same user serialise
 *                (documents.c: steps 1, 3's file_ids, 4 and 5's document
 *                rows are shared with replace_documents(), replace.c)
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

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "botapi.h"
#include "documents.h"
#include "guc.h"
#include "plans.h"
#include "redis_staging.h"
#include "staging.h"
#include "validate.h"
#include "xact.h"

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

	documents_insert(user_id, files, relpaths, nfiles);
	return user_id;
}

PG_FUNCTION_INFO_V1(regstage_commit_registration);

Datum
regstage_commit_registration(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id;
	StagedRegistration *staged;
	List	   *doc_types;
	BotApiFile *files;
	char	  **relpaths;
	int			nfiles;
	int64		user_id;

	/* 1: one committer per telegram_id (documents.c) */
	telegram_id = documents_begin(fcinfo);

	/* 2: refuse the registered */
	refuse_if_registered(telegram_id);

	/* 3: the staged registration, complete and valid */
	staged = redis_fetch_staged(telegram_id);
	refuse_if_incomplete(telegram_id, staged);
	doc_types = regstage_required_document_list();
	nfiles = list_length(doc_types);
	files = documents_staged_files(telegram_id, staged, doc_types);

	/* 4: the files, bound to this (sub)transaction */
	relpaths = documents_fetch(telegram_id, files, nfiles);

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
