/*
 * validate.c — input rules shared by the staging API and the commit.
 *
 * The rules themselves are plain C in inputcheck.c (fuzzed as they are by
 * test/fuzz/); this file turns their result codes into errors and their
 * output into palloc'd strings in the database encoding.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"

#include "guc.h"
#include "inputcheck.h"
#include "plans.h"
#include "validate.h"

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
 * The name trimmed and with inner runs of spaces collapsed (the rules are
 * inputcheck_full_name's), or NULL with *why set.
 */
char *
normalize_full_name(const char *name, char **why)
{
	const char *u = as_utf8(name);
	size_t		len = strlen(u);
	char	   *out = palloc(len + 1);
	uint32_t	bad_char;

	switch (inputcheck_full_name(u, len, out, len + 1, &bad_char))
	{
		case NAME_OK:
			return (char *) pg_do_encoding_conversion((unsigned char *) out, strlen(out),
													  PG_UTF8, GetDatabaseEncoding());
		case NAME_TOO_LONG:
			*why = psprintf("longer than %d characters", INPUTCHECK_NAME_MAX_CHARS);
			break;
		case NAME_BAD_UTF8:
			*why = pstrdup("not valid UTF-8");
			break;
		case NAME_CONTROL_CHAR:
			*why = pstrdup("contains a control character");
			break;
		case NAME_BAD_CHAR:
			*why = psprintf("character U+%04X is not allowed", bad_char);
			break;
		case NAME_BAD_LENGTH:
			*why = psprintf("must be %d to %d characters with at least one letter",
							INPUTCHECK_NAME_MIN_CHARS, INPUTCHECK_NAME_MAX_CHARS);
			break;
	}
	return NULL;
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

/* The number as +<7-15 digits> (inputcheck_phone's rules), or NULL. */
char *
normalize_phone(const char *phone)
{
	char		out[INPUTCHECK_PHONE_BUFSIZE];

	if (inputcheck_phone(phone, strlen(phone), out) != PHONE_OK)
		return NULL;
	return pstrdup(out);
}

char *
validate_phone(const char *phone)
{
	char		out[INPUTCHECK_PHONE_BUFSIZE];
	const char *shown = strlen(phone) > 40 ? "(too long)" : phone;

	switch (inputcheck_phone(phone, strlen(phone), out))
	{
		case PHONE_OK:
			return pstrdup(out);
		case PHONE_TOO_MANY_DIGITS:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid phone \"%s\": more than %d digits", shown, INPUTCHECK_PHONE_MAX_DIGITS),
					 errhint("An international number (E.164) has at most %d digits, country code included.",
							 INPUTCHECK_PHONE_MAX_DIGITS)));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid phone \"%s\": not a plausible phone number", shown),
					 errhint("Use international format, e.g. +7 916 123-45-67 (%d to %d digits).",
							 INPUTCHECK_PHONE_MIN_DIGITS, INPUTCHECK_PHONE_MAX_DIGITS)));
	}
	return NULL;				/* not reached */
}

/* A Telegram username: 1-64 of [A-Za-z0-9_], an optional leading @ dropped. */
char *
validate_username(const char *username)
{
	size_t		start;

	if (!inputcheck_username(username, strlen(username), &start))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid username: must be 1 to 64 characters of letters, digits and _")));
	return pstrdup(username + start);
}

/* local@domain, no spaces or control characters, at most 254 bytes. */
char *
validate_email(const char *email)
{
	if (!inputcheck_email(email, strlen(email)))
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
	if (!inputcheck_file_id(file_id, strlen(file_id)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid file_id: must be 1 to %d characters of A-Z, a-z, 0-9, _ and -",
						REGSTAGE_FILE_ID_MAX)));
}
