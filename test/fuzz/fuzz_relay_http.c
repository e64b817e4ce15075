/*
 * libFuzzer target: the webhook server's request framing (relay/http.c).
 *
 * Properties: nothing is read outside the input (ASan, exact-size copy);
 * a whole request ends at the first blank line plus its Content-Length,
 * within the input and the limits; the secret header lies inside the head;
 * the same request alone parses the same, and one byte less of it is not a
 * whole request; a refusal carries one of the statuses the server answers;
 * and the secret comparison agrees with memcmp.  Before fuzzing, the
 * framing rules are checked on fixed requests (LLVMFuzzerInitialize): two
 * Content-Length headers or Transfer-Encoding are refused, not guessed at
 * (request smuggling behind a balancer).  Built and run by
 * test/scripts/fuzz.sh.
 */
#define _GNU_SOURCE				/* memmem */
#include "fuzz_check.h"

#include "http.h"

static void
check_request(const char *buf, size_t size)
{
	HttpRequest req;
	HttpRequest again;
	HttpParse	r = http_parse_request(buf, size, &req);

	if (r == HTTP_REJECT)
	{
		PROPERTY(req.status == 400 || req.status == 411 || req.status == 413 || req.status == 431,
				 "refused with status %d", req.status);
		return;
	}
	if (r == HTTP_NEED_MORE)
	{
		PROPERTY(size < HTTP_HEAD_MAX || memmem(buf, HTTP_HEAD_MAX, "\r\n\r\n", 4) != NULL,
				 "%zu bytes without a blank line, still waiting for more", size);
		return;
	}
	PROPERTY(r == HTTP_COMPLETE, "unknown result %d", (int) r);
	PROPERTY(req.head_len >= 4 && req.head_len <= HTTP_HEAD_MAX, "head of %zu bytes", req.head_len);
	PROPERTY(memcmp(buf + req.head_len - 4, "\r\n\r\n", 4) == 0, "the head does not end with a blank line");
	PROPERTY(memmem(buf, req.head_len - 1, "\r\n\r\n", 4) == NULL, "not the first blank line");
	PROPERTY(req.body_len <= HTTP_BODY_MAX, "a body of %zu bytes", req.body_len);
	PROPERTY(req.total == req.head_len + req.body_len && req.total <= size, "total %zu of %zu", req.total, size);
	PROPERTY(req.secret == NULL || (req.secret >= buf && req.secret + req.secret_len <= buf + req.head_len),
			 "the secret outside the head");
	PROPERTY(!req.is_post || memcmp(buf, "POST ", 5) == 0, "a POST that is not one");

	PROPERTY(http_parse_request(buf, req.total, &again) == HTTP_COMPLETE &&
			 again.total == req.total && again.is_post == req.is_post &&
			 again.close_after == req.close_after && again.secret == req.secret,
			 "the request alone parses differently");
	PROPERTY(http_parse_request(buf, req.total - 1, &again) == HTTP_NEED_MORE,
			 "one byte less of a request is not waiting for more");
}

static void
expect(const char *request, HttpParse want, int status, size_t total)
{
	HttpRequest req;
	size_t		len = strlen(request);
	char	   *copy = fuzz_copy((const uint8_t *) request, len);
	HttpParse	r = http_parse_request(copy, len, &req);

	PROPERTY(r == want && (r != HTTP_REJECT || req.status == status) && (r != HTTP_COMPLETE || req.total == total),
			 "fixed request parsed as %d (status %d, total %zu), expected %d (status %d, total %zu): %s",
			 (int) r, req.status, req.total, (int) want, status, total, request);
	free(copy);
}

int			LLVMFuzzerInitialize(int *argc, char ***argv);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	expect("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", HTTP_COMPLETE, 0, 40);
	expect("POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}POST", HTTP_COMPLETE, 0, 40);
	expect("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{", HTTP_NEED_MORE, 0, 0);
	expect("POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", HTTP_REJECT, 400, 0);
	expect("POST / HTTP/1.1\r\nContent-Length: 2x\r\n\r\n{}", HTTP_REJECT, 400, 0);
	expect("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", HTTP_REJECT, 411, 0);
	expect("POST / HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", HTTP_REJECT, 413, 0);
	expect("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n", HTTP_REJECT, 413, 0);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *copy = fuzz_copy(data, size);
	size_t		half = size / 2;

	check_request(copy, size);
	PROPERTY(http_secret_equal(copy, half, copy + half, size - half) ==
			 (half == size - half && memcmp(copy, copy + half, half) == 0),
			 "secret comparison disagrees with memcmp");
	free(copy);
	return 0;
}
