/*
 * cleanup.c — the orphan scan, shared by cleanup_orphans() and the worker.
 *
 * First the ownership check (ownership.c): a directory claimed by another
 * database is refused before anything is read or deleted.  Then a walk of
 * regstage.upload_dir that never follows a symbolic link.  Regular files are
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
 * Rows whose path is not in commit_registration's layout (absolute paths,
 * "./", the old bot's flat layout: what fix_document_paths() repairs) also
 * reference their path canonicalised and, while their file is missing as
 * written, every file of the same base name, so a cleanup before the
 * migration keeps the files the migration will point them at.
 *
 * Every delete is relative to an open descriptor of the file's directory:
 * in hash mode the walk's own, in batch mode one reopened from upload_dir
 * component by component with O_NOFOLLOW, so a directory swapped for a
 * symbolic link after the walk never sends a delete outside upload_dir.
 *
 * Per-user directories this run leaves empty are removed, and those found
 * empty when older than max_age.  The ownership marker is never touched; a
 * subdirectory holding one (another upload directory) and directories below
 * the walk's depth limit are not entered: errors, with a WARNING each.
 *
 * With regstage.storage = 's3' the database's namespace in the bucket is
 * listed instead, a page (up to CLEANUP_BATCH keys) at a time, each page
 * checked with one query; an unreferenced object older than max_age
 * (its last_modified) is checked once more with an index probe and then
 * deleted.  A failed delete is an error of the run (WARNING), not of the
 * call.  Memory stays at one page.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "access/xact.h"
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
#include "ownership.h"
#include "primary.h"
#include "s3.h"
#include "upload.h"

#define CLEANUP_BATCH 1000

/* the legacy-path sets may use cleanup_memory, but at least this much */
#define CLEANUP_LEGACY_MIN_MEMORY (1024 * 1024)

typedef struct Candidate
{
	char	   *relpath;
} Candidate;

/*
 * A file or directory met during the walk: its name in the open directory
 * dirfd (every lookup and delete is relative to it, never by full path), and
 * its path relative to upload_dir (for the database and for messages).
 */
typedef struct Entry
{
	int			dirfd;
	const char *name;
	const char *relpath;
} Entry;

/* 64-bit hashes of paths or names; sorted once filled */
typedef struct HashSet
{
	uint64	   *h;
	int64		n;
	int64		cap;
} HashSet;

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

	/* rows with legacy paths: their canonical paths, and the base names of those whose file is missing */
	char	   *canonical_root;
	HashSet		legacy;
	HashSet		legacy_names;

	/* otherwise: batches checked with one query each */
	SPIPlanPtr	unreferenced_plan;
	Candidate	batch[CLEANUP_BATCH];
	int			nbatch;
	MemoryContext batch_cxt;

	/* the open directories, root first */
	DirWalk		walk;
	MemoryContext scan_cxt;

	/* batch mode: the directory of the batched file being handled, root first */
	DirWalk		parents;
	char		parent_rel[MAXPGPATH];	/* its path relative to upload_dir */

	bool		injected;		/* regstage.test_inject ran in this run */
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

static bool
hashset_add(HashSet *set, uint64 h, Size *budget, MemoryContext cxt)
{
	if (set->n == set->cap)
	{
		int64		newcap = Max(set->cap * 2, 64);
		Size		more = (Size) (newcap - set->cap) * sizeof(uint64);

		if (more > *budget)
			return false;
		*budget -= more;
		set->h = set->h ? repalloc_huge(set->h, newcap * sizeof(uint64))
			: MemoryContextAllocHuge(cxt, newcap * sizeof(uint64));
		set->cap = newcap;
	}
	set->h[set->n++] = h;
	return true;
}

static bool
hashset_contains(const HashSet *set, uint64 h)
{
	return set->n > 0 && bsearch(&h, set->h, set->n, sizeof(uint64), uint64_cmp) != NULL;
}

/*
 * Is this path in the layout commit_registration writes (upload_finish():
 * <telegram_id>/<doc_type>-<16 hex digits of the sha256>.<ext>)?  Such a
 * row is looked up as written; any other path is a legacy one.
 */
static bool
path_in_commit_layout(const char *p, int len)
{
	int			i = 0;
	int			start;

	if (i < len && p[i] == '-')
		i++;
	for (start = i; i < len && p[i] >= '0' && p[i] <= '9'; i++)
		;
	if (i == start || i >= len || p[i++] != '/')
		return false;
	for (start = i; i < len && ((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_'); i++)
		;
	if (i == start || i >= len || p[i++] != '-')
		return false;
	for (int k = 0; k < 16; k++, i++)
		if (i >= len || !((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return false;
	if (i >= len || p[i++] != '.')
		return false;
	for (start = i; i < len && ((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9')); i++)
		;
	return i > start && i == len;
}

/* path without empty and "." components (absolute stays absolute) */
static char *
path_normalise(const char *path)
{
	StringInfoData out;
	const char *p = path;

	initStringInfo(&out);
	while (*p)
	{
		size_t		n;

		while (*p == '/')
			p++;
		n = strcspn(p, "/");
		if (n == 0 || (n == 1 && p[0] == '.'))
		{
			p += n;
			continue;
		}
		if (out.len > 0 || path[0] == '/')
			appendStringInfoChar(&out, '/');
		appendBinaryStringInfo(&out, p, n);
		p += n;
	}
	if (out.len == 0 && path[0] == '/')
		appendStringInfoChar(&out, '/');
	return out.data;
}

/*
 * The file a legacy path means, relative to upload_dir: "./" components and
 * repeated or trailing slashes dropped, an absolute path under upload_dir
 * stripped of that prefix.  NULL for an absolute path elsewhere (only its
 * base name can match) or an empty one.
 */
static char *
legacy_canonical(OrphanScan *st, const char *raw)
{
	char	   *norm = path_normalise(raw);
	size_t		rl = strlen(st->canonical_root);

	if (norm[0] != '/')
		return norm[0] ? norm : NULL;
	if (strcmp(st->canonical_root, "/") == 0)
		return norm[1] ? norm + 1 : NULL;
	if (strncmp(norm, st->canonical_root, rl) == 0 && norm[rl] == '/' && norm[rl + 1])
		return norm + rl + 1;
	return NULL;
}

/*
 * Is there a regular file at this path as written?  The same answer as
 * document_file_exists(), which decides the rows fix_document_paths()
 * repairs: absolute paths and paths with ".." are missing.
 */
static bool
legacy_file_exists(OrphanScan *st, const char *raw)
{
	char		path[MAXPGPATH];
	size_t		len = strlen(raw);
	struct stat sb;

	if (raw[0] == '\0' || raw[0] == '/' || strcmp(raw, "..") == 0 || strncmp(raw, "../", 3) == 0 ||
		strstr(raw, "/../") != NULL || (len >= 3 && strcmp(raw + len - 3, "/..") == 0))
		return false;
	snprintf(path, sizeof(path), "%s/%s", st->root, raw);
	return lstat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/*
 * A row with a legacy path: fix_document_paths() will point it at a file
 * under upload_dir, so keep what it can point at — the canonical path, and
 * (while the row's file is missing as written: the rows it repairs, by base
 * name) every file of the same base name.  16 bytes per row at most, within
 * cleanup_memory but at least CLEANUP_LEGACY_MIN_MEMORY; beyond that the
 * cleanup refuses rather than delete what the migration needs.
 */
static void
note_legacy(OrphanScan *st, const char *p, int len, Size *budget, MemoryContext cxt)
{
	char	   *raw = pnstrdup(p, len);
	char	   *canonical = legacy_canonical(st, raw);
	const char *slash = strrchr(raw, '/');
	const char *base = slash ? slash + 1 : raw;
	bool		ok = true;

	if (canonical)
		ok = hashset_add(&st->legacy, path_hash(canonical, strlen(canonical)), budget, cxt);
	if (ok && base[0] && !legacy_file_exists(st, raw))
		ok = hashset_add(&st->legacy_names, path_hash(base, strlen(base)), budget, cxt);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("pg_regstage cleanup: too many documents rows with paths of an older layout for regstage.cleanup_memory"),
				 errdetail("Until fix_document_paths() rewrites them, the cleanup keeps 16 bytes per such row to protect their files."),
				 errhint("Run SELECT * FROM regstage.fix_document_paths(dry_run => false), or raise regstage.cleanup_memory.")));
	pfree(raw);
}

/*
 * One pass over documents.file_path.  Every path's hash goes into
 * st->referenced if in_db rows fit in regstage.cleanup_memory (otherwise
 * the array is dropped and false returned: batch mode); legacy paths go
 * into st->legacy / st->legacy_names in either mode.
 */
static bool
load_documents(OrphanScan *st, int64 in_db, MemoryContext cxt)
{
	Size		limit = (Size) regstage_cleanup_memory_kb * 1024;
	Size		legacy_budget = Max(limit, CLEANUP_LEGACY_MIN_MEMORY);
	int64		cap = Max(in_db, 1024);
	bool		fits = (Size) cap * sizeof(uint64) <= limit;
	Portal		portal;

	st->canonical_root = path_normalise(st->root);
	if (fits)
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
			const char *p;
			int			len;

			if (isnull)
				continue;
			t = DatumGetTextPP(d);
			p = VARDATA_ANY(t);
			len = VARSIZE_ANY_EXHDR(t);
			if (fits && st->nreferenced == cap)
			{
				/* rows were added since the count: grow, within the limit */
				if ((Size) cap * 2 * sizeof(uint64) > limit)
				{
					pfree(st->referenced);
					st->referenced = NULL;
					fits = false;
				}
				else
				{
					cap *= 2;
					st->referenced = repalloc_huge(st->referenced, cap * sizeof(uint64));
				}
			}
			if (fits)
				st->referenced[st->nreferenced++] = path_hash(p, len);
			if (!path_in_commit_layout(p, len))
				note_legacy(st, p, len, &legacy_budget, cxt);
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	if (st->legacy.n > 1)
		qsort(st->legacy.h, st->legacy.n, sizeof(uint64), uint64_cmp);
	if (st->legacy_names.n > 1)
		qsort(st->legacy_names.h, st->legacy_names.n, sizeof(uint64), uint64_cmp);
	if (!fits)
		return false;
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

/* Does a legacy row keep this file (relpath, base name)? */
static bool
legacy_keeps(OrphanScan *st, const char *relpath, const char *name)
{
	return hashset_contains(&st->legacy, path_hash(relpath, strlen(relpath))) ||
		hashset_contains(&st->legacy_names, path_hash(name, strlen(name)));
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

/*
 * Test only: run regstage.test_inject (superuser-only, empty by default)
 * once per run, at the point between listing a file as a deletion candidate
 * and the last check of documents before deleting it.  The tests swap a
 * directory for a symbolic link or insert a documents row right here.
 */
static void
test_inject(OrphanScan *st)
{
	int			rc;

	if (st->injected || regstage_test_inject == NULL || regstage_test_inject[0] == '\0')
		return;
	st->injected = true;
	rc = SPI_execute(regstage_test_inject, false, 0);
	if (rc < 0)
		elog(ERROR, "pg_regstage cleanup: regstage.test_inject failed: %s", SPI_result_code_string(rc));
	SPI_freetuptable(SPI_tuptable);
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

	if (unlinkat(e->dirfd, e->name, 0) == 0)
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
 * Batch mode: the descriptor of reldir (relative to upload_dir; "" is
 * upload_dir itself), reached from upload_dir one component at a time with
 * O_NOFOLLOW on st->parents, reusing what is open from the previous file
 * (batches come in walk order).  A component swapped for a symbolic link
 * since the walk is not followed: an error, counted and reported.  -1 when
 * it cannot be opened (silently when it is gone).
 */
static int
parents_open(OrphanScan *st, const char *reldir)
{
	DirWalk    *w = &st->parents;
	const char *have = st->parent_rel;
	const char *want = reldir;
	int			depth = 0;

	if (w->ndirs == 0)
	{
		if (!dirwalk_open(w, 0, AT_FDCWD, st->root))
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not open upload directory \"%s\": %m", st->root)));
		st->parent_rel[0] = '\0';
	}
	/* the leading components already open */
	while (depth + 1 < w->ndirs)
	{
		size_t		hl = strcspn(have, "/");
		size_t		wl = strcspn(want, "/");

		if (wl == 0 || hl != wl || strncmp(have, want, hl) != 0)
			break;
		depth++;
		have += hl + (have[hl] == '/');
		want += wl + (want[wl] == '/');
	}
	while (w->ndirs > depth + 1)
		dirwalk_close(w, w->ndirs - 1);
	/* the rest, never following a symbolic link */
	while (*want)
	{
		size_t		wl = strcspn(want, "/");
		char		name[MAXPGPATH];

		strlcpy(name, want, Min(wl + 1, sizeof(name)));
		if (depth + 1 >= DIRWALK_MAX_DEPTH || !dirwalk_open(w, depth + 1, dirwalk_fd(w, depth), name))
		{
			int			save_errno = depth + 1 >= DIRWALK_MAX_DEPTH ? ELOOP : errno;
			size_t		opened = want - reldir;

			strlcpy(st->parent_rel, reldir, Max(opened, 1));	/* without the slash */
			if (save_errno == ENOENT)
				return -1;		/* removed meanwhile, with its files */
			errno = save_errno;
			st->stats->errors++;
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("pg_regstage cleanup: could not open directory \"%.*s\": %m",
							(int) (opened + wl), reldir),
					 errdetail("It was a directory when the walk listed it; its files are left alone.")));
			return -1;
		}
		depth++;
		want += wl + (want[wl] == '/');
	}
	strlcpy(st->parent_rel, reldir, sizeof(st->parent_rel));
	return dirwalk_fd(w, depth);
}

/*
 * Batch mode: remove the directory of the file just deleted if that left it
 * empty (rmdir refuses otherwise), relative to its parent's descriptor.
 * upload_dir itself always stays.
 */
static void
remove_parent_if_empty(OrphanScan *st)
{
	DirWalk    *w = &st->parents;
	int			depth = w->ndirs - 1;
	char	   *slash = strrchr(st->parent_rel, '/');
	const char *name = slash ? slash + 1 : st->parent_rel;

	if (depth < 1)
		return;
	if (unlinkat(dirwalk_fd(w, depth - 1), name, AT_REMOVEDIR) != 0)
		return;
	ereport(DEBUG1, (errmsg("pg_regstage cleanup: removed emptied directory \"%s\"", st->parent_rel)));
	dirwalk_close(w, depth);
	if (slash)
		*slash = '\0';
	else
		st->parent_rel[0] = '\0';
}

/* lstat of an entry; false (and counted unless it is gone) on failure */
static bool
entry_stat(OrphanScan *st, Entry *e, struct stat *sb)
{
	char		path[MAXPGPATH];

	if (fstatat(e->dirfd, e->name, sb, AT_SYMLINK_NOFOLLOW) == 0)
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
	if (!checked_now)
		test_inject(st);
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
	test_inject(st);
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
		const char *relpath = st->batch[i].relpath;
		const char *slash = strrchr(relpath, '/');
		char		reldir[MAXPGPATH];
		Entry		e;

		CHECK_FOR_INTERRUPTS();
		strlcpy(reldir, relpath, slash ? Min(slash - relpath + 1, MAXPGPATH) : 1);
		e.dirfd = parents_open(st, reldir);
		if (e.dirfd < 0)
			continue;
		e.name = slash ? slash + 1 : relpath;
		e.relpath = relpath;
		if (handle_unreferenced(st, &e, true))
			remove_parent_if_empty(st);
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
		if (depth == 0 && strcmp(name, OWNERSHIP_MARKER) == 0)
			continue;			/* the ownership marker: ours, never an orphan */
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
				if (depth + 1 >= DIRWALK_MAX_DEPTH)
				{
					/* neither checked nor deleted: say so */
					st->stats->errors++;
					ereport(WARNING,
							(errmsg("pg_regstage cleanup: directory \"%s\" not scanned: more than %d levels below regstage.upload_dir",
									relpath, DIRWALK_MAX_DEPTH - 1),
							 errhint("Files there are neither checked nor deleted; move them higher up or remove them.")));
				}
				else if (scan_subdir(st, &e, depth))
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
				if (legacy_keeps(st, relpath, name))
				{
					st->stats->referenced++;
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
	if (fstatat(dirwalk_fd(&st->walk, depth + 1), OWNERSHIP_MARKER, &sb, AT_SYMLINK_NOFOLLOW) == 0)
	{
		/* another upload directory (another database's, or a former one) */
		dirwalk_close(&st->walk, depth + 1);
		st->stats->errors++;
		ereport(WARNING,
				(errmsg("pg_regstage cleanup: directory \"%s\" not scanned: it holds the ownership marker of an upload directory",
						e->relpath),
				 errhint("One database's regstage.upload_dir must not lie inside another's.")));
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

/*
 * The run's figures in regstage.cleanup_runs (what regstage.stats shows as
 * the cleanup's last run), in the run's transaction.  An install not yet
 * updated to a release with that table records nothing.
 */
static void
record_run(time_t started, CleanupStats *stats)
{
	Oid			types[4] = {TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID};
	Datum		values[4];

	if (SPI_execute("SELECT 1 FROM pg_class WHERE relname = 'cleanup_runs'"
					" AND relnamespace = 'regstage'::regnamespace", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up regstage.cleanup_runs");
	if (SPI_processed == 0)
		return;
	values[0] = TimestampTzGetDatum(time_t_to_timestamptz((pg_time_t) started));
	values[1] = Int64GetDatum(stats->deleted);
	values[2] = Int64GetDatum(stats->kept);
	values[3] = Int64GetDatum(stats->errors);
	if (SPI_execute_with_args("INSERT INTO regstage.cleanup_runs (started_at, deleted, kept, errors)"
							  " VALUES ($1, $2, $3, $4)", 4, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the cleanup run in regstage.cleanup_runs");
}

/* Delete one orphan object; false (a WARNING, counted) when the store fails. */
static bool
delete_object(const char *key)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	bool		ok = true;

	/* a subtransaction, so an error of the store can be caught safely */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		s3_delete(key);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			ReThrowError(edata);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("pg_regstage cleanup: could not delete object \"%s\": %s", key, edata->message)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return ok;
}

/*
 * The orphan scan of the database's namespace in the object store: pages of
 * ListObjectsV2, each checked against documents.file_path with one query.
 */
static void
cleanup_run_s3(int64 max_age_s, CleanupStats *stats)
{
	Oid			argtypes[1] = {TEXTARRAYOID};
	Oid			argtypes_text[1] = {TEXTOID};
	SPIPlanPtr	unreferenced_plan;
	SPIPlanPtr	still_plan;
	MemoryContext page_cxt;
	MemoryContext oldcxt;
	TimestampTz now = GetCurrentTimestamp();
	char	   *token = NULL;
	int64		pages = 0;

	memset(stats, 0, sizeof(*stats));
	unreferenced_plan = SPI_prepare("SELECT u.i::int4 FROM unnest($1::text[]) WITH ORDINALITY AS u(p, i) "
									"WHERE NOT EXISTS (SELECT 1 FROM regstage.documents d WHERE d.file_path = u.p) "
									"ORDER BY u.i", 1, argtypes);
	still_plan = SPI_prepare("SELECT 1 FROM regstage.documents WHERE file_path = $1", 1, argtypes_text);
	if (unreferenced_plan == NULL || still_plan == NULL)
		elog(ERROR, "pg_regstage cleanup: could not prepare the lookup: %s", SPI_result_code_string(SPI_result));
	ereport(LOG,
			(errmsg("pg_regstage cleanup: starting (orphan objects older than %s)", age_text(max_age_s)),
			 errdetail("Bucket \"%s\" at %s.", regstage_s3_bucket, regstage_s3_endpoint)));
	page_cxt = AllocSetContextCreate(CurrentMemoryContext, "regstage cleanup page", ALLOCSET_DEFAULT_SIZES);
	do
	{
		S3ListPage *page;
		S3Object  **objs;
		Datum	   *elems;
		int			n;
		int			i = 0;
		ListCell   *lc;
		Datum		values[1];
		char	   *next;

		CHECK_FOR_INTERRUPTS();
		oldcxt = MemoryContextSwitchTo(page_cxt);
		page = s3_list("", token, CLEANUP_BATCH);
		pages++;
		n = list_length(page->objects);
		objs = palloc(sizeof(S3Object *) * Max(n, 1));
		elems = palloc(sizeof(Datum) * Max(n, 1));
		foreach(lc, page->objects)
		{
			objs[i] = lfirst(lc);
			elems[i] = CStringGetTextDatum(objs[i]->key);
			i++;
		}
		if (n > 0)
		{
			uint64		nunref;
			int		   *unref;

			values[0] = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
			if (SPI_execute_plan(unreferenced_plan, values, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "pg_regstage cleanup: could not check a page of objects");
			nunref = SPI_processed;
			unref = palloc(sizeof(int) * Max(nunref, 1));
			for (uint64 j = 0; j < nunref; j++)
			{
				bool		isnull;

				unref[j] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1, &isnull)) - 1;
			}
			SPI_freetuptable(SPI_tuptable);
			stats->referenced += n - nunref;
			for (uint64 j = 0; j < nunref; j++)
			{
				S3Object   *o = objs[unref[j]];
				int64		age_s = (now - o->last_modified) / USECS_PER_SEC;
				char		age[32];
				bool		still;

				if (age_s < max_age_s)
				{
					stats->kept++;
					continue;
				}
				/* a row written since the page was checked keeps it */
				values[0] = CStringGetTextDatum(o->key);
				if (SPI_execute_plan(still_plan, values, NULL, true, 1) != SPI_OK_SELECT)
					elog(ERROR, "pg_regstage cleanup: could not look up regstage.documents");
				still = SPI_processed > 0;
				/* each result has its own context (8 KB at least) until SPI_finish */
				SPI_freetuptable(SPI_tuptable);
				if (still)
				{
					stats->referenced++;
					continue;
				}
				if (delete_object(o->key))
				{
					stats->deleted++;
					ereport(DEBUG1, (errmsg("pg_regstage cleanup: deleted orphan object \"%s\" (age: %s)",
											o->key, age_approx(age_s, age, sizeof(age)))));
				}
				else
					stats->errors++;
			}
		}
		next = page->next_token;
		MemoryContextSwitchTo(oldcxt);
		if (token)
			pfree(token);
		token = next ? pstrdup(next) : NULL;
		MemoryContextReset(page_cxt);
	} while (token != NULL);
	MemoryContextDelete(page_cxt);
	SPI_freeplan(unreferenced_plan);
	SPI_freeplan(still_plan);

	ereport(LOG,
			(errmsg("pg_regstage cleanup: finished; deleted " INT64_FORMAT ", kept " INT64_FORMAT ", errors " INT64_FORMAT " (" INT64_FORMAT " referenced objects, " INT64_FORMAT " pages)",
					stats->deleted, stats->kept, stats->errors, stats->referenced, pages)));
	record_run(timestamptz_to_time_t(now), stats);
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

	if (regstage_storage == REGSTAGE_STORAGE_S3)
	{
		pfree(st);
		cleanup_run_s3(max_age_s, stats);
		return;
	}
	memset(stats, 0, sizeof(*stats));
	st->root = upload_check_dir();	/* also the ownership check: before anything is read */
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

	if (load_documents(st, in_db, set_cxt))
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
	dirwalk_init(&st->parents, st->scan_cxt);
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
		dirwalk_close_all(&st->parents);
		dirwalk_close_all(&st->walk);
	}
	PG_END_TRY();
	MemoryContextDelete(st->scan_cxt);

	ereport(LOG,
			(errmsg("pg_regstage cleanup: finished; deleted " INT64_FORMAT ", kept " INT64_FORMAT ", errors " INT64_FORMAT " (" INT64_FORMAT " referenced files)",
					stats->deleted, stats->kept, stats->errors, stats->referenced)));
	record_run(st->now, stats);
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
	REGSTAGE_REQUIRE_PRELOAD();
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
