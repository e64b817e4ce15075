/*
 * documents.h — the steps commit_registration() and replace_documents()
 * share: a user's staged documents fetched into storage bound to the
 * caller's (sub)transaction, and their rows.
 */
#ifndef REGSTAGE_DOCUMENTS_H
#define REGSTAGE_DOCUMENTS_H

#include "fmgr.h"
#include "nodes/pg_list.h"

#include "botapi.h"
#include "redis_staging.h"

extern int64 documents_begin(FunctionCallInfo fcinfo);
extern BotApiFile *documents_staged_files(int64 telegram_id, StagedRegistration *staged, List *doc_types);
extern char **documents_fetch(int64 telegram_id, BotApiFile *files, int nfiles);
extern void documents_insert(int64 user_id, BotApiFile *files, char **relpaths, int nfiles);

#endif
