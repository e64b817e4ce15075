/*
 * receiver.c — long polling: getUpdates -> regstage.store_updates().
 *
 * Each batch is stored raw in one transaction; the offset passes the batch
 * only once that committed, so getUpdates never returns a batch twice and a
 * crash loses nothing (Telegram keeps what was not confirmed, and
 * store_updates ignores an update_id stored before).  Between batches the
 * poll waits with Telegram's long-poll timeout: an idle bot costs one
 * request per RELAY_POLL_TIMEOUT seconds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "relay.h"
#include "scan.h"
#include "telegram.h"

#define BATCH_LIMIT 100			/* getUpdates' own maximum */

typedef struct Batch
{
	int			n;
	int64_t		ids[BATCH_LIMIT];
	const char *bodies[BATCH_LIMIT];
	size_t		lens[BATCH_LIMIT];
	int64_t		max_id;			/* highest update_id seen, stored or not */
	bool		any_id;
	int			unstorable;
} Batch;

static void
take_element(void *arg, const char *elem, size_t len)
{
	Batch	   *b = arg;
	int64_t		id;

	if (!scan_update_id(elem, len, &id))
	{
		char		shown[400];

		relay_printable(elem, len > 120 ? 120 : len, shown, sizeof(shown));
		relay_log(LOG_ERROR, "an update without an update_id cannot be stored, skipped (%zu bytes): %s%s",
				  len, shown, len > 120 ? "..." : "");
		b->unstorable++;
		return;
	}
	if (!b->any_id || id > b->max_id)
		b->max_id = id;
	b->any_id = true;
	if (b->n >= BATCH_LIMIT)
		return;					/* more than asked for: the next poll brings the rest */
	b->ids[b->n] = id;
	b->bodies[b->n] = elem;
	b->lens[b->n] = len;
	b->n++;
}

/* Store a batch; retried until it committed.  False if the relay stopped first. */
static bool
store(PGconn **conn, Batch *b)
{
	int			failures = 0;

	for (;;)
	{
		char		err[512];
		int			stored;

		if (db_ensure(conn, NULL, "receiver") == NULL)
			return false;
		stored = db_store_updates(*conn, b->n, b->ids, b->bodies, b->lens, err, sizeof(err));
		if (stored >= 0)
		{
			if (stored > 0)
			{
				int64_t		first = b->ids[0];

				for (int i = 1; i < b->n; i++)
					if (b->ids[i] < first)
						first = b->ids[i];
				processors_wake(first);
			}
			relay_log(LOG_DEBUG, "receiver: %d updates, %d new", b->n, stored);
			return true;
		}
		relay_log(LOG_ERROR, "receiver: store_updates failed (batch held, retrying): %s", err);
		if (!db_usable(*conn))
			db_drop(conn);
		if (!relay_sleep_ms(relay_backoff_ms(250, failures++)))
			return false;
	}
}

void
receiver_run(void)
{
	TgClient   *tg = tg_client_new();
	PGconn	   *conn = NULL;
	int64_t		offset = 0;
	int			failures = 0;
	char		body[256];

	if (tg == NULL)
	{
		relay_log(LOG_ERROR, "receiver: could not create an HTTP client");
		relay_request_stop(true);
		return;
	}
	while (!atomic_load(&relay_stop))
	{
		TgResult	res;
		Batch	   *b;
		int			n;

		snprintf(body, sizeof(body),
				 "{\"offset\": %lld, \"timeout\": %d, \"limit\": %d, "
				 "\"allowed_updates\": [\"message\", \"callback_query\"]}",
				 (long long) offset, relay_config.poll_timeout_s, BATCH_LIMIT);
		tg_call(tg, "getUpdates", body, (relay_config.poll_timeout_s + 15) * 1000L, true, &res);
		if (atomic_load(&relay_stop))
		{
			tg_result_clear(&res);
			break;				/* not stored: Telegram delivers it again */
		}
		if (res.http_status == 401 || res.http_status == 404)
		{
			relay_log(LOG_ERROR, "the Bot API refused the token (%ld %s); check TELEGRAM_BOT_TOKEN",
					  res.http_status, res.error);
			relay_request_stop(true);
			tg_result_clear(&res);
			break;
		}
		if (res.http_status == 429)
		{
			int			wait_s = res.retry_after > 0 ? res.retry_after : 1;

			relay_log(LOG_ERROR, "getUpdates rate limited, retrying after %d s", wait_s);
			tg_result_clear(&res);
			relay_sleep_ms(wait_s * 1000L);
			continue;
		}
		if (res.http_status == 409)
		{
			/*
			 * Telegram runs one getUpdates long poll per bot: a second
			 * client's poll ends the one in flight with 409, and a bot with a
			 * webhook set refuses getUpdates with 409.  Nothing was delivered
			 * (the offset stays); the poll waits longer each time the
			 * conflict repeats, so two pollers do not keep cutting each
			 * other off.
			 */
			long		wait = relay_backoff_ms(1000, failures++);

			relay_log(LOG_ERROR, "getUpdates refused with 409 (%s): another client polls this bot's updates, "
					  "or a webhook is set; only one relay may poll a bot (several relays: webhook mode, "
					  "RELAY_WEBHOOK_LISTEN; a webhook set and polling wanted: deleteWebhook); retrying in %ld ms",
					  res.error, wait);
			tg_result_clear(&res);
			relay_sleep_ms(wait);
			continue;
		}
		b = res.http_status == 200 ? calloc(1, sizeof(Batch)) : NULL;
		n = b ? scan_result_array(res.raw, res.raw_len, take_element, b) : -1;
		if (n < 0)
		{
			long		wait = relay_backoff_ms(500, failures++);

			relay_log(LOG_ERROR, "getUpdates failed (%ld %s), retrying in %ld ms", res.http_status,
					  res.error[0] ? res.error : res.http_status == 200 ? "no result array in the answer" : "no answer",
					  wait);
			free(b);
			tg_result_clear(&res);
			relay_sleep_ms(wait);
			continue;
		}
		failures = 0;
		if (b->n > 0 && !store(&conn, b))
		{
			free(b);
			tg_result_clear(&res);
			break;
		}
		/* committed (or nothing storable): confirm the batch to Telegram */
		if (b->any_id && b->max_id >= offset && b->max_id < INT64_MAX)
			offset = b->max_id + 1;
		else if (n > 0 && !b->any_id && offset < INT64_MAX)
		{
			/*
			 * Nothing in the batch says where it ends.  Its ids are at least
			 * the offset (Telegram numbers updates in sequence): pass one,
			 * so the poll never fetches the same batch in a loop.
			 */
			relay_log(LOG_ERROR, "getUpdates: a batch of %d updates without any update_id; offset moved to %lld",
					  n, (long long) offset + 1);
			offset++;
		}
		free(b);
		tg_result_clear(&res);
	}
	db_drop(&conn);
	tg_client_free(tg);
}
