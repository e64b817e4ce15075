/*
 * db.c — connections (keepalives, timeouts), LISTEN, store_updates with
 * binary arrays.
 */
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "relay.h"

/*
 * libpq settings of every relay connection, before DATABASE_URL's own (which
 * win): a peer that vanished without a FIN or RST must not hold a part of
 * the relay forever.  Keepalive probes start after 30 s idle, every 10 s, 3
 * lost ones drop the connection (about a minute); tcp_user_timeout drops it
 * when sent data stays unacknowledged that long (a query sent to a dead
 * server, where keepalives do not run); connect_timeout bounds the
 * connection attempt, unless PGCONNECT_TIMEOUT says otherwise.  A long
 * process_next (a slow download) keeps an idle, healthy socket and is not
 * affected.
 */
#define PG_KEEPALIVES_IDLE "30"
#define PG_KEEPALIVES_INTERVAL "10"
#define PG_KEEPALIVES_COUNT "3"
#define PG_TCP_USER_TIMEOUT "60000"
#define PG_CONNECT_TIMEOUT "10"

#define INT8OID 20
#define BYTEAOID 17

static PGconn *
connect_db(void)
{
	const char *keys[] = {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
	"tcp_user_timeout", "connect_timeout", "dbname", NULL};
	const char *values[] = {"1", PG_KEEPALIVES_IDLE, PG_KEEPALIVES_INTERVAL, PG_KEEPALIVES_COUNT,
		PG_TCP_USER_TIMEOUT, getenv("PGCONNECT_TIMEOUT") ? NULL : PG_CONNECT_TIMEOUT,
	relay_config.database_url, NULL};

	/* expand_dbname: DATABASE_URL, last, overrides the settings above */
	return PQconnectdbParams(keys, values, 1);
}

void
db_error_line(const char *msg, char *buf, size_t buflen)
{
	snprintf(buf, buflen, "%s", msg ? msg : "");
	buf[strcspn(buf, "\n")] = '\0';
}

/*
 * Is conn a working connection to a server that takes writes?  A standby
 * (a failover demoted it, or DATABASE_URL names one) refuses every write
 * with 25006: drop it, so the next connect — a multi-host URI with
 * target_session_attrs=read-write — finds the primary.  PostgreSQL reports
 * in_hot_standby to the client on every change.
 */
bool
db_usable(PGconn *conn)
{
	const char *standby;

	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
		return false;
	standby = PQparameterStatus(conn, "in_hot_standby");
	return standby == NULL || strcmp(standby, "on") != 0;
}

void
db_drop(PGconn **conn)
{
	if (*conn)
		PQfinish(*conn);
	*conn = NULL;
}

PGconn *
db_try(PGconn **conn, const char *channel, const char *who)
{
	char		msg[512];

	if (db_usable(*conn))
		return *conn;
	db_drop(conn);
	*conn = connect_db();
	if (db_usable(*conn))
	{
		PGresult   *res;
		char		q[64];

		if (channel == NULL)
			return *conn;
		snprintf(q, sizeof(q), "LISTEN %s", channel);
		res = PQexec(*conn, q);
		if (PQresultStatus(res) == PGRES_COMMAND_OK)
		{
			PQclear(res);
			return *conn;
		}
		db_error_line(PQresultErrorMessage(res), msg, sizeof(msg));
		PQclear(res);
	}
	else if (*conn && PQstatus(*conn) == CONNECTION_OK)
		snprintf(msg, sizeof(msg), "the server is a standby (read-only); use target_session_attrs=read-write with every host in DATABASE_URL");
	else
		db_error_line(PQerrorMessage(*conn), msg, sizeof(msg));
	relay_log(LOG_ERROR, "%s: database unavailable (retrying): %s", who, msg);
	db_drop(conn);
	return NULL;
}

PGconn *
db_ensure(PGconn **conn, const char *channel, const char *who)
{
	int			failures = 0;

	while (!atomic_load(&relay_stop))
	{
		if (db_try(conn, channel, who))
			return *conn;
		relay_sleep_ms(relay_backoff_ms(250, failures++));
	}
	return NULL;
}

bool
db_drain_notify(PGconn *conn)
{
	PGnotify   *n;
	bool		any = false;

	if (PQconsumeInput(conn) == 0)
		return false;
	while ((n = PQnotifies(conn)) != NULL)
	{
		any = true;
		PQfreemem(n);
	}
	return any;
}

bool
db_wait_notify(PGconn *conn, int wake_fd, long ms)
{
	struct pollfd pfd[2] = {{.fd = PQsocket(conn), .events = POLLIN}, {.fd = wake_fd, .events = POLLIN}};

	if (db_drain_notify(conn))
		return true;
	if (pfd[0].fd < 0)
		return false;
	if (poll(pfd, wake_fd >= 0 ? 2 : 1, (int) ms) <= 0)
		return false;
	return db_drain_notify(conn);
}

/* a one-dimensional array of n elements in PostgreSQL's binary format */
static char *
binary_array(unsigned int elemtype, int n, const char *const *vals, const size_t *lens, size_t fixed,
			 int *outlen)
{
	size_t		total = 20;
	char	   *buf;
	char	   *p;
	uint32_t	w;

	for (int i = 0; i < n; i++)
		total += 4 + (lens ? lens[i] : fixed);
	if (total > INT32_MAX || (buf = malloc(total)) == NULL)
		return NULL;
	p = buf;
#define PUT32(v) do { w = htonl((uint32_t) (v)); memcpy(p, &w, 4); p += 4; } while (0)
	PUT32(1);					/* dimensions */
	PUT32(0);					/* no NULLs */
	PUT32(elemtype);
	PUT32(n);
	PUT32(1);					/* lower bound */
	for (int i = 0; i < n; i++)
	{
		size_t		len = lens ? lens[i] : fixed;

		PUT32(len);
		memcpy(p, vals[i], len);
		p += len;
	}
#undef PUT32
	*outlen = (int) total;
	return buf;
}

int
db_store_updates(PGconn *conn, int n, const int64_t *ids, const char *const *bodies,
				 const size_t *lens, char *err, size_t errlen)
{
	unsigned char *be = malloc(8 * (n ? n : 1));
	const char **idp = malloc(sizeof(char *) * (n ? n : 1));
	char	   *ida = NULL;
	char	   *bodya = NULL;
	int			idlen = 0;
	int			bodylen = 0;
	int			stored = -1;

	err[0] = '\0';
	if (be && idp)
	{
		for (int i = 0; i < n; i++)
		{
			uint64_t	v = (uint64_t) ids[i];

			for (int b = 0; b < 8; b++)		/* network byte order */
				be[8 * i + b] = (unsigned char) (v >> (56 - 8 * b));
			idp[i] = (const char *) &be[8 * i];
		}
		ida = binary_array(INT8OID, n, idp, NULL, 8, &idlen);
		bodya = binary_array(BYTEAOID, n, bodies, lens, 0, &bodylen);
	}
	if (ida && bodya)
	{
		const char *values[2] = {ida, bodya};
		int			lengths[2] = {idlen, bodylen};
		int			formats[2] = {1, 1};
		PGresult   *res = PQexecParams(conn, "SELECT regstage.store_updates($1::bigint[], $2::bytea[], false)",
									   2, NULL, values, lengths, formats, 0);

		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
			stored = atoi(PQgetvalue(res, 0, 0));
		else
			db_error_line(PQresultErrorMessage(res), err, errlen);
		PQclear(res);
	}
	else
		snprintf(err, errlen, "out of memory for %d updates", n);
	free(ida);
	free(bodya);
	free(be);
	free(idp);
	return stored;
}
