/*
 * inputcheck.c — the rules for what a user types, in plain C.
 *
 * Names may be written in any script, so "letter" is decided by the
 * C.UTF-8 locale's character classes, independent of the database's
 * LC_CTYPE (a cluster initialised with --locale=C must still accept
 * "Иван Петров").
 */
#include <ctype.h>
#include <locale.h>
#include <string.h>
#include <wctype.h>

#include "inputcheck.h"

static locale_t unicode_locale = (locale_t) 0;
static bool unicode_locale_tried = false;

static bool
is_letter(uint32_t c)
{
	if (!unicode_locale_tried)
	{
		unicode_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t) 0);
		if (unicode_locale == (locale_t) 0)
			unicode_locale = newlocale(LC_CTYPE_MASK, "en_US.UTF-8", (locale_t) 0);
		unicode_locale_tried = true;
	}
	if (unicode_locale != (locale_t) 0)
		return iswalpha_l((wint_t) c, unicode_locale) != 0;
	/* no UTF-8 locale on this system: ASCII letters, or anything past Latin-1 punctuation */
	return (c < 128 && isalpha((int) c)) || c >= 0xC0;
}

/*
 * Decode one UTF-8 character of at most avail bytes: its length, or 0 when
 * the bytes are not well-formed UTF-8 (overlong forms, surrogates and code
 * points past U+10FFFF included), as PostgreSQL's pg_utf8_islegal decides.
 */
static size_t
utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp)
{
	unsigned char b0 = s[0];
	unsigned char lo = 0x80,
				hi = 0xBF;
	size_t		n;

	if (b0 < 0x80)
	{
		*cp = b0;
		return 1;
	}
	if (b0 >= 0xC2 && b0 <= 0xDF)
		n = 2;
	else if (b0 >= 0xE0 && b0 <= 0xEF)
	{
		n = 3;
		if (b0 == 0xE0)
			lo = 0xA0;
		else if (b0 == 0xED)
			hi = 0x9F;
	}
	else if (b0 >= 0xF0 && b0 <= 0xF4)
	{
		n = 4;
		if (b0 == 0xF0)
			lo = 0x90;
		else if (b0 == 0xF4)
			hi = 0x8F;
	}
	else
		return 0;
	if (avail < n || s[1] < lo || s[1] > hi)
		return 0;
	*cp = b0 & (0xFF >> (n + 1));
	for (size_t k = 1; k < n; k++)
	{
		if ((s[k] & 0xC0) != 0x80)
			return 0;
		*cp = (*cp << 6) | (s[k] & 0x3F);
	}
	return n;
}

/*
 * 2-128 characters: letters of any script, spaces, hyphens, apostrophes and
 * dots, with at least one letter.  Writes the name with surrounding spaces
 * trimmed and inner runs of spaces collapsed.
 */
InputcheckName
inputcheck_full_name(const char *utf8, size_t len, char *out, size_t outsize, uint32_t *bad_char)
{
	const unsigned char *u = (const unsigned char *) utf8;
	size_t		olen = 0;
	int			nchars = 0;
	bool		any_letter = false;
	bool		pending_space = false;
	size_t		i = 0;

	*bad_char = 0;
	if (len > INPUTCHECK_NAME_MAX_CHARS * 4)
		return NAME_TOO_LONG;
	while (i < len)
	{
		uint32_t	c;
		size_t		l = utf8_decode(&u[i], len - i, &c);

		if (l == 0)
			return NAME_BAD_UTF8;
		if (c == ' ' || c == '\t' || c == 0xA0)
		{
			pending_space = (olen > 0);
			i += l;
			continue;
		}
		if (c < 0x20 || c == 0x7F || (c >= 0x80 && c < 0xA0))
			return NAME_CONTROL_CHAR;
		if (!(is_letter(c) || c == '-' || c == '\'' || c == '.' ||
			  c == 0x2019 || c == 0x02BC || c == 0x2010))
		{
			*bad_char = c;
			return NAME_BAD_CHAR;
		}
		if (is_letter(c))
			any_letter = true;
		if (olen + (pending_space ? 1 : 0) + l + 1 > outsize)
			return NAME_TOO_LONG;
		if (pending_space)
		{
			out[olen++] = ' ';
			nchars++;
			pending_space = false;
		}
		memcpy(out + olen, &u[i], l);
		olen += l;
		nchars++;
		i += l;
	}
	if (outsize > 0)
		out[olen] = '\0';
	if (nchars < INPUTCHECK_NAME_MIN_CHARS || nchars > INPUTCHECK_NAME_MAX_CHARS || !any_letter)
		return NAME_BAD_LENGTH;
	return NAME_OK;
}

/*
 * A plausible phone number as +<7-15 digits>.  Spaces, dots, hyphens and
 * parentheses are dropped; "00" becomes "+"; an 11-digit number starting
 * with 8 and no "+" is a Russian trunk-prefixed number (8 916 ... =
 * +7 916 ...).  Without "+" or "00" at least 11 digits are needed: a
 * shorter number lacks its country code.  The digits are counted before
 * any is copied, so out never holds more than "+", 15 digits and a NUL.
 */
InputcheckPhone
inputcheck_phone(const char *phone, size_t len, char *out)
{
	size_t		first;
	size_t		nd = 0;
	size_t		skip = 0;		/* leading digits of an international prefix "00" */
	size_t		seen = 0;
	size_t		o = 1;
	bool		plus = false;
	bool		zero_zero = false;
	size_t		i = 0;

	out[0] = '\0';
	while (i < len && phone[i] == ' ')
		i++;
	if (i < len && phone[i] == '+')
	{
		plus = true;
		i++;
	}
	first = i;
	for (; i < len; i++)
	{
		char		c = phone[i];

		if (c >= '0' && c <= '9')
		{
			if (nd < 2)
				zero_zero = (c == '0') && (nd == 0 || zero_zero);
			nd++;
		}
		else if (c != ' ' && c != '-' && c != '.' && c != '(' && c != ')')
			return PHONE_BAD_CHAR;
	}
	if (!plus && nd > 2 && zero_zero)
	{
		skip = 2;
		plus = true;
	}
	if (nd - skip > INPUTCHECK_PHONE_MAX_DIGITS)
		return PHONE_TOO_MANY_DIGITS;

	for (i = first; i < len; i++)
		if (phone[i] >= '0' && phone[i] <= '9' && seen++ >= skip)
			out[o++] = phone[i];
	out[o] = '\0';
	nd -= skip;
	if (!plus && nd == 11 && out[1] == '8')
		out[1] = '7';
	else if (!plus && nd < 11)
	{
		out[0] = '\0';
		return PHONE_NO_COUNTRY_CODE;		/* ambiguous */
	}
	if (nd < INPUTCHECK_PHONE_MIN_DIGITS || out[1] == '0')
	{
		out[0] = '\0';
		return PHONE_IMPLAUSIBLE;
	}
	out[0] = '+';
	return PHONE_OK;
}

/* Every byte of s[0..len) is one of set's characters. */
static bool
all_in(const char *s, size_t len, const char *set)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\0' || strchr(set, s[i]) == NULL)
			return false;
	return true;
}

#define WORD_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"

/* A Telegram username: 1-64 of [A-Za-z0-9_], an optional leading @ dropped. */
bool
inputcheck_username(const char *username, size_t len, size_t *start)
{
	*start = (len > 0 && username[0] == '@') ? 1 : 0;
	len -= *start;
	return len > 0 && len <= INPUTCHECK_USERNAME_MAX && all_in(username + *start, len, WORD_CHARS);
}

/* local@domain, no spaces or control characters, at most 254 bytes. */
bool
inputcheck_email(const char *email, size_t len)
{
	const char *at;
	const char *domain;
	size_t		dlen;

	if (len < 3 || len > INPUTCHECK_EMAIL_MAX || email[len - 1] == '.')
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) email[i] <= ' ' || email[i] == 0x7f)
			return false;
	at = memchr(email, '@', len);
	if (at == NULL || at == email)
		return false;
	domain = at + 1;
	dlen = len - (domain - email);
	return memchr(domain, '@', dlen) == NULL && memchr(domain, '.', dlen) != NULL;
}

/* Telegram file_ids are URL-safe base64: [A-Za-z0-9_-], at most 256 bytes. */
bool
inputcheck_file_id(const char *file_id, size_t len)
{
	return len > 0 && len <= INPUTCHECK_FILE_ID_MAX && all_in(file_id, len, WORD_CHARS "-");
}
