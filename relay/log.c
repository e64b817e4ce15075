/*
 * log.c — one line per event on stderr, with a UTC timestamp.  Every line
 * passes through relay_redact(), so the bot token can never be printed,
 * not even inside a curl error text.  Also the small helpers every thread
 * shares: stopping, sleeping, backing off.
 */
#define _GNU_SOURCE				/* memmem */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "relay.h"

#define REDACTED "<token>"

/* a cut-off secret at the end of a text this long or longer is redacted */
#define PARTIAL_SECRET_MIN 8

_Static_assert(ATOMIC_BOOL_LOCK_FREE == 2, "the stop flags are written from a signal handler");

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char token_alphabet[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

bool
relay_token_valid(const char *token)
{
	size_t		digits;
	const char *secret;

	if (token == NULL)
		return false;
	digits = strspn(token, "0123456789");
	if (digits == 0 || digits > 20 || token[digits] != ':')
		return false;
	secret = token + digits + 1;
	return strlen(secret) == TOKEN_SECRET_LEN &&
		strspn(secret, token_alphabet) == TOKEN_SECRET_LEN;
}

/* Append n bytes to dst as far as they fit (one byte stays for the NUL). */
static void
append(char *dst, size_t dstsize, size_t *out, const char *src, size_t n)
{
	size_t		room = dstsize - 1 - *out;

	if (n > room)
		n = room;
	memcpy(dst + *out, src, n);
	*out += n;
}

/*
 * Where a token cut off at the end of [from, end) starts, or NULL: the bot
 * id and colon followed by at least one character of the secret, or at
 * least PARTIAL_SECRET_MIN characters of the secret alone.
 */
static const char *
cut_token(const char *from, const char *end, const char *token, size_t idlen,
		  const char *secret, size_t slen)
{
	const char *q = (size_t) (end - from) >= slen ? end - (slen - 1) : from;

	for (; q < end; q++)
	{
		size_t		n = end - q;

		if (memcmp(q, secret, n) != 0)
			continue;
		if (n >= PARTIAL_SECRET_MIN ||
			((size_t) (q - from) >= idlen && memcmp(q - idlen, token, idlen) == 0))
			return q;
	}
	return NULL;
}

/*
 * The secret part is what is searched for: it also catches the token with
 * an encoded colon, or the secret on its own.  The output is a new buffer,
 * so a replacement longer than what it replaces cannot overflow anything,
 * and the output is never searched again.
 */
size_t
relay_redact(const char *src, char *dst, size_t dstsize)
{
	const char *token = relay_config.token;
	const char *colon = token ? strchr(token, ':') : NULL;
	const char *end = src + strlen(src);
	const char *p = src;
	const char *secret;
	size_t		idlen;
	size_t		slen;
	size_t		out = 0;

	if (dstsize == 0)
		return 0;
	if (colon == NULL || colon[1] == '\0')
	{
		append(dst, dstsize, &out, src, end - src);
		dst[out] = '\0';
		return out;
	}
	secret = colon + 1;
	slen = strlen(secret);
	idlen = secret - token;		/* "<bot id>:" */
	while (p < end)
	{
		const char *start = memmem(p, end - p, secret, slen);
		const char *stop = start ? start + slen : end;

		if (start == NULL && (start = cut_token(p, end, token, idlen, secret, slen)) == NULL)
		{
			append(dst, dstsize, &out, p, end - p);
			break;
		}
		if ((size_t) (start - p) >= idlen && memcmp(start - idlen, token, idlen) == 0)
			start -= idlen;
		append(dst, dstsize, &out, p, start - p);
		append(dst, dstsize, &out, REDACTED, strlen(REDACTED));
		p = stop;
	}
	dst[out] = '\0';
	return out;
}

void
relay_log(int level, const char *fmt,...)
{
	char		buf[4096];
	char		line[4096];
	char	   *full = buf;
	char		stamp[32];
	struct timespec ts;
	struct tm	tm;
	va_list		ap;
	int			n;

	if (level > relay_config.log_level)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* redact the whole text, not a cut one */
	if (n >= (int) sizeof(buf) && (full = malloc(n + 1)) != NULL)
	{
		va_start(ap, fmt);
		vsnprintf(full, n + 1, fmt, ap);
		va_end(ap);
	}
	else if (full == NULL)
		full = buf;
	relay_redact(full, line, sizeof(line));
	if (full != buf)
		free(full);
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "%s.%03ldZ regstage-relay %s: %s\n", stamp, ts.tv_nsec / 1000000,
			level == LOG_ERROR ? "ERROR" : level == LOG_INFO ? "INFO" : "DEBUG", line);
	pthread_mutex_unlock(&log_lock);
}

void
relay_request_stop(bool fatal)
{
	if (fatal)
		atomic_store(&relay_fatal, true);
	atomic_store(&relay_stop, true);
}

long
relay_backoff_ms(long first_ms, int failures)
{
	long		ms = first_ms;

	for (int i = 0; i < failures && ms < RELAY_BACKOFF_CAP_MS; i++)
		ms *= 2;
	return ms > RELAY_BACKOFF_CAP_MS ? RELAY_BACKOFF_CAP_MS : ms;
}

bool
relay_sleep_ms(long ms)
{
	while (ms > 0 && !atomic_load(&relay_stop))
	{
		long		slice = ms > 100 ? 100 : ms;
		struct timespec ts = {slice / 1000, (slice % 1000) * 1000000L};

		while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !atomic_load(&relay_stop))
			;
		ms -= slice;
	}
	return !atomic_load(&relay_stop);
}

long
relay_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}

void
relay_printable(const char *src, size_t len, char *dst, size_t dstsize)
{
	size_t		out = 0;

	if (dstsize == 0)
		return;
	for (size_t i = 0; i < len && out + 5 < dstsize; i++)
	{
		unsigned char c = (unsigned char) src[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			dst[out++] = (char) c;
		else
			out += snprintf(dst + out, dstsize - out, "\\x%02x", c);
	}
	dst[out] = '\0';
}
