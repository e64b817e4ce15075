/*
 * libFuzzer target: the relay's handling of Bot API response bodies — the
 * JSON parse, description/retry_after extraction and redaction, and, for a
 * getUpdates answer, the per-update chat routing and re-serialisation.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Irelay test/fuzz/fuzz_relay_parse.c \
 *         relay/telegram.c relay/dispatch.c relay/log.c -lcurl -ljansson -lpq -lpthread
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "relay.h"
#include "telegram.h"

RelayConfig relay_config = {.token = "123456:fuzz-token-AAAAAAAAAAAAAAAAAAAAAAAA", .api_url = "http://127.0.0.1:1", .log_level = -1};
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TgResult	res;
	json_t	   *result;
	json_t	   *u;
	size_t		i;

	memset(&res, 0, sizeof(res));
	tg_result_from_body(&res, (const char *) data, size);
	if (strstr(res.error, relay_config.token) != NULL)
		abort();				/* the token must never survive redaction */
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
