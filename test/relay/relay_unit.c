/*
 * Unit tests of the relay's small parts, run by test/scripts/relay.sh under
 * ASan + UBSan (-fno-sanitize-recover: any undefined behaviour fails):
 * the token's shape, redaction (short and odd tokens, cut-off tokens, a
 * buffer too small), the backoff and its cap, and queueing an update when
 * memory runs out (linked with -Wl,--wrap=calloc).  Prints one line per
 * check; exits 1 if any failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "relay.h"

RelayConfig relay_config = {.log_level = -1};
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;

static int	failures;
static int	calloc_fail;		/* fail the next calloc calls while > 0 */

void	   *__real_calloc(size_t n, size_t size);
void	   *__wrap_calloc(size_t n, size_t size);

void *
__wrap_calloc(size_t n, size_t size)
{
	if (calloc_fail > 0)
	{
		calloc_fail--;
		return NULL;
	}
	return __real_calloc(n, size);
}

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

static void
dispatch_without_memory(void)
{
	json_t	   *u = json_pack("{s:I, s:{s:{s:I}}}", "update_id", (json_int_t) 10, "message", "chat", "id", (json_int_t) 7);
	json_t	   *nochat = json_pack("{s:I}", "update_id", (json_int_t) -5);
	int64_t		chat = 1;

	calloc_fail = 1;
	CHECK(!dispatch_submit(u), "an update is refused, not queued, when calloc fails");
	calloc_fail = 0;
	CHECK(dispatch_inflight() == 0, "nothing in flight after the refusal");
	CHECK(dispatch_submit(u), "the same update is queued once memory is there");
	CHECK(dispatch_inflight() == 1, "one update in flight");
	CHECK(dispatch_update_chat(u, &chat) && chat == 7, "a message's chat");
	CHECK(!dispatch_update_chat(nochat, &chat), "an update without a chat (and a negative update_id) has none");
	json_decref(u);
	json_decref(nochat);
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	token_shape();
	redaction();
	backoff();
	dispatch_without_memory();
	printf("%s\n", failures ? "relay unit tests: FAILED" : "relay unit tests: ok");
	return failures ? 1 : 0;
}
