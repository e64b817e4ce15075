/*
 * Unit tests of the relay's small parts, run by test/scripts/relay.sh under
 * ASan + UBSan (-fno-sanitize-recover: any undefined behaviour fails):
 * the token's shape, redaction (short and odd tokens, cut-off tokens, a
 * buffer too small), the backoff and its cap, and the tolerant scanner of
 * getUpdates answers (elements jansson refuses, truncated input, update_id
 * limits).  Prints one line per check; exits 1 if any failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"
#include "scan.h"

RelayConfig relay_config = {.log_level = -1};
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;

static int	failures;

#define CHECK(cond, ...) \
	do { \
		if (cond) \
			printf("ok    "); \
		else \
		{ \
			printf("FAIL  "); \
			failures++; \
		} \
		printf(__VA_ARGS__); \
		printf("\n"); \
	} while (0)

#define TOKEN "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"

static void
token_shape(void)
{
	static const char *const bad[] = {
		"", "token", "12:ab", "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",	/* 34 */
		"123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw00",	/* 36 */
		"123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsa+0", ":AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0",
		"12a:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0", "123456789AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0",
		"123456789:<token>AAHdqTcvCH1vGWJxfSeofSAs0K5P", "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0\n",
	};

	CHECK(relay_token_valid(TOKEN), "a token of Telegram's shape is accepted");
	CHECK(relay_token_valid("1:___________________________________"), "one digit, _ and - are allowed");
	CHECK(!relay_token_valid(NULL), "no token is refused");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(!relay_token_valid(bad[i]), "malformed token %zu is refused", i);
}

static void
redact(const char *in, size_t dstsize, const char *want)
{
	char	   *out = malloc(dstsize);	/* exactly dstsize: ASan sees any overflow */
	size_t		n = relay_redact(in, out, dstsize);

	CHECK(strcmp(out, want) == 0 && n == strlen(want), "redact \"%.40s\" into %zu bytes -> \"%s\" (got \"%s\")",
		  in, dstsize, want, out);
	free(out);
}

static void
redaction(void)
{
	relay_config.token = TOKEN;
	redact("GET /bot" TOKEN "/getUpdates", 100, "GET /bot<token>/getUpdates");
	redact(TOKEN TOKEN, 100, "<token><token>");
	redact("x" TOKEN, 5, "x<to");
	redact("the secret alone: AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0.", 100, "the secret alone: <token>.");
	redact("encoded 123456789%3AAAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0", 100, "encoded 123456789%3A<token>");
	redact("cut off: /bot123456789:AAH", 100, "cut off: /bot<token>");
	redact("cut off: AAHdqTcvCH", 100, "cut off: <token>");
	redact("not cut: AAHdqTc and 123456789: and <token>", 100, "not cut: AAHdqTc and 123456789: and <token>");
	redact("", 1, "");
	redact("abc", 1, "");

	/* a token that "<token>" contains, and a short one: refused at start, harmless here */
	relay_config.token = "1:token";
	redact("the Bot API refused the token (401)", 100, "the Bot API refused the <token> (401)");
	relay_config.token = "1:x";
	redact("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 16, "<token><token><");
	relay_config.token = NULL;
	redact("no token configured", 100, "no token configured");
}

static void
backoff(void)
{
	CHECK(relay_backoff_ms(500, 0) == 500 && relay_backoff_ms(500, 1) == 1000 && relay_backoff_ms(500, 5) == 16000,
		  "backoff doubles from 500 ms");
	CHECK(relay_backoff_ms(500, 6) == RELAY_BACKOFF_CAP_MS && relay_backoff_ms(250, 7) == RELAY_BACKOFF_CAP_MS,
		  "backoff reaches its cap, 30 s");
	CHECK(relay_backoff_ms(500, 100) == RELAY_BACKOFF_CAP_MS && relay_backoff_ms(250, 2147483647) == RELAY_BACKOFF_CAP_MS,
		  "backoff stays at the cap however many failures");
}

typedef struct Seen
{
	int			n;
	char		elems[8][64];
} Seen;

static void
collect_elem(void *arg, const char *elem, size_t len)
{
	Seen	   *s = arg;

	if (s->n < 8)
		snprintf(s->elems[s->n], sizeof(s->elems[0]), "%.*s", (int) len, elem);
	s->n++;
}

static void
scan_one(const char *body, size_t len, int want_n, const char *want0, const char *want_last)
{
	Seen		s = {0};
	char	   *copy = malloc(len ? len : 1);	/* exactly len: ASan sees any overread */
	int			n;

	memcpy(copy, body, len);
	n = scan_result_array(copy, len, collect_elem, &s);
	CHECK(n == want_n && (want0 == NULL || (s.n > 0 && strcmp(s.elems[0], want0) == 0)) &&
		  (want_last == NULL || (s.n > 0 && strcmp(s.elems[s.n > 8 ? 7 : s.n - 1], want_last) == 0)),
		  "scan %.50s -> %d elements (got %d, first \"%s\")", body, want_n, n, s.n ? s.elems[0] : "");
	free(copy);
}

static void
id_one(const char *elem, bool want_found, int64_t want)
{
	int64_t		id = 12345;
	bool		found = scan_update_id(elem, strlen(elem), &id);

	CHECK(found == want_found && (!found || id == want), "update_id of %.60s -> %s %lld (got %s %lld)", elem,
		  want_found ? "found" : "none", (long long) want, found ? "found" : "none", (long long) id);
}

#define S(lit) lit, sizeof(lit) - 1

static void
scanner(void)
{
	scan_one(S("{\"ok\":true,\"result\":[]}"), 0, NULL, NULL);
	scan_one(S("{\"ok\":true,\"result\":[{\"update_id\":1},{\"update_id\":2}]}"), 2, "{\"update_id\":1}", "{\"update_id\":2}");
	scan_one(S(" { \"result\" : [ {\"a\":\"]}\\\"[\"} , 7 ] , \"ok\" : true } "), 2, "{\"a\":\"]}\\\"[\"}", "7");
	scan_one(S("{\"ok\":true,\"result\":[{\"update_id\":3,\"t\":\"\\u0000 \\ud800 \xff\xfe\"}]}"), 1,
			 "{\"update_id\":3,\"t\":\"\\u0000 \\ud800 \xff\xfe\"}", NULL);
	scan_one(S("{\"ok\":true,\"result\":[{\"update_id\":1,\"t\":\"a\0b\"}]}"), 1, NULL, NULL);
	scan_one(S("{\"ok\":false,\"description\":\"no\"}"), -1, NULL, NULL);
	scan_one(S("{\"ok\":true,\"result\":{\"update_id\":1}}"), -1, NULL, NULL);
	scan_one(S("{\"ok\":true,\"result\":[{\"update_id\":1}"), -1, NULL, NULL);
	scan_one(S("{\"ok\":true,\"result\":[{\"update_id\":1},"), -1, NULL, NULL);
	scan_one(S("{\"ok\":true,\"result\":[\"unterminated]}"), -1, NULL, NULL);
	scan_one(S("[1,2]"), -1, NULL, NULL);
	scan_one(S(""), -1, NULL, NULL);
	scan_one(S("{\"nested\":{\"result\":[1]},\"result\":[2]}"), 1, "2", NULL);

	id_one("{\"update_id\": 42, \"message\": {}}", true, 42);
	id_one("{\"message\": {\"update_id\": 7}, \"update_id\":43}", true, 43);
	id_one("{\"message\": {\"update_id\": 7}}", false, 0);
	id_one("{\"update_id\": -5}", true, -5);
	id_one("{\"update_id\": 9223372036854775807}", true, INT64_MAX);
	id_one("{\"update_id\": -9223372036854775808}", true, INT64_MIN);
	id_one("{\"update_id\": 9223372036854775808}", false, 0);
	id_one("{\"update_id\": 1.5}", false, 0);
	id_one("{\"update_id\": \"1\"}", false, 0);
	id_one("{\"update_id\": 1e3}", false, 0);
	id_one("{\"update_id\": -}", false, 0);
	id_one("{\"update_id\": 5, \"t\": \"\xc3\x28 unterminated", true, 5);
	id_one("[{\"update_id\": 5}]", false, 0);
	id_one("{\"update_\\u0069d\": 5}", false, 0);
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	token_shape();
	redaction();
	backoff();
	scanner();
	printf("%s\n", failures ? "relay unit tests: FAILED" : "relay unit tests: ok");
	return failures ? 1 : 0;
}
