/*
 * scan.c — the tolerant scanner of scan.h.
 *
 * Every step takes the end of the input and never reads past it; nothing
 * recurses (nesting is a counter), so a deeply nested element costs no
 * stack.  Bytes inside strings are never interpreted beyond the backslash
 * that escapes the next byte.
 */
#include <string.h>

#include "scan.h"

static const char *
skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at the opening quote: just past the closing one, or NULL if unterminated */
static const char *
skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++)
	{
		if (*p == '\\')
		{
			if (++p >= end)
				return NULL;
		}
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

/* p at a value's first byte: just past the value, or NULL if malformed */
static const char *
skip_value(const char *p, const char *end)
{
	long		depth = 0;

	if (p >= end)
		return NULL;
	if (*p == '"')
		return skip_string(p, end);
	if (*p != '{' && *p != '[')
	{
		const char *start = p;

		while (p < end && strchr(",]}: \t\r\n\"{[", *p) == NULL)
			p++;
		return p > start ? p : NULL;
	}
	while (p < end)
	{
		switch (*p)
		{
			case '"':
				p = skip_string(p, end);
				if (p == NULL)
					return NULL;
				continue;
			case '{':
			case '[':
				depth++;
				break;
			case '}':
			case ']':
				if (--depth == 0)
					return p + 1;
				break;
			default:
				break;
		}
		p++;
	}
	return NULL;
}

/*
 * Walk the members of the object at p (its '{'); for each, fn gets the raw
 * key (between the quotes) and the value's bytes.  Stops early when fn
 * returns true.  Returns false when the object is malformed.
 */
typedef bool (*MemberFn) (void *arg, const char *key, size_t klen, const char *val, size_t vlen);

static bool
walk_object(const char *p, const char *end, MemberFn fn, void *arg)
{
	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return false;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return true;
	while (p < end)
	{
		const char *key = p;
		const char *kend;
		const char *val;
		const char *vend;

		if (*p != '"' || (kend = skip_string(p, end)) == NULL)
			return false;
		p = skip_ws(kend, end);
		if (p >= end || *p != ':')
			return false;
		val = skip_ws(p + 1, end);
		if ((vend = skip_value(val, end)) == NULL)
			return false;
		if (fn(arg, key + 1, kend - key - 2, val, vend - val))
			return true;
		p = skip_ws(vend, end);
		if (p < end && *p == '}')
			return true;
		if (p >= end || *p != ',')
			return false;
		p = skip_ws(p + 1, end);
	}
	return false;
}

typedef struct Found
{
	const char *key;
	const char *val;
	size_t		vlen;
} Found;

static bool
find_member(void *arg, const char *key, size_t klen, const char *val, size_t vlen)
{
	Found	   *f = arg;

	if (klen != strlen(f->key) || memcmp(key, f->key, klen) != 0)
		return false;
	f->val = val;
	f->vlen = vlen;
	return true;
}

int
scan_result_array(const char *data, size_t len, ScanElementFn fn, void *arg)
{
	Found		f = {"result", NULL, 0};
	const char *p;
	const char *end;
	int			n = 0;

	if (!walk_object(data, data + len, find_member, &f) || f.val == NULL || *f.val != '[')
		return -1;
	end = f.val + f.vlen;		/* just past the array's ']' */
	p = skip_ws(f.val + 1, end);
	if (p < end && *p == ']')
		return 0;
	while (p < end)
	{
		const char *vend = skip_value(p, end);

		if (vend == NULL)
			return -1;
		fn(arg, p, vend - p);
		n++;
		p = skip_ws(vend, end);
		if (p < end && *p == ']')
			return n;
		if (p >= end || *p != ',')
			return -1;
		p = skip_ws(p + 1, end);
	}
	return -1;
}

bool
scan_update_id(const char *elem, size_t len, int64_t *update_id)
{
	Found		f = {"update_id", NULL, 0};
	const char *p;
	const char *end;
	bool		neg;
	uint64_t	v = 0;
	uint64_t	limit;

	/* a malformed tail does not matter once update_id was found before it */
	(void) walk_object(elem, elem + len, find_member, &f);
	if (f.val == NULL)
		return false;
	p = f.val;
	end = f.val + f.vlen;
	neg = *p == '-';
	if (neg)
		p++;
	if (p >= end)
		return false;
	limit = neg ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX;
	for (; p < end; p++)
	{
		if (*p < '0' || *p > '9')
			return false;
		if (v > (limit - (uint64_t) (*p - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t) (*p - '0');
	}
	*update_id = neg ? (int64_t) (0 - v) : (int64_t) v;
	return true;
}
