/*
 * pg_regstage.c — module entry point.
 *
 * Defines the settings, registers the transaction callbacks of the upload
 * store once per process, initialises libcurl, and (when preloaded)
 * registers the orphan-cleanup background worker.  Loaded any other way
 * (CREATE EXTENSION, LOAD, session_preload_libraries) it defines no
 * postmaster-only setting and no worker, and every SQL-callable function
 * refuses to run (regstage_require_preload): the secrets are protected only
 * in a cluster that preloads it.
 */
#include "postgres.h"

#include <curl/curl.h>

#include "fmgr.h"
#include "miscadmin.h"

#include "guc.h"
#include "worker.h"
#include "xact.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	regstage_define_gucs();

	/* not thread-safe: once per process, before any handle exists */
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialise libcurl")));

	xact_register_callbacks();

	if (process_shared_preload_libraries_in_progress)
		worker_register();
}
