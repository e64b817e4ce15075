/*
 * inputcheck.h — the rules for what a user types, in plain C.
 *
 * No PostgreSQL here: every function reads exactly len bytes of its input
 * (no NUL needed), writes only into the caller's buffer and returns a
 * result code.  validate.c turns the codes into errors; the fuzz targets
 * in test/fuzz/ call these same functions.
 */
#ifndef REGSTAGE_INPUTCHECK_H
#define REGSTAGE_INPUTCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define INPUTCHECK_NAME_MIN_CHARS 2
#define INPUTCHECK_NAME_MAX_CHARS 128
#define INPUTCHECK_PHONE_MIN_DIGITS 7
#define INPUTCHECK_PHONE_MAX_DIGITS 15	/* E.164 */
#define INPUTCHECK_PHONE_BUFSIZE (INPUTCHECK_PHONE_MAX_DIGITS + 2)	/* "+", digits, NUL */
#define INPUTCHECK_USERNAME_MAX 64
#define INPUTCHECK_EMAIL_MAX 254
#define INPUTCHECK_FILE_ID_MAX 256

typedef enum InputcheckName
{
	NAME_OK,
	NAME_TOO_LONG,				/* more bytes than 128 characters can take */
	NAME_BAD_UTF8,
	NAME_CONTROL_CHAR,
	NAME_BAD_CHAR,				/* *bad_char says which */
	NAME_BAD_LENGTH				/* not 2-128 characters, or no letter */
} InputcheckName;

typedef enum InputcheckPhone
{
	PHONE_OK,
	PHONE_BAD_CHAR,				/* not a digit, space, ".", "-", "(" or ")" */
	PHONE_TOO_MANY_DIGITS,		/* more than 15 after the international prefix */
	PHONE_NO_COUNTRY_CODE,		/* fewer than 11 digits without "+" or "00" */
	PHONE_IMPLAUSIBLE			/* fewer than 7 digits, or a leading 0 */
} InputcheckPhone;

/*
 * A full name in UTF-8, trimmed and with inner runs of spaces collapsed,
 * into out (outsize >= len + 1 always suffices).
 */
extern InputcheckName inputcheck_full_name(const char *utf8, size_t len,
										   char *out, size_t outsize, uint32_t *bad_char);

/* A phone number as "+<7-15 digits>" into out[INPUTCHECK_PHONE_BUFSIZE]. */
extern InputcheckPhone inputcheck_phone(const char *phone, size_t len, char *out);

/* A Telegram username; *start skips an optional leading "@". */
extern bool inputcheck_username(const char *username, size_t len, size_t *start);
extern bool inputcheck_email(const char *email, size_t len);
extern bool inputcheck_file_id(const char *file_id, size_t len);

#endif
