/*
 * telegram.c — HTTP calls to the Bot API with libcurl.
 *
 * One CURL easy handle per client, reused for keep-alive: the receiver has
 * one, the sender one per call it has in flight (in a multi handle).  The URL holds
 * the token, so it is never logged; curl's error texts are redacted.
 */
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"
#include "telegram.h"

#define TG_BODY_MAX (16 * 1024 * 1024)

struct TgClient
{
	CURL	   *curl;
	struct curl_slist *headers;
	char		errbuf[CURL_ERROR_SIZE];
	char	   *buf;
	size_t		len;
	size_t		cap;
	bool		abort_on_stop;
};

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	TgClient   *c = userdata;
	size_t		n = size * nmemb;

	if (c->len + n + 1 > c->cap)
	{
		size_t		cap = c->cap ? c->cap : 8192;
		char	   *nb;

		while (cap < c->len + n + 1)
			cap *= 2;
		if (cap > TG_BODY_MAX)
			return 0;
		nb = realloc(c->buf, cap);
		if (nb == NULL)
			return 0;
		c->buf = nb;
		c->cap = cap;
	}
	memcpy(c->buf + c->len, ptr, n);
	c->len += n;
	c->buf[c->len] = '\0';
	return n;
}

static int
progress_cb(void *userdata, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	TgClient   *cl = userdata;

	return (cl->abort_on_stop && atomic_load(&relay_stop)) ? 1 : 0;
}

TgClient *
tg_client_new(void)
{
	TgClient   *c = calloc(1, sizeof(TgClient));

	if (c == NULL)
		return NULL;
	c->curl = curl_easy_init();
	c->headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (c->curl == NULL || c->headers == NULL)
	{
		tg_client_free(c);
		return NULL;
	}
	return c;
}

void
tg_client_free(TgClient *c)
{
	if (c == NULL)
		return;
	if (c->curl)
		curl_easy_cleanup(c->curl);
	curl_slist_free_all(c->headers);
	free(c->buf);
	free(c);
}

void
tg_result_clear(TgResult *res)
{
	if (res->body)
		json_decref(res->body);
	memset(res, 0, sizeof(*res));
}

json_t *
tg_parse_body(const char *data, size_t len, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t	   *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);

	if (j == NULL && err)
		snprintf(err, errlen, "invalid JSON from the Bot API: %s", jerr.text);
	if (j != NULL && !json_is_object(j))
	{
		if (err)
			snprintf(err, errlen, "the Bot API answered with JSON that is not an object");
		json_decref(j);
		return NULL;
	}
	return j;
}

void
tg_prepare(TgClient *c, const char *method, const char *json_body, long timeout_ms, bool abort_on_stop)
{
	char		url[2048];

	snprintf(url, sizeof(url), "%s/bot%s/%s", relay_config.api_url, relay_config.token, method);
	c->len = 0;
	if (c->buf)
		c->buf[0] = '\0';
	c->errbuf[0] = '\0';
	c->abort_on_stop = abort_on_stop;

	curl_easy_reset(c->curl);
	curl_easy_setopt(c->curl, CURLOPT_URL, url);	/* copied by libcurl */
	memset(url, 0, sizeof(url));
	curl_easy_setopt(c->curl, CURLOPT_PRIVATE, c);
	curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "regstage-relay/" RELAY_VERSION);
	curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, json_body);
	curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, (long) strlen(json_body));
	if (relay_config.ca_file)
	{
		curl_easy_setopt(c->curl, CURLOPT_CAINFO, relay_config.ca_file);
		curl_easy_setopt(c->curl, CURLOPT_CAPATH, NULL);
	}
	else if (relay_config.ca_path)
	{
		curl_easy_setopt(c->curl, CURLOPT_CAINFO, NULL);
		curl_easy_setopt(c->curl, CURLOPT_CAPATH, relay_config.ca_path);
	}
	curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
	curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, progress_cb);
	curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, c);
}

CURL *
tg_handle(TgClient *c)
{
	return c->curl;
}

/*
 * A 2xx body is not decoded here: a getUpdates answer goes to the tolerant
 * scanner (scan.c), and a sent call needs only its status.
 */
void
tg_finish(TgClient *c, CURLcode rc, TgResult *res)
{
	memset(res, 0, sizeof(*res));
	if (rc != CURLE_OK)
	{
		relay_redact(c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc), res->error, sizeof(res->error));
		return;
	}
	curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &res->http_status);
	res->raw = c->buf ? c->buf : "";
	res->raw_len = c->len;
	if (res->http_status < 200 || res->http_status > 299)
		tg_result_from_body(res, res->raw, res->raw_len);
}

void
tg_call(TgClient *c, const char *method, const char *json_body, long timeout_ms,
		bool abort_on_stop, TgResult *res)
{
	tg_prepare(c, method, json_body, timeout_ms, abort_on_stop);
	tg_finish(c, curl_easy_perform(c->curl), res);
}

/* Fill body, description and retry_after of a result from a response body. */
void
tg_result_from_body(TgResult *res, const char *data, size_t len)
{
	char		parse_error[sizeof(res->error)] = "";
	const char *error = parse_error;

	res->body = tg_parse_body(data, len, parse_error, sizeof(parse_error));
	if (res->body)
	{
		json_t	   *desc = json_object_get(res->body, "description");
		json_t	   *params = json_object_get(res->body, "parameters");
		json_t	   *ra = params ? json_object_get(params, "retry_after") : NULL;

		if (json_is_string(desc))
			error = json_string_value(desc);
		if (json_is_integer(ra) && json_integer_value(ra) > 0 && json_integer_value(ra) < 3600)
			res->retry_after = (int) json_integer_value(ra);
	}
	relay_redact(error, res->error, sizeof(res->error));
}
