/*
 * docfiles.c — a document's file goes with its row.
 *
 * A trigger on regstage.documents: when a row is deleted (by hand, by the
 * cascade from users, by the retention of rejected users' documents, or
 * because new documents replaced it), its file is deleted once the deleting
 * transaction has committed — not 48 hours later by the orphan cleanup, and
 * never if the transaction rolls back.  xact.c runs the delete after the
 * commit; a failure there is a WARNING and the cleanup removes the file.
 * A row inserted (or a path updated) onto a file whose delete is pending —
 * new documents with the same content, hence the same name — keeps it.
 *
 * With regstage.storage = 's3' file_path is an object key (s3.h) and the
 * object is deleted after the commit instead, within a bounded time
 * (xact.c); an object not deleted then is left to the cleanup.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "guc.h"
#include "s3.h"
#include "upload.h"
#include "xact.h"

PG_FUNCTION_INFO_V1(regstage_document_file_trigger);

static Datum tuple_file_path(TriggerData *trigdata, HeapTuple tuple, bool *isnull);

/* the object key of the tuple, or NULL when it is not one */
static char *
tuple_key(TriggerData *trigdata, HeapTuple tuple)
{
	bool		isnull;
	Datum		value = tuple_file_path(trigdata, tuple, &isnull);
	char	   *key;

	if (isnull)
		return NULL;
	key = TextDatumGetCString(value);
	return s3_key_is_valid(key) ? key : NULL;
}

static Datum
tuple_file_path(TriggerData *trigdata, HeapTuple tuple, bool *isnull)
{
	int			attnum = SPI_fnumber(trigdata->tg_relation->rd_att, "file_path");

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("table \"%s\" has no column file_path", RelationGetRelationName(trigdata->tg_relation))));
	return heap_getattr(tuple, attnum, trigdata->tg_relation->rd_att, isnull);
}

/* upload_dir/file_path of the tuple, or NULL when it is not ours to touch */
static char *
tuple_file(TriggerData *trigdata, HeapTuple tuple)
{
	int			attnum = SPI_fnumber(trigdata->tg_relation->rd_att, "file_path");
	bool		isnull;
	Datum		value;
	char	   *rel;

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("table \"%s\" has no column file_path", RelationGetRelationName(trigdata->tg_relation))));
	value = heap_getattr(tuple, attnum, trigdata->tg_relation->rd_att, &isnull);
	if (isnull || regstage_upload_dir[0] == '\0')
		return NULL;
	rel = TextDatumGetCString(value);
	if (!upload_relpath_is_safe(rel))
		return NULL;			/* an old absolute or escaping path: never ours */
	return psprintf("%s/%s", regstage_upload_dir, rel);
}

Datum
regstage_document_file_trigger(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	char	   *path;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("regstage.document_file_trigger() must fire AFTER ... FOR EACH ROW")));

	if (regstage_storage == REGSTAGE_STORAGE_S3)
	{
		HeapTuple	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
			trigdata->tg_newtuple : trigdata->tg_trigtuple;
		char	   *key = tuple_key(trigdata, tuple);

		if (key != NULL && TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
			xact_s3_delete_on_commit(key);
		else if (key != NULL)
			xact_s3_keep_object(key);
		return PointerGetDatum(NULL);
	}

	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		if ((path = tuple_file(trigdata, trigdata->tg_trigtuple)) != NULL)
			xact_delete_on_commit(path);
	}
	else
	{
		HeapTuple	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
			trigdata->tg_newtuple : trigdata->tg_trigtuple;

		if ((path = tuple_file(trigdata, tuple)) != NULL)
			xact_keep_file(path);
	}
	return PointerGetDatum(NULL);
}
