/*
 * botapi.h — the Telegram Bot API client used by the commit.
 *
 * getFile, then the file download, for every document at once (curl
 * multi), streamed into caller-supplied file descriptors, or into PUTs to
 * the object store on the same multi, with size caps, sha256 and content
 * sniffing.  Cancel and statement_timeout interrupt it.
 * The bot token never appears in any text this module produces.
 */
#ifndef REGSTAGE_BOTAPI_H
#define REGSTAGE_BOTAPI_H

/* One document to fetch; the caller fills the inputs. */
typedef struct BotApiFile
{
	/* in */
	const char *doc_type;
	const char *file_id;
	int			fd;				/* where the content is written, or */
	const char *fd_path;		/* for messages */
	const char *s3_key;			/* non-NULL: streamed into this object instead
								 * (its delete-on-abort queued by the caller) */
	/* out */
	int64		size;
	char		sha256_hex[65];
	const char *ext;			/* from the content's magic bytes */
} BotApiFile;

extern void botapi_fetch_files(int64 telegram_id, BotApiFile *files, int nfiles);
extern char *botapi_redact(const char *text);

#endif
