/*
 * worker.c — the orphan-cleanup background worker.
 *
 * Registered when pg_regstage is in shared_preload_libraries, as two kinds
 * of process:
 *
 *   the scheduler   (backend_type "pg_regstage cleanup"), always running,
 *                   connected to no database (shared catalogs only, as
 *                   TimescaleDB's launcher does): it waits for
 *                   regstage.cleanup_interval and then starts
 *   a run           (backend_type "pg_regstage cleanup run"), a dynamic
 *                   worker connected to regstage.database, which runs
 *                   cleanup_run() and then the retention purges
 *                   (regstage.purge_processed(), purge_rejected()), each in
 *                   its own transaction, and exits.
 *
 * So between runs no process of pg_regstage is in the database, and a plain
 * DROP DATABASE of it works; a bgworker connected for life would make it
 * wait 5 s and fail.  The scheduler looks the database up in pg_database
 * (a shared catalog) before each run and says once that it is missing
 * rather than starting runs that fail.  Its loop is the canonical one
 * (worker_spi, autoprewarm): wait on the latch, reset it, serve interrupts,
 * reload the configuration, work.  An error in a run is logged and the next
 * run comes at the next interval.
 *
 * The scheduler also starts on a hot standby (BgWorkerStart_ConsistentState),
 * where it starts no run: the primary's worker owns the upload directory
 * and the queues.  It says so once, and once more when the server is
 * promoted, so after a failover exactly one node of a cluster cleans up.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "cleanup.h"
#include "guc.h"
#include "worker.h"

#define WORKER_RESTART_S 10
#define WORKER_DISABLED_POLL_MS (60 * 1000)
#define WORKER_STANDBY_POLL_MS 1000	/* how soon a promotion is noticed */

PGDLLEXPORT void regstage_worker_main(Datum arg);
PGDLLEXPORT void regstage_cleanup_run_main(Datum arg);

void
worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;	/* also idles on a standby */
	worker.bgw_restart_time = WORKER_RESTART_S;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_regstage");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "regstage_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_regstage cleanup worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_regstage cleanup");
	RegisterBackgroundWorker(&worker);
}

/* Is the extension installed in this database?  (It may be created later.) */
static bool
extension_installed(void)
{
	bool		found;

	if (SPI_execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_regstage'", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up pg_extension");
	found = SPI_processed > 0;
	return found;
}

/* The cleanup of orphaned files. */
static void
run_cleanup(void)
{
	CleanupStats stats;

	cleanup_run(regstage_cleanup_max_age_s, regstage_cleanup_tmp_max_age_s, &stats);
}

/*
 * Retention of the inbox and outbox: the SQL function decides what goes,
 * so pg_cron can schedule the same call.  An install not yet updated to a
 * release with the inbox has no such function: nothing to purge.
 */
static void
run_purge(void)
{
	if (SPI_execute("SELECT 1 FROM pg_proc WHERE proname = 'purge_processed'"
					" AND pronamespace = 'regstage'::regnamespace", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up regstage.purge_processed");
	if (SPI_processed == 0)
		return;
	if (SPI_execute("SELECT inbox_deleted, outbox_deleted FROM regstage.purge_processed()",
					false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "regstage.purge_processed() returned no row");
	{
		bool		isnull;
		int64		inbox = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		int64		outbox = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

		if (inbox > 0 || outbox > 0)
			ereport(LOG,
					(errmsg("pg_regstage retention: deleted " INT64_FORMAT " processed inbox rows and "
							INT64_FORMAT " sent outbox rows older than %d s",
							inbox, outbox, regstage_retention_s)));
	}
	/* documents of rejected users kept no longer than regstage.rejected_retention */
	if (SPI_execute("SELECT 1 FROM pg_proc WHERE proname = 'purge_rejected'"
					" AND pronamespace = 'regstage'::regnamespace", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up regstage.purge_rejected");
	if (SPI_processed > 0 &&
		SPI_execute("SELECT regstage.purge_rejected()", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "regstage.purge_rejected() failed");
}

/* One job in its own transaction; errors are logged, not fatal. */
static void
worker_run_once(const char *what, void (*job) (void))
{
	MemoryContext oldcxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, what);
		if (extension_installed())
			job();
		else
			elog(DEBUG1, "pg_regstage: extension not installed in database \"%s\"", regstage_database);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* log it and carry on: the next run comes at the next interval */
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(LOG,
				(errmsg("%s failed: %s", what, edata->message),
				 edata->hint ? errhint("%s", edata->hint) : 0));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Is this server a standby?  Logged once per change of state: at start on
 * a standby, and at the promotion.
 */
static bool
worker_on_standby(bool *was_standby)
{
	bool		standby = RecoveryInProgress();

	if (standby && !*was_standby)
		ereport(LOG,
				(errmsg("pg_regstage cleanup worker: this server is a standby; cleanup and retention purge are idle until it is promoted")));
	else if (!standby && *was_standby)
		ereport(LOG,
				(errmsg("pg_regstage cleanup worker: this server was promoted to primary; cleanup and retention purge run every %d s",
						regstage_cleanup_interval_s)));
	*was_standby = standby;
	return standby;
}

/* Does regstage.database exist?  Said once per change. */
static bool
database_exists(bool *was_missing)
{
	bool		exists;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	/*
	 * A heap scan of pg_database, as the autovacuum launcher does: with no
	 * database selected, the catalog's index cannot be opened.
	 */
	exists = false;
	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!exists && (tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
		exists = strcmp(NameStr(((Form_pg_database) GETSTRUCT(tup))->datname), regstage_database) == 0;
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	if (!exists && !*was_missing)
		ereport(LOG,
				(errmsg("pg_regstage cleanup worker: database \"%s\" (regstage.database) does not exist; no cleanup until it is created",
						regstage_database)));
	else if (exists && *was_missing)
		ereport(LOG,
				(errmsg("pg_regstage cleanup worker: database \"%s\" exists again; cleanup runs every %d s",
						regstage_database, regstage_cleanup_interval_s)));
	*was_missing = !exists;
	return exists;
}

/*
 * Start one run in regstage.database and wait for it to end.  The wait
 * serves interrupts: a fast shutdown stops both processes.
 */
static void
start_run(void)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_regstage");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "regstage_cleanup_run_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_regstage cleanup run");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_regstage cleanup run");
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("pg_regstage cleanup worker: no background worker slot free for a run; the next try is in %d s",
						regstage_cleanup_interval_s),
				 errhint("Raise max_worker_processes (now %d): a run needs one slot while it lasts.",
						 max_worker_processes)));
		return;
	}
	if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
		(void) WaitForBackgroundWorkerShutdown(handle);
	pfree(handle);
}

/* A run: connected to regstage.database, the cleanup and the purges, then exit. */
void
regstage_cleanup_run_main(Datum arg)
{
	pqsignal(SIGTERM, die);		/* a long scan must stop promptly too */
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(regstage_database, NULL, 0);
	worker_run_once("pg_regstage cleanup run", run_cleanup);
	worker_run_once("pg_regstage retention purge", run_purge);
	proc_exit(0);
}

void
regstage_worker_main(Datum arg)
{
	TimestampTz next_run;
	bool		was_standby = false;
	bool		was_missing = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	/* no database: shared catalogs only, so no DROP DATABASE waits for this process */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	ereport(LOG,
			(errmsg("pg_regstage cleanup worker started for database \"%s\", interval %d s",
					regstage_database, regstage_cleanup_interval_s)));

	next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   (int64) regstage_cleanup_interval_s * 1000);
	(void) worker_on_standby(&was_standby);
	for (;;)
	{
		long		wait_ms;
		int			old_interval = regstage_cleanup_interval_s;

		if (regstage_cleanup_interval_s > 0)
			wait_ms = Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_run), 0);
		else
			wait_ms = WORKER_DISABLED_POLL_MS;
		if (was_standby)
			wait_ms = Min(wait_ms, WORKER_STANDBY_POLL_MS);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (regstage_cleanup_interval_s != old_interval)
			{
				ereport(LOG,
						(errmsg("pg_regstage cleanup worker: interval changed from %d s to %d s",
								old_interval, regstage_cleanup_interval_s)));
				next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   (int64) regstage_cleanup_interval_s * 1000);
			}
			continue;
		}
		if (worker_on_standby(&was_standby))
			continue;
		if (regstage_cleanup_interval_s <= 0 || GetCurrentTimestamp() < next_run)
			continue;

		if (database_exists(&was_missing))
			start_run();
		next_run = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   (int64) regstage_cleanup_interval_s * 1000);
	}
}
