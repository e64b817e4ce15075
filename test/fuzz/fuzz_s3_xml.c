/*
 * libFuzzer target: s3_xml_parse(), which s3.c applies to every body an S3
 * service answers (ListObjectsV2 pages, <Error> documents).
 *
 * Properties: the parser reads only the bytes it is given (an exact-size
 * heap copy) and writes only its scratch buffer of size+1 bytes; every
 * reported path is 1..S3_XML_MAX_PATH-1 bytes of "/"-separated non-empty
 * names; reported text is NUL-terminated, holds no NUL, and is no longer
 * than the input; the result is -1, 0 or the callback's value, and the
 * same on a second run.  Round trip: any printable-ASCII/whitespace text,
 * written with character references and the named entities, decodes back
 * to itself.
 */
#include "fuzz_check.h"
#include "s3_xml.h"

typedef struct Seen
{
	size_t		input_len;
	int			events;
	char		last_text[64];
} Seen;

static int
check_event(void *arg, const char *path, const char *text, size_t textlen)
{
	Seen	   *s = arg;
	size_t		plen = strlen(path);

	PROPERTY(plen >= 1 && plen < S3_XML_MAX_PATH, "path of %zu bytes", plen);
	PROPERTY(path[0] != '/' && path[plen - 1] != '/' && strstr(path, "//") == NULL,
			 "path with an empty name: \"%s\"", path);
	if (text != NULL)
	{
		PROPERTY(text[textlen] == '\0', "text not terminated");
		PROPERTY(memchr(text, '\0', textlen) == NULL, "text with a NUL byte");
		PROPERTY(textlen <= s->input_len, "text of %zu bytes from %zu of input", textlen, s->input_len);
	}
	s->events++;
	return 0;
}

/* collects the text of Root/V for the round trip */
static int
collect(void *arg, const char *path, const char *text, size_t textlen)
{
	char	  **out = arg;

	if (strcmp(path, "Root/V") == 0 && text != NULL)
	{
		*out = malloc(textlen + 1);
		if (*out == NULL)
			abort();
		memcpy(*out, text, textlen + 1);
	}
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *in = fuzz_copy(data, size);
	char	   *scratch = malloc(size + 1);
	Seen		s1 = {size, 0, ""};
	Seen		s2 = {size, 0, ""};
	int			rc1;
	int			rc2;

	if (scratch == NULL)
		abort();
	rc1 = s3_xml_parse(in, size, scratch, size + 1, check_event, &s1);
	rc2 = s3_xml_parse(in, size, scratch, size + 1, check_event, &s2);
	PROPERTY(rc1 == 0 || rc1 == -1, "result %d", rc1);
	PROPERTY(rc1 == rc2 && s1.events == s2.events, "two runs differ");
	PROPERTY(s3_xml_parse(in, size, scratch, size, check_event, &s1) == -1,
			 "accepted a scratch buffer shorter than the input");
	free(scratch);

	/* round trip: the input's printable bytes as escaped text */
	{
		size_t		cap = 32 + size * 8;
		char	   *doc = malloc(cap);
		char	   *plain = malloc(size + 1);
		size_t		n = 0;
		size_t		m = 0;
		char	   *got = NULL;
		int			rc;

		if (doc == NULL || plain == NULL)
			abort();
		n += sprintf(doc + n, "<Root a='1'><V>");
		for (size_t i = 0; i < size; i++)
		{
			unsigned char c = (unsigned char) in[i];

			if (!(c >= 0x20 && c < 0x7F) && c != '\t' && c != '\n' && c != '\r')
				continue;
			plain[m++] = (char) c;
			if (c == '<')
				n += sprintf(doc + n, "&lt;");
			else if (c == '&')
				n += sprintf(doc + n, "&amp;");
			else if (i % 3 == 0)
				n += sprintf(doc + n, "&#%u;", c);
			else if (i % 3 == 1)
				n += sprintf(doc + n, "&#x%X;", c);
			else
				doc[n++] = (char) c;
		}
		plain[m] = '\0';
		n += sprintf(doc + n, "</V></Root>");
		scratch = malloc(n + 1);
		if (scratch == NULL)
			abort();
		rc = s3_xml_parse(doc, n, scratch, n + 1, collect, &got);
		PROPERTY(rc == 0, "escaped text not accepted");
		PROPERTY(got != NULL && strcmp(got, plain) == 0, "escaped text decoded differently");
		free(got);
		free(scratch);
		free(doc);
		free(plain);
	}
	free(in);
	return 0;
}
