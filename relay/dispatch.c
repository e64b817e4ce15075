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

/*
 * libpq settings of every relay connection, before DATABASE_URL's own (which
 * win): a peer that vanished without a FIN or RST must not hold a worker
 * forever.  Keepalive probes start after 30 s idle, every 10 s, 3 lost ones
 * drop the connection (about a minute); tcp_user_timeout drops it when sent
 * data stays unacknowledged that long (a query sent to a dead server, where
 * keepalives do not run); connect_timeout bounds the connection attempt,
 * unless PGCONNECT_TIMEOUT says otherwise.  A long handle_update (a slow
 * download) keeps an idle, healthy socket and is not affected.
 */
#define PG_KEEPALIVES_IDLE "30"
#define PG_KEEPALIVES_INTERVAL "10"
#define PG_KEEPALIVES_COUNT "3"
#define PG_TCP_USER_TIMEOUT "60000"
#define PG_CONNECT_TIMEOUT "10"

typedef struct Item
{
	int64_t		update_id;
	int64_t		chat_id;
	bool		own_chat;		/* no chat: ordered with nothing else */
	char	   *json;			/* the update, as sent to handle_update */
	bool		done;
	uint64_t	send_seq;		/* its place in the chat's reply order */
	struct Item *next_global;	/* update_id order */
	struct Item *next_in_chat;
} Item;

typedef struct Chat
{
	int64_t		chat_id;
	bool		own;			/* one update's private queue, never shared */
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

/* The chat an update belongs to; false for updates without one. */
bool
dispatch_update_chat(json_t *u, int64_t *chat_id)
{
	static const char *const kinds[] = {"message", "edited_message", "channel_post", "edited_channel_post"};
	json_t	   *cq = json_object_get(u, "callback_query");
	json_t	   *id;

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
	{
		json_t	   *m = json_object_get(u, kinds[i]);

		id = m ? json_object_get(json_object_get(m, "chat"), "id") : NULL;
		if (json_is_integer(id))
		{
			*chat_id = json_integer_value(id);
			return true;
		}
	}
	if (cq)
	{
		id = json_object_get(json_object_get(json_object_get(cq, "message"), "chat"), "id");
		if (!json_is_integer(id))
			id = json_object_get(json_object_get(cq, "from"), "id");
		if (json_is_integer(id))
		{
			*chat_id = json_integer_value(id);
			return true;
		}
	}
	*chat_id = 0;
	return false;
}

/* The queue of a chat, created if needed; own: a new one no other update shares. */
static Chat *
chat_get(int64_t chat_id, bool own)
{
	Chat	   *c;

	for (c = own ? NULL : chats; c; c = c->next)
		if (c->chat_id == chat_id && !c->own)
			return c;
	c = calloc(1, sizeof(Chat));
	if (c == NULL)
		return NULL;
	c->chat_id = chat_id;
	c->own = own;
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
	if (it != NULL)
	{
		it->update_id = update_id;
		it->own_chat = !dispatch_update_chat(update, &it->chat_id);
		it->json = json_dumps(update, JSON_COMPACT);
	}
	c = (it && it->json) ? chat_get(it->chat_id, it->own_chat) : NULL;
	if (c == NULL)
	{
		/* not seen: a later getUpdates brings it again */
		relay_log(LOG_ERROR, "out of memory queueing update %lld", (long long) update_id);
		if (it)
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

static long
backoff_ms(int attempt)
{
	return relay_backoff_ms(250, attempt);
}

static PGconn *
connect_db(void)
{
	const char *keys[] = {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
	"tcp_user_timeout", "connect_timeout", "dbname", NULL};
	const char *values[] = {"1", PG_KEEPALIVES_IDLE, PG_KEEPALIVES_INTERVAL, PG_KEEPALIVES_COUNT,
		PG_TCP_USER_TIMEOUT, getenv("PGCONNECT_TIMEOUT") ? NULL : PG_CONNECT_TIMEOUT,
	relay_config.database_url, NULL};

	/* expand_dbname: DATABASE_URL, last, overrides the settings above */
	return PQconnectdbParams(keys, values, 1);
}

/*
 * Is this failure an outage (something is down: hold the update and retry
 * without limit) rather than a bad update (counted, skipped in the end)?
 * A broken connection is an outage; otherwise the database decides:
 * regstage.is_outage() is the one list, asked on the same connection (the
 * failed statement's transaction is already gone).  When it cannot be
 * asked, the update is held: skipping it could lose a user's message.
 */
static bool
failure_is_outage(PGconn *conn, const char *sqlstate, char *why, size_t whylen)
{
	PGresult   *res;
	bool		outage = true;

	why[0] = '\0';
	if (PQstatus(conn) != CONNECTION_OK || sqlstate == NULL)
		return true;
	res = PQexecParams(conn, "SELECT regstage.is_outage($1)", 1, NULL, &sqlstate, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		outage = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	else
	{
		snprintf(why, whylen, "regstage.is_outage() could not be asked: %s", PQresultErrorMessage(res));
		why[strcspn(why, "\n")] = '\0';
	}
	PQclear(res);
	return outage;
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

		if (atomic_load(&relay_stop))
			return NULL;
		if (*conn == NULL || PQstatus(*conn) != CONNECTION_OK)
		{
			if (*conn)
				PQfinish(*conn);
			*conn = connect_db();
			if (*conn == NULL || PQstatus(*conn) != CONNECTION_OK)
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
			if (calls == NULL)
			{
				relay_log(LOG_ERROR, "update %lld: committed, but out of memory for its replies; they are not sent",
						  (long long) it->update_id);
				*skipped = true;
			}
			return calls;
		}
		{
			char		sqlstate[6] = "";
			char		msg[512];
			char		why[512];
			const char *field = PQresultErrorField(res, PG_DIAG_SQLSTATE);
			bool		has_state = field != NULL;

			if (has_state)
				snprintf(sqlstate, sizeof(sqlstate), "%s", field);
			snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
			msg[strcspn(msg, "\n")] = '\0';
			PQclear(res);
			if (failure_is_outage(*conn, has_state ? sqlstate : NULL, why, sizeof(why)))
			{
				if (outage == 0 || outage % 10 == 0)
					relay_log(LOG_ERROR, "update %lld: outage (%s), held and retried: %s%s%s",
							  (long long) it->update_id, has_state ? sqlstate : "connection", msg,
							  why[0] ? "; " : "", why);
				relay_sleep_ms(backoff_ms(outage++));
				continue;
			}
			attempts++;
			relay_log(LOG_ERROR, "update %lld: handle_update failed (%s), attempt %d of %d: %s",
					  (long long) it->update_id, sqlstate, attempts, relay_config.max_attempts, msg);
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
			relay_request_stop(true);
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
			if (atomic_load(&relay_stop))
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
		body = params ? json_dumps(params, JSON_COMPACT) : strdup("{}");
		if (body)
		{
			perform_call(tg, method, body, update_id);
			free(body);
			n++;
		}
		if (atomic_load(&relay_fatal))
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
		relay_request_stop(true);
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
