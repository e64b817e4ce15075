/*
 * replace.c — regstage.replace_documents(telegram_id): the documents an
 * admin asked a registered user to send again, swapped in atomically.
 *
 * The same steps as a registration's commit (documents.c), in the caller's
 * transaction: the lock, the staged file_ids, the files bound to this
 * (sub)transaction; then the old rows are deleted and the new ones
 * inserted.  The old files go only when this transaction commits (the
 * documents trigger, docfiles.c); the new ones go if it aborts.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "documents.h"
#include "guc.h"
#include "redis_staging.h"
#include "xact.h"

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
	List	   *doc_types = NIL;
	BotApiFile *files;
	char	  **relpaths;

	telegram_id = documents_begin(fcinfo);

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

	for (int i = 0; i < nfiles; i++)
		doc_types = lappend(doc_types, TextDatumGetCString(types[i]));

	staged = redis_fetch_staged(telegram_id);
	files = documents_staged_files(telegram_id, staged, doc_types);
	relpaths = documents_fetch(telegram_id, files, nfiles);

	if (SPI_execute_with_args("DELETE FROM regstage.documents d USING regstage.document_requests r"
							  " WHERE r.user_id = $1 AND d.user_id = r.user_id AND d.doc_type = ANY (r.doc_types)",
							  1, argtypes, (Datum[]) {Int64GetDatum(user_id)}, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete the replaced documents");
	documents_insert(user_id, files, relpaths, nfiles);
	SPI_finish();

	xact_clear_redis_on_commit(telegram_id, user_id);
	ereport(LOG,
			(errmsg("pg_regstage: telegram_id " INT64_FORMAT ": %d documents replaced for user id " INT64_FORMAT ", waiting for commit",
					telegram_id, nfiles, user_id),
			 errhidestmt(true)));
	PG_RETURN_INT32(nfiles);
}
