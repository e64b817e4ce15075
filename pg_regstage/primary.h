/*
 * primary.h — refuse work on a standby.
 *
 * A standby (RecoveryInProgress) can write neither its tables nor, through
 * this extension, Redis or the upload directory: the one writer is the
 * primary.  SQL-callable functions call primary_required() first and fail
 * with 25006 and a hint to connect to the primary.
 */
#ifndef REGSTAGE_PRIMARY_H
#define REGSTAGE_PRIMARY_H

#include "fmgr.h"

/* raises 25006 (read_only_sql_transaction) when this server is a standby */
extern void primary_required(FunctionCallInfo fcinfo);

#endif
