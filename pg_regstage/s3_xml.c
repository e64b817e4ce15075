/*
 * s3_xml.c — a minimal, bounded, allocation-free XML element walker.
 *
 * Handles what S3 services send: an optional <?xml ...?> declaration,
 * comments, elements with attributes (skipped, quotes respected), text
 * with the five predefined entities and character references, CDATA.
 * Namespace prefixes are dropped from names ("s3:Key" -> "Key").  Anything
 * else — a DTD, mismatched or unclosed tags, text after the root, a bad
 * reference — makes the document invalid: callers treat it as a broken
 * answer, never guess.
 */
#include <string.h>

#include "s3_xml.h"

typedef struct XmlParser
{
	const char *p;
	const char *end;
	char		path[S3_XML_MAX_PATH];
	size_t		pathlen;
	size_t		name_at[S3_XML_MAX_DEPTH];	/* where each open element's name starts in path */
	int			depth;
	bool		had_child[S3_XML_MAX_DEPTH];
	char	   *text;			/* decoded text of the innermost element */
	size_t		textlen;
	size_t		textcap;
} XmlParser;

static bool
starts(const XmlParser *x, const char *s)
{
	size_t		n = strlen(s);

	return (size_t) (x->end - x->p) >= n && memcmp(x->p, s, n) == 0;
}

/* Move past the next occurrence of s; false if there is none. */
static bool
skip_past(XmlParser *x, const char *s)
{
	size_t		n = strlen(s);

	for (const char *q = x->p; (size_t) (x->end - q) >= n; q++)
		if (memcmp(q, s, n) == 0)
		{
			x->p = q + n;
			return true;
		}
	return false;
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool
is_name_char(char c)
{
	return !is_space(c) && c != '<' && c != '>' && c != '/' && c != '=' && c != '"' &&
		c != '\'' && c != '&' && c != '\0';
}

static bool
text_add(XmlParser *x, const char *s, size_t n)
{
	if (x->textlen + n + 1 > x->textcap)
		return false;
	memcpy(x->text + x->textlen, s, n);
	x->textlen += n;
	return true;
}

/* Append code point cp as UTF-8; only characters XML allows. */
static bool
text_add_codepoint(XmlParser *x, unsigned long cp)
{
	char		u[4];
	size_t		n;

	if (cp == 0 || (cp < 0x20 && cp != 0x9 && cp != 0xA && cp != 0xD) ||
		(cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF || cp > 0x10FFFF)
		return false;
	if (cp < 0x80)
	{
		u[0] = (char) cp;
		n = 1;
	}
	else if (cp < 0x800)
	{
		u[0] = (char) (0xC0 | (cp >> 6));
		u[1] = (char) (0x80 | (cp & 0x3F));
		n = 2;
	}
	else if (cp < 0x10000)
	{
		u[0] = (char) (0xE0 | (cp >> 12));
		u[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
		u[2] = (char) (0x80 | (cp & 0x3F));
		n = 3;
	}
	else
	{
		u[0] = (char) (0xF0 | (cp >> 18));
		u[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
		u[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
		u[3] = (char) (0x80 | (cp & 0x3F));
		n = 4;
	}
	return text_add(x, u, n);
}

/* At '&': decode one reference into the text. */
static bool
parse_reference(XmlParser *x)
{
	static const struct
	{
		const char *name;
		char		c;
	}			named[] = {{"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&apos;", '\''}};

	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++)
		if (starts(x, named[i].name))
		{
			x->p += strlen(named[i].name);
			return text_add(x, &named[i].c, 1);
		}
	if (starts(x, "&#"))
	{
		unsigned long cp = 0;
		int			base = 10;
		int			digits = 0;

		x->p += 2;
		if (x->p < x->end && *x->p == 'x')
		{
			base = 16;
			x->p++;
		}
		while (x->p < x->end && *x->p != ';')
		{
			char		c = *x->p;
			int			d;

			if (c >= '0' && c <= '9')
				d = c - '0';
			else if (base == 16 && c >= 'a' && c <= 'f')
				d = c - 'a' + 10;
			else if (base == 16 && c >= 'A' && c <= 'F')
				d = c - 'A' + 10;
			else
				return false;
			if (++digits > 8)
				return false;
			cp = cp * base + d;
			x->p++;
		}
		if (x->p >= x->end || digits == 0)
			return false;
		x->p++;					/* ';' */
		return text_add_codepoint(x, cp);
	}
	return false;
}

/* A start tag "<name attrs>" or "<name attrs/>"; x->p is after '<'. */
static int
parse_start_tag(XmlParser *x, S3XmlCallback cb, void *arg, bool *root_done)
{
	const char *name = x->p;
	const char *colon = NULL;
	size_t		len;
	bool		empty = false;

	while (x->p < x->end && is_name_char(*x->p))
	{
		if (*x->p == ':')
			colon = x->p;
		x->p++;
	}
	if (colon)
		name = colon + 1;
	len = x->p - name;
	if (len == 0 || x->depth >= S3_XML_MAX_DEPTH ||
		x->pathlen + len + 2 > S3_XML_MAX_PATH)
		return -1;
	/* attributes: name="value" pairs; only their quoting matters here */
	for (;;)
	{
		while (x->p < x->end && is_space(*x->p))
			x->p++;
		if (x->p >= x->end)
			return -1;
		if (*x->p == '>')
		{
			x->p++;
			break;
		}
		if (*x->p == '/')
		{
			if (x->end - x->p < 2 || x->p[1] != '>')
				return -1;
			x->p += 2;
			empty = true;
			break;
		}
		if (!is_name_char(*x->p))
			return -1;
		while (x->p < x->end && is_name_char(*x->p))
			x->p++;
		while (x->p < x->end && is_space(*x->p))
			x->p++;
		if (x->p >= x->end || *x->p != '=')
			return -1;
		x->p++;
		while (x->p < x->end && is_space(*x->p))
			x->p++;
		if (x->p >= x->end || (*x->p != '"' && *x->p != '\''))
			return -1;
		{
			char		q = *x->p++;

			while (x->p < x->end && *x->p != q)
			{
				if (*x->p == '<')
					return -1;
				x->p++;
			}
			if (x->p >= x->end)
				return -1;
			x->p++;
		}
	}

	if (x->depth > 0)
		x->had_child[x->depth - 1] = true;
	x->name_at[x->depth] = x->pathlen + (x->depth > 0 ? 1 : 0);
	if (x->depth > 0)
		x->path[x->pathlen++] = '/';
	memcpy(x->path + x->pathlen, name, len);
	x->pathlen += len;
	x->path[x->pathlen] = '\0';
	x->had_child[x->depth] = false;
	x->depth++;
	x->textlen = 0;
	if (empty)
	{
		int			rc;

		x->text[0] = '\0';
		rc = cb(arg, x->path, x->text, 0);
		if (rc != 0)
			return rc;
		x->depth--;
		x->pathlen = x->depth > 0 ? x->name_at[x->depth] - 1 : 0;
		x->path[x->pathlen] = '\0';
		if (x->depth == 0)
			*root_done = true;
	}
	return 0;
}

/* An end tag "</name>"; x->p is after "</". */
static int
parse_end_tag(XmlParser *x, S3XmlCallback cb, void *arg, bool *root_done)
{
	const char *name = x->p;
	const char *colon = NULL;
	size_t		len;
	const char *open;
	int			rc;

	while (x->p < x->end && is_name_char(*x->p))
	{
		if (*x->p == ':')
			colon = x->p;
		x->p++;
	}
	if (colon)
		name = colon + 1;
	len = x->p - name;
	while (x->p < x->end && is_space(*x->p))
		x->p++;
	if (x->p >= x->end || *x->p != '>' || x->depth == 0)
		return -1;
	x->p++;
	open = x->path + x->name_at[x->depth - 1];
	if (strlen(open) != len || memcmp(open, name, len) != 0)
		return -1;
	if (x->had_child[x->depth - 1])
		rc = cb(arg, x->path, NULL, 0);
	else
	{
		x->text[x->textlen] = '\0';
		rc = cb(arg, x->path, x->text, x->textlen);
	}
	if (rc != 0)
		return rc;
	x->depth--;
	x->pathlen = x->depth > 0 ? x->name_at[x->depth] - 1 : 0;
	x->path[x->pathlen] = '\0';
	x->textlen = 0;
	if (x->depth == 0)
		*root_done = true;
	return 0;
}

int
s3_xml_parse(const char *xml, size_t len, char *scratch, size_t scratchsz,
			 S3XmlCallback cb, void *arg)
{
	XmlParser	x;
	bool		root_done = false;

	if (scratch == NULL || scratchsz < len + 1)
		return -1;
	memset(&x, 0, sizeof(x));
	x.p = xml;
	x.end = xml + len;
	x.text = scratch;
	x.textcap = scratchsz;
	x.text[0] = '\0';
	if (starts(&x, "\xEF\xBB\xBF"))
		x.p += 3;

	while (x.p < x.end)
	{
		int			rc = 0;

		if (*x.p != '<')
		{
			/* text: inside an element it is kept, outside only blanks may appear */
			if (x.depth == 0)
			{
				if (!is_space(*x.p))
					return -1;
				x.p++;
			}
			else if (*x.p == '&')
			{
				if (!parse_reference(&x))
					return -1;
			}
			else if (*x.p == '\0' || !text_add(&x, x.p++, 1))
				return -1;
			continue;
		}
		if (starts(&x, "<?"))
		{
			if (x.depth > 0 || root_done || !skip_past(&x, "?>"))
				return -1;
		}
		else if (starts(&x, "<!--"))
		{
			x.p += 4;
			if (!skip_past(&x, "-->"))
				return -1;
		}
		else if (starts(&x, "<![CDATA["))
		{
			const char *start = x.p + 9;

			x.p = start;
			if (x.depth == 0 || !skip_past(&x, "]]>") ||
				memchr(start, '\0', (size_t) (x.p - 3 - start)) != NULL ||
				!text_add(&x, start, (size_t) (x.p - 3 - start)))
				return -1;
		}
		else if (starts(&x, "<!"))
			return -1;			/* DOCTYPE and anything like it */
		else if (starts(&x, "</"))
		{
			x.p += 2;
			rc = parse_end_tag(&x, cb, arg, &root_done);
		}
		else
		{
			if (root_done)
				return -1;		/* a second root */
			x.p++;
			rc = parse_start_tag(&x, cb, arg, &root_done);
		}
		if (rc != 0)
			return rc;
	}
	return (root_done && x.depth == 0) ? 0 : -1;
}
