/*
 * guc.c — every regstage.* setting and its checks.
 *
 * Connection and path settings are PGC_SUSET: a superuser (or
 * postgresql.conf) decides where Redis, the Bot API and the upload
 * directory are; the bot role only calls functions.  The two secrets are
 * GUC_SUPERUSER_ONLY so that pg_settings and SHOW hide them from others --
 * but only once this library has defined them.  Until then PostgreSQL keeps
 * a setting of postgresql.conf as a placeholder that every role may read,
 * so the library must be in shared_preload_libraries (checked by
 * regstage_require_preload() in every SQL-callable function), and the
 * secrets are best kept in files (regstage.bot_token_file,
 * regstage.redis_password_file) that only the server's OS user can read:
 * their content never sits in a setting.
 */
#include "postgres.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "guc.h"
#include "redis.h"
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
bool		regstage_queue_notify = true;
bool		regstage_inbox_async_commit = true;
char	   *regstage_admin_chat_id = NULL;
int			regstage_rejected_retention_s = 30 * 86400;
char	   *regstage_upload_dir = NULL;
char	   *regstage_test_inject = NULL;
char	   *regstage_telegram_api_url = NULL;
char	   *regstage_bot_token = NULL;
char	   *regstage_bot_token_file = NULL;
char	   *regstage_redis_password_file = NULL;
char	   *regstage_http_proxy = NULL;
int			regstage_download_timeout_ms = 60000;
int			regstage_max_file_size = 20 * 1024 * 1024;
int			regstage_cleanup_interval_s = 3600;
int			regstage_cleanup_memory_kb = 32768;
int			regstage_cleanup_max_age_s = 48 * 3600;
int			regstage_cleanup_tmp_max_age_s = 24 * 3600;
char	   *regstage_database = NULL;
char	   *regstage_redis_sentinels = NULL;
char	   *regstage_redis_master_name = NULL;

/* Was the library loaded from shared_preload_libraries (in the postmaster)? */
static bool loaded_at_startup = false;

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
		ListCell   *earlier;

		if (!valid_doc_type_name(t, strlen(t)))
		{
			GUC_check_errdetail("Document type \"%s\" must be 1-32 characters of a-z, 0-9 and _.", t);
			return false;
		}
		/* a registration stores one document per type: UNIQUE(user_id, doc_type) */
		foreach(earlier, items)
		{
			if (earlier == lc)
				break;
			if (strcmp(lfirst(earlier), t) == 0)
			{
				GUC_check_errdetail("Document type \"%s\" is listed more than once.", t);
				return false;
			}
		}
	}
	return true;
}

/*
 * regstage.admin_chat_id is a string because Telegram group ids
 * (-100xxxxxxxxxx) do not fit an int GUC; it must still parse as a bigint,
 * which the SQL side casts it to.
 */
static bool
check_admin_chat_id(char **newval, void **extra, GucSource source)
{
	char	   *end;

	if (*newval == NULL || **newval == '\0')
	{
		GUC_check_errdetail("Use 0 to send reviews to each admin's own chat.");
		return false;
	}
	errno = 0;
	(void) strtoll(*newval, &end, 10);
	/* digits with an optional leading '-' only (strtoll alone takes spaces and '+') */
	if (errno != 0 || *end != '\0' || !(**newval == '-' || (**newval >= '0' && **newval <= '9')))
	{
		GUC_check_errdetail("The admin chat id must be an integer such as -1001234567890 (or 0).");
		return false;
	}
	return true;
}

/* check hook of every path setting: empty, or an absolute path */
bool
regstage_check_absolute_or_empty(char **newval, void **extra, GucSource source)
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

/* Empty (no proxy), or a proxy URL libcurl understands. */
static bool
check_http_proxy(char **newval, void **extra, GucSource source)
{
	static const char *const schemes[] = {"http://", "https://", "socks4://", "socks4a://",
	"socks5://", "socks5h://"};

	if (*newval == NULL || **newval == '\0')
		return true;
	for (int i = 0; i < lengthof(schemes); i++)
		if (strncmp(*newval, schemes[i], strlen(schemes[i])) == 0 &&
			(*newval)[strlen(schemes[i])] != '\0')
			return true;
	GUC_check_errdetail("The proxy must be empty (no proxy) or a URL starting with http://, https://, socks4://, socks4a://, socks5:// or socks5h://.");
	return false;
}

/*
 * Refuse to run unless loaded from shared_preload_libraries.  Loaded later,
 * the library cannot protect its secrets: every backend that has not loaded
 * it yet shows a regstage.* line of postgresql.conf to any role.
 */
bool
regstage_require_preload(void)
{
	if (!loaded_at_startup)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_regstage must be loaded via shared_preload_libraries"),
				 errdetail("Until it is, regstage.* settings in postgresql.conf are placeholders that every role can read."),
				 errhint("Add pg_regstage to shared_preload_libraries in postgresql.conf and restart the server.")));
	return true;
}

/*
 * Read a secret file into buf (NUL-terminated): the bot token, the Redis
 * password and the S3 secret key all come through here, with the same
 * checks (regular file, the server's OS user's, no group or other access,
 * one line).  Never raises: the Redis connection is also made where an
 * ERROR is not allowed (after commit).  Returns 0, or an SQLSTATE with a
 * message naming the setting and the path -- never the content -- in why.
 */
int
regstage_secret_file_read(const char *setting, const char *path, char *buf, size_t bufsize,
				 char *why, size_t whylen)
{
	int			fd;
	struct stat st;
	size_t		len = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
	{
		int			save_errno = errno;

		snprintf(why, whylen, "could not open %s \"%s\": %s", setting, path, strerror(save_errno));
		if (save_errno == ENOENT)
			return ERRCODE_UNDEFINED_FILE;
		return (save_errno == EACCES || save_errno == EPERM) ? ERRCODE_INSUFFICIENT_PRIVILEGE : ERRCODE_IO_ERROR;
	}
	if (fstat(fd, &st) < 0)
	{
		int			save_errno = errno;

		close(fd);
		snprintf(why, whylen, "could not stat %s \"%s\": %s", setting, path, strerror(save_errno));
		return ERRCODE_IO_ERROR;
	}
	if (!S_ISREG(st.st_mode))
	{
		close(fd);
		snprintf(why, whylen, "%s \"%s\" is not a regular file", setting, path);
		return ERRCODE_CONFIG_FILE_ERROR;
	}
	if (st.st_uid != geteuid())
	{
		close(fd);
		snprintf(why, whylen, "%s \"%s\" is not owned by the server's OS user", setting, path);
		return ERRCODE_CONFIG_FILE_ERROR;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		close(fd);
		snprintf(why, whylen, "%s \"%s\" has group or other permissions (mode %04o)",
				 setting, path, (unsigned) (st.st_mode & 07777));
		return ERRCODE_CONFIG_FILE_ERROR;
	}
	for (;;)
	{
		ssize_t		n = read(fd, buf + len, bufsize - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			int			save_errno = errno;

			close(fd);
			snprintf(why, whylen, "could not read %s \"%s\": %s", setting, path, strerror(save_errno));
			return ERRCODE_IO_ERROR;
		}
		if (n == 0)
			break;
		len += n;
		if (len == bufsize)
		{
			close(fd);
			buf[0] = '\0';
			snprintf(why, whylen, "%s \"%s\" is longer than %d bytes",
					 setting, path, (int) bufsize - 2);
			return ERRCODE_CONFIG_FILE_ERROR;
		}
	}
	close(fd);

	/* one trailing newline ("\n" or "\r\n", as echo or an editor writes it) is not part of the secret */
	if (len > 0 && buf[len - 1] == '\n')
	{
		len--;
		if (len > 0 && buf[len - 1] == '\r')
			len--;
	}
	buf[len] = '\0';
	if (len > bufsize - 2)
	{
		buf[0] = '\0';
		snprintf(why, whylen, "%s \"%s\" is longer than %d bytes",
				 setting, path, (int) bufsize - 2);
		return ERRCODE_CONFIG_FILE_ERROR;
	}
	if (len == 0)
	{
		snprintf(why, whylen, "%s \"%s\" is empty", setting, path);
		return ERRCODE_CONFIG_FILE_ERROR;
	}
	for (size_t i = 0; i < len; i++)
		if (buf[i] == '\0' || buf[i] == '\n' || buf[i] == '\r')
		{
			buf[0] = '\0';
			snprintf(why, whylen, "%s \"%s\" has more than one line", setting, path);
			return ERRCODE_CONFIG_FILE_ERROR;
		}
	return 0;
}

/*
 * A copy of text with every occurrence of secret replaced by placeholder:
 * for texts from curl and from remote services, which may quote a URL or
 * header holding the secret.  An empty secret changes nothing.
 */
char *
regstage_redact(const char *text, const char *secret, const char *placeholder)
{
	size_t		slen = secret ? strlen(secret) : 0;
	StringInfoData out;
	const char *p = text;
	const char *hit;

	if (slen == 0)
		return pstrdup(text);
	initStringInfo(&out);
	while ((hit = strstr(p, secret)) != NULL)
	{
		appendBinaryStringInfo(&out, p, hit - p);
		appendStringInfoString(&out, placeholder);
		p = hit + slen;
	}
	appendStringInfoString(&out, p);
	return out.data;
}

/*
 * The bot token: the content of regstage.bot_token_file when that is set
 * (it wins over regstage.bot_token), else regstage.bot_token; "" when
 * neither is set.  Read on every call, so a changed file or setting takes
 * effect with the next commit.  palloc'd in the current memory context.
 */
char *
regstage_bot_token_value(void)
{
	char		buf[REGSTAGE_SECRET_MAX + 2];
	char		why[MAXPGPATH + 128];
	int			code;
	char	   *result;

	if (regstage_bot_token_file == NULL || regstage_bot_token_file[0] == '\0')
		return pstrdup(regstage_bot_token ? regstage_bot_token : "");
	code = regstage_secret_file_read("regstage.bot_token_file", regstage_bot_token_file,
							buf, sizeof(buf), why, sizeof(why));
	if (code != 0)
		ereport(ERROR,
				(errcode(code),
				 errmsg("%s", why),
				 errhint("The file must be a regular file owned by the OS user running PostgreSQL, with mode 0600 or 0400, holding the token and at most one trailing newline.")));
	result = pstrdup(buf);
	explicit_bzero(buf, sizeof(buf));
	return result;
}

/*
 * The Redis password into buf: the content of regstage.redis_password_file
 * when that is set (it wins over regstage.redis_password), else
 * regstage.redis_password; "" when neither is set.  Never raises: false
 * with a message in why (and the SQLSTATE in *code) when the file cannot
 * be used.
 */
bool
regstage_redis_password_value(char *buf, size_t buflen, char *why, size_t whylen, int *code)
{
	if (regstage_redis_password_file == NULL || regstage_redis_password_file[0] == '\0')
	{
		if (strlcpy(buf, regstage_redis_password ? regstage_redis_password : "", buflen) >= buflen)
		{
			snprintf(why, whylen, "regstage.redis_password is longer than %d bytes", (int) buflen - 2);
			*code = ERRCODE_CONFIG_FILE_ERROR;
			buf[0] = '\0';
			return false;
		}
		return true;
	}
	*code = regstage_secret_file_read("regstage.redis_password_file", regstage_redis_password_file,
							 buf, buflen, why, whylen);
	return *code == 0;
}

/*
 * regstage.redis_sentinels: "host:port,host:port,..." (IPv6 as [addr]:port),
 * at most REDIS_MAX_SENTINELS entries; empty means no Sentinel.
 */
static bool
check_redis_sentinels(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	char	   *tok;
	char	   *save = NULL;
	int			n = 0;

	if (*newval == NULL || **newval == '\0')
		return true;
	copy = pstrdup(*newval);
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		char	   *colon;
		char	   *end;
		long		port;

		while (*tok == ' ')
			tok++;
		colon = strrchr(tok, ':');
		if (colon == NULL || colon == tok)
		{
			GUC_check_errdetail("Sentinel \"%s\" is not host:port.", tok);
			return false;
		}
		errno = 0;
		port = strtol(colon + 1, &end, 10);
		while (*end == ' ')
			end++;
		if (errno != 0 || end == colon + 1 || *end != '\0' || port < 1 || port > 65535)
		{
			GUC_check_errdetail("Sentinel \"%s\" has no valid port (1-65535).", tok);
			return false;
		}
		if (++n > REDIS_MAX_SENTINELS)
		{
			GUC_check_errdetail("At most %d sentinels can be listed.", REDIS_MAX_SENTINELS);
			return false;
		}
	}
	if (n == 0)
	{
		GUC_check_errdetail("List at least one sentinel as host:port, or leave the setting empty.");
		return false;
	}
	return true;
}

static bool
check_redis_master_name(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || **newval == '\0' || strlen(*newval) > 128)
	{
		GUC_check_errdetail("The master name must be 1-128 characters.");
		return false;
	}
	for (const char *p = *newval; *p; p++)
		if ((unsigned char) *p <= ' ' || *p == 0x7f)
		{
			GUC_check_errdetail("The master name must not contain spaces or control characters.");
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
	loaded_at_startup = process_shared_preload_libraries_in_progress;

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
	DefineCustomStringVariable("regstage.redis_password_file",
							   "Absolute path of a file holding the Redis password (overrides regstage.redis_password).",
							   "Must be owned by the server's OS user and not accessible to group or others; one trailing newline is ignored. Read when connecting.",
							   &regstage_redis_password_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   regstage_check_absolute_or_empty, NULL, NULL);
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
	/*
	 * NOTIFY takes a database-wide lock at commit that is held through the
	 * WAL flush, so every notifying transaction commits one after the other;
	 * a process that wakes its own workers (the relay) turns it off for the
	 * transactions it runs in a loop.
	 */
	DefineCustomBoolVariable("regstage.queue_notify",
							 "NOTIFY regstage_inbox / regstage_outbox at the commit of a transaction that stored updates or queued Bot API calls.",
							 "Off: processors and senders find the work by polling (about once a second) or by their own wake-up.",
							 &regstage_queue_notify, true,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("regstage.inbox_async_commit",
							 "process_next_batch() commits an update that changed nothing outside the database without waiting for its WAL flush.",
							 "Its replies wait for that flush instead: outbox_claim() commits synchronously whatever it hands out. Off: every update's commit waits for its flush, as synchronous_commit says.",
							 &regstage_inbox_async_commit, true,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.admin_chat_id",
							   "Telegram chat that gets the review of each new registration (0: each admin's own chat).",
							   "A group id such as -1001234567890; the admins are the rows of regstage.admins.",
							   &regstage_admin_chat_id, "0",
							   PGC_SUSET, 0, check_admin_chat_id, NULL, NULL);
	DefineCustomIntVariable("regstage.rejected_retention",
							"Age after which the documents of REJECTED users are deleted by regstage.purge_rejected() (0: kept).",
							"Counted from the rejection (users.reviewed_at).",
							&regstage_rejected_retention_s, 30 * 86400, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("regstage.upload_dir",
							   "Absolute directory where document files are stored.",
							   "The PostgreSQL server's OS user must be able to create files in it.",
							   &regstage_upload_dir, "",
							   PGC_SUSET, 0, regstage_check_absolute_or_empty, NULL, NULL);
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
	DefineCustomStringVariable("regstage.bot_token_file",
							   "Absolute path of a file holding the Telegram bot token (overrides regstage.bot_token).",
							   "Must be owned by the server's OS user and not accessible to group or others; one trailing newline is ignored. Read for every commit.",
							   &regstage_bot_token_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   regstage_check_absolute_or_empty, NULL, NULL);
	DefineCustomStringVariable("regstage.http_proxy",
							   "Proxy for Bot API requests (empty: connect directly).",
							   "The http_proxy, https_proxy and all_proxy environment variables are ignored.",
							   &regstage_http_proxy, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   check_http_proxy, NULL, NULL);
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
	/*
	 * A PGC_POSTMASTER setting can only be defined while preloading (later it
	 * is a FATAL); without preloading there is no worker to configure.
	 */
	if (loaded_at_startup)
		DefineCustomStringVariable("regstage.database",
								   "Database the cleanup background worker connects to.",
								   NULL, &regstage_database, "postgres",
								   PGC_POSTMASTER, 0, NULL, NULL, NULL);

	/*
	 * Test only (pg_regress sql/07_cleanup_safety.sql): SQL the orphan
	 * cleanup runs once per run between listing a file and its last check
	 * before deleting it, so a test can swap a directory or insert a row in
	 * exactly that window.  Superuser-only, hidden from SHOW ALL and
	 * pg_settings; empty (the default) does nothing.
	 */
	DefineCustomStringVariable("regstage.test_inject",
							   "Test only: SQL the orphan cleanup runs between listing a file and deleting it.",
							   "Leave empty outside the extension's own tests.",
							   &regstage_test_inject, "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("regstage.redis_sentinels",
							   "Redis Sentinels asked for the master, as host:port,host:port,... (empty: use regstage.redis_host and regstage.redis_port).",
							   "Asked in order, each within regstage.redis_timeout; the master they name is used only while ROLE says master.",
							   &regstage_redis_sentinels, "",
							   PGC_SUSET, GUC_LIST_INPUT, check_redis_sentinels, NULL, NULL);
	DefineCustomStringVariable("regstage.redis_master_name",
							   "Name of the master the Redis Sentinels monitor (their \"sentinel monitor\" line).",
							   NULL, &regstage_redis_master_name, "mymaster",
							   PGC_SUSET, 0, check_redis_master_name, NULL, NULL);

	s3_define_gucs();
	MarkGUCPrefixReserved("regstage");
}
