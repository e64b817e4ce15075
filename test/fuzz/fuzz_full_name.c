/*
 * libFuzzer target: inputcheck_full_name(), the rule behind
 * validate_full_name() and the conversation's name step.
 *
 * Properties of an accepted name: it fits the documented buffer (input
 * length + 1), has no control character, no leading, trailing or double
 * space, and normalising it again changes nothing (so it is valid UTF-8
 * with 2-128 characters and a letter).
 */
#include "fuzz_check.h"
#include "inputcheck.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *in = fuzz_copy(data, size);
	char	   *out = malloc(size + 1);
	char	   *again;
	uint32_t	bad;
	size_t		n;

	if (inputcheck_full_name(in, size, out, size + 1, &bad) == NAME_OK)
	{
		n = strlen(out);
		PROPERTY(n <= size, "output longer than the input");
		PROPERTY(n > 0 && out[0] != ' ' && out[n - 1] != ' ' && strstr(out, "  ") == NULL,
				 "spaces not trimmed or collapsed: \"%s\"", out);
		for (size_t i = 0; i < n; i++)
			PROPERTY((unsigned char) out[i] >= 0x20 && out[i] != 0x7F, "control byte 0x%02X in the output",
					 (unsigned char) out[i]);
		again = malloc(n + 1);
		PROPERTY(inputcheck_full_name(out, n, again, n + 1, &bad) == NAME_OK, "output \"%s\" is refused", out);
		PROPERTY(strcmp(again, out) == 0, "normalising \"%s\" again gave \"%s\"", out, again);
		free(again);
	}
	free(out);
	free(in);
	return 0;
}
