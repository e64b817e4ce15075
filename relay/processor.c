/*
 * processor.c — RELAY_WORKERS threads, each with its own connection,
 * looping SELECT regstage.process_next().
 *
 * The database does the scheduling: process_next claims the oldest due
 * update of a chat no one else is processing (row locks, SKIP LOCKED),
 * applies it and queues its replies in the outbox, all in one transaction,
 * and retries or parks what fails.  So a processor only loops; one stuck in
 * a chat's long commit holds that chat alone.  An idle processor waits,
 * at most a second (an update whose retry backoff ended wakes no one), for
 * this relay's receiver (processors_wake: a byte in each processor's pipe)
 * or a NOTIFY regstage_inbox from anyone else (LISTEN).  This relay's own
 * transactions do not NOTIFY: process_next(false), and the sender is woken
 * in-process.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "relay.h"

#define IDLE_WAIT_MS 1000

static pthread_t *threads;
static int	nthreads;
static int (*wake_pipes)[2];	/* per processor: [0] polled by it, [1] written by processors_wake */

/* Empty a processor's wake pipe (non-blocking): a wake-up now is one for the next wait. */
static void
wake_drain(int fd)
{
	char		buf[64];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

/*
 * A byte to every processor: one that found nothing due before the updates
 * were committed is waiting (or about to wait) on its pipe; one that is busy
 * drains it before its next process_next.  A full pipe already wakes it.
 */
void
processors_wake(void)
{
	for (int i = 0; i < nthreads; i++)
		if (write(wake_pipes[i][1], "", 1) < 0 && errno != EAGAIN)
			relay_log(LOG_DEBUG, "processors_wake: %s", strerror(errno));
}

static void *
processor_main(void *arg)
{
	long		n = (long) (intptr_t) arg;
	int			wake_fd = wake_pipes[n - 1][0];
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
		wake_drain(wake_fd);
		t0 = relay_now_ms();
		res = PQexec(conn, "SELECT regstage.process_next(false)");
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		{
			failures = 0;
			if (PQgetisnull(res, 0, 0))
				db_wait_notify(conn, wake_fd, IDLE_WAIT_MS);
			else
			{
				/* its replies (if any) are committed: the sender claims them */
				sender_wake();
				relay_log(LOG_INFO, "update %s processed, %ld ms", PQgetvalue(res, 0, 0), relay_now_ms() - t0);
			}
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
	wake_pipes = calloc(n, sizeof(*wake_pipes));
	if (threads == NULL || wake_pipes == NULL)
		return false;
	for (int i = 0; i < n; i++)
	{
		if (pipe(wake_pipes[i]) != 0)
			return false;
		for (int e = 0; e < 2; e++)
			fcntl(wake_pipes[i][e], F_SETFL, fcntl(wake_pipes[i][e], F_GETFL) | O_NONBLOCK);
	}
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
	int			n = nthreads;

	for (int i = 0; i < n; i++)
		pthread_join(threads[i], NULL);
	nthreads = 0;				/* processors_wake writes to none of them now */
	for (int i = 0; i < n; i++)
	{
		close(wake_pipes[i][0]);
		close(wake_pipes[i][1]);
	}
	free(wake_pipes);
	wake_pipes = NULL;
	free(threads);
	threads = NULL;
}
