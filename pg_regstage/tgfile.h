/*
 * tgfile.h — what the Bot API says about a file, checked in plain C.
 *
 * No PostgreSQL here: both functions read exactly len bytes (no NUL
 * needed).  botapi.c calls them on getFile's answer and on a download's
 * first bytes; the fuzz target test/fuzz/fuzz_tgfile.c calls the same.
 */
#ifndef REGSTAGE_TGFILE_H
#define REGSTAGE_TGFILE_H

#include <stdbool.h>
#include <stddef.h>

#define TGFILE_PATH_MAX 512

/* The file extension, from the content's magic bytes ("bin" when unknown). */
extern const char *sniff_extension(const unsigned char *h, size_t len);

/* Telegram file paths look like "photos/file_12.jpg"; anything else is refused. */
extern bool file_path_is_safe(const char *p, size_t len);

#endif
