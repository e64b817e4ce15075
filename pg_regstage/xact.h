/*
 * xact.h — work bound to the current (sub)transaction.
 *
 * One list of pending actions, like PostgreSQL's own pending relation
 * deletes (PendingRelDelete in catalog/storage.c).  Each action belongs to
 * the (sub)transaction that queued it: a subcommit hands it to the parent,
 * a (sub)abort undoes or drops it, and the top-level end runs it.  xact.c
 * is the one place that says what happens at each event, and in which
 * order.
 */
#ifndef REGSTAGE_XACT_H
#define REGSTAGE_XACT_H

typedef enum XactActionKind
{
	XACT_UNLINK_ON_ABORT,		/* a file or directory this transaction made */
	XACT_DELETE_ON_COMMIT,		/* a file to delete once the commit is durable */
	XACT_CLEAR_REDIS_ON_COMMIT,	/* staged keys to delete once the commit is durable */
	XACT_S3_DELETE_ON_ABORT,	/* an object this transaction PUTs (path: its URL) */
	XACT_S3_DELETE_ON_COMMIT	/* an object to delete once the commit is durable */
} XactActionKind;

typedef struct XactAction XactAction;

extern void xact_register_callbacks(void);

/*
 * Queue the removal of path should this (sub)transaction abort.  Call it
 * *before* creating the object; if the object then turns out to exist
 * already (EEXIST), xact_cancel() the action: what this transaction did not
 * make, its abort must not remove.  With sync_parent, the directory holding
 * path is fsync'd at pre-commit, so the new entry survives a crash.
 */
extern XactAction *xact_unlink_on_abort(const char *path, bool is_dir, bool sync_parent);
extern void xact_cancel(XactAction *action);

/* Delete path after the top-level commit (a failure there is a WARNING). */
extern void xact_delete_on_commit(const char *path);
/* Path is referenced again: drop its pending delete. */
extern void xact_keep_file(const char *path);

/*
 * The same for objects in the store (key relative to the database's
 * namespace, s3.h).  Queue the delete-on-abort *before* the PUT starts.
 * Both deletes are network calls made where nothing may raise: each
 * transaction end spends at most XACT_S3_BUDGET_MS on them, and what is not
 * deleted in that time is a WARNING, left to the cleanup.  Short enough that
 * a cancel or statement_timeout ends a commit whose service hangs within
 * 0.5 s, the abort's deletes included (a DELETE takes milliseconds).
 */
#define XACT_S3_BUDGET_MS 300
extern void xact_s3_delete_on_abort(const char *key);
extern void xact_s3_delete_on_commit(const char *key);
extern void xact_s3_keep_object(const char *key);

/* Clear the staged Redis keys of telegram_id after the top-level commit. */
extern void xact_clear_redis_on_commit(int64 telegram_id, int64 user_id);

/*
 * This transaction changed something outside the database (a write of
 * staged data to Redis — a TTL refresh is no change —, a file, an object),
 * which a crash that forgot its commit could not take back.  Noted before the change is sent; read by
 * regstage.xact_changed_outside(), so that process_next_batch() commits
 * such a transaction as synchronously as the session is configured to, and
 * only the others without waiting for their WAL flush.
 */
extern void xact_note_outside_change(void);

#endif
