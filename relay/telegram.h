/*
 * telegram.h — HTTP calls to the Bot API.
 */
#ifndef REGSTAGE_RELAY_TELEGRAM_H
#define REGSTAGE_RELAY_TELEGRAM_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>
#include <jansson.h>

typedef struct TgClient TgClient;

/* What one Bot API call came back with. */
typedef struct TgResult
{
	long		http_status;	/* 0: no HTTP answer (network error) */
	json_t	   *body;			/* parsed JSON body of a non-2xx answer, or NULL */
	const char *raw;			/* the body as received (the client's buffer, valid until its next call) */
	size_t		raw_len;
	int			retry_after;	/* parameters.retry_after of a 429, else 0 */
	char		error[512];		/* network error or description, redacted */
} TgResult;

TgClient   *tg_client_new(void);
void		tg_client_free(TgClient *c);

/*
 * Set the client's easy handle up for POST <api>/bot<token>/<method> with a
 * JSON body (not copied: it must live until the call is over).
 * abort_on_stop: give up as soon as SIGTERM arrives (the long poll).
 */
void		tg_prepare(TgClient *c, const char *method, const char *json_body,
					   long timeout_ms, bool abort_on_stop);
/* The easy handle, for a multi handle. */
CURL	   *tg_handle(TgClient *c);
/* Fill res from the finished transfer (rc: its result). */
void		tg_finish(TgClient *c, CURLcode rc, TgResult *res);

/* tg_prepare + a blocking perform + tg_finish */
void		tg_call(TgClient *c, const char *method, const char *json_body,
					long timeout_ms, bool abort_on_stop, TgResult *res);
void		tg_result_clear(TgResult *res);

/* Parse a Bot API response body (exposed for the fuzz target). */
json_t	   *tg_parse_body(const char *data, size_t len, char *err, size_t errlen);
void		tg_result_from_body(TgResult *res, const char *data, size_t len);

#endif
