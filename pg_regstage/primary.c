/*
 * primary.c — refuse work on a standby.
 *
 * Staging writes Redis, commit_registration writes tables and files, the
 * cleanup deletes files: on a standby each would fail half-way (or, for
 * Redis and files, succeed beside a database that cannot record it).  They
 * all stop at the door instead, with the SQLSTATE PostgreSQL itself uses
 * for a write on a standby (25006) and a hint that says where to go.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "utils/lsyscache.h"

#include "primary.h"

void
primary_required(FunctionCallInfo fcinfo)
{
	char	   *name;

	if (!RecoveryInProgress())
		return;
	name = (fcinfo->flinfo && OidIsValid(fcinfo->flinfo->fn_oid))
		? get_func_name(fcinfo->flinfo->fn_oid) : NULL;
	ereport(ERROR,
			(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
			 errmsg("regstage.%s cannot run on a standby server", name ? name : "function"),
			 errdetail("This server is in recovery (a streaming replica); only the primary writes registrations, Redis and the upload directory."),
			 errhint("Connect to the primary: use target_session_attrs=read-write in the connection string, e.g. postgresql://host1:5432,host2:5432/db?target_session_attrs=read-write.")));
}
