/*
 * cleanup.h — the orphan scan of regstage.upload_dir.
 */
#ifndef REGSTAGE_CLEANUP_H
#define REGSTAGE_CLEANUP_H

typedef struct CleanupStats
{
	int64		deleted;		/* orphans and temporary files removed */
	int64		kept;			/* orphans and temporary files younger than their threshold */
	int64		errors;			/* files or directories that could not be read or removed */
	int64		referenced;		/* files with a documents row */
} CleanupStats;

/* Runs inside a transaction with SPI available; the caller has SPI_connect()ed. */
extern void cleanup_run(int64 max_age_s, int64 tmp_max_age_s, CleanupStats *stats);

#endif
