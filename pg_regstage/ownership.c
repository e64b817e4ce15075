/*
 * ownership.c — one database per upload directory.
 *
 * Each database's cleanup knows only that database's documents rows, so two
 * databases sharing one regstage.upload_dir would delete each other's files
 * as orphans.  The first registration, cleanup or listing in a database
 * claims the directory with a marker file, <upload_dir>/.pg_regstage_owner,
 * naming the cluster (its system identifier) and the database; every later
 * one reads it and refuses (55000) when it names another.  The check comes
 * before anything is downloaded, listed or deleted; the cleanup never
 * deletes the marker and upload_files() never lists it.
 *
 * The marker is created with O_EXCL, so of two databases claiming at once
 * exactly one wins and the other reads the winner's marker; a marker still
 * being written (or left empty by a crash) is read again for up to a second
 * before it is reported as damaged.
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/wait_event.h"

#include "ownership.h"

#define MARKER_HEADER "pg_regstage upload directory owner\n"
#define MARKER_SYSID "system identifier: "
#define MARKER_DB "\ndatabase: "
#define MARKER_MAX_SIZE 4096
#define MARKER_READ_ATTEMPTS 20		/* 50 ms apart */

/*
 * The marker's content: a header line, the system identifier, and the
 * database name last (a name may hold any character but NUL, so it runs to
 * the final newline).
 */
static char *
marker_content(uint64 sysid, const char *dbname)
{
	return psprintf(MARKER_HEADER MARKER_SYSID UINT64_FORMAT MARKER_DB "%s\n", sysid, dbname);
}

/* Parse a marker; false when it is not (or not yet) complete. */
static bool
marker_parse(const char *buf, uint64 *sysid, char **dbname)
{
	size_t		len = strlen(buf);
	const char *p;
	char	   *end;

	if (strncmp(buf, MARKER_HEADER, strlen(MARKER_HEADER)) != 0)
		return false;
	p = buf + strlen(MARKER_HEADER);
	if (strncmp(p, MARKER_SYSID, strlen(MARKER_SYSID)) != 0)
		return false;
	p += strlen(MARKER_SYSID);
	if (*p < '0' || *p > '9')
		return false;
	errno = 0;
	*sysid = strtou64(p, &end, 10);
	if (errno != 0 || strncmp(end, MARKER_DB, strlen(MARKER_DB)) != 0)
		return false;
	p = end + strlen(MARKER_DB);
	if (buf[len - 1] != '\n' || buf + len - 1 < p)
		return false;
	*dbname = pnstrdup(p, buf + len - 1 - p);
	return true;
}

/* Read the marker into buf; false when there is none. */
static bool
marker_read(const char *path, char *buf, size_t size)
{
	int			fd;
	ssize_t		n = 0;
	size_t		total = 0;

	fd = OpenTransientFile(path, O_RDONLY | O_NOFOLLOW | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return false;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open the ownership marker \"%s\" of regstage.upload_dir: %m", path),
				 errhint("It must be a regular file readable by the OS user running PostgreSQL.")));
	}
	while (total < size - 1 && (n = read(fd, buf + total, size - 1 - total)) > 0)
		total += n;
	if (n < 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read the ownership marker \"%s\" of regstage.upload_dir: %m", path)));
	}
	CloseTransientFile(fd);
	buf[total] = '\0';
	return true;
}

/*
 * Create the marker with O_EXCL and make it durable; false when another
 * backend created it first.  A marker that could not be written whole is
 * removed again.
 */
static bool
marker_create(const char *dir, const char *path, const char *content)
{
	int			fd;
	size_t		len = strlen(content);

	fd = OpenTransientFilePerm(path, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY, 0640);
	if (fd < 0)
	{
		if (errno == EEXIST)
			return false;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create the ownership marker \"%s\" of regstage.upload_dir: %m", path),
				 errhint("The OS user running PostgreSQL must be able to create files in regstage.upload_dir.")));
	}
	errno = 0;
	if (write(fd, content, len) != (ssize_t) len || pg_fsync(fd) != 0)
	{
		int			save_errno = errno ? errno : ENOSPC;

		CloseTransientFile(fd);
		unlink(path);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write the ownership marker \"%s\" of regstage.upload_dir: %m", path)));
	}
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close the ownership marker \"%s\" of regstage.upload_dir: %m", path)));
	fsync_fname(dir, true);
	return true;
}

void
ownership_check(const char *dir)
{
	char		path[MAXPGPATH];
	char		buf[MARKER_MAX_SIZE];
	uint64		my_sysid = GetSystemIdentifier();
	char	   *my_db = get_database_name(MyDatabaseId);
	uint64		sysid = 0;
	char	   *dbname = NULL;

	if (my_db == NULL)
		elog(ERROR, "pg_regstage: could not look up the current database's name");
	snprintf(path, sizeof(path), "%s/%s", dir, OWNERSHIP_MARKER);
	for (int attempt = 1;; attempt++)
	{
		if (!marker_read(path, buf, sizeof(buf)))
		{
			if (marker_create(dir, path, marker_content(my_sysid, my_db)))
			{
				ereport(LOG,
						(errmsg("pg_regstage: database \"%s\" claimed its regstage.upload_dir", my_db),
						 errdetail("Directory \"%s\", marker file \"%s\".", dir, path)));
				return;
			}
			/* another backend created it just now: read theirs */
		}
		else if (marker_parse(buf, &sysid, &dbname))
			break;
		if (attempt == MARKER_READ_ATTEMPTS)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the ownership marker \"%s\" of regstage.upload_dir is damaged", path),
					 errhint("Remove it if no other database uses directory \"%s\"; the next registration or cleanup claims it again.",
							 dir)));
		/* being written by another backend right now: wait a little */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 50, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	if (sysid == my_sysid && strcmp(dbname, my_db) == 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 sysid == my_sysid ?
			 errmsg("upload directory \"%s\" belongs to database \"%s\"", dir, dbname) :
			 errmsg("upload directory \"%s\" belongs to database \"%s\" of another cluster (system identifier " UINT64_FORMAT ")",
					dir, dbname, sysid),
			 errdetail("This is database \"%s\". Each database's cleanup deletes the files it has no documents row for, so two databases must not share one directory. The owner is recorded in \"%s\".",
					   my_db, path),
			 errhint("Give every database its own directory: ALTER DATABASE %s SET regstage.upload_dir = '<its own directory>' (a superuser setting). If database \"%s\" no longer uses this directory, remove \"%s\".",
					 quote_identifier(my_db), dbname, path)));
}
