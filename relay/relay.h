/*
 * relay.h — regstage-relay: Telegram <-> the inbox and outbox in PostgreSQL.
 *
 * main.c       configuration, signals, starting and stopping the parts
 * receiver.c   getUpdates -> regstage.store_updates() (long polling)
 * webhook.c    Telegram's webhook POSTs -> regstage.store_updates()
 * http.c       the webhook server's request framing (no I/O; fuzzed)
 * processor.c  threads looping regstage.process_next()
 * sender.c     regstage.outbox_claim() -> the Bot API -> outbox_report()
 * scan.c       getUpdates' result array split without decoding the JSON
 * db.c         connections, LISTEN, binary parameters
 * telegram.c   HTTP calls to the Bot API (token never logged)
 * log.c        stderr logging with levels
 */
#ifndef REGSTAGE_RELAY_H
#define REGSTAGE_RELAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RELAY_VERSION "1.1"

typedef struct RelayConfig
{
	const char *token;
	const char *api_url;
	const char *database_url;
	int			workers;		/* processors: connections looping process_next */
	int			send_concurrency;	/* Bot API calls in flight at once */
	int			send_timeout_s; /* one Bot API call's timeout; its claim lasts 5 s longer */
	int			poll_timeout_s; /* getUpdates long-poll timeout */
	const char *webhook_listen; /* RELAY_WEBHOOK_LISTEN host:port, or NULL: long polling */
	const char *webhook_secret; /* TELEGRAM_WEBHOOK_SECRET (webhook mode) */
	int			log_level;		/* 0 error, 1 info, 2 debug */
	const char *ca_file;		/* RELAY_CA_FILE: the CAs for the Bot API, or NULL */
	const char *ca_path;		/* else the system's hashed CA directory, or NULL */
} RelayConfig;

extern RelayConfig relay_config;

/*
 * Set by the signal handler and by any thread, read by all: C11 atomics
 * (lock-free, so a store is async-signal-safe).
 */
extern atomic_bool relay_stop;	/* SIGTERM/SIGINT seen, or a fatal error */
extern atomic_bool relay_fatal; /* e.g. 401: exit non-zero */
extern atomic_bool relay_drain; /* receivers and processors are done: the sender drains */

/* Stop the relay; fatal: and exit 1. */
void		relay_request_stop(bool fatal);

/* log.c */
#define LOG_ERROR 0
#define LOG_INFO 1
#define LOG_DEBUG 2
void		relay_log(int level, const char *fmt,...) __attribute__((format(printf, 2, 3)));

/*
 * A bot token in Telegram's shape: <digits>:<35 characters of A-Z a-z 0-9 _ ->.
 * The relay refuses to start with anything else.
 */
#define TOKEN_SECRET_LEN 35
bool		relay_token_valid(const char *token);

/*
 * Copy src into dst (dstsize bytes, always NUL-terminated, cut if needed)
 * with every occurrence of the token's secret part, and the bot id before
 * it, replaced by <token>; a token cut off at the end of src is replaced
 * too.  Returns the length written.
 */
size_t		relay_redact(const char *src, char *dst, size_t dstsize);

/* first_ms doubled per failure, capped at RELAY_BACKOFF_CAP_MS */
#define RELAY_BACKOFF_CAP_MS 30000
long		relay_backoff_ms(long first_ms, int failures);

/* sleep up to ms, returning early when stop is requested; false if stopped */
bool		relay_sleep_ms(long ms);

/* CLOCK_MONOTONIC in milliseconds */
long		relay_now_ms(void);

/* the parts, each on its own thread and connection */
void		receiver_run(void);		/* until stop; long polling */
int			webhook_run(void);		/* until stop; 0, or 1 if it could not listen */
bool		processors_start(int n);
void		processors_join(void);
bool		sender_start(void);
void		sender_join(void);

/*
 * In-process wake-ups, instead of a NOTIFY per transaction (every NOTIFY
 * takes a database-wide lock held through its commit's WAL flush, so
 * notifying transactions commit one at a time): the receiver wakes the
 * processors after it stored updates, a processor wakes the sender after
 * it queued replies.  Other relays and SQL sessions still NOTIFY.
 */
void		processors_wake(int64_t first_update);	/* the lowest update_id just stored */
void		sender_wake(void);

/*
 * Each log line is printed with relay_log, which redacts it; an update's
 * bytes (which may hold anything) pass through this first: at most max
 * bytes, non-printable ones as \xNN.
 */
void		relay_printable(const char *src, size_t len, char *dst, size_t dstsize);

#endif
