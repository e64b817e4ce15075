/*
 * http.h — the webhook server's HTTP/1.1 request framing, plain C with no
 * I/O (fuzzed as is: test/fuzz/fuzz_relay_http.c).
 */
#ifndef RELAY_HTTP_H
#define RELAY_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_HEAD_MAX 8192				/* request line + headers */
#define HTTP_BODY_MAX (1024 * 1024)		/* a Telegram update is far smaller */

typedef enum
{
	HTTP_NEED_MORE,				/* not a whole request yet */
	HTTP_COMPLETE,				/* a whole request in buf[0, total) */
	HTTP_REJECT					/* answer status and close */
} HttpParse;

typedef struct HttpRequest
{
	size_t		head_len;		/* through the blank line */
	size_t		body_len;
	size_t		total;			/* head_len + body_len */
	bool		is_post;
	bool		close_after;	/* Connection: close, or HTTP/1.0 */
	const char *secret;			/* X-Telegram-Bot-Api-Secret-Token, or NULL */
	size_t		secret_len;
	int			status;			/* HTTP_REJECT: 400, 411, 413 or 431 */
} HttpRequest;

extern HttpParse http_parse_request(const char *buf, size_t len, HttpRequest *req);
extern const char *http_header(const char *head, const char *end, const char *name, size_t *vlen);
extern bool http_secret_equal(const char *given, size_t glen, const char *want, size_t wlen);

#endif
