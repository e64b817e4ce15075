/*
 * libFuzzer target: the relay's tolerant scanner of getUpdates answers
 * (relay/scan.c), which splits the result array and finds update_ids
 * without decoding the JSON.
 *
 * Properties: nothing is read outside the input (ASan, exact-size copy);
 * every element is a non-empty span inside the input; the count returned
 * is the number of elements passed on; and where jansson decodes the same
 * answer, the scanner agrees with it: as many elements, and the same
 * update_id for every element where both find one.  Built and run by
 * test/scripts/fuzz.sh.
 */
#include "fuzz_check.h"

#include <jansson.h>

#include "relay.h"
#include "scan.h"

RelayConfig relay_config = {.log_level = -1};
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;

#define MAX_SEEN 64

typedef struct Seen
{
	const char *base;
	size_t		size;
	int			n;
	bool		has_id[MAX_SEEN];
	int64_t		ids[MAX_SEEN];
} Seen;

static void
element(void *arg, const char *elem, size_t len)
{
	Seen	   *s = arg;
	int64_t		id = 0;
	bool		found;

	PROPERTY(len > 0, "an empty element");
	PROPERTY(elem >= s->base && elem + len <= s->base + s->size, "an element outside the input");
	found = scan_update_id(elem, len, &id);
	if (s->n < MAX_SEEN)
	{
		s->has_id[s->n] = found;
		s->ids[s->n] = id;
	}
	s->n++;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *copy = malloc(size ? size : 1);
	Seen		s = {0};
	int			n;
	json_t	   *j;
	json_t	   *result;

	memcpy(copy, data, size);
	s.base = copy;
	s.size = size;
	n = scan_result_array(copy, size, element, &s);
	PROPERTY(n < 0 || n == s.n, "returned %d for %d elements", n, s.n);

	j = json_loadb((const char *) data, size, JSON_REJECT_DUPLICATES, NULL);
	result = json_is_object(j) ? json_object_get(j, "result") : NULL;
	if (n >= 0 && json_is_array(result))
	{
		size_t		i;
		json_t	   *u;

		PROPERTY((size_t) n == json_array_size(result), "%d elements, jansson sees %zu", n, json_array_size(result));
		json_array_foreach(result, i, u)
		{
			json_t	   *idj = json_object_get(u, "update_id");

			if (i < MAX_SEEN && s.has_id[i] && json_is_integer(idj))
				PROPERTY(s.ids[i] == (int64_t) json_integer_value(idj), "element %zu: update_id %lld, jansson %lld",
						 i, (long long) s.ids[i], (long long) json_integer_value(idj));
			/* an escaped key ("update_\u0069d") is one jansson decodes and the scanner does not */
			if (i < MAX_SEEN && json_is_integer(idj) && memchr(data, '\\', size) == NULL)
				PROPERTY(s.has_id[i], "element %zu: jansson finds update_id %lld, the scanner none", i,
						 (long long) json_integer_value(idj));
		}
	}
	json_decref(j);
	free(copy);
	return 0;
}
