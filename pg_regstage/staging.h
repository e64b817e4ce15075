/*
 * staging.h — the staging API's shared piece: what is still missing.
 */
#ifndef REGSTAGE_STAGING_H
#define REGSTAGE_STAGING_H

#include "redis_staging.h"

extern List *staging_missing_items(StagedRegistration *staged);

#endif
