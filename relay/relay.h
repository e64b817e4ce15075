/*
 * relay.h — regstage-relay: Telegram long polling <-> regstage.handle_update().
 *
 * main.c      configuration, signals, the getUpdates loop
 * telegram.c  HTTP calls to the Bot API (token never logged)
 * dispatch.c  per-chat ordering, worker connections, the offset watermark
 * log.c       stderr logging with levels
 */
#ifndef REGSTAGE_RELAY_H
#define REGSTAGE_RELAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RELAY_VERSION "1.0"

typedef struct RelayConfig
{
	const char *token;
	const char *api_url;
	const char *database_url;
	int			workers;		/* database connections */
	int			max_attempts;	/* handle_update errors before an update is skipped */
	int			poll_timeout_s; /* getUpdates long-poll timeout */
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

#endif
