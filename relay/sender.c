/*
 * sender.c — the outbox's delivery: one thread, its own connection.
 *
 * Claims due calls (regstage.outbox_claim: at most one per chat, the
 * oldest pending, leased), performs them concurrently on a curl multi
 * handle, and reports each answer with regstage.outbox_report, which
 * decides: sent, retried with backoff (5xx, network error), the chat held
 * for retry_after (429: that chat only), or parked as failed (other 4xx).
 * A chat's next call is claimable only once its earlier one is reported,
 * so replies keep their order.  Woken by LISTEN regstage_outbox (NOTIFY at
 * the commit that queued calls), else every second for calls whose backoff
 * ended.
 *
 * A call whose answer could not be reported yet (database down) keeps its
 * slot and is reported once the connection is back; its lease stops any
 * other sender from sending it again meanwhile.  If the relay dies between
 * Telegram's answer and the report, the call is sent again when its lease
 * ends: the one case of a reply delivered twice.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "relay.h"
#include "telegram.h"

#define IDLE_WAIT_MS 1000
#define DRAIN_MAX_MS 5000		/* at stop, calls still due are sent this long; the rest wait in the outbox */
#define LEASE_MARGIN_S 5			/* a claim outlives its call's timeout by this */

typedef enum
{
	SLOT_FREE,
	SLOT_SENDING,
	SLOT_REPORTING				/* answered; outbox_report still to do */
} SlotState;

typedef struct Slot
{
	SlotState	state;
	TgClient   *tg;
	char	   *body;
	char		id[24];
	char		method[64];
	long		status;
	int			retry_after;
	char		error[512];
} Slot;

static pthread_t thread;
static Slot *slots;
static int	nslots;

static bool
method_valid(const char *m)
{
	size_t		n = strlen(m);

	return n > 0 && n < 64 && strspn(m, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == n;
}

/* outbox_report for a slot; false if the database could not be told */
static bool
report(PGconn *conn, Slot *s)
{
	char		status[16];
	char		retry[16];
	const char *values[4] = {s->id, status, s->error[0] ? s->error : NULL, s->retry_after > 0 ? retry : NULL};
	PGresult   *res;
	bool		ok;

	snprintf(status, sizeof(status), "%ld", s->status);
	snprintf(retry, sizeof(retry), "%d", s->retry_after);
	res = PQexecParams(conn, "SELECT regstage.outbox_report($1::bigint, $2::integer, $3, $4::integer)",
					   4, NULL, values, NULL, NULL, 0);
	ok = PQresultStatus(res) == PGRES_TUPLES_OK;
	if (!ok)
	{
		char		msg[512];

		db_error_line(PQresultErrorMessage(res), msg, sizeof(msg));
		relay_log(LOG_ERROR, "sender: outbox_report(%s) failed, kept to report again: %s", s->id, msg);
	}
	PQclear(res);
	return ok;
}

static void
slot_free(Slot *s)
{
	free(s->body);
	s->body = NULL;
	s->state = SLOT_FREE;
}

/* Claim up to room calls and start them.  Returns how many, -1 on a failure. */
static int
claim(PGconn *conn, CURLM *multi, int room)
{
	char		max[16];
	char		lease[32];
	const char *values[2] = {max, lease};
	PGresult   *res;
	int			n;
	int			k = 0;

	snprintf(max, sizeof(max), "%d", room);
	snprintf(lease, sizeof(lease), "%d seconds", relay_config.send_timeout_s + LEASE_MARGIN_S);
	res = PQexecParams(conn, "SELECT id, method, params::text FROM regstage.outbox_claim($1::integer, $2::interval)",
					   2, NULL, values, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		char		msg[512];

		db_error_line(PQresultErrorMessage(res), msg, sizeof(msg));
		relay_log(LOG_ERROR, "sender: outbox_claim failed: %s", msg);
		PQclear(res);
		return -1;
	}
	n = PQntuples(res);
	for (int i = 0; i < n; i++)
	{
		Slot	   *s;

		while (slots[k].state != SLOT_FREE)
			k++;
		s = &slots[k];
		snprintf(s->id, sizeof(s->id), "%s", PQgetvalue(res, i, 0));
		snprintf(s->method, sizeof(s->method), "%s", PQgetvalue(res, i, 1));
		s->status = 0;
		s->retry_after = 0;
		s->error[0] = '\0';
		if (!method_valid(PQgetvalue(res, i, 1)))
		{
			/* parked as failed by the report: a 400 is never retried */
			s->status = 400;
			snprintf(s->error, sizeof(s->error), "not a Bot API method name");
			s->state = SLOT_REPORTING;
			continue;
		}
		s->body = strdup(PQgetvalue(res, i, 2));
		if (s->body == NULL)
		{
			s->status = 0;		/* retried later */
			snprintf(s->error, sizeof(s->error), "out of memory in the relay");
			s->state = SLOT_REPORTING;
			continue;
		}
		tg_prepare(s->tg, s->method, s->body, relay_config.send_timeout_s * 1000L, false);
		curl_multi_add_handle(multi, tg_handle(s->tg));
		s->state = SLOT_SENDING;
	}
	PQclear(res);
	return n;
}

/* Transfers that ended: their answers become reports. */
static int
collect(CURLM *multi)
{
	CURLMsg    *m;
	int			left;
	int			done = 0;

	while ((m = curl_multi_info_read(multi, &left)) != NULL)
	{
		TgClient   *tg = NULL;
		Slot	   *s = NULL;
		TgResult	res;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &tg);
		for (int i = 0; i < nslots; i++)
			if (slots[i].tg == tg)
				s = &slots[i];
		tg_finish(tg, m->data.result, &res);
		curl_multi_remove_handle(multi, m->easy_handle);
		done++;
		if (s == NULL)
		{
			tg_result_clear(&res);
			continue;
		}
		s->status = res.http_status;
		s->retry_after = res.retry_after;
		snprintf(s->error, sizeof(s->error), "%s", res.error);
		tg_result_clear(&res);
		free(s->body);
		s->body = NULL;
		if (s->status == 401)
		{
			/* not reported: the call stays leased and is sent once a valid token runs */
			relay_log(LOG_ERROR, "the Bot API refused the token (401 %s); check TELEGRAM_BOT_TOKEN", s->error);
			relay_request_stop(true);
			slot_free(s);
			continue;
		}
		if (s->status < 200 || s->status > 299)
			relay_log(LOG_ERROR, "sender: call %s %s answered %ld (%s)", s->id, s->method, s->status,
					  s->error[0] ? s->error : "no answer");
		s->state = SLOT_REPORTING;
	}
	return done;
}

static int
count(SlotState st)
{
	int			n = 0;

	for (int i = 0; i < nslots; i++)
		n += slots[i].state == st;
	return n;
}

static void *
sender_main(void *arg)
{
	CURLM	   *multi = curl_multi_init();
	PGconn	   *conn = NULL;
	bool		want_claim = true;
	long		last_claim = 0;
	long		drain_until = 0;
	int			failures = 0;

	if (multi == NULL)
	{
		relay_log(LOG_ERROR, "sender: could not create an HTTP client");
		relay_request_stop(true);
		return NULL;
	}
	for (;;)
	{
		bool		draining = atomic_load(&relay_drain);
		bool		fatal = atomic_load(&relay_fatal);
		int			running;
		struct curl_waitfd extra = {.events = CURL_WAIT_POLLIN};
		int			nextra = 0;
		long		wait_ms;

		if (draining && drain_until == 0)
			drain_until = relay_now_ms() + DRAIN_MAX_MS;
		/* a connection: for reports and claims; while it is down, transfers go on */
		if (conn == NULL && atomic_load(&relay_stop) && count(SLOT_SENDING) == 0 && count(SLOT_REPORTING) == 0)
		{
			/*
			 * Stopping with the database unreachable and nothing to report:
			 * no new connection attempt (each may take connect_timeout); what
			 * is still queued is sent by the next start.
			 */
			struct timespec ts = {0, 100 * 1000000L};

			if (draining || fatal)
				break;
			nanosleep(&ts, NULL);
			continue;
		}
		if (!db_usable(conn))
		{
			if (db_try(&conn, "regstage_outbox", "sender") == NULL && count(SLOT_SENDING) == 0)
			{
				if (fatal || (draining && (count(SLOT_REPORTING) == 0 || relay_now_ms() > drain_until)))
					break;
				if (atomic_load(&relay_stop))
				{
					/* relay_sleep_ms no longer sleeps: wait for the drain */
					struct timespec ts = {0, 100 * 1000000L};

					nanosleep(&ts, NULL);
				}
				else
					relay_sleep_ms(relay_backoff_ms(250, failures++));
				continue;
			}
			if (conn)
				failures = 0;
		}
		for (int i = 0; conn && i < nslots; i++)
		{
			if (slots[i].state == SLOT_REPORTING)
			{
				if (!report(conn, &slots[i]))
				{
					if (!db_usable(conn))
						db_drop(&conn);
					break;
				}
				slot_free(&slots[i]);
				want_claim = true;	/* that chat's next call may be due */
			}
		}
		if (conn && !fatal && (!draining || relay_now_ms() < drain_until) &&
			(want_claim || relay_now_ms() - last_claim >= IDLE_WAIT_MS))
		{
			int			room = count(SLOT_FREE);

			if (room > 0)
			{
				int			n = claim(conn, multi, room);

				last_claim = relay_now_ms();
				want_claim = n == room;	/* there may be more */
				if (n < 0 && !db_usable(conn))
					db_drop(&conn);
				if (n == 0 && draining && count(SLOT_SENDING) == 0 && count(SLOT_REPORTING) == 0)
					break;		/* nothing due is left */
			}
		}
		if ((draining && relay_now_ms() >= drain_until) || fatal)
		{
			if (count(SLOT_SENDING) == 0 && (count(SLOT_REPORTING) == 0 || conn == NULL || fatal))
				break;
		}
		curl_multi_perform(multi, &running);
		if (collect(multi) > 0)
			continue;
		if (conn)
		{
			extra.fd = PQsocket(conn);
			nextra = extra.fd >= 0;
		}
		wait_ms = want_claim ? 0 : IDLE_WAIT_MS;
		if (draining)
			wait_ms = want_claim ? 0 : 50;
		curl_multi_poll(multi, nextra ? &extra : NULL, nextra, (int) wait_ms, NULL);
		if (conn && db_drain_notify(conn))
			want_claim = true;
	}
	for (int i = 0; i < nslots; i++)
	{
		if (slots[i].state == SLOT_SENDING)
			curl_multi_remove_handle(multi, tg_handle(slots[i].tg));
		if (slots[i].state == SLOT_REPORTING)
			relay_log(LOG_ERROR, "sender: call %s answered %ld but not reported; it is sent again when its lease ends",
					  slots[i].id, slots[i].status);
		slot_free(&slots[i]);
	}
	curl_multi_cleanup(multi);
	db_drop(&conn);
	return NULL;
}

bool
sender_start(void)
{
	pthread_attr_t attr;
	int			rc;

	nslots = relay_config.send_concurrency;
	slots = calloc(nslots, sizeof(Slot));
	if (slots == NULL)
		return false;
	for (int i = 0; i < nslots; i++)
		if ((slots[i].tg = tg_client_new()) == NULL)
			return false;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	rc = pthread_create(&thread, &attr, sender_main, NULL);
	pthread_attr_destroy(&attr);
	return rc == 0;
}

void
sender_join(void)
{
	pthread_join(thread, NULL);
	for (int i = 0; i < nslots; i++)
		tg_client_free(slots[i].tg);
	free(slots);
	slots = NULL;
}
