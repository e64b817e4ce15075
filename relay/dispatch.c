/*
 * dispatch.c — per-chat ordering, worker connections, the offset watermark.
 *
 * Updates enter in update_id order.  Each goes into the FIFO of its chat;
 * a chat with work and no update running sits on the ready queue.  A
 * worker (one PostgreSQL connection each) takes a ready chat and runs its
 * head update through regstage.handle_update(); once that committed, the
 * chat's next update may start on another worker while this one performs
 * the returned Bot API calls — after the chat's earlier replies, so
 * replies keep the updates' order.  One chat is strictly ordered while
 * different chats run in parallel: a slow commit for one user never stalls
 * the replies to others.
 *
 * The offset given to getUpdates only passes updates whose handle_update
 * committed (the done prefix of the global order).  After a crash Telegram
 * redelivers the rest, and handle_update's update_id memory makes the
 * redelivery of an applied update a no-op.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "dispatch.h"
#include "relay.h"
#include "telegram.h"

#define SEND_ATTEMPTS 5
#define BACKOFF_CAP_MS 30000

typedef struct Item
{
	int64_t		update_id;
	int64_t		chat_id;
	char	   *json;			/* the update, as sent to handle_update */
	bool		done;
	uint64_t	send_seq;		/* its place in the chat's reply order */
	struct Item *next_global;	/* update_id order */
	struct Item *next_in_chat;
} Item;

typedef struct Chat
{
	int64_t		chat_id;
	Item	   *head;			/* FIFO of this chat's pending updates */
	Item	   *tail;
	bool		running;		/* a worker runs handle_update for the head */
	bool		ready;
	uint64_t	committed;		/* handle_updates committed so far */
	uint64_t	sent;			/* of those, whose replies are out */
	int			sending;		/* committed, replies not yet out */
	struct Chat *next_ready;
	struct Chat *next;			/* in the active chat list */
} Chat;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t progress_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t sent_cv = PTHREAD_COND_INITIALIZER;

static Item *global_head;
static Item *global_tail;
static Chat *chats;				/* chats with pending or running updates */
static Chat *ready_head;
static Chat *ready_tail;
static int	inflight;
static int64_t max_seen = -1;	/* highest update_id ever queued */
static int64_t next_offset = 0;
static bool stopping;

static pthread_t *threads;
static int	nthreads;

static long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}

/* The chat an update belongs to; updates without one are their own "chat". */
int64_t
dispatch_update_chat(json_t *u, int64_t update_id)
{
	static const char *const kinds[] = {"message", "edited_message", "channel_post", "edited_channel_post"};
	json_t	   *cq = json_object_get(u, "callback_query");
	json_t	   *id;

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
	{
		json_t	   *m = json_object_get(u, kinds[i]);

		id = m ? json_object_get(json_object_get(m, "chat"), "id") : NULL;
		if (json_is_integer(id))
			return json_integer_value(id);
	}
	if (cq)
	{
		id = json_object_get(json_object_get(json_object_get(cq, "message"), "chat"), "id");
		if (!json_is_integer(id))
			id = json_object_get(json_object_get(cq, "from"), "id");
		if (json_is_integer(id))
			return json_integer_value(id);
	}
	return INT64_MIN + update_id;	/* unique: never serialised with anything */
}

static Chat *
chat_get(int64_t chat_id)
{
	Chat	   *c;

	for (c = chats; c; c = c->next)
		if (c->chat_id == chat_id)
			return c;
	c = calloc(1, sizeof(Chat));
	if (c == NULL)
		return NULL;
	c->chat_id = chat_id;
	c->next = chats;
	chats = c;
	return c;
}

static void
chat_drop(Chat *c)
{
	Chat	  **link = &chats;

	while (*link && *link != c)
		link = &(*link)->next;
	if (*link)
		*link = c->next;
	free(c);
}

static void
ready_push(Chat *c)
{
	c->ready = true;
	c->next_ready = NULL;
	if (ready_tail)
		ready_tail->next_ready = c;
	else
		ready_head = c;
	ready_tail = c;
	pthread_cond_signal(&work_cv);
}

static Chat *
ready_pop(void)
{
	Chat	   *c = ready_head;

	if (c)
	{
		ready_head = c->next_ready;
		if (ready_head == NULL)
			ready_tail = NULL;
		c->ready = false;
	}
	return c;
}

bool
dispatch_submit(json_t *update)
{
	json_t	   *idj = json_object_get(update, "update_id");
	int64_t		update_id;
	Item	   *it;
	Chat	   *c;

	if (!json_is_integer(idj))
		return false;
	update_id = json_integer_value(idj);
	pthread_mutex_lock(&mu);
	if (update_id <= max_seen)
	{
		pthread_mutex_unlock(&mu);
		return false;			/* redelivered while still in flight, or done */
	}
	it = calloc(1, sizeof(Item));
	it->update_id = update_id;
	it->chat_id = dispatch_update_chat(update, update_id);
	it->json = json_dumps(update, JSON_COMPACT);
	c = chat_get(it->chat_id);
	if (it->json == NULL || c == NULL)
	{
		relay_log(LOG_ERROR, "out of memory queueing update %lld", (long long) update_id);
		free(it->json);
		free(it);
		pthread_mutex_unlock(&mu);
		return false;
	}
	max_seen = update_id;
	if (global_tail)
		global_tail->next_global = it;
	else
		global_head = it;
	global_tail = it;
	if (c->tail)
		c->tail->next_in_chat = it;
	else
		c->head = it;
	c->tail = it;
	inflight++;
	if (!c->running && !c->ready)
		ready_push(c);
	pthread_mutex_unlock(&mu);
	return true;
}

/*
 * handle_update committed for the chat's head: the chat may run its next
 * update while this one's replies go out.  Returns the reply turn.
 */
static uint64_t
release_chat(Chat *c, Item *it)
{
	uint64_t	seq;

	pthread_mutex_lock(&mu);
	seq = ++c->committed;
	c->sending++;
	c->head = it->next_in_chat;
	if (c->head == NULL)
		c->tail = NULL;
	c->running = false;
	if (c->head)
		ready_push(c);
	pthread_mutex_unlock(&mu);
	return seq;
}

/* Replies go out in update order: wait until the chat's earlier ones are out. */
static void
wait_reply_turn(Chat *c, uint64_t seq)
{
	pthread_mutex_lock(&mu);
	while (c->sent != seq - 1)
		pthread_cond_wait(&sent_cv, &mu);
	pthread_mutex_unlock(&mu);
}

/* An update is through (replies out): pass the turn on, and move the offset over the done prefix. */
static void
finish_item(Chat *c, Item *it, uint64_t seq)
{
	pthread_mutex_lock(&mu);
	it->done = true;
	c->sent = seq;
	c->sending--;
	if (c->head == NULL && c->sending == 0 && !c->running && !c->ready)
		chat_drop(c);
	while (global_head && global_head->done)
	{
		Item	   *d = global_head;

		next_offset = d->update_id + 1;
		global_head = d->next_global;
		if (global_head == NULL)
			global_tail = NULL;
		free(d->json);
		free(d);
		inflight--;
	}
	pthread_cond_broadcast(&sent_cv);
	pthread_cond_broadcast(&progress_cv);
	pthread_mutex_unlock(&mu);
}

int64_t
dispatch_offset(void)
{
	int64_t		o;

	pthread_mutex_lock(&mu);
	o = next_offset;
	pthread_mutex_unlock(&mu);
	return o;
}

int
dispatch_inflight(void)
{
	int			n;

	pthread_mutex_lock(&mu);
	n = inflight;
	pthread_mutex_unlock(&mu);
	return n;
}

void
dispatch_wait_progress(long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L)
	{
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&mu);
	pthread_cond_timedwait(&progress_cv, &mu, &ts);
	pthread_mutex_unlock(&mu);
}

/* Errors that mean "something is down", not "this update is bad": retried without limit. */
static bool
is_outage(const char *sqlstate)
{
	return sqlstate == NULL ||
		strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "53", 2) == 0 ||
		strncmp(sqlstate, "57", 2) == 0 || strncmp(sqlstate, "58", 2) == 0 ||
		strncmp(sqlstate, "40", 2) == 0;
}

static long
backoff_ms(int attempt)
{
	long		ms = 250L << (attempt < 7 ? attempt : 7);

	return ms > BACKOFF_CAP_MS ? BACKOFF_CAP_MS : ms;
}

/*
 * Run handle_update until it commits.  Returns the calls JSON (malloc'd),
 * or NULL when the update is given up (skipped, or the relay is stopping).
 * *skipped tells which.
 */
static char *
run_handle_update(PGconn **conn, Item *it, bool *skipped)
{
	int			attempts = 0;
	int			outage = 0;

	*skipped = false;
	for (;;)
	{
		PGresult   *res;
		const char *params[1] = {it->json};

		if (relay_stop)
			return NULL;
		if (*conn == NULL || PQstatus(*conn) != CONNECTION_OK)
		{
			if (*conn)
				PQfinish(*conn);
			*conn = PQconnectdb(relay_config.database_url);
			if (PQstatus(*conn) != CONNECTION_OK)
			{
				char		msg[512];

				snprintf(msg, sizeof(msg), "%s", PQerrorMessage(*conn));
				msg[strcspn(msg, "\n")] = '\0';
				if (outage == 0 || outage % 10 == 0)
					relay_log(LOG_ERROR, "database unavailable (update %lld held, retrying): %s",
							  (long long) it->update_id, msg);
				PQfinish(*conn);
				*conn = NULL;
				relay_sleep_ms(backoff_ms(outage++));
				continue;
			}
		}
		res = PQexecParams(*conn, "SELECT regstage.handle_update($1::jsonb)", 1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		{
			char	   *calls = strdup(PQgetvalue(res, 0, 0));

			PQclear(res);
			return calls;
		}
		{
			const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
			char		msg[512];

			snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
			msg[strcspn(msg, "\n")] = '\0';
			if (PQstatus(*conn) != CONNECTION_OK || is_outage(sqlstate))
			{
				if (outage == 0 || outage % 10 == 0)
					relay_log(LOG_ERROR, "update %lld: outage (%s), held and retried: %s",
							  (long long) it->update_id, sqlstate ? sqlstate : "connection", msg);
				PQclear(res);
				relay_sleep_ms(backoff_ms(outage++));
				continue;
			}
			attempts++;
			relay_log(LOG_ERROR, "update %lld: handle_update failed (%s), attempt %d of %d: %s",
					  (long long) it->update_id, sqlstate, attempts, relay_config.max_attempts, msg);
			PQclear(res);
			if (attempts >= relay_config.max_attempts)
			{
				relay_log(LOG_ERROR, "update %lld: skipped after %d failed attempts",
						  (long long) it->update_id, attempts);
				*skipped = true;
				return NULL;
			}
			relay_sleep_ms(backoff_ms(attempts));
		}
	}
}

/* Perform one Bot API call, honouring 429 retry_after and backing off on 5xx. */
static void
perform_call(TgClient *tg, const char *method, const char *body, int64_t update_id)
{
	for (int attempt = 0; attempt < SEND_ATTEMPTS; attempt++)
	{
		TgResult	res;

		tg_call(tg, method, body, 30000, false, &res);
		if (res.http_status == 200)
		{
			tg_result_clear(&res);
			return;
		}
		if (res.http_status == 401)
		{
			relay_log(LOG_ERROR, "the Bot API refused the token (401 %s); check TELEGRAM_BOT_TOKEN", res.error);
			relay_fatal = 1;
			relay_stop = 1;
			tg_result_clear(&res);
			return;
		}
		if (res.http_status == 429)
		{
			int			wait_s = res.retry_after > 0 ? res.retry_after : 1;

			relay_log(LOG_ERROR, "update %lld: %s rate limited, retrying after %d s",
					  (long long) update_id, method, wait_s);
			tg_result_clear(&res);
			relay_sleep_ms(wait_s * 1000L);
			attempt--;			/* a rate limit is not a failure */
			if (relay_stop)
				return;
			continue;
		}
		if (res.http_status >= 400 && res.http_status < 500)
		{
			relay_log(LOG_ERROR, "update %lld: %s refused (%ld %s); not retried",
					  (long long) update_id, method, res.http_status, res.error);
			tg_result_clear(&res);
			return;
		}
		relay_log(LOG_ERROR, "update %lld: %s failed (%ld %s), attempt %d of %d",
				  (long long) update_id, method, res.http_status, res.error, attempt + 1, SEND_ATTEMPTS);
		tg_result_clear(&res);
		relay_sleep_ms(backoff_ms(attempt));
	}
}

/* Perform the calls handle_update returned, in order.  Returns how many. */
static int
perform_calls(TgClient *tg, const char *calls_json, int64_t update_id)
{
	json_error_t jerr;
	json_t	   *calls = json_loads(calls_json, 0, &jerr);
	size_t		i;
	json_t	   *call;
	int			n = 0;

	if (!json_is_array(calls))
	{
		relay_log(LOG_ERROR, "update %lld: handle_update returned no array", (long long) update_id);
		json_decref(calls);
		return 0;
	}
	json_array_foreach(calls, i, call)
	{
		const char *method = json_string_value(json_object_get(call, "method"));
		json_t	   *params = json_object_get(call, "params");
		char	   *body;

		if (method == NULL || strspn(method, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") != strlen(method))
		{
			relay_log(LOG_ERROR, "update %lld: call %zu has no valid method", (long long) update_id, i);
			continue;
		}
		body = json_dumps(params ? params : json_object(), JSON_COMPACT);
		if (body)
		{
			perform_call(tg, method, body, update_id);
			free(body);
			n++;
		}
		if (relay_fatal)
			break;
	}
	json_decref(calls);
	return n;
}

static void *
worker_main(void *arg)
{
	PGconn	   *conn = NULL;
	TgClient   *tg = tg_client_new();

	if (tg == NULL)
	{
		relay_log(LOG_ERROR, "could not create an HTTP client");
		relay_fatal = relay_stop = 1;
		return NULL;
	}
	for (;;)
	{
		Chat	   *c;
		Item	   *it;
		char	   *calls;
		bool		skipped;
		long		t0;
		uint64_t	seq;

		pthread_mutex_lock(&mu);
		while (!stopping && ready_head == NULL)
			pthread_cond_wait(&work_cv, &mu);
		if (stopping)
		{
			pthread_mutex_unlock(&mu);
			break;
		}
		c = ready_pop();
		c->running = true;
		it = c->head;
		pthread_mutex_unlock(&mu);

		t0 = now_ms();
		calls = run_handle_update(&conn, it, &skipped);
		if (calls == NULL && !skipped)
		{
			/* stopping: leave it unconfirmed, Telegram redelivers it */
			pthread_mutex_lock(&mu);
			c->running = false;
			pthread_mutex_unlock(&mu);
			break;
		}
		/* committed (or skipped): the chat's next update may start now */
		seq = release_chat(c, it);
		wait_reply_turn(c, seq);
		if (calls)
		{
			int			n = perform_calls(tg, calls, it->update_id);

			relay_log(LOG_INFO, "update %lld chat %lld: %d calls, %ld ms",
					  (long long) it->update_id, (long long) it->chat_id, n, now_ms() - t0);
			free(calls);
		}
		finish_item(c, it, seq);
	}
	if (conn)
		PQfinish(conn);
	tg_client_free(tg);
	return NULL;
}

bool
dispatch_start(int nworkers)
{
	threads = calloc(nworkers, sizeof(pthread_t));
	if (threads == NULL)
		return false;
	for (nthreads = 0; nthreads < nworkers; nthreads++)
	{
		pthread_attr_t attr;

		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 256 * 1024);
		if (pthread_create(&threads[nthreads], &attr, worker_main, NULL) != 0)
		{
			pthread_attr_destroy(&attr);
			return false;
		}
		pthread_attr_destroy(&attr);
	}
	return true;
}

void
dispatch_shutdown(void)
{
	pthread_mutex_lock(&mu);
	stopping = true;
	pthread_cond_broadcast(&work_cv);
	pthread_mutex_unlock(&mu);
	for (int i = 0; i < nthreads; i++)
		pthread_join(threads[i], NULL);
	free(threads);
}
