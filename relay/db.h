/*
 * db.h — the relay's PostgreSQL connections: one per part (receiver,
 * webhook server, each processor, the sender), each with its own LISTEN.
 */
#ifndef REGSTAGE_RELAY_DB_H
#define REGSTAGE_RELAY_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

/*
 * A connection that works, made if needed (and LISTEN channel, if not
 * NULL); waits with backoff while the database is unavailable.  NULL only
 * when the relay is stopping.  who names the part in log lines.
 */
PGconn	   *db_ensure(PGconn **conn, const char *channel, const char *who);

/* One attempt, no waiting: a working connection or NULL (logged). */
PGconn	   *db_try(PGconn **conn, const char *channel, const char *who);

/* A working connection to a server that takes writes (not a standby). */
bool		db_usable(PGconn *conn);

/* Forget a connection that failed (the next db_ensure makes a new one). */
void		db_drop(PGconn **conn);

/*
 * Wait up to ms for a notification on the connection's channel (or for
 * data, or an error), or for wake_fd (if >= 0) to become readable.  True if
 * a notification arrived; every pending one is consumed.
 */
bool		db_wait_notify(PGconn *conn, int wake_fd, long ms);

/* Consume pending notifications without waiting; true if there were any. */
bool		db_drain_notify(PGconn *conn);

/*
 * store_updates(ids, bodies, notify => false) in one statement, binary
 * parameters (the bodies are stored byte for byte): no NOTIFY, the caller
 * wakes this relay's processors (processors_wake).  Returns how many were
 * new, or -1 on a failure (logged; err gets the message).
 */
int			db_store_updates(PGconn *conn, int n, const int64_t *ids, const char *const *bodies,
							 const size_t *lens, char *err, size_t errlen);

/* The first line of a libpq error text, into buf. */
void		db_error_line(const char *msg, char *buf, size_t buflen);

#endif
