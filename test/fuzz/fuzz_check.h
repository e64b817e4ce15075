/*
 * fuzz_check.h — shared by the libFuzzer targets in test/fuzz/.
 *
 * PROPERTY(cond, ...) stops the run like a crash when a property of the
 * code under test does not hold, saying which; libFuzzer then writes the
 * input as a reproducer (crash-<sha1>).  fuzz_copy() gives the code under
 * test a heap buffer of exactly size bytes (no NUL after it), so
 * AddressSanitizer reports any read past the input's length.
 */
#ifndef REGSTAGE_FUZZ_CHECK_H
#define REGSTAGE_FUZZ_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROPERTY(cond, ...) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "property broken (%s:%d): ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__); \
			fprintf(stderr, "\n"); \
			abort(); \
		} \
	} while (0)

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline char *
fuzz_copy(const uint8_t *data, size_t size)
{
	char	   *p = malloc(size ? size : 1);

	if (p == NULL)
		abort();
	if (size)
		memcpy(p, data, size);
	return p;
}

#endif
