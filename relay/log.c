/*
 * log.c — one line per event on stderr, with a UTC timestamp.  Every line
 * passes through relay_redact(), so the bot token can never be printed,
 * not even inside a curl error text.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "relay.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* Replace every occurrence of the token with <token>, in place. */
void
relay_redact(char *text)
{
	const char *token = relay_config.token;
	size_t		tlen = token ? strlen(token) : 0;
	char	   *hit;

	if (tlen < 4)
		return;
	while ((hit = strstr(text, token)) != NULL)
	{
		memcpy(hit, "<token>", 7);
		memmove(hit + 7, hit + tlen, strlen(hit + tlen) + 1);
	}
}

void
relay_log(int level, const char *fmt,...)
{
	char		line[4096];
	char		stamp[32];
	struct timespec ts;
	struct tm	tm;
	va_list		ap;

	if (level > relay_config.log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	relay_redact(line);
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "%s.%03ldZ regstage-relay %s: %s\n", stamp, ts.tv_nsec / 1000000,
			level == LOG_ERROR ? "ERROR" : level == LOG_INFO ? "INFO" : "DEBUG", line);
	pthread_mutex_unlock(&log_lock);
}

bool
relay_sleep_ms(long ms)
{
	while (ms > 0 && !relay_stop)
	{
		long		slice = ms > 100 ? 100 : ms;
		struct timespec ts = {slice / 1000, (slice % 1000) * 1000000L};

		while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !relay_stop)
			;
		ms -= slice;
	}
	return !relay_stop;
}
