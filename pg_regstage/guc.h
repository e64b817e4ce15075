/*
 * guc.h — every regstage.* setting.
 */
#ifndef REGSTAGE_GUC_H
#define REGSTAGE_GUC_H

#include "nodes/pg_list.h"
#include "utils/guc.h"

/* Redis */
extern char *regstage_redis_host;
extern int	regstage_redis_port;
extern char *regstage_redis_password;
extern char *regstage_redis_password_file;
extern int	regstage_redis_db;
extern int	regstage_redis_timeout_ms;
extern char *regstage_key_prefix;
extern int	regstage_ttl_s;

/* Redis Sentinel (empty sentinels: regstage.redis_host/port directly) */
extern char *regstage_redis_sentinels;
extern char *regstage_redis_master_name;

/* registration */
extern char *regstage_required_documents;
extern char *regstage_pdf_documents;	/* read by the conversation (SQL) */

/* inbox and outbox (read by their SQL functions) */
extern int	regstage_max_attempts;
extern bool regstage_queue_notify;
extern bool regstage_inbox_async_commit;
extern int	regstage_retention_s;

/* admin review (read by its SQL functions) */
extern char *regstage_admin_chat_id;
extern int	regstage_rejected_retention_s;

/* upload store and Bot API */
extern char *regstage_upload_dir;
extern char *regstage_telegram_api_url;
extern char *regstage_bot_token;
extern char *regstage_bot_token_file;
extern char *regstage_http_proxy;
extern int	regstage_download_timeout_ms;
extern int	regstage_max_file_size;

/* cleanup */
extern int	regstage_cleanup_interval_s;
extern int	regstage_cleanup_memory_kb;
extern int	regstage_cleanup_max_age_s;
extern int	regstage_cleanup_tmp_max_age_s;
extern char *regstage_database;
extern char *regstage_test_inject;	/* test only: see guc.c */

/* longest secret accepted, from a setting or a file */
#define REGSTAGE_SECRET_MAX 4096

extern void regstage_define_gucs(void);
extern bool regstage_require_preload(void);

/*
 * The first line of every SQL-callable function.  A declaration, so that it
 * runs before the initializers of the function's other declarations.
 */
#define REGSTAGE_REQUIRE_PRELOAD() \
	bool		regstage_preloaded pg_attribute_unused() = regstage_require_preload()
extern List *regstage_required_document_list(void);
extern char *regstage_bot_token_value(void);
extern bool regstage_check_absolute_or_empty(char **newval, void **extra, GucSource source);
extern char *regstage_redact(const char *text, const char *secret, const char *placeholder);
extern int	regstage_secret_file_read(const char *setting, const char *path, char *buf, size_t bufsize,
									  char *why, size_t whylen);
extern bool regstage_redis_password_value(char *buf, size_t buflen, char *why, size_t whylen,
										  int *code);

#endif
