/*
 * libFuzzer target: the relay's handling of Bot API response bodies — the
 * JSON parse, description/retry_after extraction and redaction, and, for a
 * getUpdates answer, the per-update chat routing and re-serialisation.
 *
 * Properties: the token never survives redaction; the error text is
 * NUL-terminated inside its buffer; a body is a JSON object or absent;
 * retry_after is 0 or a sane 1-3599 seconds.  Built and run by
 * test/scripts/fuzz.sh.
 */
#include "fuzz_check.h"

#include "dispatch.h"
#include "relay.h"
#include "telegram.h"

RelayConfig relay_config = {.token = "123456:fuzz-token-AAAAAAAAAAAAAAAAAAAAAAAA", .api_url = "http://127.0.0.1:1", .log_level = -1};
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TgResult	res;
	json_t	   *result;
	json_t	   *u;
	size_t		i;

	memset(&res, 0, sizeof(res));
	tg_result_from_body(&res, (const char *) data, size);
	PROPERTY(memchr(res.error, '\0', sizeof(res.error)) != NULL, "error text not NUL-terminated");
	PROPERTY(strstr(res.error, relay_config.token) == NULL, "the token survived redaction");
	PROPERTY(res.body == NULL || json_is_object(res.body), "a body that is not an object");
	PROPERTY(res.retry_after >= 0 && res.retry_after < 3600, "retry_after %d", res.retry_after);
	result = res.body ? json_object_get(res.body, "result") : NULL;
	if (json_is_array(result))
	{
		json_array_foreach(result, i, u)
		{
			int64_t		chat_id;
			char	   *s;

			if (!json_is_object(u))
				continue;
			(void) dispatch_update_chat(u, &chat_id);
			s = json_dumps(u, JSON_COMPACT);
			free(s);
		}
	}
	tg_result_clear(&res);
	return 0;
}
