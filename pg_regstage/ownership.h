/*
 * ownership.h — one database per upload directory (the marker file
 * <upload_dir>/.pg_regstage_owner).
 */
#ifndef REGSTAGE_OWNERSHIP_H
#define REGSTAGE_OWNERSHIP_H

/* In upload_dir itself; never an orphan, never listed. */
#define OWNERSHIP_MARKER ".pg_regstage_owner"

/*
 * Claim dir for this database (creating the marker) or check that the
 * marker names this database of this cluster; ERROR (55000) otherwise.
 * Needs a transaction (the database's name comes from the catalog).
 */
extern void ownership_check(const char *dir);

#endif
