/*
 * cleanup.c — the orphan scan, shared by cleanup_orphans() and the worker.
 *
 * Walks regstage.upload_dir without following symlinks.  Regular files are
 * checked against regstage.documents.file_path, which is read once into a
 * sorted array of 64-bit hashes (8 bytes per row, bounded by
 * regstage.cleanup_memory).  A hash collision can only make an orphan look
 * referenced, so it is kept, never the reverse; and an orphan old enough to
 * go is checked once more with an index probe right before it is deleted,
 * for a row written since the array was read.  With more rows than
 * cleanup_memory holds, files are checked in batches instead (one
 * index-probe query per CLEANUP_BATCH files): slower, flat memory.
 *
 *   referenced file             never touched
 *   orphan older than max_age   deleted
 *   younger orphan              kept (a transaction in flight may own it)
 *   temporary (*.part)          deleted when older than tmp_max_age
 *
 * Per-user directories this run leaves empty are removed, and those found
 * empty when older than max_age.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "datatype/timestamp.h"
#include "utils/memutils.h"

#include "cleanup.h"
#include "dirwalk.h"
#include "guc.h"
#include "primary.h"
#include "upload.h"

#define CLEANUP_BATCH 1000

typedef struct Candidate
{
	char	   *relpath;
} Candidate;

/*
 * A file or directory met during the walk: its name in the open directory
 * dirfd (so lookups do not walk the path from the root again), and its path
 * relative to upload_dir (for the database and for messages).  A batched
 * candidate is looked at after its directory was closed: dirfd -1, and the
 * full path is used.
 */
typedef struct Entry
{
	int			dirfd;
	const char *name;
	const char *relpath;
} Entry;

typedef struct OrphanScan
{
	const char *root;
	time_t		now;
	int64		max_age_s;
	int64		tmp_max_age_s;
	CleanupStats *stats;

	/* the referenced paths, hashed and sorted; NULL when they did not fit */
	uint64	   *referenced;
	int64		nreferenced;
	uint32	   *bucket_start;	/* by the top bucket_bits bits of a hash; or NULL */
	int			bucket_bits;
	SPIPlanPtr	still_unreferenced_plan;	/* the check right before a delete */

	/* otherwise: batches checked with one query each */
	SPIPlanPtr	unreferenced_plan;
	Candidate	batch[CLEANUP_BATCH];
	int			nbatch;
	MemoryContext batch_cxt;

	/* the open directories, root first */
	DirWalk		walk;
	MemoryContext scan_cxt;
} OrphanScan;

static bool scan_subdir(OrphanScan *st, Entry *e, int depth);

static uint64
path_hash(const char *path, size_t len)
{
	return hash_bytes_extended((const unsigned char *) path, (int) len, 0);
}

static int
uint64_cmp(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Read every documents.file_path into st->referenced, if in_db rows fit in
 * regstage.cleanup_memory.  Returns false (nothing kept) when they do not.
 */
static bool
load_referenced(OrphanScan *st, int64 in_db, MemoryContext cxt)
{
	Size		limit = (Size) regstage_cleanup_memory_kb * 1024;
	int64		cap = Max(in_db, 1024);
	Portal		portal;

	if ((Size) cap * sizeof(uint64) > limit)
		return false;
	st->referenced = MemoryContextAllocHuge(cxt, cap * sizeof(uint64));
	st->nreferenced = 0;
	portal = SPI_cursor_open_with_args(NULL, "SELECT file_path FROM regstage.documents",
									   0, NULL, NULL, NULL, true, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);
			text	   *t;

			if (isnull)
				continue;
			if (st->nreferenced == cap)
			{
				/* rows were added since the count: grow, within the limit */
				if ((Size) cap * 2 * sizeof(uint64) > limit)
				{
					SPI_cursor_close(portal);
					pfree(st->referenced);
					st->referenced = NULL;
					return false;
				}
				cap *= 2;
				st->referenced = repalloc_huge(st->referenced, cap * sizeof(uint64));
			}
			t = DatumGetTextPP(d);
			st->referenced[st->nreferenced++] = path_hash(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	qsort(st->referenced, st->nreferenced, sizeof(uint64), uint64_cmp);

	/*
	 * Where each range of hash prefixes starts in the sorted array, about
	 * two hashes per range: a lookup is then one or two cache misses
	 * instead of a binary search's twenty.  Only if it fits as well.
	 */
	st->bucket_bits = 1;
	while (st->bucket_bits < 31 && ((int64) 1 << (st->bucket_bits + 1)) <= st->nreferenced)
		st->bucket_bits++;
	if (st->nreferenced > 0 && st->nreferenced < PG_UINT32_MAX &&
		(Size) cap * sizeof(uint64) + (((Size) 1 << st->bucket_bits) + 1) * sizeof(uint32) <= limit)
	{
		Size		nb = (Size) 1 << st->bucket_bits;
		int64		i = 0;

		st->bucket_start = MemoryContextAllocHuge(cxt, (nb + 1) * sizeof(uint32));
		for (Size b = 0; b < nb; b++)
		{
			while (i < st->nreferenced && (st->referenced[i] >> (64 - st->bucket_bits)) < b)
				i++;
			st->bucket_start[b] = (uint32) i;
		}
		st->bucket_start[nb] = (uint32) st->nreferenced;
	}
	return true;
}

static bool
is_referenced(OrphanScan *st, const char *relpath)
{
	uint64		h = path_hash(relpath, strlen(relpath));

	if (st->bucket_start)
	{
		uint64		b = h >> (64 - st->bucket_bits);

		for (uint32 i = st->bucket_start[b]; i < st->bucket_start[b + 1]; i++)
			if (st->referenced[i] == h)
				return true;
		return false;
	}
	return bsearch(&h, st->referenced, st->nreferenced, sizeof(uint64), uint64_cmp) != NULL;
}

/* Is relpath still without a documents row, as of now? */
static bool
still_unreferenced(OrphanScan *st, const char *relpath)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(st->batch_cxt);
	Datum		values[1] = {CStringGetTextDatum(relpath)};
	bool		unreferenced;

	if (SPI_execute_plan(st->still_unreferenced_plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "pg_regstage cleanup: lookup of documents.file_path failed");
	unreferenced = (SPI_processed == 0);
	SPI_freetuptable(SPI_tuptable);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(st->batch_cxt);	/* unused for batches in this mode */
	return unreferenced;
}

static void
full_path(OrphanScan *st, const char *relpath, char *path)
{
	snprintf(path, MAXPGPATH, "%s/%s", st->root, relpath);
}

/* A threshold as a DBA wrote it: 48h, 90min, 45s (the units of the settings). */
static char *
age_text(int64 s)
{
	if (s != 0 && s % SECS_PER_HOUR == 0)
		return psprintf(INT64_FORMAT "h", s / SECS_PER_HOUR);
	if (s != 0 && s % SECS_PER_MINUTE == 0)
		return psprintf(INT64_FORMAT "min", s / SECS_PER_MINUTE);
	return psprintf(INT64_FORMAT "s", s);
}

/* A file's age, rounded down, for the per-file lines: 3 days, 5 h, 12 min. */
static const char *
age_approx(int64 s, char *buf, size_t len)
{
	if (s >= 2 * SECS_PER_DAY)
		snprintf(buf, len, INT64_FORMAT " days", s / SECS_PER_DAY);
	else if (s >= SECS_PER_HOUR)
		snprintf(buf, len, INT64_FORMAT " h", s / SECS_PER_HOUR);
	else if (s >= SECS_PER_MINUTE)
		snprintf(buf, len, INT64_FORMAT " min", s / SECS_PER_MINUTE);
	else
		snprintf(buf, len, INT64_FORMAT " s", Max(s, 0));
	return buf;
}

static bool
remove_file(OrphanScan *st, Entry *e, const char *why, int64 age_s)
{
	char		path[MAXPGPATH];
	char		age[32];
	int			rc;

	if (e->dirfd >= 0)
		rc = unlinkat(e->dirfd, e->name, 0);
	else
	{
		full_path(st, e->relpath, path);
		rc = unlink(path);
	}
	if (rc == 0)
	{
		st->stats->deleted++;
		ereport(DEBUG1, (errmsg("pg_regstage cleanup: deleted %s \"%s\" (age: %s)",
								why, e->relpath, age_approx(age_s, age, sizeof(age)))));
		return true;
	}
	if (errno == ENOENT)
		return true;			/* someone else removed it */
	full_path(st, e->relpath, path);
	st->stats->errors++;
	ereport(WARNING,
			(errcode_for_file_access(),
			 errmsg("pg_regstage cleanup: could not delete \"%s\": %m", e->relpath),
			 errdetail("Path: \"%s\".", path)));
	return false;
}

/*
 * Remove the directory of a file just deleted in batch mode, if that left it
 * empty (rmdir refuses otherwise).  upload_dir itself always stays.
 */
static void
remove_parent_if_empty(OrphanScan *st, const char *relpath)
{
	const char *slash = strrchr(relpath, '/');
	char		path[MAXPGPATH];

	if (slash == NULL)
		return;
	snprintf(path, sizeof(path), "%s/%.*s", st->root, (int) (slash - relpath), relpath);
	if (rmdir(path) == 0)
		ereport(DEBUG1, (errmsg("pg_regstage cleanup: removed emptied directory \"%.*s\"",
								(int) (slash - relpath), relpath)));
}

/* lstat of an entry; false (and counted unless it is gone) on failure */
static bool
entry_stat(OrphanScan *st, Entry *e, struct stat *sb)
{
	char		path[MAXPGPATH];
	int			rc;

	if (e->dirfd >= 0)
		rc = fstatat(e->dirfd, e->name, sb, AT_SYMLINK_NOFOLLOW);
	else
	{
		full_path(st, e->relpath, path);
		rc = lstat(path, sb);
	}
	if (rc == 0)
		return true;
	if (errno != ENOENT)
	{
		full_path(st, e->relpath, path);
		st->stats->errors++;
		ereport(WARNING, (errcode_for_file_access(),
						  errmsg("pg_regstage cleanup: could not stat \"%s\": %m", e->relpath),
						  errdetail("Path: \"%s\".", path)));
	}
	return false;
}

/*
 * A file without a documents row: deleted when older than max_age (after
 * the last-moment check, unless the caller's check was just made), else
 * kept.  Returns whether it is gone.
 */
static bool
handle_unreferenced(OrphanScan *st, Entry *e, bool checked_now)
{
	struct stat sb;
	char		age[32];

	if (!entry_stat(st, e, &sb))
		return false;
	if (st->now - sb.st_mtime < st->max_age_s)
	{
		st->stats->kept++;
		ereport(DEBUG1, (errmsg("pg_regstage cleanup: kept recent orphaned file \"%s\" (age: %s)",
								e->relpath, age_approx(st->now - sb.st_mtime, age, sizeof(age)))));
		return false;
	}
	if (checked_now || still_unreferenced(st, e->relpath))
		return remove_file(st, e, "orphaned file", st->now - sb.st_mtime);
	st->stats->referenced++;
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
		Entry		e = {-1, NULL, st->batch[i].relpath};

		CHECK_FOR_INTERRUPTS();
		if (handle_unreferenced(st, &e, true))
			remove_parent_if_empty(st, e.relpath);
	}
	SPI_freetuptable(SPI_tuptable);
	st->nbatch = 0;
	MemoryContextReset(st->batch_cxt);
}

static bool
is_temporary(const char *name)
{
	size_t		len = strlen(name);
	size_t		slen = strlen(UPLOAD_TMP_SUFFIX);

	return len > slen && strcmp(name + len - slen, UPLOAD_TMP_SUFFIX) == 0;
}

/*
 * Walk one open directory (st->walk at depth, whose path relative to
 * upload_dir is reldir).  Types come from the directory itself (no stat per
 * file): only temporary files, unreferenced files and subdirectories found
 * empty are stat'ed.  Returns the number of entries left after this run;
 * *seen is the number found.
 */
static int
scan_dir(OrphanScan *st, const char *reldir, int depth, int *seen)
{
	const char *name;
	unsigned char type;
	int			entries = 0;

	*seen = 0;
	while ((name = dirwalk_next(&st->walk, depth, &type)) != NULL)
	{
		char		relpath[MAXPGPATH];
		Entry		e;
		struct stat sb;

		CHECK_FOR_INTERRUPTS();
		entries++;
		(*seen)++;
		if (reldir[0])
			snprintf(relpath, sizeof(relpath), "%s/%s", reldir, name);
		else
			strlcpy(relpath, name, sizeof(relpath));
		e.dirfd = dirwalk_fd(&st->walk, depth);
		e.name = name;
		e.relpath = relpath;

		if (type == DT_UNKNOWN)
		{
			/* the file system does not say: ask */
			if (!entry_stat(st, &e, &sb))
				continue;
			type = S_ISLNK(sb.st_mode) ? DT_LNK : S_ISDIR(sb.st_mode) ? DT_DIR :
				S_ISREG(sb.st_mode) ? DT_REG : DT_UNKNOWN;
		}
		switch (type)
		{
			case DT_LNK:
				/* never followed, never removed: whatever it points at is not ours */
				ereport(DEBUG1, (errmsg("pg_regstage cleanup: skipped symbolic link \"%s\"", relpath)));
				break;
			case DT_DIR:
				if (depth + 1 < DIRWALK_MAX_DEPTH && scan_subdir(st, &e, depth))
					entries--;
				break;
			case DT_REG:
				if (is_temporary(name))
				{
					if (!entry_stat(st, &e, &sb))
						break;
					if (st->now - sb.st_mtime < st->tmp_max_age_s)
						st->stats->kept++;
					else if (remove_file(st, &e, "temporary file", st->now - sb.st_mtime))
						entries--;
					break;
				}
				if (st->referenced)
				{
					if (is_referenced(st, relpath))
						st->stats->referenced++;
					else if (handle_unreferenced(st, &e, false))
						entries--;
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
	if (dirwalk_read_errno(&st->walk, depth) != 0)
	{
		errno = dirwalk_read_errno(&st->walk, depth);
		st->stats->errors++;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pg_regstage cleanup: could not read directory \"%s\": %m", reldir[0] ? reldir : "."),
				 errhint("The OS user running PostgreSQL must be able to read every directory under regstage.upload_dir.")));
	}
	return entries;
}

/*
 * Walk a subdirectory; remove it if this run left it empty.  One found
 * empty is removed only when older than max_age: a registration may have
 * just made it (and if the cleanup wins that race anyway, the registration
 * makes it again: upload_temp_create).  rmdir itself refuses a directory
 * that got a new entry meanwhile.  Returns whether it was removed.
 */
static bool
scan_subdir(OrphanScan *st, Entry *e, int depth)
{
	char		path[MAXPGPATH];
	struct stat sb;
	int			left;
	int			seen;

	if (!dirwalk_open(&st->walk, depth + 1, e->dirfd, e->name))
	{
		full_path(st, e->relpath, path);
		st->stats->errors++;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("pg_regstage cleanup: could not open directory \"%s\": %m", e->relpath),
				 errdetail("Path: \"%s\".", path),
				 errhint("The OS user running PostgreSQL must be able to read every directory under regstage.upload_dir.")));
		return false;
	}
	left = scan_dir(st, e->relpath, depth + 1, &seen);
	dirwalk_close(&st->walk, depth + 1);

	if (left > 0)
		return false;
	if (seen == 0 && !(entry_stat(st, e, &sb) && st->now - sb.st_mtime >= st->max_age_s))
		return false;
	if (unlinkat(e->dirfd, e->name, AT_REMOVEDIR) != 0)
		return false;
	ereport(DEBUG1, (errmsg("pg_regstage cleanup: removed %s directory \"%s\"",
							seen == 0 ? "empty" : "emptied", e->relpath)));
	return true;
}

void
cleanup_run(int64 max_age_s, int64 tmp_max_age_s, CleanupStats *stats)
{
	OrphanScan  *st = palloc0(sizeof(OrphanScan));
	Oid			argtypes[1] = {TEXTARRAYOID};
	Oid			argtypes_text[1] = {TEXTOID};
	int64		in_db = 0;
	bool		isnull;
	MemoryContext set_cxt;

	memset(stats, 0, sizeof(*stats));
	st->root = upload_check_dir();
	st->now = time(NULL);
	st->max_age_s = max_age_s;
	st->tmp_max_age_s = tmp_max_age_s;
	st->stats = stats;
	st->batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "regstage cleanup batch",
										  ALLOCSET_DEFAULT_SIZES);
	set_cxt = AllocSetContextCreate(CurrentMemoryContext, "regstage cleanup referenced paths",
									ALLOCSET_DEFAULT_SIZES);

	if (SPI_execute("SELECT count(*) FROM regstage.documents", true, 1) == SPI_OK_SELECT)
		in_db = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	ereport(LOG,
			(errmsg("pg_regstage cleanup: starting (orphans older than %s, temporary files older than %s); files in database: " INT64_FORMAT,
					age_text(max_age_s), age_text(tmp_max_age_s), in_db),
			 errdetail("Upload directory: \"%s\".", st->root)));

	if (load_referenced(st, in_db, set_cxt))
	{
		st->still_unreferenced_plan =
			SPI_prepare("SELECT 1 FROM regstage.documents WHERE file_path = $1", 1, argtypes_text);
		if (st->still_unreferenced_plan == NULL)
			elog(ERROR, "pg_regstage cleanup: could not prepare the lookup: %s", SPI_result_code_string(SPI_result));
	}
	else
	{
		ereport(DEBUG1,
				(errmsg("pg_regstage cleanup: " INT64_FORMAT " referenced paths exceed regstage.cleanup_memory; checking files in batches",
						in_db)));
		st->unreferenced_plan =
			SPI_prepare("SELECT u.i::int4 FROM unnest($1::text[]) WITH ORDINALITY AS u(p, i) "
						"WHERE NOT EXISTS (SELECT 1 FROM regstage.documents d WHERE d.file_path = u.p) "
						"ORDER BY u.i",
						1, argtypes);
		if (st->unreferenced_plan == NULL)
			elog(ERROR, "pg_regstage cleanup: could not prepare the lookup: %s", SPI_result_code_string(SPI_result));
	}

	st->scan_cxt = AllocSetContextCreate(CurrentMemoryContext, "regstage cleanup walk",
										 ALLOCSET_DEFAULT_SIZES);
	dirwalk_init(&st->walk, st->scan_cxt);
	if (!dirwalk_open(&st->walk, 0, AT_FDCWD, st->root))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open upload directory \"%s\": %m", st->root),
				 errhint("The OS user running PostgreSQL must be able to read it.")));
	PG_TRY();
	{
		int			seen;

		(void) scan_dir(st, "", 0, &seen);
		flush_batch(st);
	}
	PG_FINALLY();
	{
		dirwalk_close_all(&st->walk);
	}
	PG_END_TRY();
	MemoryContextDelete(st->scan_cxt);

	ereport(LOG,
			(errmsg("pg_regstage cleanup: finished; deleted " INT64_FORMAT ", kept " INT64_FORMAT ", errors " INT64_FORMAT " (" INT64_FORMAT " referenced files)",
					stats->deleted, stats->kept, stats->errors, stats->referenced)));
	MemoryContextDelete(st->batch_cxt);
	MemoryContextDelete(set_cxt);
	if (st->unreferenced_plan)
		SPI_freeplan(st->unreferenced_plan);
	if (st->still_unreferenced_plan)
		SPI_freeplan(st->still_unreferenced_plan);
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

	primary_required(fcinfo);
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
