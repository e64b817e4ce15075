/*
 * validate.h — input rules shared by the staging API and the commit.
 *
 * Each check raises 22023 (invalid_parameter_value) naming the value and
 * the rule it broke, before anything is written anywhere.
 */
#ifndef REGSTAGE_VALIDATE_H
#define REGSTAGE_VALIDATE_H

#include "inputcheck.h"

#define REGSTAGE_FILE_ID_MAX INPUTCHECK_FILE_ID_MAX

extern void validate_telegram_id(bool isnull, int64 telegram_id);
extern void validate_language(const char *language);
extern char *normalize_full_name(const char *name, char **why);	/* NULL when invalid */
extern char *validate_full_name(const char *name);
extern char *normalize_phone(const char *phone);	/* NULL when implausible */
extern char *validate_phone(const char *phone);
extern char *validate_username(const char *username);
extern char *validate_email(const char *email);
extern void validate_doc_type(const char *doc_type);
extern void validate_file_id(const char *file_id);

#endif
