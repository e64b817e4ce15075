/*
 * redis_staging.h — the staged registration in Redis.
 *
 * redis_staging.c is the only file that knows the key layout
 * (<prefix>:<telegram_id>:language|data|documents).  Every function here
 * costs one Redis round trip (redis.c).  Values come back palloc'd.
 */
#ifndef REGSTAGE_REDIS_STAGING_H
#define REGSTAGE_REDIS_STAGING_H

#include "nodes/pg_list.h"

/* One field of a staged hash (data or documents). */
typedef struct StagedField
{
	char	   *name;
	char	   *value;
} StagedField;

/* Everything staged for one telegram_id, as read in one round trip. */
typedef struct StagedRegistration
{
	bool		exists;			/* any of the three keys present */
	char	   *language;		/* NULL when not staged */
	List	   *data;			/* of StagedField*, sorted by name */
	List	   *documents;		/* of StagedField*, sorted by name */
	int64		ttl_s;			/* smallest remaining TTL of the present keys; -1 none */
} StagedRegistration;

extern void redis_stage_language(int64 telegram_id, const char *language);
extern void redis_stage_data_fields(int64 telegram_id, List *fields);
extern void redis_stage_document(int64 telegram_id, const char *doc_type, const char *file_id);
extern StagedRegistration *redis_fetch_staged(int64 telegram_id);
extern const char *redis_staged_field(List *fields, const char *name);
extern StagedRegistration *redis_stage_text_answer(int64 telegram_id, const char *username,
												   const char *const *steps,
												   const char *const *candidates, int nsteps,
												   char **step, bool *wrote);
extern bool redis_extend_ttl(int64 telegram_id);
extern bool redis_clear(int64 telegram_id);

/* Best effort inside a live transaction: false + errbuf when Redis failed. */
extern bool redis_clear_nothrow(int64 telegram_id, char *errbuf, size_t errlen);

/*
 * The after-commit clear of a transaction's registrations: prepared at
 * pre-commit (may raise), run after the commit (never raises, one bounded
 * round trip, no reconnect), freed at every transaction end.
 */
typedef struct RedisPreparedClear RedisPreparedClear;

extern RedisPreparedClear *redis_prepare_clear(const int64 *telegram_ids, int n);
extern bool redis_run_prepared_clear(RedisPreparedClear *p, char *errbuf, size_t errlen);
extern void redis_free_prepared_clear(RedisPreparedClear *p);

#endif
