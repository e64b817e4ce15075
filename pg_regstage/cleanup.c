/*
 * cleanup.c — the orphan scan, shared by cleanup_orphans() and the worker.
 *
 * Walks regstage.upload_dir without following symlinks.  Regular files are
 * checked against regstage.documents.file_path in batches (one index-probe
 * query per CLEANUP_BATCH files, with a fresh snapshot each), so memory
 * stays flat however many files or rows there are:
 *
 *   referenced file             never touched
 *   orphan older than max_age   deleted
 *   younger orphan              kept (a transaction in flight may own it)
 *   temporary (*.part)          deleted when older than tmp_max_age
 *
 * Per-user directories found empty (and older than max_age) are removed.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "datatype/timestamp.h"
#include "utils/memutils.h"

#include "cleanup.h"
#include "guc.h"
#include "upload.h"

#define CLEANUP_BATCH 1000
#define CLEANUP_MAX_DEPTH 16

typedef struct Candidate
{
	char	   *relpath;
} Candidate;

typedef struct OrphanScan
{
	const char *root;
	time_t		now;
	int64		max_age_s;
	int64		tmp_max_age_s;
	CleanupStats *stats;
	SPIPlanPtr	unreferenced_plan;
	Candidate	batch[CLEANUP_BATCH];
	int			nbatch;
	MemoryContext batch_cxt;
} OrphanScan;

static void
remove_file(OrphanScan *st, const char *relpath, const char *why)
{
	char		path[MAXPGPATH];

	snprintf(path, sizeof(path), "%s/%s", st->root, relpath);
	if (unlink(path) == 0)
	{
		st->stats->deleted++;
		ereport(DEBUG1, (errmsg("pg_regstage cleanup: deleted %s \"%s\"", why, relpath)));
	}
	else if (errno != ENOENT)
	{
		st->stats->errors++;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pg_regstage cleanup: could not delete \"%s\": %m", relpath),
				 errdetail("Path: \"%s\".", path)));
	}
}

/* mtime of a file under upload_dir; false (and counted) when it cannot be read */
static bool
entry_mtime(OrphanScan *st, const char *relpath, time_t *mtime)
{
	char		path[MAXPGPATH];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/%s", st->root, relpath);
	if (lstat(path, &sb) == 0)
	{
		*mtime = sb.st_mtime;
		return true;
	}
	if (errno != ENOENT)
	{
		st->stats->errors++;
		ereport(WARNING, (errcode_for_file_access(),
						  errmsg("pg_regstage cleanup: could not stat \"%s\": %m", relpath),
						  errdetail("Path: \"%s\".", path)));
	}
	return false;
}

/*
 * Check the batch against documents.file_path (one index-probe query); stat
 * only the unreferenced files and delete or keep them by age.
 */
static void
flush_batch(OrphanScan *st)
{
	MemoryContext oldcxt;
	Datum	   *elems;
	Datum		values[1];
	int			rc;

	if (st->nbatch == 0)
		return;
	oldcxt = MemoryContextSwitchTo(st->batch_cxt);
	elems = palloc(sizeof(Datum) * st->nbatch);
	for (int i = 0; i < st->nbatch; i++)
		elems[i] = CStringGetTextDatum(st->batch[i].relpath);
	values[0] = PointerGetDatum(construct_array(elems, st->nbatch, TEXTOID, -1, false, TYPALIGN_INT));
	MemoryContextSwitchTo(oldcxt);
	rc = SPI_execute_plan(st->unreferenced_plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pg_regstage cleanup: lookup of documents.file_path failed: %s", SPI_result_code_string(rc));

	/* the query returns the indexes (1-based) of unreferenced paths, in order */
	st->stats->referenced += st->nbatch - SPI_processed;
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int			i = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull)) - 1;
		Candidate  *c = &st->batch[i];
		time_t		mtime;

		CHECK_FOR_INTERRUPTS();
		if (!entry_mtime(st, c->relpath, &mtime))
			continue;
		if (st->now - mtime >= st->max_age_s)
			remove_file(st, c->relpath, "orphaned file");
		else
		{
			st->stats->kept++;
			ereport(DEBUG1, (errmsg("pg_regstage cleanup: kept recent orphaned file \"%s\"", c->relpath)));
		}
	}
	SPI_freetuptable(SPI_tuptable);
	st->nbatch = 0;
	MemoryContextReset(st->batch_cxt);
}

static bool
is_temporary(const char *relpath)
{
	size_t		len = strlen(relpath);
	size_t		slen = strlen(UPLOAD_TMP_SUFFIX);

	return len > slen && strcmp(relpath + len - slen, UPLOAD_TMP_SUFFIX) == 0;
}

/* The entry's type from readdir, or from lstat where the file system does not say. */
static int
entry_type(OrphanScan *st, struct dirent *de, const char *relpath)
{
	char		path[MAXPGPATH];
	struct stat sb;

	if (de->d_type != DT_UNKNOWN)
		return de->d_type;
	snprintf(path, sizeof(path), "%s/%s", st->root, relpath);
	if (lstat(path, &sb) != 0)
		return DT_UNKNOWN;
	return S_ISLNK(sb.st_mode) ? DT_LNK : S_ISDIR(sb.st_mode) ? DT_DIR :
		S_ISREG(sb.st_mode) ? DT_REG : DT_UNKNOWN;
}

/*
 * Walk one directory.  Types come from readdir (no stat per file): only
 * temporary files, unreferenced files and empty directories are stat'ed.
 * A directory found empty and older than max_age is removed; one emptied
 * by this run goes in the next (its mtime is now).
 */
static void
scan_dir(OrphanScan *st, const char *reldir, int depth)
{
	char		path[MAXPGPATH];
	DIR		   *dir;
	struct dirent *de;
	int			entries = 0;
	time_t		mtime;

	if (reldir[0])
		snprintf(path, sizeof(path), "%s/%s", st->root, reldir);
	else
		strlcpy(path, st->root, sizeof(path));

	/* AllocateDir'd directories are closed by PostgreSQL if we are cancelled */
	dir = AllocateDir(path);
	if (dir == NULL)
	{
		st->stats->errors++;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pg_regstage cleanup: could not open directory \"%s\": %m", reldir[0] ? reldir : "."),
				 errdetail("Path: \"%s\".", path),
				 errhint("The OS user running PostgreSQL must be able to read every directory under regstage.upload_dir.")));
		return;
	}
	while ((de = ReadDirExtended(dir, path, LOG)) != NULL)
	{
		char		relpath[MAXPGPATH];

		CHECK_FOR_INTERRUPTS();
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		entries++;
		if (reldir[0])
			snprintf(relpath, sizeof(relpath), "%s/%s", reldir, de->d_name);
		else
			strlcpy(relpath, de->d_name, sizeof(relpath));

		switch (entry_type(st, de, relpath))
		{
			case DT_LNK:
				/* never followed, never removed: whatever it points at is not ours */
				ereport(DEBUG1, (errmsg("pg_regstage cleanup: skipped symbolic link \"%s\"", relpath)));
				break;
			case DT_DIR:
				if (depth < CLEANUP_MAX_DEPTH)
					scan_dir(st, relpath, depth + 1);
				break;
			case DT_REG:
				if (is_temporary(relpath))
				{
					if (!entry_mtime(st, relpath, &mtime))
						break;
					if (st->now - mtime >= st->tmp_max_age_s)
						remove_file(st, relpath, "temporary file");
					else
						st->stats->kept++;
					break;
				}
				st->batch[st->nbatch].relpath = MemoryContextStrdup(st->batch_cxt, relpath);
				if (++st->nbatch == CLEANUP_BATCH)
					flush_batch(st);
				break;
			default:
				break;			/* sockets, fifos, devices: not ours */
		}
	}
	FreeDir(dir);

	if (entries == 0 && reldir[0] &&
		entry_mtime(st, reldir, &mtime) && st->now - mtime >= st->max_age_s &&
		rmdir(path) == 0)
		ereport(DEBUG1, (errmsg("pg_regstage cleanup: removed empty directory \"%s\"", reldir)));
}

void
cleanup_run(int64 max_age_s, int64 tmp_max_age_s, CleanupStats *stats)
{
	OrphanScan  *st = palloc0(sizeof(OrphanScan));
	Oid			argtypes[1] = {TEXTARRAYOID};
	int64		in_db = 0;
	bool		isnull;

	memset(stats, 0, sizeof(*stats));
	st->root = upload_check_dir();
	st->now = time(NULL);
	st->max_age_s = max_age_s;
	st->tmp_max_age_s = tmp_max_age_s;
	st->stats = stats;
	st->batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "regstage cleanup batch",
										  ALLOCSET_DEFAULT_SIZES);

	if (SPI_execute("SELECT count(*) FROM regstage.documents", true, 1) == SPI_OK_SELECT)
		in_db = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	ereport(LOG,
			(errmsg("pg_regstage cleanup: starting (orphans older than " INT64_FORMAT " s, temporary files older than " INT64_FORMAT " s); files in database: " INT64_FORMAT,
					max_age_s, tmp_max_age_s, in_db),
			 errdetail("Upload directory: \"%s\".", st->root)));

	st->unreferenced_plan =
		SPI_prepare("SELECT u.i::int4 FROM unnest($1::text[]) WITH ORDINALITY AS u(p, i) "
					"WHERE NOT EXISTS (SELECT 1 FROM regstage.documents d WHERE d.file_path = u.p) "
					"ORDER BY u.i",
					1, argtypes);
	if (st->unreferenced_plan == NULL)
		elog(ERROR, "pg_regstage cleanup: could not prepare the lookup: %s", SPI_result_code_string(SPI_result));

	scan_dir(st, "", 0);
	flush_batch(st);

	ereport(LOG,
			(errmsg("pg_regstage cleanup: finished; deleted " INT64_FORMAT ", kept " INT64_FORMAT ", errors " INT64_FORMAT " (" INT64_FORMAT " referenced files)",
					stats->deleted, stats->kept, stats->errors, stats->referenced)));
	MemoryContextDelete(st->batch_cxt);
	SPI_freeplan(st->unreferenced_plan);
	pfree(st);
}

static int64
interval_arg_seconds(FunctionCallInfo fcinfo, int n, const char *name)
{
	Interval   *iv;
	int64		s;

	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be NULL", name)));
	iv = PG_GETARG_INTERVAL_P(n);
	s = iv->time / USECS_PER_SEC + (int64) iv->day * SECS_PER_DAY +
		(int64) iv->month * DAYS_PER_MONTH * SECS_PER_DAY;
	if (s < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", name)));
	return s;
}

PG_FUNCTION_INFO_V1(regstage_cleanup_orphans);

/* cleanup_orphans(max_age, tmp_max_age) → (deleted, kept, errors) */
Datum
regstage_cleanup_orphans(PG_FUNCTION_ARGS)
{
	int64		max_age_s = interval_arg_seconds(fcinfo, 0, "max_age");
	int64		tmp_max_age_s = interval_arg_seconds(fcinfo, 1, "tmp_max_age");
	CleanupStats stats;
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	SPI_connect();
	cleanup_run(max_age_s, tmp_max_age_s, &stats);
	SPI_finish();
	values[0] = Int64GetDatum(stats.deleted);
	values[1] = Int64GetDatum(stats.kept);
	values[2] = Int64GetDatum(stats.errors);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
