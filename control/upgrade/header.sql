-- pg_regstage 1.0 -> 1.1 (built from control/upgrade/ and control/src/; edit the parts, not this file)
\echo Use "ALTER EXTENSION pg_regstage UPDATE TO '1.1'" to load this file. \quit

