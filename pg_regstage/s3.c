/*
 * s3.c — the S3 client: settings, the secret key file, PUT (streamed or
 * whole), HEAD, DELETE, ListObjectsV2, presigned GET URLs, and SQL entry
 * points for checks and tests.
 *
 * Every request is one curl easy handle on a curl multi, driven in slices
 * of S3_WAIT_SLICE_MS so that cancel and statement_timeout interrupt it
 * promptly.  libcurl's handles are malloc'd: each request runs inside
 * PG_TRY with the handles freed in PG_FINALLY, and the curl callbacks never
 * raise (they record and return).  Errors are raised only after the
 * handles are gone.
 *
 * Never overwritten: a PUT carries If-None-Match: * (stores that support
 * conditional writes refuse an existing key with 412) and the keys
 * themselves carry 128 random bits, because a streamed PUT starts before
 * the content hash is known and some stores ignore If-None-Match.
 *
 * The payload of a streamed PUT is not hashed into the signature
 * (x-amz-content-sha256: UNSIGNED-PAYLOAD): its hash is known only after
 * the last byte, and the chunked signed-payload form would need a signer
 * per chunk.  S3 still checks the length: the PUT declares Content-Length
 * (getFile's file_size) and is aborted if the producer delivers fewer or
 * more bytes, so no partial object is ever stored.  Bodyless requests sign
 * the hash of the empty payload.
 *
 * The secret access key never sits in a setting: regstage.s3_secret_key_file
 * names a file that only the server's OS user may read.  It is read when
 * needed and re-read whenever the file (or the setting) changes; no message
 * contains it, and texts from the service are redacted of it all the same.
 */
#include "postgres.h"

#include <ctype.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "guc.h"
#include "s3.h"
#include "s3_sign.h"
#include "s3_xml.h"

#define S3_WAIT_SLICE_MS 50		/* bounds cancel latency */
#define S3_CONNECT_TIMEOUT_MAX_MS 10000
#define S3_BODY_MAX (8 * 1024 * 1024)	/* a ListObjectsV2 page of 1000 keys is < 1 MB */
#define S3_RESUME_ROOM (64 * 1024)	/* resume a paused producer when this much is free */
#define S3_KEY_MAX 900			/* S3 allows 1024 bytes; leave room for the prefixes */

/* ---- settings ------------------------------------------------------------ */

int			regstage_storage = REGSTAGE_STORAGE_LOCAL;
char	   *regstage_s3_endpoint = NULL;
char	   *regstage_s3_bucket = NULL;
char	   *regstage_s3_region = NULL;
char	   *regstage_s3_prefix = NULL;
char	   *regstage_s3_access_key = NULL;
char	   *regstage_s3_secret_key_file = NULL;

static const struct config_enum_entry storage_options[] = {
	{"local", REGSTAGE_STORAGE_LOCAL, false},
	{"s3", REGSTAGE_STORAGE_S3, false},
	{NULL, 0, false}
};

/* the secret, as last read; malloc'd-like (TopMemoryContext) and wiped on replace */
static char *secret_value = NULL;

static void
forget_secret(void)
{
	if (secret_value)
	{
		explicit_bzero(secret_value, strlen(secret_value));
		pfree(secret_value);
	}
	secret_value = NULL;
}

static void
assign_secret_key_file(const char *newval, void *extra)
{
	forget_secret();
}

static bool
key_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		c == '-' || c == '.' || c == '_' || c == '~';
}

/*
 * A "/"-separated path of unreserved characters without empty, "." or ".."
 * segments: such a key needs no encoding, so what is signed, sent and
 * listed is byte for byte the same, and no URL normalisation can alter it.
 * allow_trailing_slash: a prefix may end in "/".
 */
static bool
valid_key_path(const char *s, size_t maxlen, bool allow_trailing_slash)
{
	size_t		len = strlen(s);
	const char *seg = s;

	if (len == 0 || len > maxlen || s[0] == '/')
		return false;
	for (const char *p = s;; p++)
	{
		if (*p == '/' || *p == '\0')
		{
			size_t		n = p - seg;

			if (n == 0 && !(*p == '\0' && allow_trailing_slash && p > s))
				return false;
			if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
				return false;
			if (*p == '\0')
				return true;
			seg = p + 1;
		}
		else if (!key_char(*p))
			return false;
	}
}

static bool
check_s3_prefix(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || **newval == '\0')
		return true;
	if (!valid_key_path(*newval, 256, true))
	{
		GUC_check_errdetail("The prefix must be up to 256 characters of A-Z, a-z, 0-9, \"-\", \".\", \"_\", \"~\" and \"/\", "
							"not start with \"/\" and have no empty, \".\" or \"..\" segment.");
		return false;
	}
	return true;
}

static bool
check_s3_endpoint(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;
	const char *host;

	if (s == NULL || *s == '\0')
		return true;
	if (strncmp(s, "http://", 7) == 0)
		host = s + 7;
	else if (strncmp(s, "https://", 8) == 0)
		host = s + 8;
	else
	{
		GUC_check_errdetail("The endpoint must start with http:// or https://.");
		return false;
	}
	if (*host == '\0' || *host == '/')
	{
		GUC_check_errdetail("The endpoint has no host.");
		return false;
	}
	for (const char *p = host; *p; p++)
		if (*p == '?' || *p == '#' || *p == '@' || *p == '%' || (unsigned char) *p <= ' ' ||
			(*p == '/' && p[1] != '\0'))
		{
			GUC_check_errdetail("The endpoint must be scheme://host[:port] without a path, query or user name; the bucket is regstage.s3_bucket.");
			return false;
		}
	return true;
}

/* Is s made of a-z, 0-9 and the characters in punct only (bucket and region names)? */
static bool
lower_name(const char *s, const char *punct)
{
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr(punct, *p) != NULL))
			return false;
	return true;
}

static bool
check_s3_bucket(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;
	size_t		len = s ? strlen(s) : 0;

	if (len == 0)
		return true;
	if (len < 3 || len > 63)
	{
		GUC_check_errdetail("A bucket name has 3-63 characters.");
		return false;
	}
	if (!lower_name(s, "-."))
	{
		GUC_check_errdetail("A bucket name has only a-z, 0-9, \"-\" and \".\".");
		return false;
	}
	return true;
}

static bool
check_s3_region(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;
	size_t		len = s ? strlen(s) : 0;

	if (len == 0 || len > 64)
	{
		GUC_check_errdetail("A region has 1-64 characters.");
		return false;
	}
	if (!lower_name(s, "-_"))
	{
		GUC_check_errdetail("A region has only a-z, 0-9, \"-\" and \"_\".");
		return false;
	}
	return true;
}

static bool
check_s3_access_key(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;

	if (s == NULL || *s == '\0')
		return true;
	if (strlen(s) > 128)
	{
		GUC_check_errdetail("An access key has at most 128 characters.");
		return false;
	}
	for (const char *p = s; *p; p++)
		if ((unsigned char) *p <= ' ' || (unsigned char) *p >= 0x7f || *p == '/')
		{
			GUC_check_errdetail("An access key has no spaces, \"/\" or non-ASCII characters.");
			return false;
		}
	return true;
}

void
s3_define_gucs(void)
{
	DefineCustomEnumVariable("regstage.storage",
							 "Where document files are stored: local (regstage.upload_dir) or s3.",
							 NULL, &regstage_storage, REGSTAGE_STORAGE_LOCAL, storage_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.s3_endpoint",
							   "URL of the S3-compatible service, scheme://host[:port] (requests are path-style).",
							   NULL, &regstage_s3_endpoint, "",
							   PGC_SUSET, 0, check_s3_endpoint, NULL, NULL);
	DefineCustomStringVariable("regstage.s3_bucket",
							   "Bucket holding the documents.",
							   NULL, &regstage_s3_bucket, "",
							   PGC_SUSET, 0, check_s3_bucket, NULL, NULL);
	DefineCustomStringVariable("regstage.s3_region",
							   "Region the requests are signed for (SigV4).",
							   NULL, &regstage_s3_region, "us-east-1",
							   PGC_SUSET, 0, check_s3_region, NULL, NULL);
	DefineCustomStringVariable("regstage.s3_prefix",
							   "Key prefix in the bucket; each database adds its own <database name>/ below it.",
							   NULL, &regstage_s3_prefix, "",
							   PGC_SUSET, 0, check_s3_prefix, NULL, NULL);
	DefineCustomStringVariable("regstage.s3_access_key",
							   "Access key id the requests are signed with.",
							   NULL, &regstage_s3_access_key, "",
							   PGC_SUSET, 0, check_s3_access_key, NULL, NULL);
	DefineCustomStringVariable("regstage.s3_secret_key_file",
							   "Absolute path of the file holding the secret access key.",
							   "The file must belong to the server's OS user and have mode 0600 or 0400; it is re-read when it changes.",
							   &regstage_s3_secret_key_file, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY, regstage_check_absolute_or_empty,
							   assign_secret_key_file, NULL);
}

/* ---- configuration at use --------------------------------------------------- */

static void
require_setting(const char *name, const char *value)
{
	if (value == NULL || value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is not set", name),
				 errhint("S3 storage needs regstage.s3_endpoint, regstage.s3_bucket, regstage.s3_access_key and regstage.s3_secret_key_file.")));
}

/*
 * The secret access key, read from regstage.s3_secret_key_file on every
 * call (a changed file takes effect with the next request), with the
 * checks every secret file gets (guc.c).  The last value read stays in
 * secret_value for redact_secret().
 */
static const char *
s3_secret(void)
{
	const char *path = regstage_s3_secret_key_file;
	char		buf[REGSTAGE_SECRET_MAX + 2];
	char		why[MAXPGPATH + 128];
	int			code;

	require_setting("regstage.s3_secret_key_file", path);
	code = regstage_secret_file_read("regstage.s3_secret_key_file", path, buf, sizeof(buf),
									 why, sizeof(why));
	if (code != 0)
		ereport(ERROR,
				(errcode(code),
				 errmsg("%s", why),
				 errhint("The file must be a regular file owned by the OS user running PostgreSQL, with mode 0600 or 0400, holding the secret access key and at most one trailing newline.")));
	if (secret_value == NULL || strcmp(secret_value, buf) != 0)
	{
		forget_secret();
		secret_value = MemoryContextStrdup(TopMemoryContext, buf);
	}
	explicit_bzero(buf, sizeof(buf));
	return secret_value;
}

/* Copy of text with the secret replaced (texts from curl and the service). */
static char *
redact_secret(const char *text)
{
	return regstage_redact(text, secret_value, "<secret>");
}

/* ---- keys --------------------------------------------------------------- */

/* The database's namespace segment: injective, and never "." or "..". */
static void
append_database_segment(StringInfo out)
{
	const char *db;

	if (!IsTransactionState())
		elog(ERROR, "S3 storage is used outside a transaction");
	db = get_database_name(MyDatabaseId);
	if (db == NULL)
		elog(ERROR, "database %u does not exist", MyDatabaseId);
	for (const char *p = db; *p; p++)
	{
		char		c = *p;

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '-' || (c == '.' && p != db))
			appendStringInfoChar(out, c);
		else
			appendStringInfo(out, "~%02X", (unsigned char) c);
	}
}

/* "[<prefix>/]<database>/" */
static char *
namespace_prefix(void)
{
	StringInfoData s;
	const char *prefix = regstage_s3_prefix ? regstage_s3_prefix : "";
	size_t		plen = strlen(prefix);

	initStringInfo(&s);
	while (plen > 0 && prefix[plen - 1] == '/')
		plen--;
	if (plen > 0)
	{
		appendBinaryStringInfo(&s, prefix, plen);
		appendStringInfoChar(&s, '/');
	}
	append_database_segment(&s);
	appendStringInfoChar(&s, '/');
	return s.data;
}

static void
check_key(const char *key, bool is_prefix)
{
	if (is_prefix && key[0] == '\0')
		return;
	if (!valid_key_path(key, S3_KEY_MAX, is_prefix))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid S3 %s \"%s\"", is_prefix ? "prefix" : "key", key),
				 errdetail("A key is up to %d characters of A-Z, a-z, 0-9, \"-\", \".\", \"_\", \"~\" and \"/\", "
						   "without a leading \"/\" and without empty, \".\" or \"..\" segments.", S3_KEY_MAX)));
}

bool
s3_key_is_valid(const char *key)
{
	return valid_key_path(key, S3_KEY_MAX, false);
}

char *
s3_object_key(const char *key)
{
	check_key(key, false);
	return psprintf("%s%s", namespace_prefix(), key);
}

char *
s3_document_key(int64 telegram_id, const char *doc_type)
{
	uint8		rnd[16];
	char		hex[33];

	if (!pg_strong_random(rnd, sizeof(rnd)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random S3 key suffix")));
	hex_encode((const char *) rnd, sizeof(rnd), hex);
	hex[32] = '\0';
	return psprintf(INT64_FORMAT "/%s-%s", telegram_id, doc_type, hex);
}

static const char *
endpoint_base(void)
{
	const char *e = regstage_s3_endpoint;
	size_t		len;

	require_setting("regstage.s3_endpoint", e);
	len = strlen(e);
	while (len > 0 && e[len - 1] == '/')
		len--;
	return pnstrdup(e, len);
}

/* <endpoint>/<bucket>/<object key> (keys need no encoding, see valid_key_path) */
static char *
object_url(const char *object_key)
{
	require_setting("regstage.s3_bucket", regstage_s3_bucket);
	return psprintf("%s/%s/%s", endpoint_base(), regstage_s3_bucket, object_key);
}

/* ---- one request ------------------------------------------------------------ */

typedef struct S3Call
{
	const char *op;				/* "PUT", "HEAD", ... for messages */
	const char *object_key;		/* for messages */
	MemoryContext mcxt;			/* where the answer body goes */
	CURL	   *easy;
	struct curl_slist *headers;
	CURLM	   *multi;			/* the multi easy is on, or NULL */
	bool		signed_request;

	/* the answer */
	CURLcode	result;
	long		status;
	curl_off_t	content_length;
	char	   *body;
	size_t		body_len;
	size_t		body_cap;
	bool		body_overflow;
	char		errbuf[CURL_ERROR_SIZE];
} S3Call;

static void
call_init(S3Call *c, const char *op, const char *object_key)
{
	memset(c, 0, sizeof(*c));
	c->op = op;
	c->object_key = object_key;
	c->mcxt = CurrentMemoryContext;
	c->content_length = -1;
	c->signed_request = true;
}

/* curl progress callback: stop the transfer when a cancel or terminate is pending */
static int
s3_progress_cb(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
			   curl_off_t ultotal, curl_off_t ulnow)
{
	return (QueryCancelPending || ProcDiePending) ? 1 : 0;
}

/* Collect the answer body, up to S3_BODY_MAX; never raises. */
static size_t
s3_body_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	S3Call	   *c = userdata;
	size_t		n = size * nmemb;

	if (c->body_len + n + 1 > c->body_cap)
	{
		size_t		cap = Max(c->body_cap * 2, 16384);
		char	   *nb;

		while (cap < c->body_len + n + 1)
			cap *= 2;
		if (cap > S3_BODY_MAX + 1)
		{
			c->body_overflow = true;
			return 0;
		}
		nb = MemoryContextAllocExtended(c->mcxt, cap, MCXT_ALLOC_NO_OOM);
		if (nb == NULL)
		{
			c->body_overflow = true;
			return 0;
		}
		if (c->body)
		{
			memcpy(nb, c->body, c->body_len);
			pfree(c->body);
		}
		c->body = nb;
		c->body_cap = cap;
	}
	memcpy(c->body + c->body_len, ptr, n);
	c->body_len += n;
	c->body[c->body_len] = '\0';
	return n;
}

static void
add_header(S3Call *c, const char *h)
{
	struct curl_slist *l = curl_slist_append(c->headers, h);

	if (l == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory in libcurl")));
	c->headers = l;
}

/*
 * Create the easy handle for method on url.  Everything that may raise for
 * a reason other than memory (settings, the secret file) happens before
 * curl_easy_init; the caller's PG_FINALLY calls call_release.
 */
static void
call_prepare(S3Call *c, const char *method, const char *url, const char *payload_hash)
{
	const char *secret = NULL;
	char	   *sigv4 = NULL;
	long		timeout = regstage_download_timeout_ms;
	CURL	   *e;

	if (c->signed_request)
	{
		require_setting("regstage.s3_access_key", regstage_s3_access_key);
		secret = s3_secret();
		sigv4 = psprintf("aws:amz:%s:s3", regstage_s3_region);
	}

	c->easy = e = curl_easy_init();
	if (e == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory in libcurl")));
	if (c->signed_request)
		add_header(c, psprintf("x-amz-content-sha256: %s", payload_hash));

	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_PROXY, "");	/* never a proxy from the environment */
	curl_easy_setopt(e, CURLOPT_USERAGENT, "pg_regstage/1.1");
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, Min(timeout, (long) S3_CONNECT_TIMEOUT_MAX_MS));
	curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, s3_progress_cb);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s3_body_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
	if (c->signed_request)
	{
		curl_easy_setopt(e, CURLOPT_AWS_SIGV4, sigv4);
		curl_easy_setopt(e, CURLOPT_USERNAME, regstage_s3_access_key);
		curl_easy_setopt(e, CURLOPT_PASSWORD, secret);
	}
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	else if (strcmp(method, "DELETE") == 0)
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
	c->errbuf[0] = '\0';
}

/* Set the headers (after the caller added its own) on the handle. */
static void
call_set_headers(S3Call *c)
{
	curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
}

/* After the transfer: status and length, then forget the handles. */
static void
call_collect(S3Call *c, CURLcode result)
{
	c->result = result;
	curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
	curl_easy_getinfo(c->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &c->content_length);
}

static void
call_release(S3Call *c)
{
	if (c->easy)
	{
		if (c->multi)
			curl_multi_remove_handle(c->multi, c->easy);
		curl_easy_cleanup(c->easy);
	}
	if (c->headers)
		curl_slist_free_all(c->headers);
	c->easy = NULL;
	c->multi = NULL;
	c->headers = NULL;
}

/*
 * The backend's own multi handle, created on first use and kept: its
 * connection cache lets the next request reuse the connection.
 */
static CURLM *s3_multi_handle = NULL;

static void
s3_on_exit(int code, Datum arg)
{
	if (s3_multi_handle)
		curl_multi_cleanup(s3_multi_handle);
	s3_multi_handle = NULL;
	forget_secret();
}

static CURLM *
s3_multi(void)
{
	if (s3_multi_handle == NULL)
	{
		s3_multi_handle = curl_multi_init();
		if (s3_multi_handle == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory in libcurl")));
		curl_multi_setopt(s3_multi_handle, CURLMOPT_MAXCONNECTS, 4L);
		on_proc_exit(s3_on_exit, (Datum) 0);
	}
	return s3_multi_handle;
}

/* Run one prepared request to its end on the backend's multi. */
static void
call_run(S3Call *c)
{
	CURLM	   *m = s3_multi();
	bool		done = false;

	call_set_headers(c);
	if (curl_multi_add_handle(m, c->easy) != CURLM_OK)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not start a libcurl transfer")));
	c->multi = m;
	while (!done)
	{
		int			running;
		int			queued;
		CURLMsg    *msg;

		CHECK_FOR_INTERRUPTS();
		if (curl_multi_perform(m, &running) != CURLM_OK)
			ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("libcurl multi transfer failed")));
		while ((msg = curl_multi_info_read(m, &queued)) != NULL)
			if (msg->msg == CURLMSG_DONE && msg->easy_handle == c->easy)
			{
				call_collect(c, msg->data.result);
				done = true;
			}
		if (!done)
			curl_multi_wait(m, NULL, 0, S3_WAIT_SLICE_MS, NULL);
	}
}

/* ---- errors ------------------------------------------------------------------ */

typedef struct S3ErrorDoc
{
	char	   *code;
	char	   *message;
} S3ErrorDoc;

static int
error_doc_cb(void *arg, const char *path, const char *text, size_t len)
{
	S3ErrorDoc *d = arg;

	if (text == NULL)
		return 0;
	if (strcmp(path, "Error/Code") == 0)
		d->code = pnstrdup(text, Min(len, 64));
	else if (strcmp(path, "Error/Message") == 0)
		d->message = pnstrdup(text, Min(len, 300));
	return 0;
}

/* A single-line, printable, redacted copy for a message. */
static char *
clean_text(const char *s)
{
	char	   *out = redact_secret(s);

	for (char *p = out; *p; p++)
		if ((unsigned char) *p < ' ' || *p == 0x7f)
			*p = ' ';
	return out;
}

/* Raise the error for a failed transfer (not an HTTP error status). */
static void
raise_transport_error(S3Call *c)
{
	char	   *why = clean_text(c->errbuf[0] ? c->errbuf : curl_easy_strerror(c->result));

	switch (c->result)
	{
		case CURLE_ABORTED_BY_CALLBACK:
			CHECK_FOR_INTERRUPTS();
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("canceling S3 %s of \"%s\" due to user request", c->op, c->object_key)));
			break;
		case CURLE_COULDNT_CONNECT:
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_RESOLVE_PROXY:
			ereport(ERROR,
					(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
					 errmsg("could not connect to S3 at %s for %s of \"%s\": %s",
							regstage_s3_endpoint, c->op, c->object_key, why),
					 errhint("Check regstage.s3_endpoint and that the object store is running; nothing was stored.")));
			break;
		case CURLE_OPERATION_TIMEDOUT:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("S3 %s of \"%s\" timed out after %d ms", c->op, c->object_key,
							regstage_download_timeout_ms),
					 errdetail("%s", why),
					 errhint("regstage.download_timeout bounds each S3 request; check the object store's health.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("S3 %s of \"%s\" failed: %s", c->op, c->object_key, why),
					 errhint("Check regstage.s3_endpoint and the network; the request can be retried.")));
	}
}

/*
 * Raise unless the request got one of the accepted statuses (0-terminated
 * list).  The service's <Error><Code> and <Message> go into the message.
 */
static void
call_check(S3Call *c, const long *ok)
{
	S3ErrorDoc	doc = {NULL, NULL};
	const char *code;
	char	   *message;

	if (c->result != CURLE_OK)
	{
		if (c->result == CURLE_WRITE_ERROR && c->body_overflow)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("S3 %s of \"%s\" answered with more than %d bytes", c->op, c->object_key, S3_BODY_MAX),
					 errhint("Check that regstage.s3_endpoint is an S3-compatible service.")));
		raise_transport_error(c);
	}
	for (const long *s = ok; *s; s++)
		if (c->status == *s)
			return;

	if (c->body_len > 0)
	{
		char	   *scratch = palloc(c->body_len + 1);

		if (s3_xml_parse(c->body, c->body_len, scratch, c->body_len + 1, error_doc_cb, &doc) != 0)
			doc.code = doc.message = NULL;
	}
	code = doc.code ? clean_text(doc.code) : "";
	message = doc.message ? clean_text(doc.message) : pstrdup(c->body_len ? "no S3 error document" : "no body");

	if (c->status == 403 || c->status == 401)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("S3 refused %s of \"%s\": HTTP %ld %s: %s", c->op, c->object_key, c->status, code, message),
				 errhint("Check regstage.s3_access_key, the key in regstage.s3_secret_key_file, regstage.s3_region, and that the bucket policy allows "
						 "s3:PutObject, s3:GetObject, s3:DeleteObject and s3:ListBucket on the prefix.")));
	if (strcmp(code, "NoSuchBucket") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FILE),
				 errmsg("S3 bucket \"%s\" does not exist (%s of \"%s\"): %s",
						regstage_s3_bucket, c->op, c->object_key, message),
				 errhint("Create the bucket, or correct regstage.s3_bucket and regstage.s3_endpoint.")));
	if (c->status == 412)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("S3 object \"%s\" already exists; %s refused: HTTP 412 %s", c->object_key, c->op, code),
				 errhint("Objects are never overwritten; every document key carries a random suffix, so retry to get a new one.")));
	if (c->status >= 500 || c->status == 429)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("S3 %s of \"%s\" failed: HTTP %ld %s: %s", c->op, c->object_key, c->status, code, message),
				 errhint("The object store is failing or overloaded; the request can be retried later.")));
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("S3 %s of \"%s\" failed: HTTP %ld %s: %s", c->op, c->object_key, c->status, code, message),
			 errhint("See the object store's documentation of error code \"%s\".", code)));
}

static const long status_200[] = {200, 0};

/* ---- the streamed PUT ------------------------------------------------------- */

struct S3Upload
{
	S3Call		call;
	int64		content_length;
	int64		offered;		/* bytes accepted from the producer */
	int64		sent;			/* bytes handed to curl */
	const char *src;			/* whole-buffer mode (s3_put): read from here */
	char	   *ring;			/* bounded buffer between producer and PUT */
	size_t		cap;
	size_t		rpos;
	size_t		used;
	size_t		high_water;
	bool		input_done;
	bool		producer_paused;
	bool		put_paused;
	bool		too_long;		/* the producer offered more than content_length */
	bool		short_input;	/* the input ended before content_length */
	bool		finished;
};

/* curl read callback of the PUT: drain the ring (or the source buffer); never raises */
static size_t
upload_read_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
	S3Upload   *u = userdata;
	size_t		want = size * nitems;
	size_t		n;
	size_t		first;

	if (u->src)
	{
		n = Min(want, (size_t) (u->content_length - u->sent));
		memcpy(buf, u->src + u->sent, n);
		u->sent += n;
		return n;
	}
	if (u->used == 0)
	{
		if (!u->input_done)
		{
			u->put_paused = true;
			return CURL_READFUNC_PAUSE;
		}
		if (u->sent < u->content_length)
		{
			u->short_input = true;
			return CURL_READFUNC_ABORT;
		}
		return 0;
	}
	n = Min(want, u->used);
	first = Min(n, u->cap - u->rpos);
	memcpy(buf, u->ring + u->rpos, first);
	memcpy(buf + first, u->ring, n - first);
	u->rpos = (u->rpos + n) % u->cap;
	u->used -= n;
	u->sent += n;
	return n;
}

/*
 * Start a PUT of content_length bytes to key (relative to the database's
 * namespace).  The caller then attaches it to its multi; from then on it
 * must call s3_upload_release (PG_FINALLY) whatever happens.
 */
S3Upload *
s3_upload_begin(const char *key, int64 content_length)
{
	S3Upload   *u = palloc0(sizeof(S3Upload));
	char	   *object_key = s3_object_key(key);
	char	   *url = object_url(object_key);

	if (content_length < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("S3 PUT of \"%s\" needs the content length in advance", object_key),
				 errhint("S3 needs Content-Length on a PUT; the Bot API's getFile gives file_size.")));
	call_init(&u->call, "PUT", object_key);
	u->content_length = content_length;
	u->cap = S3_UPLOAD_BUFFER_SIZE;
	u->ring = palloc(u->cap);

	PG_TRY();
	{
		call_prepare(&u->call, "PUT", url, "UNSIGNED-PAYLOAD");
		add_header(&u->call, "If-None-Match: *");
		curl_easy_setopt(u->call.easy, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(u->call.easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t) content_length);
		curl_easy_setopt(u->call.easy, CURLOPT_READFUNCTION, upload_read_cb);
		curl_easy_setopt(u->call.easy, CURLOPT_READDATA, u);
		call_set_headers(&u->call);
	}
	PG_CATCH();
	{
		call_release(&u->call);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return u;
}

/* Put the PUT on the caller's multi. */
void
s3_upload_attach(S3Upload *u, CURLM *multi)
{
	if (curl_multi_add_handle(multi, u->call.easy) != CURLM_OK)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not start a libcurl transfer")));
	u->call.multi = multi;
}

/*
 * For the producer's curl write callback: take len bytes, or ask it to
 * pause (the buffer is full), or refuse (more than content_length).
 * Returns what the write callback should return; never raises.
 */
size_t
s3_upload_offer(S3Upload *u, const char *buf, size_t len)
{
	size_t		wpos;
	size_t		first;

	if (u->offered + (int64) len > u->content_length || len > u->cap)
	{
		u->too_long = true;
		return 0;
	}
	if (len > u->cap - u->used)
	{
		u->producer_paused = true;
		return CURL_WRITEFUNC_PAUSE;
	}
	wpos = (u->rpos + u->used) % u->cap;
	first = Min(len, u->cap - wpos);
	memcpy(u->ring + wpos, buf, first);
	memcpy(u->ring, buf + first, len - first);
	u->used += len;
	u->offered += len;
	u->high_water = Max(u->high_water, u->used);
	return len;
}

/* The producer delivered everything it will. */
void
s3_upload_input_done(S3Upload *u)
{
	u->input_done = true;
}

/*
 * Resume the PUT when there is data (or the end) for it, and the producer
 * when the buffer has room again.  Returns true if it resumed something
 * (the caller should then perform again without waiting).  Called outside
 * curl callbacks, after curl_multi_perform.
 */
bool
s3_upload_pump(S3Upload *u, CURL *producer)
{
	bool		resumed = false;

	if (u->put_paused && !u->finished && (u->used > 0 || u->input_done))
	{
		u->put_paused = false;
		curl_easy_pause(u->call.easy, CURLPAUSE_CONT);
		resumed = true;
	}
	if (producer && u->producer_paused && u->cap - u->used >= S3_RESUME_ROOM)
	{
		u->producer_paused = false;
		curl_easy_pause(producer, CURLPAUSE_CONT);
		resumed = true;
	}
	return resumed;
}

bool
s3_upload_owns(S3Upload *u, CURL *easy)
{
	return easy != NULL && easy == u->call.easy;
}

size_t
s3_upload_high_water(S3Upload *u)
{
	return u->high_water;
}

/* For the producer's error path: raise if it failed because it offered too much. */
void
s3_upload_check_input(S3Upload *u)
{
	if (u->too_long)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("S3 PUT of \"%s\" was offered more than its " INT64_FORMAT " bytes",
						u->call.object_key, u->content_length),
				 errhint("The source delivered more bytes than it announced; nothing was stored.")));
}

/* The PUT's handle finished with result: release it, raise unless stored. */
void
s3_upload_finish(S3Upload *u, CURLcode result)
{
	S3Call	   *c = &u->call;

	call_collect(c, result);
	call_release(c);
	u->finished = true;
	s3_upload_check_input(u);
	if (u->short_input)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("S3 PUT of \"%s\" got " INT64_FORMAT " of its " INT64_FORMAT " bytes",
						c->object_key, u->offered, u->content_length),
				 errhint("The source ended early; the object store discards an incomplete PUT.")));
	call_check(c, status_200);
	if (u->sent != u->content_length)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("S3 PUT of \"%s\" sent " INT64_FORMAT " of " INT64_FORMAT " bytes",
						c->object_key, u->sent, u->content_length)));
}

/* Free the PUT's handles (taking it off the multi); safe to call twice. */
void
s3_upload_release(S3Upload *u)
{
	if (u)
		call_release(&u->call);
}

/* ---- whole requests ------------------------------------------------------------ */

void
s3_put(const char *key, const char *data, size_t len)
{
	S3Upload   *u = s3_upload_begin(key, (int64) len);

	u->src = data;
	u->input_done = true;
	PG_TRY();
	{
		call_run(&u->call);
	}
	PG_FINALLY();
	{
		call_release(&u->call);
	}
	PG_END_TRY();
	u->finished = true;
	call_check(&u->call, status_200);
	if (u->sent != u->content_length)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("S3 PUT of \"%s\" sent " INT64_FORMAT " of " INT64_FORMAT " bytes",
						u->call.object_key, u->sent, u->content_length)));
}

/* A bodyless signed request (HEAD, DELETE, LIST) run to its end. */
static void
simple_request(S3Call *c, const char *method, const char *url)
{
	PG_TRY();
	{
		call_prepare(c, method, url, S3_EMPTY_SHA256);
		call_run(c);
	}
	PG_FINALLY();
	{
		call_release(c);
	}
	PG_END_TRY();
}

/* Does key exist?  Its size into *size.  (A HEAD answer has no body, so a
 * missing bucket reads as a missing key here.) */
bool
s3_head(const char *key, int64 *size)
{
	S3Call		c;
	char	   *object_key = s3_object_key(key);
	char	   *url = object_url(object_key);
	static const long ok[] = {200, 404, 0};

	call_init(&c, "HEAD", object_key);
	simple_request(&c, "HEAD", url);
	call_check(&c, ok);
	if (c.status == 404)
		return false;
	if (size)
		*size = c.content_length;
	return true;
}

/* Delete key; deleting a missing key is not an error (S3 answers 204 anyway). */
void
s3_delete(const char *key)
{
	S3Call		c;
	char	   *object_key = s3_object_key(key);
	char	   *url = object_url(object_key);
	static const long ok[] = {200, 204, 0};

	call_init(&c, "DELETE", object_key);
	simple_request(&c, "DELETE", url);
	if (c.result == CURLE_OK && c.status == 404)
	{
		S3ErrorDoc	doc = {NULL, NULL};

		if (c.body_len > 0)
		{
			char	   *scratch = palloc(c.body_len + 1);

			(void) s3_xml_parse(c.body, c.body_len, scratch, c.body_len + 1, error_doc_cb, &doc);
		}
		if (doc.code && strcmp(doc.code, "NoSuchKey") == 0)
			return;
	}
	call_check(&c, ok);
}

/* ---- deletes that must not raise ------------------------------------------ */

#define S3_NOTHROW_BATCH 32		/* requests in flight at once */

/*
 * What s3_delete_nothrow signs with, copied inside the transaction: at
 * abort the settings and the secret file may no longer be read (that could
 * raise), and after the commit nothing may.
 */
static struct
{
	bool		valid;
	char		access_key[160];
	char		secret[REGSTAGE_SECRET_MAX + 1];
	char		sigv4[160];
} delete_cred;

char *
s3_delete_target(const char *key)
{
	char	   *url = object_url(s3_object_key(key));
	const char *secret;

	require_setting("regstage.s3_access_key", regstage_s3_access_key);
	secret = s3_secret();
	if (strlen(regstage_s3_access_key) >= sizeof(delete_cred.access_key) ||
		strlen(regstage_s3_region) + 12 >= sizeof(delete_cred.sigv4))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("regstage.s3_access_key or regstage.s3_region is too long")));
	strlcpy(delete_cred.access_key, regstage_s3_access_key, sizeof(delete_cred.access_key));
	strlcpy(delete_cred.secret, secret, sizeof(delete_cred.secret));
	snprintf(delete_cred.sigv4, sizeof(delete_cred.sigv4), "aws:amz:%s:s3", regstage_s3_region);
	delete_cred.valid = true;
	return url;
}

void
s3_forget_delete_credentials(void)
{
	explicit_bzero(&delete_cred, sizeof(delete_cred));
}

static long
ms_until(TimestampTz deadline)
{
	return (long) ((deadline - GetCurrentTimestamp()) / 1000);
}

/* Record the first failure; never raises. */
static void
nothrow_note(char *errbuf, size_t errlen, const char *url, const char *why, long status)
{
	const char *bucket_path = strstr(url, "://");

	if (errbuf[0] != '\0')
		return;
	bucket_path = bucket_path ? strchr(bucket_path + 3, '/') : NULL;
	if (status)
		snprintf(errbuf, errlen, "DELETE of \"%s\": HTTP %ld", bucket_path ? bucket_path + 1 : url, status);
	else
		snprintf(errbuf, errlen, "DELETE of \"%s\": %s", bucket_path ? bucket_path + 1 : url, why);
}

int
s3_delete_nothrow(char *const *urls, int n, long budget_ms, char *errbuf, size_t errlen)
{
	CURLM	   *m;
	struct curl_slist *hdr;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), budget_ms);
	int			failed = 0;

	errbuf[0] = '\0';
	if (n <= 0)
		return 0;
	if (!delete_cred.valid)
	{
		snprintf(errbuf, errlen, "no S3 credentials were read in this transaction");
		return n;
	}
	m = curl_multi_init();
	hdr = curl_slist_append(NULL, "x-amz-content-sha256: " S3_EMPTY_SHA256);
	if (m == NULL || hdr == NULL)
	{
		if (m)
			curl_multi_cleanup(m);
		if (hdr)
			curl_slist_free_all(hdr);
		snprintf(errbuf, errlen, "out of memory in libcurl");
		return n;
	}
	curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 8L);

	for (int base = 0; base < n; base += S3_NOTHROW_BATCH)
	{
		CURL	   *easy[S3_NOTHROW_BATCH];
		bool		done[S3_NOTHROW_BATCH];
		int			k = Min(n - base, S3_NOTHROW_BATCH);
		long		left = ms_until(deadline);

		if (left <= 0)
		{
			nothrow_note(errbuf, errlen, urls[base], "no time left", 0);
			failed += n - base;
			break;
		}
		for (int i = 0; i < k; i++)
		{
			CURL	   *e = curl_easy_init();

			easy[i] = e;
			done[i] = (e == NULL);
			if (e == NULL)
			{
				nothrow_note(errbuf, errlen, urls[base + i], "out of memory in libcurl", 0);
				failed++;
				continue;
			}
			curl_easy_setopt(e, CURLOPT_URL, urls[base + i]);
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
			curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
			curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
			curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
			curl_easy_setopt(e, CURLOPT_PROXY, "");
			curl_easy_setopt(e, CURLOPT_USERAGENT, "pg_regstage/1.1");
			curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, left);
			curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, left);
			curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
			curl_easy_setopt(e, CURLOPT_AWS_SIGV4, delete_cred.sigv4);
			curl_easy_setopt(e, CURLOPT_USERNAME, delete_cred.access_key);
			curl_easy_setopt(e, CURLOPT_PASSWORD, delete_cred.secret);
			curl_easy_setopt(e, CURLOPT_PRIVATE, (char *) (intptr_t) i);
			if (curl_multi_add_handle(m, e) != CURLM_OK)
			{
				curl_easy_cleanup(e);
				easy[i] = NULL;
				done[i] = true;
				nothrow_note(errbuf, errlen, urls[base + i], "could not start a libcurl transfer", 0);
				failed++;
			}
		}
		for (;;)
		{
			int			running = 0;
			int			queued;
			CURLMsg    *msg;

			if (curl_multi_perform(m, &running) != CURLM_OK)
				break;
			while ((msg = curl_multi_info_read(m, &queued)) != NULL)
			{
				char	   *priv = NULL;
				int			i;
				long		status = 0;

				if (msg->msg != CURLMSG_DONE)
					continue;
				curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
				i = (int) (intptr_t) priv;
				done[i] = true;
				curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
				if (msg->data.result != CURLE_OK)
				{
					nothrow_note(errbuf, errlen, urls[base + i], curl_easy_strerror(msg->data.result), 0);
					failed++;
				}
				else if (status != 200 && status != 204 && status != 404)
				{
					nothrow_note(errbuf, errlen, urls[base + i], NULL, status);
					failed++;
				}
			}
			if (running == 0 || ms_until(deadline) <= 0)
				break;
			curl_multi_wait(m, NULL, 0, (int) Min(ms_until(deadline) + 1, 50), NULL);
		}
		for (int i = 0; i < k; i++)
		{
			if (!done[i])
			{
				nothrow_note(errbuf, errlen, urls[base + i], "no answer in time", 0);
				failed++;
			}
			if (easy[i])
			{
				curl_multi_remove_handle(m, easy[i]);
				curl_easy_cleanup(easy[i]);
			}
		}
	}
	curl_slist_free_all(hdr);
	curl_multi_cleanup(m);
	return failed;
}

/* ListObjectsV2 page being parsed */
typedef struct ListParse
{
	List	   *raw;			/* of S3Object * with key = full key */
	char	   *key;
	char	   *last_modified;
	char	   *size;
	bool		truncated;
	char	   *next_token;
	List	   *dates;			/* last_modified texts, parallel to raw */
} ListParse;

/* A decimal size, or -1. */
static int64
parse_size(const char *s)
{
	int64		v = 0;
	size_t		len = strlen(s);

	if (len == 0 || len > 18)
		return -1;
	for (const char *p = s; *p; p++)
	{
		if (*p < '0' || *p > '9')
			return -1;
		v = v * 10 + (*p - '0');
	}
	return v;
}

static int
list_cb(void *arg, const char *path, const char *text, size_t len)
{
	ListParse  *lp = arg;

	if (strcmp(path, "ListBucketResult/Contents") == 0)
	{
		S3Object   *o;

		if (lp->key == NULL || lp->size == NULL || lp->last_modified == NULL)
			return 1;
		o = palloc0(sizeof(S3Object));
		o->key = lp->key;
		o->size = parse_size(lp->size);	/* -1 if unreadable: checked below */
		lp->raw = lappend(lp->raw, o);
		lp->dates = lappend(lp->dates, lp->last_modified);
		lp->key = lp->size = lp->last_modified = NULL;
	}
	else if (text == NULL)
		return 0;
	else if (strcmp(path, "ListBucketResult/Contents/Key") == 0)
		lp->key = pnstrdup(text, len);
	else if (strcmp(path, "ListBucketResult/Contents/LastModified") == 0)
		lp->last_modified = pnstrdup(text, Min(len, 64));
	else if (strcmp(path, "ListBucketResult/Contents/Size") == 0)
		lp->size = pnstrdup(text, Min(len, 32));
	else if (strcmp(path, "ListBucketResult/IsTruncated") == 0)
		lp->truncated = (strcmp(text, "true") == 0);
	else if (strcmp(path, "ListBucketResult/NextContinuationToken") == 0)
		lp->next_token = pnstrdup(text, len);
	return 0;
}

static bool
looks_like_iso_time(const char *s)
{
	size_t		len = strlen(s);

	if (len < 20 || len > 40 || s[4] != '-' || s[10] != 'T')
		return false;
	for (const char *p = s; *p; p++)
		if (!(isdigit((unsigned char) *p) || strchr("-:T.Z+", *p)))
			return false;
	return true;
}

/*
 * One page of the keys under prefix (relative; "" for all of this
 * database's), at most max_keys (1..1000), after continuation_token (NULL
 * for the first page).  Keys outside the namespace (none, unless the
 * service misbehaves) are left out.
 */
S3ListPage *
s3_list(const char *prefix, const char *continuation_token, int max_keys)
{
	S3Call		c;
	char	   *ns;
	char	   *full_prefix;
	StringInfoData url;
	char	   *enc;
	size_t		enclen;
	ListParse	lp;
	S3ListPage *page = palloc0(sizeof(S3ListPage));
	ListCell   *lc;
	ListCell   *ld;

	check_key(prefix, true);
	if (max_keys < 1 || max_keys > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_keys must be between 1 and 1000")));
	ns = namespace_prefix();
	full_prefix = psprintf("%s%s", ns, prefix);
	require_setting("regstage.s3_bucket", regstage_s3_bucket);

	/* parameters in SigV4's canonical (sorted, encoded) order */
	initStringInfo(&url);
	appendStringInfo(&url, "%s/%s?", endpoint_base(), regstage_s3_bucket);
	if (continuation_token)
	{
		enclen = s3_uri_encode(continuation_token, strlen(continuation_token), false, NULL, 0);
		enc = palloc(enclen + 1);
		s3_uri_encode(continuation_token, strlen(continuation_token), false, enc, enclen + 1);
		appendStringInfo(&url, "continuation-token=%s&", enc);
	}
	enclen = s3_uri_encode(full_prefix, strlen(full_prefix), false, NULL, 0);
	enc = palloc(enclen + 1);
	s3_uri_encode(full_prefix, strlen(full_prefix), false, enc, enclen + 1);
	appendStringInfo(&url, "list-type=2&max-keys=%d&prefix=%s", max_keys, enc);

	call_init(&c, "LIST", full_prefix);
	simple_request(&c, "GET", url.data);
	call_check(&c, status_200);

	memset(&lp, 0, sizeof(lp));
	{
		char	   *scratch = palloc(c.body_len + 1);

		if (c.body_len == 0 ||
			s3_xml_parse(c.body, c.body_len, scratch, c.body_len + 1, list_cb, &lp) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("S3 LIST of \"%s\" answered with an unreadable ListBucketResult", full_prefix),
					 errhint("Check that regstage.s3_endpoint is an S3-compatible service supporting ListObjectsV2.")));
		pfree(scratch);
	}
	forboth(lc, lp.raw, ld, lp.dates)
	{
		S3Object   *o = lfirst(lc);
		char	   *date = lfirst(ld);
		size_t		nslen = strlen(ns);

		if (o->size < 0 || !looks_like_iso_time(date))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("S3 LIST of \"%s\" answered with an unreadable entry for \"%s\"",
							full_prefix, clean_text(o->key))));
		if (strncmp(o->key, ns, nslen) != 0)
			continue;
		o->key += nslen;
		o->last_modified = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
																   CStringGetDatum(date),
																   ObjectIdGetDatum(InvalidOid),
																   Int32GetDatum(-1)));
		page->objects = lappend(page->objects, o);
	}
	if (lp.truncated)
	{
		if (lp.next_token == NULL || lp.next_token[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("S3 LIST of \"%s\" is truncated but has no NextContinuationToken", full_prefix)));
		page->next_token = lp.next_token;
	}
	return page;
}

/* The Host header a client sends for the endpoint (without a default port). */
static char *
endpoint_host(const char *base)
{
	bool		https = strncmp(base, "https://", 8) == 0;
	const char *host = base + (https ? 8 : 7);
	size_t		len = strlen(host);

	if (https && len > 4 && strcmp(host + len - 4, ":443") == 0)
		len -= 4;
	else if (!https && len > 3 && strcmp(host + len - 3, ":80") == 0)
		len -= 3;
	return pnstrdup(host, len);
}

/*
 * A URL that lets anyone holding it GET key for ttl_seconds (query-string
 * SigV4; the signature binds method, bucket, key, time and lifetime).
 */
char *
s3_presign_get(const char *key, int ttl_seconds)
{
	S3PresignRequest p;
	char		date[17];
	char	   *object_key = s3_object_key(key);
	char	   *url;
	char	   *result;

	if (ttl_seconds < 1 || ttl_seconds > S3_SIGN_MAX_EXPIRES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a presigned URL lives between 1 second and 7 days, not %d seconds", ttl_seconds)));
	require_setting("regstage.s3_bucket", regstage_s3_bucket);
	require_setting("regstage.s3_access_key", regstage_s3_access_key);
	memset(&p, 0, sizeof(p));
	p.method = "GET";
	p.base_url = endpoint_base();
	p.host = endpoint_host(p.base_url);
	p.path = psprintf("/%s/%s", regstage_s3_bucket, object_key);
	p.region = regstage_s3_region;
	p.access_key = regstage_s3_access_key;
	p.secret_key = s3_secret();
	p.expires = ttl_seconds;
	if (!s3_amz_date(time(NULL), date))
		elog(ERROR, "could not format the current time");
	p.amz_date = date;
	url = s3_presign(&p);
	if (url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not presign a URL for \"%s\"", object_key)));
	result = pstrdup(url);
	free(url);
	return result;
}

/* ---- SQL entry points (operations and tests; superuser only) ------------------- */

static void
require_superuser(const char *fn)
{
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for %s", fn),
				 errhint("Only superusers may call it.")));
}

/* An unsigned GET of url (a presigned URL); returns the status, body into *body. */
static long
fetch_unsigned(const char *what, const char *url, char **body, size_t *len)
{
	S3Call		c;

	call_init(&c, "presigned GET", what);
	c.signed_request = false;
	simple_request(&c, "GET", url);
	if (c.result != CURLE_OK)
		raise_transport_error(&c);
	*body = c.body;
	*len = c.body_len;
	return c.status;
}

static void
s3_check_context(void *arg)
{
	errcontext("regstage.s3_check step: %s", *(const char **) arg);
}

/*
 * regstage.s3_check() → text: PUT, HEAD, LIST, presigned GET and DELETE
 * of a probe object under "_regstage_check/"; raises naming the failing step.
 */
PG_FUNCTION_INFO_V1(regstage_s3_check);
Datum
regstage_s3_check(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	const char *step = "configuration";
	ErrorContextCallback ctx;
	char	   *key = s3_document_key(0, "probe");
	const char *probe = "pg_regstage storage check\n";
	int64		size = -1;
	bool		listed = false;
	char	   *url;
	char	   *body = NULL;
	size_t		body_len = 0;
	long		status;
	S3ListPage *page;
	ListCell   *lc;

	require_superuser("regstage.s3_check");
	key = psprintf("_regstage_check/%s", strchr(key, '/') + 1);
	ctx.callback = s3_check_context;
	ctx.arg = &step;
	ctx.previous = error_context_stack;
	error_context_stack = &ctx;

	step = "PUT";
	s3_put(key, probe, strlen(probe));
	step = "HEAD";
	if (!s3_head(key, &size) || size != (int64) strlen(probe))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("S3 HEAD of the probe object \"%s\" did not find it with its " INT64_FORMAT " bytes",
						s3_object_key(key), (int64) strlen(probe))));
	step = "LIST";
	page = s3_list("_regstage_check/", NULL, 1000);
	foreach(lc, page->objects)
		if (strcmp(((S3Object *) lfirst(lc))->key, key) == 0)
			listed = true;
	if (!listed && page->next_token == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("S3 LIST of \"_regstage_check/\" does not show the probe object")));
	step = "presigned GET";
	url = s3_presign_get(key, 60);
	status = fetch_unsigned(s3_object_key(key), url, &body, &body_len);
	if (status != 200 || body_len != strlen(probe) || memcmp(body, probe, body_len) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("a presigned GET of the probe object answered HTTP %ld with %zu bytes", status, body_len),
				 errhint("The store refused the query-string signature: check regstage.s3_region and the clock.")));
	step = "DELETE";
	s3_delete(key);
	if (s3_head(key, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("S3 DELETE of the probe object left it in place")));

	error_context_stack = ctx.previous;
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("ok: PUT, HEAD, LIST, presigned GET, DELETE of %s/%s",
											  regstage_s3_bucket, namespace_prefix())));
}

/* regstage_s3_put(key text, data bytea) → text: the object key */
PG_FUNCTION_INFO_V1(regstage_s3_put);
Datum
regstage_s3_put(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bytea	   *data = PG_GETARG_BYTEA_PP(1);

	require_superuser("regstage_s3_put");
	s3_put(key, VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data));
	PG_RETURN_TEXT_P(cstring_to_text(s3_object_key(key)));
}

/* regstage_s3_head(key text) → bigint: the size, NULL when absent */
PG_FUNCTION_INFO_V1(regstage_s3_head);
Datum
regstage_s3_head(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		size;

	require_superuser("regstage_s3_head");
	if (!s3_head(text_to_cstring(PG_GETARG_TEXT_PP(0)), &size))
		PG_RETURN_NULL();
	PG_RETURN_INT64(size);
}

/* regstage_s3_delete(key text) */
PG_FUNCTION_INFO_V1(regstage_s3_delete);
Datum
regstage_s3_delete(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	require_superuser("regstage_s3_delete");
	s3_delete(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/* regstage_s3_presign(key text, ttl_seconds int) → text */
PG_FUNCTION_INFO_V1(regstage_s3_presign);
Datum
regstage_s3_presign(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	require_superuser("regstage_s3_presign");
	PG_RETURN_TEXT_P(cstring_to_text(s3_presign_get(text_to_cstring(PG_GETARG_TEXT_PP(0)),
													PG_GETARG_INT32(1))));
}

/*
 * regstage_s3_list(prefix text, max_keys int)
 *   → TABLE(key text, last_modified timestamptz, size bigint, page int)
 * every page, following the continuation tokens (what the cleanup does).
 */
PG_FUNCTION_INFO_V1(regstage_s3_list);
Datum
regstage_s3_list(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *prefix = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			max_keys = PG_GETARG_INT32(1);
	char	   *token = NULL;
	int			pageno = 0;

	require_superuser("regstage_s3_list");
	InitMaterializedSRF(fcinfo, 0);
	do
	{
		S3ListPage *page = s3_list(prefix, token, max_keys);
		ListCell   *lc;

		pageno++;
		foreach(lc, page->objects)
		{
			S3Object   *o = lfirst(lc);
			Datum		values[4];
			bool		nulls[4] = {false, false, false, false};

			values[0] = CStringGetTextDatum(o->key);
			values[1] = TimestampTzGetDatum(o->last_modified);
			values[2] = Int64GetDatum(o->size);
			values[3] = Int32GetDatum(pageno);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		token = page->next_token;
		CHECK_FOR_INTERRUPTS();
	} while (token != NULL);
	return (Datum) 0;
}

/*
 * The producer side of a streamed PUT, as the commit's download does it:
 * a GET whose write callback offers each chunk to the upload.
 */
typedef struct StreamSource
{
	S3Upload   *upload;
	CURL	   *easy;
	int64		received;
	bool		status_ok;
	bool		status_checked;
} StreamSource;

static size_t
stream_source_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	StreamSource *s = userdata;
	size_t		n = size * nmemb;
	size_t		r;

	if (!s->status_checked)
	{
		long		code = 0;

		curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
		s->status_ok = (code == 200);
		s->status_checked = true;
	}
	if (!s->status_ok)
		return n;				/* an error page: not part of the object */
	r = s3_upload_offer(s->upload, ptr, n);
	if (r != n)
		return r;				/* pause, or refuse */
	s->received += n;			/* (a producer hashes and sniffs here) */
	return n;
}

/*
 * regstage_s3_stream_put(key text, source_url text, size bigint)
 *   → TABLE(bytes bigint, buffer_high_water bigint)
 * downloads source_url and streams it into a PUT of key on one curl multi,
 * holding at most S3_UPLOAD_BUFFER_SIZE bytes: the driver loop the commit
 * uses between the Bot API and the store.
 */
PG_FUNCTION_INFO_V1(regstage_s3_stream_put);
Datum
regstage_s3_stream_put(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *source_url = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		size = PG_GETARG_INT64(2);
	StreamSource src;
	CURLM	   *multi = NULL;
	S3Upload   *u = NULL;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	require_superuser("regstage_s3_stream_put");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(&src, 0, sizeof(src));

	u = s3_upload_begin(key, size);
	PG_TRY();
	{
		bool		put_done = false;
		bool		src_done = false;

		src.upload = u;
		multi = curl_multi_init();
		src.easy = curl_easy_init();
		if (multi == NULL || src.easy == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory in libcurl")));
		curl_easy_setopt(src.easy, CURLOPT_URL, source_url);
		curl_easy_setopt(src.easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(src.easy, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(src.easy, CURLOPT_PROXY, "");
		curl_easy_setopt(src.easy, CURLOPT_TIMEOUT_MS, (long) regstage_download_timeout_ms);
		curl_easy_setopt(src.easy, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(src.easy, CURLOPT_XFERINFOFUNCTION, s3_progress_cb);
		curl_easy_setopt(src.easy, CURLOPT_WRITEFUNCTION, stream_source_write);
		curl_easy_setopt(src.easy, CURLOPT_WRITEDATA, &src);
		curl_easy_setopt(src.easy, CURLOPT_BUFFERSIZE, 64L * 1024);

		s3_upload_attach(u, multi);
		if (curl_multi_add_handle(multi, src.easy) != CURLM_OK)
			ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("could not start a libcurl transfer")));

		while (!put_done || !src_done)
		{
			int			running;
			int			queued;
			CURLMsg    *msg;

			CHECK_FOR_INTERRUPTS();
			if (curl_multi_perform(multi, &running) != CURLM_OK)
				ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("libcurl multi transfer failed")));
			while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
			{
				if (msg->msg != CURLMSG_DONE)
					continue;
				if (s3_upload_owns(u, msg->easy_handle))
				{
					s3_upload_finish(u, msg->data.result);	/* raises unless stored */
					put_done = true;
				}
				else
				{
					CURLcode	rc = msg->data.result;

					if (rc == CURLE_ABORTED_BY_CALLBACK)
						CHECK_FOR_INTERRUPTS();
					if (rc == CURLE_WRITE_ERROR)
						s3_upload_check_input(u);
					if (rc != CURLE_OK || !src.status_ok)
						ereport(ERROR,
								(errcode(ERRCODE_CONNECTION_FAILURE),
								 errmsg("download of the source for S3 PUT of \"%s\" failed: %s",
										key, rc != CURLE_OK ? curl_easy_strerror(rc) : "HTTP error status")));
					s3_upload_input_done(u);
					src_done = true;
				}
			}
			if (!s3_upload_pump(u, src_done ? NULL : src.easy) && (!put_done || !src_done))
				curl_multi_wait(multi, NULL, 0, S3_WAIT_SLICE_MS, NULL);
		}
	}
	PG_FINALLY();
	{
		s3_upload_release(u);
		if (src.easy)
		{
			if (multi)
				curl_multi_remove_handle(multi, src.easy);
			curl_easy_cleanup(src.easy);
		}
		if (multi)
			curl_multi_cleanup(multi);
	}
	PG_END_TRY();

	values[0] = Int64GetDatum(src.received);
	values[1] = Int64GetDatum((int64) s3_upload_high_water(u));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* regstage_s3_document_key(telegram_id bigint, doc_type text) → text */
PG_FUNCTION_INFO_V1(regstage_s3_document_key);
Datum
regstage_s3_document_key(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	PG_RETURN_TEXT_P(cstring_to_text(s3_document_key(PG_GETARG_INT64(0),
													 text_to_cstring(PG_GETARG_TEXT_PP(1)))));
}
