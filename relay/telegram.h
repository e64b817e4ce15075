/*
 * telegram.h — HTTP calls to the Bot API.
 */
#ifndef REGSTAGE_RELAY_TELEGRAM_H
#define REGSTAGE_RELAY_TELEGRAM_H

#include <stdbool.h>

#include <jansson.h>

typedef struct TgClient TgClient;

/* What one Bot API call came back with. */
typedef struct TgResult
{
	long		http_status;	/* 0: no HTTP answer (network error) */
	json_t	   *body;			/* parsed JSON body, or NULL */
	int			retry_after;	/* parameters.retry_after of a 429, else 0 */
	char		error[512];		/* network error or description, redacted */
} TgResult;

TgClient   *tg_client_new(void);
void		tg_client_free(TgClient *c);

/*
 * POST <api>/bot<token>/<method> with a JSON body.  abort_on_stop: give up
 * as soon as SIGTERM arrives (used by the long poll).
 */
void		tg_call(TgClient *c, const char *method, const char *json_body,
					long timeout_ms, bool abort_on_stop, TgResult *res);
void		tg_result_clear(TgResult *res);

/* Parse a Bot API response body (exposed for the fuzz target). */
json_t	   *tg_parse_body(const char *data, size_t len, char *err, size_t errlen);
void		tg_result_from_body(TgResult *res, const char *data, size_t len);

#endif
