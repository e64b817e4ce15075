/*
 * libFuzzer target: inputcheck_username(), inputcheck_email() and
 * inputcheck_file_id(), each on every input.
 *
 * Properties of what is accepted: a username is 1-64 of [A-Za-z0-9_]
 * after an optional "@"; an email is at most 254 bytes with one "@" (not
 * first), a "." after it, no space, control character or final ".";
 * a file_id is 1-256 of [A-Za-z0-9_-] (it goes into a JSON body and a
 * Redis key unquoted).
 */
#include "fuzz_check.h"
#include "inputcheck.h"

#define WORD "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"

/* s[0..len) consists of set's characters only (NUL never is one) */
static int
only(const char *s, size_t len, const char *set)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\0' || strchr(set, s[i]) == NULL)
			return 0;
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *in = fuzz_copy(data, size);
	size_t		start = 99;

	if (inputcheck_username(in, size, &start))
	{
		PROPERTY(start == 0 || (start == 1 && in[0] == '@'), "username start %zu", start);
		PROPERTY(size - start >= 1 && size - start <= INPUTCHECK_USERNAME_MAX, "username of %zu bytes",
				 size - start);
		PROPERTY(only(in + start, size - start, WORD), "username with a character outside [A-Za-z0-9_]");
	}
	if (inputcheck_email(in, size))
	{
		const char *at = memchr(in, '@', size);

		PROPERTY(size >= 3 && size <= INPUTCHECK_EMAIL_MAX, "email of %zu bytes", size);
		PROPERTY(at != NULL && at != in, "email without a name@");
		PROPERTY(memchr(at + 1, '@', size - (at + 1 - in)) == NULL, "email with two @");
		PROPERTY(memchr(at + 1, '.', size - (at + 1 - in)) != NULL && in[size - 1] != '.',
				 "email domain without an inner dot");
		for (size_t i = 0; i < size; i++)
			PROPERTY((unsigned char) in[i] > ' ' && in[i] != 0x7F, "email with byte 0x%02X",
					 (unsigned char) in[i]);
	}
	if (inputcheck_file_id(in, size))
	{
		PROPERTY(size >= 1 && size <= INPUTCHECK_FILE_ID_MAX, "file_id of %zu bytes", size);
		PROPERTY(only(in, size, WORD "-"), "file_id with a character outside [A-Za-z0-9_-]");
	}
	free(in);
	return 0;
}
