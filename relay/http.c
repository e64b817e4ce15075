/*
 * http.c — framing one HTTP/1.1 request for the webhook server (webhook.c):
 * where its head ends, how long its body is, the few headers the relay
 * reads.  Only Content-Length bodies: Telegram sends nothing else, and a
 * request with Transfer-Encoding, or with two Content-Length headers, is
 * refused rather than guessed at (a balancer in front might frame it
 * differently: request smuggling).
 */
#define _GNU_SOURCE				/* memmem */
#include <string.h>
#include <strings.h>

#include "http.h"

/*
 * The value of header name in the head [head, end) (from the request line
 * to the CRLF before the blank line), or NULL; *vlen its length, without
 * surrounding blanks.
 */
const char *
http_header(const char *head, const char *end, const char *name, size_t *vlen)
{
	size_t		nlen = strlen(name);
	const char *p = memchr(head, '\n', end - head);	/* past the request line */

	while (p && ++p < end)
	{
		const char *eol = memchr(p, '\n', end - p);
		const char *v;

		if (eol == NULL)
			eol = end;
		if ((size_t) (eol - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0)
		{
			v = p + nlen + 1;
			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			*vlen = eol - v;
			while (*vlen > 0 && (v[*vlen - 1] == '\r' || v[*vlen - 1] == ' ' || v[*vlen - 1] == '\t'))
				(*vlen)--;
			return v;
		}
		p = eol;
	}
	return NULL;
}

/* Parse a Content-Length value: digits only, at most HTTP_BODY_MAX + 1. */
static bool
content_length(const char *v, size_t vlen, size_t *out)
{
	size_t		n = 0;

	if (vlen == 0)
		return false;
	for (size_t i = 0; i < vlen; i++)
	{
		if (v[i] < '0' || v[i] > '9')
			return false;
		n = n * 10 + (size_t) (v[i] - '0');
		if (n > HTTP_BODY_MAX)
		{
			n = HTTP_BODY_MAX + 1;	/* too large, however many digits follow */
			break;
		}
	}
	*out = n;
	return true;
}

HttpParse
http_parse_request(const char *buf, size_t len, HttpRequest *req)
{
	size_t		scan = len < HTTP_HEAD_MAX ? len : HTTP_HEAD_MAX;
	const char *eoh = scan >= 4 ? memmem(buf, scan, "\r\n\r\n", 4) : NULL;
	const char *end;
	const char *v;
	size_t		vlen;

	memset(req, 0, sizeof(*req));
	if (eoh == NULL)
	{
		if (len >= HTTP_HEAD_MAX)
		{
			req->status = 431;	/* no blank line within the head's limit */
			return HTTP_REJECT;
		}
		return HTTP_NEED_MORE;
	}
	req->head_len = eoh + 4 - buf;
	end = eoh + 2;
	if (http_header(buf, end, "Transfer-Encoding", &vlen) != NULL)
	{
		req->status = 411;
		return HTTP_REJECT;
	}
	if ((v = http_header(buf, end, "Content-Length", &vlen)) != NULL)
	{
		size_t		other_len;
		const char *next = memchr(v, '\n', end - v);

		if (!content_length(v, vlen, &req->body_len) ||
			(next && http_header(next, end, "Content-Length", &other_len) != NULL))
		{
			req->status = 400;
			return HTTP_REJECT;
		}
		if (req->body_len > HTTP_BODY_MAX)
		{
			req->status = 413;
			return HTTP_REJECT;
		}
	}
	req->total = req->head_len + req->body_len;
	if (len < req->total)
		return HTTP_NEED_MORE;
	v = http_header(buf, end, "Connection", &vlen);
	req->close_after = (v && vlen == 5 && strncasecmp(v, "close", 5) == 0) ||
		memmem(buf, eoh - buf, "HTTP/1.0", 8) != NULL;
	req->is_post = req->head_len >= 5 && strncmp(buf, "POST ", 5) == 0;
	req->secret = http_header(buf, end, "X-Telegram-Bot-Api-Secret-Token", &req->secret_len);
	return HTTP_COMPLETE;
}

/* Constant time in the secrets' content: every byte of the longer one is looked at. */
bool
http_secret_equal(const char *given, size_t glen, const char *want, size_t wlen)
{
	size_t		n = glen > wlen ? glen : wlen;
	unsigned char diff = glen != wlen;

	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char) ((i < glen ? given[i] : 0) ^ (i < wlen ? want[i] : 0));
	return diff == 0;
}
