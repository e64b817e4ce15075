/*
 * xact.c — the pending actions of the current transaction, and the one
 * place that says what happens to them at each transaction event.
 *
 * An action is queued by the (sub)transaction that needs it and carries
 * that (sub)transaction's nesting level:
 *
 *   PRE_COMMIT   1. fsync the directories holding new files and
 *                   directories (an ERROR here turns the commit into an
 *                   abort, which then unlinks them)
 *                2. build the one Redis DEL for every registration of the
 *                   transaction: after the commit nothing may allocate,
 *                   connect or wait on a latch
 *   COMMIT       1. forget the files this transaction made (rows now
 *                   reference them)
 *                2. delete the files this transaction marked for deletion
 *                3. clear the staged Redis keys: one round trip, a hard
 *                   time bound, a WARNING on failure (the keys then expire
 *                   with their TTL)
 *                4. delete the objects this transaction marked for
 *                   deletion (bounded by XACT_S3_BUDGET_MS, WARNING on failure)
 *   ABORT        unlink the files and directories this transaction made,
 *                newest first (files before the directories holding them);
 *                delete the objects it PUT (bounded, WARNING on failure)
 *   PRE_PREPARE  refuse while anything is pending: none of it could follow
 *                a prepared transaction
 *   ABORT_SUB    unlink what that subtransaction made, delete its objects;
 *                drop its actions
 *   COMMIT_SUB   hand its actions to the parent
 *
 * Apart from the list, one flag: whether the transaction changed anything
 * outside the database (xact_note_outside_change), which
 * regstage.xact_changed_outside() reports; cleared at every terminal event.
 * And how durable its commit must be: regstage.xact_commit_durably().
 *
 * Nothing after the commit may raise: an ERROR in a COMMIT callback is a
 * PANIC ("cannot abort transaction ..., it was already committed").
 * The list lives in TopMemoryContext and is emptied at every terminal
 * event.
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "guc.h"
#include "redis_staging.h"
#include "s3.h"
#include "upload.h"
#include "xact.h"

struct XactAction
{
	struct XactAction *next;
	XactActionKind kind;
	int			nest_level;		/* owner; lowered to the parent's on subcommit */
	bool		is_dir;			/* UNLINK_ON_ABORT: rmdir (only if empty) */
	bool		sync_parent;	/* UNLINK_ON_ABORT: fsync the parent at pre-commit */
	int64		telegram_id;	/* CLEAR_REDIS_ON_COMMIT */
	int64		user_id;		/* CLEAR_REDIS_ON_COMMIT, for the log line */
	char		path[FLEXIBLE_ARRAY_MEMBER];	/* the file actions' path */
};

/* newest first */
static XactAction *pending_actions = NULL;

/* the Redis DEL built at pre-commit, sent at commit */
static RedisPreparedClear *prepared_clear = NULL;

/* a Redis write was sent in this transaction (a subabort cannot take it back) */
static bool changed_outside = false;

PG_FUNCTION_INFO_V1(regstage_xact_changed_outside);

void
xact_note_outside_change(void)
{
	changed_outside = true;
}

/*
 * regstage.xact_changed_outside(): has this transaction written to Redis,
 * made or marked files, or put or marked objects?  Such a change stays
 * whatever becomes of the transaction, so a crash that forgot its commit
 * would leave the two apart: its commit must not be asynchronous.
 */
Datum
regstage_xact_changed_outside(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();	/* without it no callback clears the flag */
	PG_RETURN_BOOL(changed_outside || pending_actions != NULL);
}

PG_FUNCTION_INFO_V1(regstage_xact_commit_durably);

/*
 * regstage.xact_commit_durably(): this transaction's commit waits for its
 * WAL flush, and for the synchronous standbys' if any are named, whatever
 * the session says: synchronous_commit is raised, for this transaction
 * only, to "on", or to the server's own setting when that is stronger
 * (remote_apply).  A setting at least "on" is left alone.  outbox_claim()
 * calls it: its flush is what makes the calls it hands out durable.
 */
Datum
regstage_xact_commit_durably(PG_FUNCTION_ARGS)
{
	const char *configured;

	REGSTAGE_REQUIRE_PRELOAD();
	if (synchronous_commit >= SYNCHRONOUS_COMMIT_ON)
		PG_RETURN_VOID();
	configured = GetConfigOptionResetString("synchronous_commit");
	(void) set_config_option("synchronous_commit",
							 configured && strcmp(configured, "remote_apply") == 0 ? "remote_apply" : "on",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	PG_RETURN_VOID();
}

static XactAction *
action_new(XactActionKind kind, const char *path)
{
	XactAction *a = MemoryContextAllocZero(TopMemoryContext,
										   offsetof(XactAction, path) + strlen(path) + 1);

	a->kind = kind;
	a->nest_level = GetCurrentTransactionNestLevel();
	strcpy(a->path, path);
	a->next = pending_actions;
	pending_actions = a;
	return a;
}

XactAction *
xact_unlink_on_abort(const char *path, bool is_dir, bool sync_parent)
{
	XactAction *a = action_new(XACT_UNLINK_ON_ABORT, path);

	a->is_dir = is_dir;
	a->sync_parent = sync_parent;
	return a;
}

void
xact_cancel(XactAction *action)
{
	XactAction **link;

	for (link = &pending_actions; *link; link = &(*link)->next)
		if (*link == action)
		{
			*link = action->next;
			pfree(action);
			return;
		}
}

void
xact_delete_on_commit(const char *path)
{
	(void) action_new(XACT_DELETE_ON_COMMIT, path);
}

/*
 * A row references path again (a new document with the same content-hash
 * name, a path repaired onto it): the file must stay.  Dropped for the whole
 * transaction — should the referencing subtransaction abort, the file is
 * left to the orphan cleanup, never deleted while something may use it.
 */
void
xact_keep_file(const char *path)
{
	XactAction **link = &pending_actions;

	while (*link)
	{
		XactAction *a = *link;

		if ((a->kind == XACT_DELETE_ON_COMMIT || a->kind == XACT_S3_DELETE_ON_COMMIT) &&
			strcmp(a->path, path) == 0)
		{
			*link = a->next;
			pfree(a);
		}
		else
			link = &a->next;
	}
}

void
xact_clear_redis_on_commit(int64 telegram_id, int64 user_id)
{
	XactAction *a = action_new(XACT_CLEAR_REDIS_ON_COMMIT, "");

	a->telegram_id = telegram_id;
	a->user_id = user_id;
}

void
xact_s3_delete_on_abort(const char *key)
{
	(void) action_new(XACT_S3_DELETE_ON_ABORT, s3_delete_target(key));
}

void
xact_s3_delete_on_commit(const char *key)
{
	(void) action_new(XACT_S3_DELETE_ON_COMMIT, s3_delete_target(key));
}

/* A row references key again: drop its pending delete (as xact_keep_file). */
void
xact_s3_keep_object(const char *key)
{
	xact_keep_file(s3_delete_target(key));
}

/*
 * Delete the objects of the actions of kind at level and deeper, within
 * XACT_S3_BUDGET_MS.  Never raises: runs during abort processing and after
 * the commit.  The URL array is malloc'd: nothing here allocates from
 * PostgreSQL.
 */
static void
delete_objects(XactActionKind kind, int level, const char *when)
{
	int			n = 0;
	int			failed;
	char	  **urls;
	char		errbuf[512];

	for (XactAction *a = pending_actions; a; a = a->next)
		if (a->kind == kind && a->nest_level >= level)
			n++;
	if (n == 0)
		return;
	urls = malloc(sizeof(char *) * n);
	if (urls == NULL)
	{
		failed = n;
		strlcpy(errbuf, "out of memory", sizeof(errbuf));
	}
	else
	{
		n = 0;
		for (XactAction *a = pending_actions; a; a = a->next)
			if (a->kind == kind && a->nest_level >= level)
				urls[n++] = a->path;
		failed = s3_delete_nothrow(urls, n, XACT_S3_BUDGET_MS, errbuf, sizeof(errbuf));
		free(urls);
	}
	if (failed > 0)
		ereport(WARNING,
				(errmsg("could not delete %d of %d S3 objects %s: %s", failed, n, when, errbuf),
				 errhint("regstage.cleanup_orphans() deletes them once they are older than its max_age.")));
	else
		elog(DEBUG1, "pg_regstage: deleted %d S3 objects %s", n, when);
}

/*
 * Unlink what the (sub)transactions at level and deeper made.  Never
 * raises: this runs during abort processing.
 */
static void
unlink_created(int level)
{
	for (XactAction *a = pending_actions; a; a = a->next)
	{
		int			rc;

		if (a->kind != XACT_UNLINK_ON_ABORT || a->nest_level < level)
			continue;
		rc = a->is_dir ? rmdir(a->path) : unlink(a->path);
		if (rc == 0)
			elog(DEBUG1, "pg_regstage: removed \"%s\" of an aborted transaction", a->path);
		else if (errno != ENOENT && !(a->is_dir && (errno == ENOTEMPTY || errno == EEXIST)))
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not remove \"%s\" of an aborted registration: %m", a->path),
					 errhint("regstage.cleanup_orphans() will remove it once it is old enough.")));
	}
}

/*
 * Drop the actions of level and deeper without running them; only those of
 * one kind, unless kind is -1.
 */
static void
drop_actions(int level, int kind)
{
	XactAction **link = &pending_actions;

	while (*link)
	{
		XactAction *a = *link;

		if (a->nest_level >= level && (kind < 0 || a->kind == (XactActionKind) kind))
		{
			*link = a->next;
			pfree(a);
		}
		else
			link = &a->next;
	}
}

static void
release_all(void)
{
	drop_actions(1, -1);
	if (prepared_clear)
		redis_free_prepared_clear(prepared_clear);
	prepared_clear = NULL;
	s3_forget_delete_credentials();
	changed_outside = false;
}

/*
 * Pre-commit: make every new directory entry durable before the commit
 * record is.  Each directory is fsync'd once; a failure raises (58030,
 * naming the directory) and the abort then removes the files.
 */
static void
sync_new_entries(void)
{
	List	   *synced = NIL;

	for (XactAction *a = pending_actions; a; a = a->next)
	{
		char		parent[MAXPGPATH];
		ListCell   *lc;
		bool		done = false;

		if (a->kind != XACT_UNLINK_ON_ABORT || !a->sync_parent)
			continue;
		strlcpy(parent, a->path, sizeof(parent));
		get_parent_directory(parent);
		foreach(lc, synced)
			if (strcmp(lfirst(lc), parent) == 0)
				done = true;
		if (done)
			continue;
		upload_fsync_dir(parent);
		synced = lappend(synced, pstrdup(parent));
	}
	list_free_deep(synced);
}

/* Pre-commit: one DEL for the staged keys of every registration. */
static void
prepare_redis_clear(void)
{
	int64	   *tids;
	int			n = 0;

	for (XactAction *a = pending_actions; a; a = a->next)
		if (a->kind == XACT_CLEAR_REDIS_ON_COMMIT)
			n++;
	if (n == 0)
		return;
	tids = palloc(sizeof(int64) * n);
	n = 0;
	for (XactAction *a = pending_actions; a; a = a->next)
		if (a->kind == XACT_CLEAR_REDIS_ON_COMMIT)
			tids[n++] = a->telegram_id;
	if (prepared_clear)
		redis_free_prepared_clear(prepared_clear);
	prepared_clear = redis_prepare_clear(tids, n);
	pfree(tids);
}

/* After commit: delete the files marked for deletion.  Never raises. */
static void
delete_files_on_commit(void)
{
	for (XactAction *a = pending_actions; a; a = a->next)
		if (a->kind == XACT_DELETE_ON_COMMIT && unlink(a->path) != 0 && errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not delete \"%s\" after commit: %m", a->path),
					 errhint("regstage.cleanup_orphans() will remove it once it is old enough.")));
}

/*
 * After commit: send the prepared DEL (bounded, no reconnect, no
 * allocation that can raise) and say per registration what happened.
 */
static void
run_redis_clear(void)
{
	char		errbuf[256];
	bool		cleared;

	if (prepared_clear == NULL)
		return;
	cleared = redis_run_prepared_clear(prepared_clear, errbuf, sizeof(errbuf));
	for (XactAction *a = pending_actions; a; a = a->next)
	{
		if (a->kind != XACT_CLEAR_REDIS_ON_COMMIT)
			continue;
		if (cleared)
			ereport(LOG,
					(errmsg("pg_regstage: telegram_id " INT64_FORMAT ": registration committed, user id " INT64_FORMAT "; staged data cleared from Redis",
							a->telegram_id, a->user_id),
					 errhidestmt(true)));
		else
			ereport(WARNING,
					(errmsg("pg_regstage: telegram_id " INT64_FORMAT ": registration committed, user id " INT64_FORMAT ", but the staged data could not be cleared from Redis: %s",
							a->telegram_id, a->user_id, errbuf),
					 errhint("It expires with regstage.ttl, and the next commit_registration() of this telegram_id clears it.")));
	}
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* may raise: the commit then becomes an abort */
			if (pending_actions == NULL)
				break;
			sync_new_entries();	/* 1. new directory entries durable */
			prepare_redis_clear();	/* 2. the DEL built while allocating may fail */
			break;
		case XACT_EVENT_COMMIT:
			/* durable now: nothing below may raise */
			drop_actions(1, XACT_UNLINK_ON_ABORT);	/* 1. the new files stay */
			drop_actions(1, XACT_S3_DELETE_ON_ABORT);	/* ... and the new objects */
			delete_files_on_commit();	/* 2. files this transaction deleted go */
			run_redis_clear();	/* 3. the staged keys go (best effort) */
			delete_objects(XACT_S3_DELETE_ON_COMMIT, 1, "after commit");	/* 4. bounded */
			release_all();
			break;
		case XACT_EVENT_ABORT:
			unlink_created(1);
			delete_objects(XACT_S3_DELETE_ON_ABORT, 1, "of an aborted transaction");
			release_all();
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (pending_actions != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has run regstage.commit_registration()"),
						 errhint("Commit registrations in an ordinary transaction.")));
			break;
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			release_all();
			break;
		default:
			break;
	}
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	/* the callbacks run while the ending subtransaction is still current */
	int			level = GetCurrentTransactionNestLevel();

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			unlink_created(level);
			delete_objects(XACT_S3_DELETE_ON_ABORT, level, "of an aborted subtransaction");
			drop_actions(level, -1);
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			for (XactAction *a = pending_actions; a; a = a->next)
				if (a->nest_level >= level)
					a->nest_level = level - 1;
			break;
		default:
			break;
	}
}

void
xact_register_callbacks(void)
{
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
}
