-- pg_regstage 1.1 (built from control/src/; edit the parts, not this file)
\echo Use "CREATE EXTENSION pg_regstage" to load this file. \quit

