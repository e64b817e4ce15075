/*
 * sender.c — the outbox's delivery: one thread, its own connection.
 *
 *   1. claim    regstage.outbox_claim(free slots, lease, RUN_MAX, ...):
 *               for each chat with due calls its oldest pending one, claimed,
 *               and up to RUN_MAX - 1 calls queued after it; one chat per
 *               slot.  Which chats: what is new since the last claim (calls
 *               committed since its snapshot, the chats whose runs ended
 *               since, those whose retry wait ended); every chat, round
 *               robin from the last one claimed, every 10 s (leases of a
 *               sender that died, calls committed out of order) and
 *               whenever the last claim left some behind
 *   2. send     each slot's current call, concurrently on a curl multi handle
 *               (one keep-alive connection per slot)
 *   3. report   every answer since the last report in one statement,
 *               regstage.outbox_report_batch: sent, retried with backoff
 *               (5xx, network error), the chat held for retry_after (429:
 *               that chat only), or parked as failed (other 4xx); in the same
 *               statement the slot's next call of that chat is claimed, and
 *               only if it was does the slot go on with it (2.)
 *
 * So a chat has one call in flight at a time and its calls keep their
 * order; a busy chat needs one report per call and one claim per RUN_MAX
 * calls.  A 429, 5xx or network error ends the slot's run: the calls after it
 * were never claimed and wait in the outbox behind the one retried.  Woken by
 * this relay's processors (sender_wake, after each update they applied) and
 * by LISTEN regstage_outbox (NOTIFY at the commit of calls queued anywhere
 * else: SQL, other relays), else every second for calls whose backoff ended.
 *
 * A call whose answer could not be reported yet (database down) keeps its
 * slot and is reported once the connection is back, without going on with
 * its run; its lease stops any other sender from sending it again meanwhile.
 * If the relay dies between Telegram's answer and the report, the call is
 * sent again when its lease ends: the one case of a reply delivered twice.
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
#define RUN_MAX 20				/* calls of one chat a slot holds, sent one after the other */
#define NOTIFY_GAP_MS 10		/* a NOTIFY claims at most this often (every commit of a busy bot sends one) */
#define REPORT_GAP_MS 2			/* answers are reported at most this often while other calls are in flight */
#define CLAIM_GAP_MS 5			/* freed slots are filled at most this often while other calls are in flight */
#define FULL_CLAIM_MS 10000		/* a claim looks at every chat at least this often */
#define FULL_CHAIN_MS 5			/* full claims go on back to back only while each takes less */
#define ENDED_MAX 256			/* chats with ended runs the next claim looks at; more: it looks at all */

typedef enum
{
	SLOT_FREE,
	SLOT_SENDING,
	SLOT_REPORTING				/* answered; outbox_report still to do */
} SlotState;

/* One outbox call as claimed: the first of a run is leased, the others wait their turn. */
typedef struct Call
{
	char		id[24];
	char		method[64];
	char	   *body;			/* params as JSON text; NULL once sent */
} Call;

typedef struct Slot
{
	SlotState	state;
	TgClient   *tg;
	Call		run[RUN_MAX];	/* calls of one chat in id order */
	bool		has_chat;		/* calls of no chat each go on their own */
	long long	chat;
	int			nrun;
	int			pos;			/* the call in flight or being reported */
	bool		in_batch;		/* in the report statement being made */
	long		status;
	int			retry_after;
	char		error[512];
} Slot;

static pthread_t thread;
static Slot *slots;
static int	nslots;
static CURLM *multi;			/* the sender's; curl_multi_wakeup is safe from any thread */
static atomic_bool woken;		/* sender_wake since the sender last looked */

/*
 * What the next claim looks at.  Every chat, in a full claim: its cost grows
 * with every call sent that some open transaction still sees (a commit held
 * 30 s keeps them all in the pending index).  In between, only what is new:
 * calls committed after the snapshot of the last claim that took all it
 * found, and the chats whose runs ended since (a call queued while its chat
 * had one in flight, the rest of a chat past RUN_MAX).
 */
static struct
{
	char	   *since;			/* pg_snapshot as text; NULL: the next claim is full */
	long long	ended[ENDED_MAX];	/* chats whose runs ended ... */
	char		ended_at[ENDED_MAX][24];	/* ... and the last call of each run */
	int			nended;
	bool		ended_lost;		/* more ended than fit: the next claim is full */
	bool		full_more;		/* the last full claim filled every slot: the round goes on */
	long		next_full;		/* relay_now_ms() at which a claim is full again */
	char		after_chat[24]; /* a full claim goes on after this chat */
}			news;

static int	count(SlotState st);

/*
 * A slot's run of its chat ended with its current call sent or parked: the
 * next claim looks at what that chat has left after that call (chats_after;
 * from the chat's first entry, the lookup stepped over every call of the
 * chat sent while some transaction stayed open).
 */
static void
run_ended(const Slot *s)
{
	int			i;

	if (!s->has_chat)
		return;
	for (i = 0; i < news.nended && news.ended[i] != s->chat; i++)
		;
	if (i == ENDED_MAX)
	{
		news.ended_lost = true;
		return;
	}
	news.ended[i] = s->chat;
	snprintf(news.ended_at[i], sizeof(news.ended_at[i]), "%s", s->run[s->pos].id);
	if (i == news.nended)
		news.nended++;
}

/* Forget what is new: the next claim looks at every chat. */
static void
news_reset(void)
{
	free(news.since);
	news.since = NULL;
	news.nended = 0;
	news.ended_lost = false;
}

/* The sender's two statements, prepared once per connection (parsing them took a tenth of a report). */
static const struct
{
	const char *name;
	const char *sql;
	int			nparams;
}			statements[] =
{
	/* one row at least: the snapshot the claim's statement started in */
	{"claim", "SELECT pg_current_snapshot()::text, c.id, c.chat_id, c.method, c.params::text "
		"FROM (VALUES (1)) AS one LEFT JOIN regstage.outbox_claim($1::integer, $2::interval, $3::integer, "
		"$4::bigint, $5::pg_snapshot, $6::bigint[], $7::bigint[]) AS c ON true", 7},
	{"report", "SELECT id, next_claimed, status FROM regstage.outbox_report_batch("
		"$1::bigint[], $2::integer[], $3::text[], $4::integer[], $5::bigint[], $6::interval)", 6},
};
static PGconn *prepared_on;		/* the connection they are prepared on */

static PGresult *
exec_prepared(PGconn *conn, const char *name, const char *const *values)
{
	int			k = strcmp(name, "claim") == 0 ? 0 : 1;

	if (prepared_on != conn)
	{
		/*
		 * The sender's reports commit without waiting for their WAL flush:
		 * a chat's next call waits for the report of the one before, and
		 * that wait was the flush.  A database crash can forget the last
		 * moments of reports; those calls are sent again, the same case as
		 * a relay killed between Telegram's answer and the report.  A claim
		 * that hands out calls commits synchronously all the same
		 * (outbox_claim raises synchronous_commit for its transaction): the
		 * processors' commits do not wait for their flush, and the claim's
		 * flush is what makes the calls it hands out durable before they
		 * are sent.
		 */
		PGresult   *set = PQexec(conn, "SET synchronous_commit = off");

		if (PQresultStatus(set) != PGRES_COMMAND_OK)
			return set;
		PQclear(set);
		for (int i = 0; i < 2; i++)
		{
			PGresult   *res = PQprepare(conn, statements[i].name, statements[i].sql, statements[i].nparams, NULL);

			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				return res;		/* the caller reports its error */
			PQclear(res);
		}
		prepared_on = conn;
	}
	return PQexecPrepared(conn, statements[k].name, statements[k].nparams, values, NULL, NULL, 0);
}

static bool
method_valid(const char *m)
{
	size_t		n = strlen(m);

	return n > 0 && n < 64 && strspn(m, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == n;
}

/* Drop the calls of a slot's run after its current one (they stay unclaimed in the outbox). */
static void
run_cut(Slot *s)
{
	for (int i = s->pos + 1; i < s->nrun; i++)
	{
		free(s->run[i].body);
		s->run[i].body = NULL;
	}
	if (s->nrun > s->pos + 1)
		s->nrun = s->pos + 1;
}

static void
slot_free(Slot *s)
{
	for (int i = 0; i < s->nrun; i++)
	{
		free(s->run[i].body);
		s->run[i].body = NULL;
	}
	s->nrun = s->pos = 0;
	s->state = SLOT_FREE;
}

/* Start the slot's current call (claimed): on the wire, or straight to its report. */
static void
start_call(CURLM *multi, Slot *s)
{
	Call	   *c = &s->run[s->pos];

	s->status = 0;
	s->retry_after = 0;
	s->error[0] = '\0';
	if (!method_valid(c->method))
	{
		/* parked as failed by the report: a 400 is never retried */
		s->status = 400;
		snprintf(s->error, sizeof(s->error), "not a Bot API method name");
		s->state = SLOT_REPORTING;
		return;
	}
	if (c->body == NULL)
	{
		/* retried later */
		snprintf(s->error, sizeof(s->error), "out of memory in the relay");
		s->state = SLOT_REPORTING;
		return;
	}
	tg_prepare(s->tg, c->method, c->body, relay_config.send_timeout_s * 1000L, false);
	curl_multi_add_handle(multi, tg_handle(s->tg));
	s->state = SLOT_SENDING;
}

/* A growing text buffer for array literals; on out of memory it stays failed. */
typedef struct Text
{
	char	   *p;
	size_t		len;
	size_t		cap;
	bool		failed;
} Text;

static void
text_add(Text *t, const char *s, size_t n)
{
	if (t->failed)
		return;
	if (t->len + n + 1 > t->cap)
	{
		size_t		cap = t->cap ? t->cap : 256;
		char	   *p;

		while (cap < t->len + n + 1)
			cap *= 2;
		if ((p = realloc(t->p, cap)) == NULL)
		{
			t->failed = true;
			return;
		}
		t->p = p;
		t->cap = cap;
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
	t->p[t->len] = '\0';
}

static void
text_str(Text *t, const char *s)
{
	text_add(t, s, strlen(s));
}

/* one element of an array literal: NULL, or the value double-quoted */
static void
text_element(Text *t, const char *v)
{
	if (t->len > 1)
		text_str(t, ",");
	if (v == NULL)
	{
		text_str(t, "NULL");
		return;
	}
	text_str(t, "\"");
	for (const char *p = v; *p; p++)
	{
		if (*p == '"' || *p == '\\')
			text_str(t, "\\");
		text_add(t, p, 1);
	}
	text_str(t, "\"");
}

/* Cut a string at its last complete UTF-8 character (a truncated message may end inside one). */
static void
utf8_trim(char *s)
{
	size_t		n = strlen(s);
	size_t		start = n;
	int			need;

	while (start > 0 && n - start < 3 && ((unsigned char) s[start - 1] & 0xC0) == 0x80)
		start--;
	if (start == 0 || ((unsigned char) s[start - 1] & 0x80) == 0)
		return;
	start--;					/* the lead byte of the last character */
	need = ((unsigned char) s[start] & 0xE0) == 0xC0 ? 2 : ((unsigned char) s[start] & 0xF0) == 0xE0 ? 3 :
		((unsigned char) s[start] & 0xF8) == 0xF0 ? 4 : 0;
	if (need == 0 || n - start < (size_t) need)
		s[start] = '\0';
}

/*
 * The answered slots' outbox_report (all of them, or only slot `only`), and
 * the claim of each one's next call, in one statement.  go_on: runs may
 * continue (not past the drain).  False if the database could not be told;
 * the slots stay to report again, their runs cut.
 */
static bool
report_slots(PGconn *conn, CURLM *multi, bool go_on, bool *freed, int only)
{
	Text		arr[5] = {{0}};
	char		lease[32];
	const char *values[6];
	PGresult   *res;
	bool		ok;
	int			n = 0;

	for (int k = 0; k < 5; k++)
		text_str(&arr[k], "{");
	for (int i = 0; i < nslots; i++)
	{
		Slot	   *s = &slots[i];
		char		num[24];
		bool		next;

		s->in_batch = false;
		if (s->state != SLOT_REPORTING || (only >= 0 && i != only))
			continue;
		s->in_batch = true;
		if (!go_on)
			run_cut(s);
		utf8_trim(s->error);
		next = s->pos + 1 < s->nrun;
		text_element(&arr[0], s->run[s->pos].id);
		snprintf(num, sizeof(num), "%ld", s->status);
		text_element(&arr[1], num);
		text_element(&arr[2], s->error[0] ? s->error : NULL);
		snprintf(num, sizeof(num), "%d", s->retry_after);
		text_element(&arr[3], s->retry_after > 0 ? num : NULL);
		text_element(&arr[4], next ? s->run[s->pos + 1].id : NULL);
		n++;
	}
	for (int k = 0; k < 5; k++)
	{
		text_str(&arr[k], "}");
		values[k] = arr[k].p;
	}
	if (n == 0)
	{
		for (int k = 0; k < 5; k++)
			free(arr[k].p);
		return true;
	}
	snprintf(lease, sizeof(lease), "%d seconds", relay_config.send_timeout_s + LEASE_MARGIN_S);
	values[5] = lease;
	if (arr[0].failed || arr[1].failed || arr[2].failed || arr[3].failed || arr[4].failed)
		res = NULL;
	else
		res = exec_prepared(conn, "report", values);
	for (int k = 0; k < 5; k++)
		free(arr[k].p);
	ok = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK;
	if (!ok)
	{
		char		msg[512];

		db_error_line(res ? PQresultErrorMessage(res) : "out of memory in the relay", msg, sizeof(msg));
		relay_log(LOG_ERROR, "sender: outbox_report_batch of %d calls failed, kept to report again: %s", n, msg);
		for (int i = 0; i < nslots; i++)
			if (slots[i].in_batch)
				run_cut(&slots[i]);
		PQclear(res);
		return false;
	}
	for (int r = 0; r < PQntuples(res); r++)
	{
		const char *id = PQgetvalue(res, r, 0);

		for (int i = 0; i < nslots; i++)
		{
			Slot	   *s = &slots[i];

			if (!s->in_batch || strcmp(s->run[s->pos].id, id) != 0)
				continue;
			s->in_batch = false;
			if (strcmp(PQgetvalue(res, r, 1), "t") == 0 && s->pos + 1 < s->nrun)
			{
				/* the chat's next call is claimed: this slot sends it */
				free(s->run[s->pos].body);
				s->run[s->pos].body = NULL;
				s->pos++;
				start_call(multi, s);
			}
			else
			{
				/*
				 * Sent or parked: the chat's next call comes after this one.
				 * A call held for a retry stays its chat's oldest; a claim
				 * finds it when its wait ended (outbox_deferred).
				 */
				const char *st = PQgetvalue(res, r, 2);

				if (strcmp(st, "sent") == 0 || strcmp(st, "failed") == 0)
					run_ended(s);
				slot_free(s);
				*freed = true;
			}
			break;
		}
	}
	/* a slot the answer did not name (none should be): its run ends */
	for (int i = 0; i < nslots; i++)
		if (slots[i].in_batch)
		{
			slots[i].in_batch = false;
			slot_free(&slots[i]);
			*freed = true;
		}
	PQclear(res);
	return true;
}

/*
 * Report every answered slot in one statement.  If that fails while the
 * connection works, one report the database refuses must not hold the
 * others: each is tried on its own.
 */
static bool
report(PGconn *conn, CURLM *multi, bool go_on, bool *freed)
{
	bool		ok;

	if (report_slots(conn, multi, go_on, freed, -1))
		return true;
	if (!db_usable(conn) || count(SLOT_REPORTING) < 2)
		return false;
	ok = true;
	for (int i = 0; i < nslots && db_usable(conn); i++)
		if (slots[i].state == SLOT_REPORTING && !report_slots(conn, multi, go_on, freed, i))
			ok = false;
	return ok;
}

/*
 * Claim runs for up to room chats and start their first calls: what is new
 * (news), or every chat if full or a full claim is due.  Returns how many
 * chats, -1 on a failure.
 */
static int
claim(PGconn *conn, CURLM *multi, int room, bool full)
{
	char		max[16];
	char		lease[32];
	char		per_chat[16];
	Text		chats = {0};
	Text		chats_after = {0};
	const char *values[7] = {max, lease, per_chat, NULL, NULL, NULL, NULL};
	PGresult   *res;
	int			n;
	int			k = 0;
	int			claimed = 0;
	Slot	   *s = NULL;
	long long	after = news.after_chat[0] ? atoll(news.after_chat) : 0;
	bool		any_after = false;
	bool		any = false;
	bool		closed = false;
	long long	max_after = 0;
	long long	max_all = 0;
	long		took;

	full = full || news.since == NULL || news.ended_lost || news.full_more || relay_now_ms() >= news.next_full;
	snprintf(max, sizeof(max), "%d", room);
	snprintf(lease, sizeof(lease), "%d seconds", relay_config.send_timeout_s + LEASE_MARGIN_S);
	snprintf(per_chat, sizeof(per_chat), "%d", RUN_MAX);
	if (full)
		values[3] = news.after_chat[0] ? news.after_chat : NULL;
	else
	{
		values[4] = news.since;
		text_str(&chats, "{");
		text_str(&chats_after, "{");
		for (int i = 0; i < news.nended; i++)
		{
			char		num[24];

			snprintf(num, sizeof(num), "%lld", news.ended[i]);
			text_element(&chats, num);
			text_element(&chats_after, news.ended_at[i]);
		}
		text_str(&chats, "}");
		text_str(&chats_after, "}");
		if (chats.failed || chats_after.failed)
		{
			free(chats.p);
			free(chats_after.p);
			return -1;
		}
		values[5] = chats.p;
		values[6] = chats_after.p;
	}
	took = relay_now_ms();
	res = exec_prepared(conn, "claim", values);
	took = relay_now_ms() - took;
	free(chats.p);
	free(chats_after.p);
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
		bool		null_chat = PQgetisnull(res, i, 2);
		bool		first;
		Call	   *c;

		if (PQgetisnull(res, i, 1))
			continue;			/* the one row of a claim that found nothing */
		first = s == NULL || null_chat || !s->has_chat || atoll(PQgetvalue(res, i, 2)) != s->chat;
		if (first)
		{
			/* a chat's first call, claimed: a free slot starts the run */
			if (s != NULL)
				start_call(multi, s);
			s = NULL;
			if (claimed == room)
				break;			/* more chats than asked for: their claims expire */
			while (slots[k].state != SLOT_FREE)
				k++;
			s = &slots[k];
			s->nrun = s->pos = 0;
			s->state = SLOT_SENDING;	/* taken; start_call decides */
			s->has_chat = !null_chat;
			s->chat = null_chat ? 0 : atoll(PQgetvalue(res, i, 2));
			closed = false;
			claimed++;
			if (!null_chat)
			{
				if (s->chat > after && (!any_after || s->chat > max_after))
					max_after = s->chat, any_after = true;
				if (!any || s->chat > max_all)
					max_all = s->chat, any = true;
			}
		}
		else if (closed || s->nrun == RUN_MAX)
			continue;
		c = &s->run[s->nrun++];
		snprintf(c->id, sizeof(c->id), "%s", PQgetvalue(res, i, 1));
		snprintf(c->method, sizeof(c->method), "%s", PQgetvalue(res, i, 3));
		c->body = strdup(PQgetvalue(res, i, 4));
		if (c->body == NULL && !first)
		{
			/* the run ends before a call it could not keep: they go in order */
			s->nrun--;
			closed = true;
		}
	}
	if (s != NULL)
		start_call(multi, s);
	if (full)
	{
		/* a full claim: the round robin goes on after the last chat claimed */
		if (any)
			snprintf(news.after_chat, sizeof(news.after_chat), "%lld", any_after ? max_after : max_all);
		news.next_full = relay_now_ms() + FULL_CLAIM_MS;
		/*
		 * One that filled every slot goes on with the round (a backlog:
		 * chat after chat) while full claims are cheap, or while there is no
		 * snapshot to ask for news since.  Back to back, each stepping over
		 * every call a long transaction keeps visible (50 ms after 60 s),
		 * they had the sender fall seconds behind; then what one left is new
		 * since the last snapshot, or is found by the next full claim.
		 */
		news.full_more = claimed == room && (news.since == NULL || took < FULL_CHAIN_MS);
	}
	if (claimed < room)
	{
		/*
		 * It took all it found: what is new from now on is what its snapshot
		 * did not see.  (One that filled every slot may have left some: the
		 * next claim asks again from the same point.)
		 */
		char	   *since = strdup(PQgetvalue(res, 0, 0));

		news_reset();
		news.since = since;		/* NULL if out of memory: the next claim is full */
	}
	PQclear(res);
	return claimed;
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
		free(s->run[s->pos].body);
		s->run[s->pos].body = NULL;
		if (s->status == 401)
		{
			/* not reported: the call stays leased and is sent once a valid token runs */
			relay_log(LOG_ERROR, "the Bot API refused the token (401 %s); check TELEGRAM_BOT_TOKEN", s->error);
			relay_request_stop(true);
			slot_free(s);
			continue;
		}
		if (s->status < 200 || s->status > 299)
			relay_log(LOG_ERROR, "sender: call %s %s answered %ld (%s)", s->run[s->pos].id, s->run[s->pos].method,
					  s->status, s->error[0] ? s->error : "no answer");
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

/*
 * How long after the last claim the next one may run: at once for a freed
 * slot with no other call in flight, CLAIM_GAP_MS for one freed while others
 * are (more may free meanwhile), NOTIFY_GAP_MS after a wake-up, else the
 * idle poll's IDLE_WAIT_MS.  The claim and the poll's timeout both ask here.
 */
static long
claim_gap_ms(bool want_claim, bool notified)
{
	if (want_claim)
		return count(SLOT_SENDING) == 0 ? 0 : CLAIM_GAP_MS;
	return notified ? NOTIFY_GAP_MS : IDLE_WAIT_MS;
}

/* A processor queued calls: claim them now rather than at the next poll. */
void
sender_wake(void)
{
	if (!atomic_exchange(&woken, true) && multi != NULL)
		curl_multi_wakeup(multi);
}

static void *
sender_main(void *arg)
{
	PGconn	   *conn = NULL;
	bool		want_claim = true;
	bool		notified = false;	/* calls were queued since the last claim */
	long		last_claim = 0;
	long		report_due = 0;	/* answers held are reported from then on */
	bool		report_failed = false;
	long		drain_until = 0;
	int			failures = 0;
	long		next_connect = 0;	/* while calls are in flight, no connection attempt before */

	for (;;)
	{
		bool		draining = atomic_load(&relay_drain);
		bool		fatal = atomic_load(&relay_fatal);
		int			running;
		struct curl_waitfd extra = {.events = CURL_WAIT_POLLIN};
		int			nextra = 0;
		long		wait_ms;
		bool		claims_open;	/* not stopping, or still draining */

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
			bool		tried = false;

			prepared_on = NULL; /* a new connection may get the old one's address */
			news_reset();		/* maybe another server now: its first claim looks at everything */
			/*
			 * With calls in flight the loop goes on without a connection (the
			 * transfers need none), and tries one with the same backoff as
			 * below: each attempt may take connect_timeout.
			 */
			if (count(SLOT_SENDING) == 0 || relay_now_ms() >= next_connect)
			{
				tried = true;
				db_try(&conn, "regstage_outbox", "sender");
			}
			else
				db_drop(&conn);
			if (conn == NULL && count(SLOT_SENDING) == 0)
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
			{
				failures = 0;
				report_failed = false;	/* a new connection reports at once */
				report_due = 0;
			}
			else if (tried)
				next_connect = relay_now_ms() + relay_backoff_ms(250, failures++);
		}
		/*
		 * A report costs a statement whatever it carries: while other calls
		 * are still in flight, their answers are waited for a moment (at
		 * most REPORT_GAP_MS since the last report) and go in the same one.
		 * Answered alone, one by one, the reports were the larger half of
		 * the sender's database CPU under load.  A report the database
		 * refused (disk full, read-only) is tried again a second later.
		 */
		if (conn && count(SLOT_REPORTING) > 0 &&
			((draining && !report_failed) || fatal || relay_now_ms() >= report_due ||
			 (!report_failed && count(SLOT_SENDING) == 0)))
		{
			bool		freed = false;
			bool		go_on = !fatal && (!draining || relay_now_ms() < drain_until);

			report_failed = !report(conn, multi, go_on, &freed);
			report_due = relay_now_ms() + (report_failed ? IDLE_WAIT_MS : REPORT_GAP_MS);
			if (report_failed && !db_usable(conn))
				db_drop(&conn);
			if (freed)
				want_claim = true;	/* a slot for another chat */
		}
		/*
		 * Claims, like reports, cost a statement whatever they carry: a slot
		 * freed while others are still sending waits (at most CLAIM_GAP_MS
		 * since the last claim) for more to free, and one claim fills them
		 * all.  Under load, one claim per freed slot was a third of the
		 * sender's statements.
		 */
		claims_open = !fatal && (!draining || relay_now_ms() < drain_until);
		if (conn && claims_open && relay_now_ms() - last_claim >= claim_gap_ms(want_claim, notified))
		{
			int			room = count(SLOT_FREE);

			if (room > 0)
			{
				/* draining: only a full claim can tell that nothing due is left */
				int			n = claim(conn, multi, room, draining);

				last_claim = relay_now_ms();
				want_claim = n == room;	/* there may be more */
				notified = false;
				if (n < 0 && !db_usable(conn))
					db_drop(&conn);
				if (n == 0 && draining && count(SLOT_SENDING) == 0 && count(SLOT_REPORTING) == 0)
					break;		/* nothing due is left */
			}
		}
		if ((draining && relay_now_ms() >= drain_until) || fatal)
		{
			/*
			 * (answers the database keeps refusing to take — read-only, disk
			 * full — are not waited for either: their calls go again when
			 * their leases end, as logged below)
			 */
			if (count(SLOT_SENDING) == 0 &&
				(count(SLOT_REPORTING) == 0 || conn == NULL || fatal || report_failed))
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
		/*
		 * Until the next claim is allowed (with every slot busy, a claim
		 * waits for one to free: no spinning).
		 */
		wait_ms = IDLE_WAIT_MS;
		if (conn && claims_open && count(SLOT_FREE) > 0)
		{
			wait_ms = claim_gap_ms(want_claim, notified) - (relay_now_ms() - last_claim);
			if (wait_ms < 0)
				wait_ms = 0;
			if (wait_ms > IDLE_WAIT_MS)
				wait_ms = IDLE_WAIT_MS;
		}
		if (draining && wait_ms > 50)
			wait_ms = 50;
		if (count(SLOT_REPORTING) > 0 && conn)
		{
			/* answers held for the next report: wake when it is due */
			long		due = report_due - relay_now_ms();

			wait_ms = due < 0 ? 0 : (due < wait_ms ? due : wait_ms);
		}
		if (atomic_load(&woken))
			wait_ms = 0;
		curl_multi_poll(multi, nextra ? &extra : NULL, nextra, (int) wait_ms, NULL);
		if (conn && db_drain_notify(conn))
			notified = true;
		if (atomic_exchange(&woken, false))
			notified = true;
	}
	for (int i = 0; i < nslots; i++)
	{
		if (slots[i].state == SLOT_SENDING)
			curl_multi_remove_handle(multi, tg_handle(slots[i].tg));
		if (slots[i].state == SLOT_REPORTING)
			relay_log(LOG_ERROR, "sender: call %s answered %ld but not reported; it is sent again when its lease ends",
					  slots[i].run[slots[i].pos].id, slots[i].status);
		slot_free(&slots[i]);
	}
	news_reset();
	db_drop(&conn);
	return NULL;
}

bool
sender_start(void)
{
	pthread_attr_t attr;
	int			rc;

	nslots = relay_config.send_concurrency;
	if ((multi = curl_multi_init()) == NULL)
		return false;
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
	/* after the processors stopped: none calls sender_wake any more */
	curl_multi_cleanup(multi);
	multi = NULL;
	for (int i = 0; i < nslots; i++)
		tg_client_free(slots[i].tg);
	free(slots);
	slots = NULL;
}
