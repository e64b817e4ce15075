/*
 * validate.c — input rules shared by the staging API and the commit.
 *
 * Names may be written in any script, so "letter" is decided by the
 * C.UTF-8 locale's character classes, independent of the database's
 * LC_CTYPE (a cluster initialised with --locale=C must still accept
 * "Иван Петров").
 */
#include "postgres.h"

#include <locale.h>
#include <wctype.h>

#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"

#include "guc.h"
#include "plans.h"
#include "validate.h"

#define FULL_NAME_MIN_CHARS 2
#define FULL_NAME_MAX_CHARS 128
#define PHONE_MIN_DIGITS 7
#define PHONE_MAX_DIGITS 15		/* E.164 */

static locale_t unicode_locale = (locale_t) 0;
static bool unicode_locale_tried = false;

static bool
is_letter(pg_wchar c)
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

void
validate_telegram_id(bool isnull, int64 telegram_id)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("telegram_id must not be NULL")));
	if (telegram_id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid telegram_id " INT64_FORMAT ": must be positive", telegram_id),
				 errhint("Pass the user's Telegram id (message.from.id).")));
}

/* A language is offered when regstage.messages has texts for it. */
void
validate_language(const char *language)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	bool		found;

	if (language == NULL || *language == '\0' || strlen(language) > 16)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid language \"%s\": must be a language code such as \"en\"",
						language ? language : "")));

	values[0] = CStringGetTextDatum(language);
	SPI_connect();
	if (SPI_execute_plan(regstage_plan(&plan, "SELECT 1 FROM regstage.messages WHERE language = $1 LIMIT 1",
									   1, argtypes),
						 values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up regstage.messages");
	found = SPI_processed > 0;
	SPI_finish();
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid language \"%s\": regstage.messages has no texts for it", language),
				 errhint("Add the language's rows to regstage.messages first.")));
}

/* The string in UTF-8, whatever the database encoding. */
static const char *
as_utf8(const char *s)
{
	return (const char *) pg_do_encoding_conversion((unsigned char *) unconstify(char *, s),
													strlen(s), GetDatabaseEncoding(), PG_UTF8);
}

/*
 * 2-128 characters: letters of any script, spaces, hyphens, apostrophes and
 * dots, with at least one letter.  Returns the name with surrounding spaces
 * trimmed and inner runs of spaces collapsed, or NULL with *why set.
 */
char *
normalize_full_name(const char *name, char **why)
{
	const unsigned char *u = (const unsigned char *) as_utf8(name);
	StringInfoData out;
	int			nchars = 0;
	bool		any_letter = false;
	bool		pending_space = false;
	size_t		len = strlen((const char *) u);
	size_t		i = 0;

	if (len > FULL_NAME_MAX_CHARS * 4)
	{
		*why = psprintf("longer than %d characters", FULL_NAME_MAX_CHARS);
		return NULL;
	}
	initStringInfo(&out);
	while (i < len)
	{
		int			l = pg_utf_mblen(&u[i]);
		pg_wchar	c;

		if (i + l > len || !pg_utf8_islegal(&u[i], l))
		{
			*why = pstrdup("not valid UTF-8");
			return NULL;
		}
		c = utf8_to_unicode(&u[i]);
		if (c == ' ' || c == '\t' || c == 0xA0)
		{
			pending_space = (out.len > 0);
			i += l;
			continue;
		}
		if (c < 0x20 || c == 0x7F || (c >= 0x80 && c < 0xA0))
		{
			*why = pstrdup("contains a control character");
			return NULL;
		}
		if (!(is_letter(c) || c == '-' || c == '\'' || c == '.' ||
			  c == 0x2019 || c == 0x02BC || c == 0x2010))
		{
			*why = psprintf("character U+%04X is not allowed", c);
			return NULL;
		}
		if (is_letter(c))
			any_letter = true;
		if (pending_space)
		{
			appendStringInfoChar(&out, ' ');
			nchars++;
			pending_space = false;
		}
		appendBinaryStringInfo(&out, (const char *) &u[i], l);
		nchars++;
		i += l;
	}
	if (nchars < FULL_NAME_MIN_CHARS || nchars > FULL_NAME_MAX_CHARS || !any_letter)
	{
		*why = psprintf("must be %d to %d characters with at least one letter",
						FULL_NAME_MIN_CHARS, FULL_NAME_MAX_CHARS);
		return NULL;
	}
	return (char *) pg_do_encoding_conversion((unsigned char *) out.data, out.len,
											  PG_UTF8, GetDatabaseEncoding());
}

char *
validate_full_name(const char *name)
{
	char	   *why = NULL;
	char	   *normalized = normalize_full_name(name, &why);

	if (normalized == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid full_name: %s", why),
				 errhint("A name has 2 to 128 letters (of any script), spaces, hyphens, apostrophes or dots.")));
	return normalized;
}

/*
 * A plausible phone number as +<7-15 digits>, or NULL.  Spaces, dots,
 * hyphens and parentheses are dropped; "00" becomes "+"; an 11-digit
 * number starting with 8 and no "+" is a Russian trunk-prefixed number
 * (8 916 ... = +7 916 ...).  Without "+" or "00" at least 11 digits are
 * needed: a shorter number lacks its country code.
 */
char *
normalize_phone(const char *phone)
{
	char		digits[PHONE_MAX_DIGITS + 2];
	int			nd = 0;
	bool		plus = false;
	const char *p = phone;

	while (*p == ' ')
		p++;
	if (*p == '+')
	{
		plus = true;
		p++;
	}
	for (; *p; p++)
	{
		if (*p >= '0' && *p <= '9')
		{
			if (nd > PHONE_MAX_DIGITS + 1)
				return NULL;
			digits[nd++] = *p;
		}
		else if (*p != ' ' && *p != '-' && *p != '.' && *p != '(' && *p != ')')
			return NULL;
	}
	digits[Min(nd, PHONE_MAX_DIGITS + 1)] = '\0';
	if (!plus && nd > 2 && digits[0] == '0' && digits[1] == '0')
	{
		memmove(digits, digits + 2, nd - 1);
		nd -= 2;
		plus = true;
	}
	if (!plus && nd == 11 && digits[0] == '8')
		digits[0] = '7';
	else if (!plus && nd < 11)
		return NULL;			/* no country code: ambiguous */
	if (nd < PHONE_MIN_DIGITS || nd > PHONE_MAX_DIGITS || digits[0] == '0')
		return NULL;
	return psprintf("+%s", digits);
}

char *
validate_phone(const char *phone)
{
	char	   *normalized = normalize_phone(phone);

	if (normalized == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid phone \"%s\": not a plausible phone number",
						strlen(phone) > 40 ? "(too long)" : phone),
				 errhint("Use international format, e.g. +7 916 123-45-67 (%d to %d digits).",
						 PHONE_MIN_DIGITS, PHONE_MAX_DIGITS)));
	return normalized;
}

/* A Telegram username: 1-64 of [A-Za-z0-9_], an optional leading @ dropped. */
char *
validate_username(const char *username)
{
	const char *u = (*username == '@') ? username + 1 : username;
	size_t		len = strlen(u);

	if (len == 0 || len > 64 || strspn(u, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid username: must be 1 to 64 characters of letters, digits and _")));
	return pstrdup(u);
}

/* local@domain, no spaces or control characters, at most 254 bytes. */
char *
validate_email(const char *email)
{
	size_t		len = strlen(email);
	const char *at = strchr(email, '@');
	bool		ok = (len >= 3 && len <= 254 && at != NULL && at != email &&
					  strchr(at + 1, '@') == NULL && strchr(at + 1, '.') != NULL &&
					  email[len - 1] != '.');

	for (size_t i = 0; ok && i < len; i++)
		if ((unsigned char) email[i] <= ' ' || email[i] == 0x7f)
			ok = false;
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid email: not an address of the form name@domain.tld")));
	return pstrdup(email);
}

void
validate_doc_type(const char *doc_type)
{
	ListCell   *lc;
	List	   *required = regstage_required_document_list();

	foreach(lc, required)
		if (strcmp(lfirst(lc), doc_type) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid doc_type \"%s\": not in regstage.required_documents (%s)",
					strlen(doc_type) > 40 ? "(too long)" : doc_type,
					regstage_required_documents)));
}

/* Telegram file_ids are URL-safe base64: [A-Za-z0-9_-], at most 256 bytes. */
void
validate_file_id(const char *file_id)
{
	size_t		len = strlen(file_id);

	if (len == 0 || len > REGSTAGE_FILE_ID_MAX ||
		strspn(file_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid file_id: must be 1 to %d characters of A-Z, a-z, 0-9, _ and -",
						REGSTAGE_FILE_ID_MAX)));
}
