/*
 * processor.c — RELAY_WORKERS threads, each with its own connection,
 * looping CALL regstage.process_next_batch(): process_next() up to 16 times
 * (for up to 20 ms), each update its own transaction, in one round trip.
 * Under load a batch ends by its time: the longer, the fewer calls, and the
 * fewer (and fuller) claims of the sender, which each call wakes (5 ms made
 * two or three updates a call at 1,000 chats); while updates come slower
 * than they are processed, a call ends when nothing is due, as at once.
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
 *
 * Where a processor looks: process_next(false, after_update) walks the
 * pending updates from after_update on.  A walk from the first one steps
 * over every update processed while some transaction stayed open (one chat's
 * commit blocked for 30 s: all the others'), so a processor keeps a cursor:
 * the update it last handled (a chat's next update comes after its last),
 * lowered to the first update of each batch this relay's receiver stores
 * (the wake-up carries it); an update whose retry wait ended comes first
 * (inbox_deferred).  Every 10 s, after a NOTIFY (retry_update, another
 * client storing updates) and on a new connection it walks from the start:
 * updates committed out of order, those a processor that died held.
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
#define FULL_CLAIM_MS 10000		/* a claim walks from the first pending update at least this often */
#define BATCH_MAX "16"			/* updates per process_next_batch call, each its own transaction ... */
#define BATCH_MS "20"			/* ... for at most this long: the sender is woken after each call */

static pthread_t *threads;
static int	nthreads;
static int (*wake_pipes)[2];	/* per processor: [0] polled by it, [1] written by processors_wake */
static atomic_bool *wake_lost;	/* per processor: a wake-up did not fit its pipe */

/*
 * Empty a processor's wake pipe (non-blocking): a wake-up now is one for the
 * next wait.  Each is the first update_id of a stored batch (8 bytes,
 * written at once); *first gets the lowest.  False if one was lost.
 */
static bool
wake_drain(int n, int64_t *first, bool *any)
{
	int64_t		buf[64];
	ssize_t		got;

	while ((got = read(wake_pipes[n][0], buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < got / (ssize_t) sizeof(int64_t); i++)
			if (!*any || buf[i] < *first)
				*first = buf[i], *any = true;
	return !atomic_exchange(&wake_lost[n], false);
}

/*
 * The first update_id of a stored batch to every processor: one that found
 * nothing due before the updates were committed is waiting (or about to
 * wait) on its pipe; one that is busy drains it before its next
 * process_next.  A full pipe wakes it already; it then walks from the start.
 */
void
processors_wake(int64_t first_update)
{
	for (int i = 0; i < nthreads; i++)
		if (write(wake_pipes[i][1], &first_update, sizeof(first_update)) != (ssize_t) sizeof(first_update))
		{
			atomic_store(&wake_lost[i], true);
			if (errno != EAGAIN)
				relay_log(LOG_DEBUG, "processors_wake: %s", strerror(errno));
		}
}

static void *
processor_main(void *arg)
{
	long		n = (long) (intptr_t) arg;
	int			wake_fd = wake_pipes[n - 1][0];
	PGconn	   *conn = NULL;
	char		who[32];
	int			failures = 0;
	bool		have_cursor = false;	/* false: the next claim walks from the start */
	int64_t		cursor = 0;
	long		next_full = 0;

	snprintf(who, sizeof(who), "processor %ld", n);
	while (!atomic_load(&relay_stop))
	{
		PGresult   *res;
		long		t0;
		int64_t		first = 0;
		bool		stored = false;
		char		after[24];
		const char *values[1] = {NULL};
		bool		full;

		if (conn == NULL)
			have_cursor = false;	/* a new connection (maybe another server): from the start */
		if (db_ensure(&conn, "regstage_inbox", who) == NULL)
			break;
		if (db_drain_notify(conn) || !wake_drain(n - 1, &first, &stored))
			have_cursor = false;
		if (stored && have_cursor && first <= cursor)
		{
			if (first == INT64_MIN)
				have_cursor = false;
			else
				cursor = first - 1;
		}
		t0 = relay_now_ms();
		full = !have_cursor || t0 >= next_full;
		if (full)
			next_full = t0 + FULL_CLAIM_MS;
		else
		{
			snprintf(after, sizeof(after), "%lld", (long long) cursor);
			values[0] = after;
		}
		res = PQexecParams(conn, "CALL regstage.process_next_batch(" BATCH_MAX ", " BATCH_MS ", false, $1::bigint)",
						   1, NULL, values, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 2)
		{
			failures = 0;
			if (PQgetisnull(res, 0, 1))
			{
				long		wait = next_full - relay_now_ms();

				db_wait_notify(conn, wake_fd, wait < 1 ? 1 : wait > IDLE_WAIT_MS ? IDLE_WAIT_MS : wait);
			}
			else
			{
				/* a chat's next update comes after its last: walk on from the last handled */
				cursor = atoll(PQgetvalue(res, 0, 1));
				have_cursor = true;
				/* their replies (if any) are committed: the sender claims them */
				sender_wake();
				relay_log(LOG_INFO, "%s updates processed, the last %s, %ld ms", PQgetvalue(res, 0, 0),
						  PQgetvalue(res, 0, 1), relay_now_ms() - t0);
			}
			PQclear(res);
			continue;
		}
		{
			char		msg[512];
			const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

			/* process_next handles the update's own errors: this is an outage */
			db_error_line(PQresultErrorMessage(res), msg, sizeof(msg));
			/* updates the call applied before it failed are committed */
			sender_wake();
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
	wake_lost = calloc(n, sizeof(*wake_lost));
	if (threads == NULL || wake_pipes == NULL || wake_lost == NULL)
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
	free((void *) wake_lost);
	wake_lost = NULL;
	free(threads);
	threads = NULL;
}
