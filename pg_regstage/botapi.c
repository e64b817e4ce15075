/*
 * botapi.c — the Telegram Bot API client used by the commit.
 *
 * Each document goes through two requests, the way Telegram serves files:
 *   POST <api>/bot<token>/getFile {"file_id": ...}  ->  result.file_path
 *   GET  <api>/file/bot<token>/<file_path>          ->  the bytes
 * All documents of a registration run concurrently on one curl multi
 * handle; each moves to its download as soon as its getFile answers.
 * Content is streamed into the caller's file descriptor, hashed on the
 * way, and never held in memory.  With an S3 key instead, the download
 * feeds a PUT on the same multi through the upload's bounded buffer
 * (s3.h): the write callback offers each chunk and returns what the upload
 * says (taken, pause, refuse); after every curl_multi_perform the loop
 * resumes whichever side can go on.  A document is done when both its
 * download and its PUT are; the PUT's Content-Length is getFile's
 * file_size, so a download that ends short or runs long stores nothing.
 *
 * The token comes from regstage.bot_token_file or regstage.bot_token, read
 * once per call of botapi_fetch_files.  Requests go through the proxy of
 * regstage.http_proxy or none: never one from the environment
 * (http_proxy, ALL_PROXY ...) that nobody configured for the database.
 *
 * libcurl's handles are malloc'd and must not be jumped over: the whole
 * transfer loop runs inside PG_TRY with cleanup in PG_FINALLY, and the
 * curl callbacks themselves never raise (they record and return 0).
 */
#include "postgres.h"

#include <curl/curl.h>
#include <unistd.h>

#include "common/cryptohash.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "botapi.h"
#include "guc.h"
#include "s3.h"
#include "tgfile.h"

#define GETFILE_BODY_MAX 65536
#define WAIT_SLICE_MS 100		/* bounds cancel latency */
#define CONNECT_TIMEOUT_MAX_MS 10000
#define DOWNLOAD_BUFFER_SIZE (64L * 1024)	/* libcurl receive buffer per download (< the malloc mmap threshold) */

typedef enum XferState
{
	XFER_GETFILE,
	XFER_DOWNLOAD,
	XFER_DONE
} XferState;

typedef struct Transfer
{
	BotApiFile *file;
	XferState	state;
	CURL	   *easy;
	struct curl_slist *headers;
	TimestampTz deadline;		/* getFile + download share download_timeout */

	/* getFile answer */
	char	   *body;
	size_t		body_len;
	bool		body_overflow;
	int64		expected_size;	/* getFile's file_size, or -1 */

	/* download */
	bool		status_checked;
	bool		status_ok;
	int64		written;		/* bytes received (and hashed) */
	char	   *wbuf;			/* received, not yet written to the file */
	size_t		wbuf_len;
	int			write_errno;
	bool		too_big;
	pg_cryptohash_ctx *sha;
	S3Upload   *upload;			/* the PUT this download feeds, or NULL */
	bool		download_done;
	bool		put_done;
	unsigned char head[16];
	int			head_len;

	char		errbuf[CURL_ERROR_SIZE];
} Transfer;

/* The token of the fetch in progress (in its memory context), for URLs and redaction. */
static const char *bot_token = NULL;

/*
 * Replace every occurrence of the bot token in text.  Applied to every
 * string that comes from curl or from the server before it is shown.
 */
char *
botapi_redact(const char *text)
{
	return regstage_redact(text, bot_token ? bot_token : regstage_bot_token, "<token>");
}

/* curl progress callback: abort the transfer when a cancel or terminate is pending. */
static int
xfer_progress_cb(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
				 curl_off_t ultotal, curl_off_t ulnow)
{
	return (QueryCancelPending || ProcDiePending) ? 1 : 0;
}

static size_t
getfile_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Transfer   *t = userdata;
	size_t		n = size * nmemb;

	if (t->body_len + n > GETFILE_BODY_MAX)
	{
		t->body_overflow = true;
		return 0;
	}
	memcpy(t->body + t->body_len, ptr, n);
	t->body_len += n;
	t->body[t->body_len] = '\0';
	return n;
}

/* write(2) all of buf; false with *errno_out set on failure */
static bool
write_all(int fd, const char *buf, size_t len, int *errno_out)
{
	size_t		off = 0;

	while (off < len)
	{
		ssize_t		w = write(fd, buf + off, len - off);

		if (w < 0)
		{
			if (errno == EINTR)
				continue;
			*errno_out = errno;
			return false;
		}
		off += w;
	}
	return true;
}

static bool
flush_download_buffer(Transfer *t)
{
	bool		ok = write_all(t->file->fd, t->wbuf, t->wbuf_len, &t->write_errno);

	t->wbuf_len = 0;
	return ok;
}

static size_t
download_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Transfer   *t = userdata;
	size_t		n = size * nmemb;

	if (!t->status_checked)
	{
		long		code = 0;

		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
		t->status_ok = (code == 200);
		t->status_checked = true;
	}
	if (!t->status_ok)
		return n;				/* an error page: not part of any file */

	if (t->written + (int64) n > (int64) regstage_max_file_size)
	{
		t->too_big = true;
		return 0;
	}
	if (t->upload)
	{
		size_t		r = s3_upload_offer(t->upload, ptr, n);

		if (r != n)
			return r;			/* pause (curl hands the chunk again), or refuse */
	}
	/* libcurl hands over 16 KiB at a time; write the file in larger pieces */
	else if (t->wbuf_len + n > DOWNLOAD_BUFFER_SIZE && !flush_download_buffer(t))
		return 0;
	else if (n >= DOWNLOAD_BUFFER_SIZE)
	{
		if (!write_all(t->file->fd, ptr, n, &t->write_errno))
			return 0;
	}
	else
	{
		memcpy(t->wbuf + t->wbuf_len, ptr, n);
		t->wbuf_len += n;
	}
	if (t->head_len < (int) sizeof(t->head))
	{
		int			k = Min((int) n, (int) sizeof(t->head) - t->head_len);

		memcpy(t->head + t->head_len, ptr, k);
		t->head_len += k;
	}
	if (pg_cryptohash_update(t->sha, (uint8 *) ptr, n) < 0)
	{
		t->write_errno = ENOMEM;
		return 0;
	}
	t->written += n;
	return n;
}

static long
remaining_ms(Transfer *t)
{
	long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), t->deadline);

	return Max(ms, 1);
}

/* Options every request shares. */
static void
easy_common_setup(Transfer *t, const char *url)
{
	CURL	   *e = t->easy;

	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "pg_regstage/1.0");
	/* "" means no proxy, whatever the environment says; NOPROXY "": no exceptions either */
	curl_easy_setopt(e, CURLOPT_PROXY, regstage_http_proxy ? regstage_http_proxy : "");
	curl_easy_setopt(e, CURLOPT_NOPROXY, "");
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, remaining_ms(t));
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
					 Min(remaining_ms(t), (long) CONNECT_TIMEOUT_MAX_MS));
	curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, xfer_progress_cb);
	curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(e, CURLOPT_PRIVATE, t);
	t->errbuf[0] = '\0';
}

static void
start_getfile(Transfer *t, CURLM *multi)
{
	StringInfoData url;
	StringInfoData body;

	initStringInfo(&url);
	appendStringInfo(&url, "%s/bot%s/getFile", regstage_telegram_api_url, bot_token);
	initStringInfo(&body);
	appendStringInfoString(&body, "{\"file_id\": ");
	escape_json(&body, t->file->file_id);
	appendStringInfoChar(&body, '}');

	t->body = palloc(GETFILE_BODY_MAX + 1);
	t->body[0] = '\0';
	t->easy = curl_easy_init();
	t->headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (t->easy == NULL || t->headers == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory in libcurl")));
	easy_common_setup(t, url.data);
	curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(t->easy, CURLOPT_COPYPOSTFIELDS, body.data);
	curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, getfile_write_cb);
	curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	t->state = XFER_GETFILE;
	if (curl_multi_add_handle(multi, t->easy) != CURLM_OK)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not start a libcurl transfer")));
	pfree(url.data);
}

static void
start_download(Transfer *t, CURLM *multi, const char *file_path)
{
	StringInfoData url;

	initStringInfo(&url);
	appendStringInfo(&url, "%s/file/bot%s/%s", regstage_telegram_api_url, bot_token, file_path);
	curl_multi_remove_handle(multi, t->easy);
	curl_easy_reset(t->easy);
	easy_common_setup(t, url.data);
	curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(t->easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) regstage_max_file_size);
	curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, download_write_cb);
	/* receive up to 64 KiB per recv() instead of 16 KiB */
	curl_easy_setopt(t->easy, CURLOPT_BUFFERSIZE, DOWNLOAD_BUFFER_SIZE);
	curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	t->wbuf = t->file->s3_key ? NULL : palloc(DOWNLOAD_BUFFER_SIZE);
	t->wbuf_len = 0;
	t->sha = pg_cryptohash_create(PG_SHA256);
	if (t->sha == NULL || pg_cryptohash_init(t->sha) < 0)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("could not initialise sha256")));
	t->state = XFER_DOWNLOAD;
	if (t->file->s3_key)
	{
		/* the PUT first: the download's first bytes go into it */
		t->upload = s3_upload_begin(t->file->s3_key, t->expected_size);
		s3_upload_attach(t->upload, multi);
	}
	if (curl_multi_add_handle(multi, t->easy) != CURLM_OK)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not start a libcurl transfer")));
	pfree(url.data);
}

/* Raise the error for a transport-level failure of one request. */
static void
raise_transport_error(Transfer *t, CURLcode rc, const char *what)
{
	const char *why = botapi_redact(t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));

	if (rc == CURLE_ABORTED_BY_CALLBACK)
	{
		CHECK_FOR_INTERRUPTS();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("canceling download of %s due to user request", t->file->doc_type)));
	}
	if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
		rc == CURLE_COULDNT_RESOLVE_PROXY)
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to the Bot API at %s for %s of %s: %s",
						regstage_telegram_api_url, what, t->file->doc_type, why),
				 errhint("Check regstage.telegram_api_url, regstage.http_proxy and that this server can reach them.")));
	if (rc == CURLE_OPERATION_TIMEDOUT)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("%s of %s timed out after %d ms", what, t->file->doc_type,
						regstage_download_timeout_ms),
				 errdetail("%s", why),
				 errhint("Check that this server reaches regstage.telegram_api_url quickly; regstage.download_timeout bounds getFile plus the download of one document.")));
	if (rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("%s of %s was cut off after " INT64_FORMAT " bytes: %s",
						what, t->file->doc_type, t->written, why),
				 errhint("The Bot API, or a proxy on the way, closed the connection early; check the network path to regstage.telegram_api_url.")));
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("%s of %s failed: %s", what, t->file->doc_type, why),
			 errhint("Check regstage.telegram_api_url, regstage.http_proxy and the network path to them.")));
}

/* Text of a JSON string member, or NULL. */
static char *
json_get_string(JsonbContainer *c, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(c, key, strlen(key), NULL);

	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* getFile answered: check it, then start the download. */
static void
on_getfile_done(Transfer *t, CURLM *multi)
{
	long		status = 0;
	JsonLexContext *lex;
	Jsonb	   *jb;
	JsonbValue *ok;
	JsonbValue *result;
	JsonbValue *size;
	char	   *file_path;

	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);

	lex = makeJsonLexContextCstringLen(t->body, t->body_len, PG_UTF8, true);
	if (t->body_len == 0 || pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Bot API answered getFile for %s with HTTP %ld and no valid JSON",
						t->file->doc_type, status),
				 errhint("Check that regstage.telegram_api_url points at the Telegram Bot API.")));
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(t->body)));
	ok = JB_ROOT_IS_OBJECT(jb) ? getKeyJsonValueFromContainer(&jb->root, "ok", 2, NULL) : NULL;
	if (ok == NULL || ok->type != jbvBool || !ok->val.boolean)
	{
		char	   *description = JB_ROOT_IS_OBJECT(jb) ? json_get_string(&jb->root, "description") : NULL;

		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Bot API refused getFile for %s (HTTP %ld): %s", t->file->doc_type, status,
						description ? botapi_redact(description) : "no description"),
				 (status == 401 || status == 404)
				 ? errhint("The Bot API did not accept the bot token: check regstage.bot_token_file or regstage.bot_token.")
				 : errhint("The file_id may have expired or belong to another bot: check that the configured token is the token of the bot that received the %s.",
						   t->file->doc_type)));
	}
	result = getKeyJsonValueFromContainer(&jb->root, "result", 6, NULL);
	file_path = (result && result->type == jbvBinary)
		? json_get_string(result->val.binary.data, "file_path") : NULL;
	if (file_path == NULL || !file_path_is_safe(file_path, strlen(file_path)))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Bot API answered getFile for %s without a usable file_path", t->file->doc_type),
				 errdetail("A file_path must be relative, without \"..\", of letters, digits, \"_\", \"-\", \".\" and \"/\"."),
				 errhint("Check that regstage.telegram_api_url points at the Telegram Bot API.")));
	size = getKeyJsonValueFromContainer(result->val.binary.data, "file_size", 9, NULL);
	t->expected_size = -1;
	if (size && size->type == jbvNumeric)
	{
		t->expected_size = DatumGetInt64(DirectFunctionCall1(numeric_int8,
															 NumericGetDatum(size->val.numeric)));
		if (t->expected_size > regstage_max_file_size)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("document %s is " INT64_FORMAT " bytes, larger than regstage.max_file_size (%d bytes)",
							t->file->doc_type, t->expected_size, regstage_max_file_size),
					 errhint("regstage.max_file_size sets the largest document accepted.")));
	}
	if (t->file->s3_key && t->expected_size < 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Bot API answered getFile for %s without file_size", t->file->doc_type),
				 errhint("regstage.storage = 's3' streams each document into a PUT whose length must be known in advance; the Telegram Bot API always reports file_size.")));
	if (t->file->s3_key && t->expected_size == 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("document %s downloaded from the Bot API is empty", t->file->doc_type),
				 errhint("The Bot API served no bytes for this file_id; check that regstage.telegram_api_url points at the Telegram Bot API.")));
	start_download(t, multi, file_path);
}

static void
raise_write_error(Transfer *t)
{
	errno = t->write_errno;
	ereport(ERROR,
			(errcode_for_file_access(),
			 errmsg("could not write document %s to \"%s\": %m", t->file->doc_type, t->file->fd_path),
			 errhint("Check free space and quotas on the file system of regstage.upload_dir.")));
}

/* The download finished: check status, size and content, record the hash. */
static void
on_download_done(Transfer *t)
{
	long		status = 0;
	uint8		digest[32];

	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Bot API answered the download of %s with HTTP %ld", t->file->doc_type, status),
				 errhint("Check regstage.telegram_api_url and any proxy on the way; the Bot API serves a file for an hour after getFile.")));
	if (t->written == 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("document %s downloaded from the Bot API is empty", t->file->doc_type),
				 errhint("The Bot API served no bytes for this file_id; check that regstage.telegram_api_url points at the Telegram Bot API.")));
	if (t->expected_size >= 0 && t->written != t->expected_size)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("download of %s was truncated: " INT64_FORMAT " of " INT64_FORMAT " bytes",
						t->file->doc_type, t->written, t->expected_size),
				 errhint("The connection ended before the size getFile announced; check the network path to regstage.telegram_api_url.")));
	if (!t->upload && !flush_download_buffer(t))
		raise_write_error(t);
	if (pg_cryptohash_final(t->sha, digest, sizeof(digest)) < 0)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not finish sha256")));
	hex_encode((const char *) digest, sizeof(digest), t->file->sha256_hex);
	t->file->sha256_hex[64] = '\0';
	t->file->size = t->written;
	t->file->ext = sniff_extension(t->head, t->head_len);
	t->download_done = true;
	if (t->upload)
		s3_upload_input_done(t->upload);
	if (!t->upload || t->put_done)
		t->state = XFER_DONE;
}

/* The PUT of a document finished: stored, or raise. */
static void
on_put_done(Transfer *t, CURLcode rc)
{
	s3_upload_finish(t->upload, rc);	/* raises unless stored */
	t->put_done = true;
	if (t->download_done)
		t->state = XFER_DONE;
}

static void
on_transfer_done(Transfer *t, CURLcode rc, CURLM *multi)
{
	if (rc == CURLE_WRITE_ERROR || rc == CURLE_FILESIZE_EXCEEDED)
	{
		if (t->too_big || rc == CURLE_FILESIZE_EXCEEDED)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("document %s is larger than regstage.max_file_size (%d bytes)",
							t->file->doc_type, regstage_max_file_size),
					 errhint("regstage.max_file_size sets the largest document accepted.")));
		if (t->upload)
			s3_upload_check_input(t->upload);	/* more bytes than file_size */
		if (t->write_errno != 0)
			raise_write_error(t);
		if (t->body_overflow)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("Bot API answered getFile for %s with more than %d bytes", t->file->doc_type, GETFILE_BODY_MAX),
					 errhint("Check that regstage.telegram_api_url points at the Telegram Bot API.")));
	}
	if (rc != CURLE_OK)
		raise_transport_error(t, rc, t->state == XFER_GETFILE ? "getFile" : "download");
	if (t->state == XFER_GETFILE)
		on_getfile_done(t, multi);
	else
		on_download_done(t);
}

/*
 * The backend's multi handle, created on first use and kept: its connection
 * cache lets the next registration reuse the connections to the Bot API.
 */
static CURLM *multi_handle = NULL;

static void
botapi_on_exit(int code, Datum arg)
{
	if (multi_handle)
		curl_multi_cleanup(multi_handle);
	multi_handle = NULL;
}

static CURLM *
botapi_multi(void)
{
	if (multi_handle == NULL)
	{
		multi_handle = curl_multi_init();
		if (multi_handle == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory in libcurl")));
		curl_multi_setopt(multi_handle, CURLMOPT_MAXCONNECTS, 8L);
		on_proc_exit(botapi_on_exit, (Datum) 0);
	}
	return multi_handle;
}

/*
 * One LOG line for the start and one for the end of a registration's
 * downloads (not one per document: at hundreds of commits per second the
 * log write is a measurable part of a commit).  No STATEMENT line: the
 * telegram_id says which call it was.
 */
static void
log_downloads(int64 telegram_id, BotApiFile *files, int nfiles, bool finished)
{
	StringInfoData what;

	initStringInfo(&what);
	for (int i = 0; i < nfiles; i++)
	{
		appendStringInfo(&what, "%s%s", i ? ", " : "", files[i].doc_type);
		if (finished)
			appendStringInfo(&what, " " INT64_FORMAT " bytes", files[i].size);
	}
	ereport(LOG,
			(errmsg("pg_regstage: telegram_id " INT64_FORMAT ": %s %s",
					telegram_id, finished ? "downloaded" : "downloading", what.data),
			 errhidestmt(true)));
	pfree(what.data);
}

/*
 * Fetch every file concurrently.  Returns when all are downloaded; raises on
 * the first failure (the caller's transaction then removes the files).
 */
void
botapi_fetch_files(int64 telegram_id, BotApiFile *files, int nfiles)
{
	Transfer   *xfers = palloc0(sizeof(Transfer) * nfiles);
	CURLM	   *multi;
	char	   *token = regstage_bot_token_value();

	if (token[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("regstage.bot_token is not set"),
				 errhint("A superuser must point regstage.bot_token_file at a file holding the token (readable by the server's OS user only), e.g. ALTER SYSTEM SET regstage.bot_token_file = '/etc/regstage/bot_token'; SELECT pg_reload_conf();")));

	PG_TRY();
	{
		int			pending = nfiles;
		TimestampTz start = GetCurrentTimestamp();

		bot_token = token;

		multi = botapi_multi();
		for (int i = 0; i < nfiles; i++)
		{
			xfers[i].file = &files[i];
			xfers[i].deadline = TimestampTzPlusMilliseconds(start, regstage_download_timeout_ms);
			start_getfile(&xfers[i], multi);
		}
		log_downloads(telegram_id, files, nfiles, false);

		while (pending > 0)
		{
			int			running;
			int			queued;
			CURLMsg    *msg;
			bool		resumed = false;

			CHECK_FOR_INTERRUPTS();
			if (curl_multi_perform(multi, &running) != CURLM_OK)
				ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("libcurl multi transfer failed")));
			while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
			{
				Transfer   *t = NULL;

				if (msg->msg != CURLMSG_DONE)
					continue;
				for (int i = 0; i < nfiles && t == NULL; i++)
					if (xfers[i].upload && s3_upload_owns(xfers[i].upload, msg->easy_handle))
						t = &xfers[i];
				if (t)
					on_put_done(t, msg->data.result);
				else
				{
					curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
					on_transfer_done(t, msg->data.result, multi);
				}
				if (t->state == XFER_DONE)
					pending--;
			}
			/* streamed PUTs: resume whichever side can go on */
			for (int i = 0; i < nfiles; i++)
				if (xfers[i].upload && !xfers[i].put_done &&
					s3_upload_pump(xfers[i].upload, xfers[i].download_done ? NULL : xfers[i].easy))
					resumed = true;
			if (pending > 0 && !resumed)
				curl_multi_wait(multi, NULL, 0, WAIT_SLICE_MS, NULL);
		}
		log_downloads(telegram_id, files, nfiles, true);
	}
	PG_FINALLY();
	{
		bot_token = NULL;
		for (int i = 0; i < nfiles; i++)
		{
			Transfer   *t = &xfers[i];

			if (t->upload)
				s3_upload_release(t->upload);
			if (t->easy)
			{
				curl_multi_remove_handle(multi_handle, t->easy);
				curl_easy_cleanup(t->easy);
			}
			if (t->headers)
				curl_slist_free_all(t->headers);
			if (t->sha)
				pg_cryptohash_free(t->sha);
		}
	}
	PG_END_TRY();
}
