/*
 * plans.c — SPI statements prepared once per backend and kept.
 *
 * Every statement is fully schema-qualified, so a kept plan means the same
 * whatever the caller's search_path; the plan cache re-plans it after DDL.
 */
#include "postgres.h"

#include "plans.h"

/* The plan in *slot, prepared and kept on first use.  Call inside SPI_connect. */
SPIPlanPtr
regstage_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	if (*slot == NULL)
	{
		/*
		 * A generic plan: these statements are single-row index probes and
		 * inserts whose plan never depends on the parameter values, so
		 * planning them again on every call (a custom plan) is pure cost.
		 */
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "pg_regstage: could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "pg_regstage: could not keep the plan of \"%s\"", sql);
		*slot = plan;
	}
	return *slot;
}
