/*
 * libFuzzer target: the relay's log redaction.  Each input makes a token of
 * Telegram's shape and a line that mixes random bytes with the token, its
 * secret part and cut-off pieces of both; relay_redact() writes it into a
 * buffer of random size (allocated to exactly that size, so ASan sees any
 * overflow).  The output must be NUL-terminated inside the buffer and never
 * contain the secret (so never the token); uncut, it must not end in a
 * cut-off token; a line without any piece of the token comes out unchanged.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Irelay test/fuzz/fuzz_relay_redact.c \
 *         relay/log.c -lpthread
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

RelayConfig relay_config = {.log_level = -1};
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

#define PIECE_TOKEN 0xFF		/* the whole token */
#define PIECE_SECRET 0xFE		/* the part after the colon */
#define PIECE_PREFIX 0xFD		/* the token cut after the next byte's count of characters */

static bool
ends_with_cut_token(const char *s, size_t len, const char *token, size_t idlen)
{
	const char *secret = token + idlen;
	size_t		slen = strlen(secret);

	for (size_t n = 1; n < slen && n <= len; n++)
	{
		if (memcmp(s + len - n, secret, n) != 0)
			continue;
		if (n >= 8 || (len >= n + idlen && memcmp(s + len - n - idlen, token, idlen) == 0))
			return true;
	}
	return false;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char		token[64];
	size_t		idlen;
	size_t		pos = 0;
	size_t		dstsize;
	char	   *line;
	size_t		len = 0;
	char	   *out;
	size_t		n;

	if (size < 4)
		return 0;
	/* the token: 1 to 12 digits, a colon, 35 characters */
	idlen = 1 + data[0] % 12;
	for (size_t i = 0; i < idlen; i++)
		token[i] = '0' + (i + 1 < size ? data[i + 1] : i) % 10;
	token[idlen] = ':';
	for (size_t i = 0; i < TOKEN_SECRET_LEN; i++)
		token[idlen + 1 + i] = alphabet[(data[(i * 7) % size] + i) % 64];
	token[idlen + 1 + TOKEN_SECRET_LEN] = '\0';
	if (!relay_token_valid(token))
		abort();
	relay_config.token = token;
	idlen++;					/* with the colon */
	dstsize = 1 + (data[1] | (data[2] << 8)) % 700;
	pos = 3;

	line = malloc(size * (strlen(token) + 1) + 1);
	for (; pos < size; pos++)
	{
		uint8_t		b = data[pos];

		if (b == PIECE_TOKEN || b == PIECE_SECRET)
		{
			const char *piece = b == PIECE_TOKEN ? token : token + idlen;

			memcpy(line + len, piece, strlen(piece));
			len += strlen(piece);
		}
		else if (b == PIECE_PREFIX && pos + 1 < size)
		{
			size_t		k = data[++pos] % strlen(token);

			memcpy(line + len, token, k);
			len += k;
		}
		else if (b != 0)
			line[len++] = (char) b;
	}
	line[len] = '\0';

	out = malloc(dstsize);
	n = relay_redact(line, out, dstsize);
	if (n >= dstsize || strlen(out) != n)
		abort();				/* not terminated where it says */
	if (memmem(out, n, token + idlen, strlen(token + idlen)) != NULL)
		abort();				/* the secret survived */
	if (n < dstsize - 1 && ends_with_cut_token(out, n, token, idlen))
		abort();				/* a cut-off token survived at the end */
	if (memmem(line, len, token, idlen) == NULL && memmem(line, len, token + idlen, 8) == NULL &&
		(n != (len < dstsize - 1 ? len : dstsize - 1) || memcmp(out, line, n) != 0))
		abort();				/* nothing to redact, yet changed */
	free(out);
	free(line);
	return 0;
}
