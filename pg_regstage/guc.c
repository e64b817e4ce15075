/*
 * guc.c — every regstage.* setting and its checks.
 *
 * Connection and path settings are PGC_SUSET: a superuser (or
 * postgresql.conf) decides where Redis, the Bot API and the upload
 * directory are; the bot role only calls functions.  The two secrets are
 * GUC_SUPERUSER_ONLY so that pg_settings and SHOW hide them from others.
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "guc.h"
#include "s3.h"

char	   *regstage_redis_host = NULL;
int			regstage_redis_port = 6379;
char	   *regstage_redis_password = NULL;
int			regstage_redis_db = 0;
int			regstage_redis_timeout_ms = 2000;
char	   *regstage_key_prefix = NULL;
int			regstage_ttl_s = 86400;
char	   *regstage_required_documents = NULL;
char	   *regstage_pdf_documents = NULL;
int			regstage_max_attempts = 5;
int			regstage_retention_s = 7 * 86400;
char	   *regstage_upload_dir = NULL;
char	   *regstage_telegram_api_url = NULL;
char	   *regstage_bot_token = NULL;
int			regstage_download_timeout_ms = 60000;
int			regstage_max_file_size = 20 * 1024 * 1024;
int			regstage_cleanup_interval_s = 3600;
int			regstage_cleanup_memory_kb = 32768;
int			regstage_cleanup_max_age_s = 48 * 3600;
int			regstage_cleanup_tmp_max_age_s = 24 * 3600;
char	   *regstage_database = NULL;

/* A document type is a short lower-case identifier: it becomes part of a file name. */
static bool
valid_doc_type_name(const char *s, size_t len)
{
	if (len == 0 || len > 32)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

static bool
check_required_documents(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	List	   *items;
	ListCell   *lc;

	if (*newval == NULL || **newval == '\0')
	{
		GUC_check_errdetail("At least one document type is required.");
		return false;
	}
	copy = pstrdup(*newval);
	if (!SplitIdentifierString(copy, ',', &items))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	foreach(lc, items)
	{
		const char *t = lfirst(lc);

		if (!valid_doc_type_name(t, strlen(t)))
		{
			GUC_check_errdetail("Document type \"%s\" must be 1-32 characters of a-z, 0-9 and _.", t);
			return false;
		}
	}
	return true;
}

static bool
check_absolute_or_empty(char **newval, void **extra, GucSource source)
{
	if (*newval && **newval && !is_absolute_path(*newval))
	{
		GUC_check_errdetail("The path must be absolute.");
		return false;
	}
	return true;
}

static bool
check_key_prefix(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || **newval == '\0' || strlen(*newval) > 64)
	{
		GUC_check_errdetail("The key prefix must be 1-64 characters.");
		return false;
	}
	for (const char *p = *newval; *p; p++)
		if ((unsigned char) *p <= ' ' || *p == 0x7f)
		{
			GUC_check_errdetail("The key prefix must not contain spaces or control characters.");
			return false;
		}
	return true;
}

static bool
check_api_url(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL ||
		(strncmp(*newval, "http://", 7) != 0 && strncmp(*newval, "https://", 8) != 0))
	{
		GUC_check_errdetail("The Bot API URL must start with http:// or https://.");
		return false;
	}
	return true;
}

/*
 * The configured required document types, in asking order, as a List of
 * palloc'd strings in the current memory context.
 */
List *
regstage_required_document_list(void)
{
	List	   *items;
	List	   *result = NIL;
	ListCell   *lc;

	if (!SplitIdentifierString(pstrdup(regstage_required_documents), ',', &items))
		elog(ERROR, "regstage.required_documents is invalid");	/* the check hook prevents it */
	foreach(lc, items)
		result = lappend(result, pstrdup(lfirst(lc)));
	return result;
}

void
regstage_define_gucs(void)
{
	DefineCustomStringVariable("regstage.redis_host",
							   "Redis host name, or an absolute path to its unix socket.",
							   NULL, &regstage_redis_host, "127.0.0.1",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.redis_port",
							"Redis TCP port.",
							NULL, &regstage_redis_port, 6379, 1, 65535,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.redis_password",
							   "Password sent with AUTH after connecting to Redis (empty: no AUTH).",
							   "Visible to superusers only.",
							   &regstage_redis_password, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.redis_db",
							"Redis database number selected after connecting.",
							NULL, &regstage_redis_db, 0, 0, 1024,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.redis_timeout",
							"Timeout for connecting to Redis and for each Redis round trip.",
							NULL, &regstage_redis_timeout_ms, 2000, 1, 600000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.key_prefix",
							   "Prefix of the staged Redis keys: <prefix>:<telegram_id>:language|data|documents.",
							   NULL, &regstage_key_prefix, "registration",
							   PGC_SUSET, 0, check_key_prefix, NULL, NULL);
	DefineCustomIntVariable("regstage.ttl",
							"Time to live of staged registration data in Redis.",
							"Refreshed on every staging write and by extend_ttl().",
							&regstage_ttl_s, 86400, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.required_documents",
							   "Comma-separated document types a registration needs, in asking order.",
							   NULL, &regstage_required_documents, "passport,selfie",
							   PGC_SUSET, GUC_LIST_INPUT, check_required_documents, NULL, NULL);
	DefineCustomStringVariable("regstage.pdf_documents",
							   "Comma-separated document types that may be sent as a PDF file.",
							   "Every type also takes a photo or an image file.",
							   &regstage_pdf_documents, "passport,licence,contract",
							   PGC_SUSET, GUC_LIST_INPUT, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.max_attempts",
							"Failed attempts after which an inbox update is parked as failed.",
							"Outages (regstage.is_outage) never count as attempts.",
							&regstage_max_attempts, 5, 1, 1000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.retention",
							"Age after which processed inbox rows and sent outbox rows are deleted.",
							"Failed rows stay until someone handles them.",
							&regstage_retention_s, 7 * 86400, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.upload_dir",
							   "Absolute directory where document files are stored.",
							   "The PostgreSQL server's OS user must be able to create files in it.",
							   &regstage_upload_dir, "",
							   PGC_SUSET, 0, check_absolute_or_empty, NULL, NULL);
	DefineCustomStringVariable("regstage.telegram_api_url",
							   "Base URL of the Telegram Bot API.",
							   NULL, &regstage_telegram_api_url, "https://api.telegram.org",
							   PGC_SUSET, 0, check_api_url, NULL, NULL);
	DefineCustomStringVariable("regstage.bot_token",
							   "Telegram bot token used to download documents.",
							   "Visible to superusers only; never logged.",
							   &regstage_bot_token, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.download_timeout",
							"Timeout for fetching one document (getFile plus download).",
							NULL, &regstage_download_timeout_ms, 60000, 100, INT_MAX,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.max_file_size",
							"Largest document file accepted.",
							NULL, &regstage_max_file_size, 20 * 1024 * 1024, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.cleanup_interval",
							"Period of the orphan-cleanup background worker (0 disables it).",
							NULL, &regstage_cleanup_interval_s, 3600, 0, INT_MAX / 1000,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.cleanup_max_age",
							"Files without a documents row that are older than this are deleted by the worker.",
							NULL, &regstage_cleanup_max_age_s, 48 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.cleanup_tmp_max_age",
							"Temporary (partial download) files older than this are deleted by the worker.",
							NULL, &regstage_cleanup_tmp_max_age_s, 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("regstage.cleanup_memory",
							"Memory the orphan cleanup may use to hold the referenced paths (8 bytes per documents row).",
							"With more rows than fit, or 0, it checks each batch of files with an index probe instead (slower, flat memory).",
							&regstage_cleanup_memory_kb, 32768, 0, MAX_KILOBYTES,
							PGC_SUSET, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.database",
							   "Database the cleanup background worker connects to.",
							   NULL, &regstage_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);

	s3_define_gucs();
	MarkGUCPrefixReserved("regstage");
}
