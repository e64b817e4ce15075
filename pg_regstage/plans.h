/*
 * plans.h — SPI statements prepared once per backend and kept.
 */
#ifndef REGSTAGE_PLANS_H
#define REGSTAGE_PLANS_H

#include "executor/spi.h"

extern SPIPlanPtr regstage_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes);

#endif
