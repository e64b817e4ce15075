/*
 * libFuzzer target: the relay's handling of Bot API response bodies — the
 * JSON parse of an error answer, description/retry_after extraction and
 * redaction.  (A getUpdates answer goes to the scanner: fuzz_relay_scan.)
 *
 * Properties: the token never survives redaction; the error text is
 * NUL-terminated inside its buffer; a body is a JSON object or absent;
 * retry_after is 0 or a sane 1-3599 seconds.  Built and run by
 * test/scripts/fuzz.sh.
 */
#include "fuzz_check.h"

#include "relay.h"
#include "telegram.h"

RelayConfig relay_config = {.token = "123456:fuzz-token-AAAAAAAAAAAAAAAAAAAAAAAA", .api_url = "http://127.0.0.1:1", .log_level = -1};
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TgResult	res;

	memset(&res, 0, sizeof(res));
	tg_result_from_body(&res, (const char *) data, size);
	PROPERTY(memchr(res.error, '\0', sizeof(res.error)) != NULL, "error text not NUL-terminated");
	PROPERTY(strstr(res.error, relay_config.token) == NULL, "the token survived redaction");
	PROPERTY(res.body == NULL || json_is_object(res.body), "a body that is not an object");
	PROPERTY(res.retry_after >= 0 && res.retry_after < 3600, "retry_after %d", res.retry_after);
	tg_result_clear(&res);
	return 0;
}
