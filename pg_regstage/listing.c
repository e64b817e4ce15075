/*
 * listing.c — upload_files(): every regular file under regstage.upload_dir,
 * relative to it, for the migration tools (fix_document_paths) and for
 * checks such as "no file without a row".
 *
 * The same walk as the cleanup (dirwalk.c): symbolic links are neither
 * followed nor listed, so nothing outside upload_dir is ever named; no
 * pg_ls_dir, hence no superuser needed to run it once EXECUTE is granted.
 * Like the cleanup it first checks the directory's ownership (ownership.c),
 * leaves out the ownership marker, and does not enter another upload
 * directory inside this one.  A subdirectory that cannot be read, or lies
 * below the walk's depth limit, is a WARNING and the listing goes on.
 *
 * With regstage.storage = 's3' it lists the database's namespace in the
 * bucket instead (ListObjectsV2, page by page): the object keys, as
 * documents.file_path holds them.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "dirwalk.h"
#include "ownership.h"
#include "guc.h"
#include "s3.h"
#include "upload.h"

typedef struct Listing
{
	DirWalk		walk;
	Tuplestorestate *out;
	TupleDesc	desc;
} Listing;

static void
list_dir(Listing *l, const char *reldir, int depth)
{
	const char *name;
	unsigned char type;

	while ((name = dirwalk_next(&l->walk, depth, &type)) != NULL)
	{
		int			fd = dirwalk_fd(&l->walk, depth);
		char		relpath[MAXPGPATH];

		CHECK_FOR_INTERRUPTS();
		if (depth == 0 && strcmp(name, OWNERSHIP_MARKER) == 0)
			continue;
		if (reldir[0])
			snprintf(relpath, sizeof(relpath), "%s/%s", reldir, name);
		else
			strlcpy(relpath, name, sizeof(relpath));
		if (type == DT_UNKNOWN)
		{
			/* the file system does not say: ask, without following a link */
			struct stat sb;

			if (fstatat(fd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
				continue;		/* gone meanwhile */
			type = S_ISDIR(sb.st_mode) ? DT_DIR : S_ISREG(sb.st_mode) ? DT_REG : DT_UNKNOWN;
		}
		if (type == DT_REG)
		{
			Datum		value = CStringGetTextDatum(relpath);
			bool		isnull = false;

			tuplestore_putvalues(l->out, l->desc, &value, &isnull);
			pfree(DatumGetPointer(value));
		}
		else if (type == DT_DIR && depth + 1 >= DIRWALK_MAX_DEPTH)
			ereport(WARNING,
					(errmsg("directory \"%s\" not listed: more than %d levels below regstage.upload_dir",
							relpath, DIRWALK_MAX_DEPTH - 1)));
		else if (type == DT_DIR)
		{
			struct stat sb;

			if (!dirwalk_open(&l->walk, depth + 1, fd, name))
			{
				ereport(WARNING,
						(errcode_for_file_access(),
						 errmsg("could not open directory \"%s\" under regstage.upload_dir: %m", relpath),
						 errhint("The OS user running PostgreSQL must be able to read every directory under regstage.upload_dir.")));
				continue;
			}
			if (fstatat(dirwalk_fd(&l->walk, depth + 1), OWNERSHIP_MARKER, &sb, AT_SYMLINK_NOFOLLOW) == 0)
			{
				dirwalk_close(&l->walk, depth + 1);
				ereport(WARNING,
						(errmsg("directory \"%s\" not listed: it holds the ownership marker of an upload directory", relpath),
						 errhint("One database's regstage.upload_dir must not lie inside another's.")));
				continue;
			}
			list_dir(l, relpath, depth + 1);
			dirwalk_close(&l->walk, depth + 1);
		}
	}
	if (dirwalk_read_errno(&l->walk, depth) != 0)
	{
		errno = dirwalk_read_errno(&l->walk, depth);
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not read directory \"%s\" under regstage.upload_dir: %m", reldir[0] ? reldir : "."),
				 errhint("The OS user running PostgreSQL must be able to read every directory under regstage.upload_dir.")));
	}
}

/* Every object key of the database's namespace, a page at a time. */
static void
list_objects(Tuplestorestate *out, TupleDesc desc)
{
	MemoryContext page_cxt = AllocSetContextCreate(CurrentMemoryContext, "regstage upload_files page",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext outer = CurrentMemoryContext;
	char	   *token = NULL;

	do
	{
		S3ListPage *page;
		ListCell   *lc;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(page_cxt);
		page = s3_list("", token, 1000);
		foreach(lc, page->objects)
		{
			S3Object   *o = lfirst(lc);
			Datum		value = CStringGetTextDatum(o->key);
			bool		isnull = false;

			tuplestore_putvalues(out, desc, &value, &isnull);
		}
		MemoryContextSwitchTo(outer);
		if (token)
			pfree(token);
		token = page->next_token ? pstrdup(page->next_token) : NULL;
		MemoryContextReset(page_cxt);
	} while (token != NULL);
	MemoryContextDelete(page_cxt);
}

PG_FUNCTION_INFO_V1(regstage_upload_files);

/* upload_files() → SETOF text */
Datum
regstage_upload_files(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const char *root;
	Listing    *l;
	MemoryContext walk_cxt;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (regstage_storage == REGSTAGE_STORAGE_S3)
	{
		list_objects(rsinfo->setResult, rsinfo->setDesc);
		return (Datum) 0;
	}
	root = upload_check_dir();
	l = palloc0(sizeof(Listing));
	l->out = rsinfo->setResult;
	l->desc = rsinfo->setDesc;
	walk_cxt = AllocSetContextCreate(CurrentMemoryContext, "regstage upload_files walk",
									 ALLOCSET_SMALL_SIZES);
	dirwalk_init(&l->walk, walk_cxt);
	if (!dirwalk_open(&l->walk, 0, AT_FDCWD, root))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open upload directory \"%s\": %m", root),
				 errhint("The OS user running PostgreSQL must be able to read it.")));
	PG_TRY();
	{
		list_dir(l, "", 0);
	}
	PG_FINALLY();
	{
		dirwalk_close_all(&l->walk);
	}
	PG_END_TRY();
	MemoryContextDelete(walk_cxt);
	pfree(l);
	return (Datum) 0;
}
