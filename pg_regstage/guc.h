/*
 * guc.h — every regstage.* setting.
 */
#ifndef REGSTAGE_GUC_H
#define REGSTAGE_GUC_H

#include "nodes/pg_list.h"

/* Redis */
extern char *regstage_redis_host;
extern int	regstage_redis_port;
extern char *regstage_redis_password;
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
extern int	regstage_retention_s;

/* upload store and Bot API */
extern char *regstage_upload_dir;
extern char *regstage_telegram_api_url;
extern char *regstage_bot_token;
extern int	regstage_download_timeout_ms;
extern int	regstage_max_file_size;

/* cleanup */
extern int	regstage_cleanup_interval_s;
extern int	regstage_cleanup_memory_kb;
extern int	regstage_cleanup_max_age_s;
extern int	regstage_cleanup_tmp_max_age_s;
extern char *regstage_database;

extern void regstage_define_gucs(void);
extern List *regstage_required_document_list(void);

#endif
