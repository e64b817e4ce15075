/*
 * processor.c — RELAY_WORKERS threads, each with its own connection,
 * looping SELECT regstage.process_next().
 *
 * The database does the scheduling: process_next claims the oldest due
 * update of a chat no one else is processing (row locks, SKIP LOCKED),
 * applies it and queues its replies in the outbox, all in one transaction,
 * and retries or parks what fails.  So a processor only loops; one stuck in
 * a chat's long commit holds that chat alone.  An idle processor waits on
 * LISTEN regstage_inbox, at most a second: an update whose retry backoff
 * ended sends no notification.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "db.h"
#include "relay.h"

#define IDLE_WAIT_MS 1000

static pthread_t *threads;
static int	nthreads;

static void *
processor_main(void *arg)
{
	long		n = (long) (intptr_t) arg;
	PGconn	   *conn = NULL;
	char		who[32];
	int			failures = 0;

	snprintf(who, sizeof(who), "processor %ld", n);
	while (!atomic_load(&relay_stop))
	{
		PGresult   *res;
		long		t0;

		if (db_ensure(&conn, "regstage_inbox", who) == NULL)
			break;
		db_drain_notify(conn);
		t0 = relay_now_ms();
		res = PQexec(conn, "SELECT regstage.process_next()");
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		{
			failures = 0;
			if (PQgetisnull(res, 0, 0))
				db_wait_notify(conn, IDLE_WAIT_MS);
			else
				relay_log(LOG_INFO, "update %s processed, %ld ms", PQgetvalue(res, 0, 0), relay_now_ms() - t0);
			PQclear(res);
			continue;
		}
		{
			char		msg[512];
			const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

			/* process_next handles the update's own errors: this is an outage */
			db_error_line(PQresultErrorMessage(res), msg, sizeof(msg));
			relay_log(LOG_ERROR, "%s: process_next failed (%s), retrying: %s", who,
					  state ? state : "connection", msg);
			PQclear(res);
			if (!db_usable(conn))
				db_drop(&conn);
			relay_sleep_ms(relay_backoff_ms(250, failures++));
		}
	}
	db_drop(&conn);
	return NULL;
}

bool
processors_start(int n)
{
	threads = calloc(n, sizeof(pthread_t));
	if (threads == NULL)
		return false;
	for (nthreads = 0; nthreads < n; nthreads++)
	{
		pthread_attr_t attr;
		int			rc;

		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 256 * 1024);
		rc = pthread_create(&threads[nthreads], &attr, processor_main, (void *) (intptr_t) (nthreads + 1));
		pthread_attr_destroy(&attr);
		if (rc != 0)
			return false;
	}
	return true;
}

/* Waits for each processor's process_next in flight: they see relay_stop after it. */
void
processors_join(void)
{
	for (int i = 0; i < nthreads; i++)
		pthread_join(threads[i], NULL);
	free(threads);
	threads = NULL;
	nthreads = 0;
}
