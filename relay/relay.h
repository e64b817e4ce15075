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

#include <signal.h>
#include <stdbool.h>
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
extern volatile sig_atomic_t relay_stop;	/* SIGTERM/SIGINT seen */
extern volatile sig_atomic_t relay_fatal;	/* e.g. 401: exit non-zero */

/* log.c */
#define LOG_ERROR 0
#define LOG_INFO 1
#define LOG_DEBUG 2
void		relay_log(int level, const char *fmt,...) __attribute__((format(printf, 2, 3)));
void		relay_redact(char *text);

/* sleep up to ms, returning early when stop is requested; false if stopped */
bool		relay_sleep_ms(long ms);

#endif
