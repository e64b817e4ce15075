/*
 * redis.c — the per-backend Redis connection: connect, round trips, waits.
 *
 * It knows nothing of keys (redis_staging.c does).  One connection per
 * backend, opened lazily and reused.  hiredis runs in
 * non-blocking mode and every wait goes through WaitLatchOrSocket, so a
 * round trip is bounded by regstage.redis_timeout and cancel /
 * statement_timeout / pg_terminate_backend interrupt it.  A round trip that
 * did not finish (I/O error, timeout, interrupt) leaves the connection
 * marked busy; the next call discards it and reconnects.
 *
 * With regstage.redis_sentinels set, the connection is made to the master
 * Redis Sentinel names: the sentinels are asked in order (each within
 * regstage.redis_timeout, through the same latch waits), the master's ROLE
 * is checked before the connection is used (a replica: ask again, a few
 * times), and a READONLY reply (the master was demoted by a failover)
 * drops the connection, so the next call asks the sentinels again.  A
 * replica is never written to: it refuses writes with READONLY, and a
 * connection that met READONLY is never used again.
 *
 * hiredis allocates with malloc: every reply is copied into palloc'd memory
 * and freed before anything can ereport, so no reply leaks across a longjmp.
 *
 * After a commit (redis_send_formatted_after_commit) the rules are
 * stricter: no reconnect, no WaitEventSet, no palloc, only poll() on the
 * open socket against a monotonic deadline.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <poll.h>
#include <time.h>
#include <hiredis/hiredis.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "storage/latch.h"
#include "lib/stringinfo.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "redis.h"

static redisContext *redis_conn = NULL;
static bool redis_conn_busy = false;	/* a round trip is in progress or was cut */

/*
 * The latch, postmaster death and redis_conn's socket, kept for the life of
 * the connection: WaitLatchOrSocket would build and tear down an epoll set
 * on every wait (five system calls, twice per registration).
 */
static WaitEventSet *redis_waitset = NULL;
static int	redis_waitset_socket_pos;
static int	redis_waitset_socket_event;
static char redis_conn_identity[2048];	/* settings the connection was made with */

/* The master the sentinels named last (for messages). */
static char redis_master_host[256];
static int	redis_master_port;

/* A ROLE other than master: ask the sentinels again this many times in all. */
#define REDIS_ROLE_ATTEMPTS 3
#define REDIS_ROLE_RETRY_MS 250

#define REDIS_HINT_PLAIN "Check that Redis is running and that regstage.redis_host, regstage.redis_port and regstage.redis_password are right."

/* Why a connection could not be made: the error to raise, or its detail. */
typedef struct RedisConnectFailure
{
	int			code;			/* SQLSTATE */
	char		msg[1024];		/* the whole message */
	char		detail[512];	/* the cause alone (nothrow callers log it) */
	const char *hint;
} RedisConnectFailure;

static bool
redis_use_sentinels(void)
{
	return regstage_redis_sentinels != NULL && regstage_redis_sentinels[0] != '\0';
}

/* Where Redis is, for messages: "host:port" or "unix socket path". */
const char *
redis_address(void)
{
	static char addr[MAXPGPATH + 512];

	if (redis_use_sentinels())
	{
		if (redis_master_host[0] != '\0')
			snprintf(addr, sizeof(addr), "%s:%d (master \"%s\" named by Redis Sentinel)",
					 redis_master_host, redis_master_port, regstage_redis_master_name);
		else
			snprintf(addr, sizeof(addr), "master \"%s\" of Redis Sentinel %s",
					 regstage_redis_master_name, regstage_redis_sentinels);
	}
	else if (regstage_redis_host[0] == '/')
		snprintf(addr, sizeof(addr), "unix socket %s", regstage_redis_host);
	else
		snprintf(addr, sizeof(addr), "%s:%d", regstage_redis_host, regstage_redis_port);
	return addr;
}

void
redis_cmd_init(RedisCommand *cmd)
{
	cmd->argc = 0;
}

void
redis_cmd_arg(RedisCommand *cmd, const char *arg)
{
	Assert(cmd->argc < lengthof(cmd->argv));
	cmd->argv[cmd->argc] = arg;
	cmd->argvlen[cmd->argc] = strlen(arg);
	cmd->argc++;
}

static void
redis_discard(void)
{
	if (redis_waitset)
		FreeWaitEventSet(redis_waitset);
	redis_waitset = NULL;
	if (redis_conn)
		redisFree(redis_conn);
	redis_conn = NULL;
	redis_conn_busy = false;
}

static void
redis_on_exit(int code, Datum arg)
{
	redis_discard();
}

static void
redis_compute_identity(char *buf, size_t len)
{
	snprintf(buf, len, "%s|%d|%d|%s|%s|%s|%s", regstage_redis_host, regstage_redis_port,
			 regstage_redis_db, regstage_redis_password, regstage_redis_password_file,
			 regstage_redis_sentinels, regstage_redis_master_name);
}

/*
 * Copy a hiredis reply into palloc'd memory.  Called only where a palloc
 * failure may raise, i.e. never in nothrow mode.
 */
static RedisValue *
redis_copy_reply(redisReply *r)
{
	RedisValue *v = palloc0(sizeof(RedisValue));

	v->type = r->type;
	v->integer = r->integer;
	if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
		r->type == REDIS_REPLY_ERROR)
	{
		v->str = palloc(r->len + 1);
		memcpy(v->str, r->str, r->len);
		v->str[r->len] = '\0';
		v->len = r->len;
	}
	else if (r->type == REDIS_REPLY_ARRAY)
	{
		v->nelem = r->elements;
		v->elem = palloc0(sizeof(RedisValue *) * Max(r->elements, 1));
		for (size_t i = 0; i < r->elements; i++)
			v->elem[i] = redis_copy_reply(r->element[i]);
	}
	return v;
}

/*
 * Wait until the socket is ready for the given event or the deadline
 * passes.  Returns false on timeout.  Unless nothrow, pending interrupts are
 * served here (the connection stays marked busy and is discarded later).
 */
static bool
redis_wait(int event, TimestampTz deadline, bool nothrow)
{
	if (redis_waitset == NULL)
	{
#if PG_VERSION_NUM >= 170000
		redis_waitset = CreateWaitEventSet(NULL, 3);
#else
		redis_waitset = CreateWaitEventSet(TopMemoryContext, 3);
#endif
		AddWaitEventToSet(redis_waitset, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(redis_waitset, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		redis_waitset_socket_pos = AddWaitEventToSet(redis_waitset, event, redis_conn->fd,
													 NULL, NULL);
		redis_waitset_socket_event = event;
	}
	else if (redis_waitset_socket_event != event)
	{
		ModifyWaitEvent(redis_waitset, redis_waitset_socket_pos, event, NULL);
		redis_waitset_socket_event = event;
	}

	for (;;)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		WaitEvent	ev;

		if (remaining <= 0)
			return false;
		if (WaitEventSetWait(redis_waitset, remaining, &ev, 1, PG_WAIT_EXTENSION) == 0)
			continue;			/* timed out: the deadline check decides */
		if (ev.events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			if (!nothrow)
				CHECK_FOR_INTERRUPTS();
		}
		if (ev.events & event)
			return true;
	}
}

/*
 * Send ncmds commands in one write and read their replies.  On success the
 * replies are stored in out[] (palloc'd copies, or NULL entries in nothrow
 * mode) and true is returned.  On failure errbuf describes it and false is
 * returned; the connection is discarded.  Error replies are successes here.
 */
static bool
redis_roundtrip_raw(RedisCommand *cmds, int ncmds, RedisValue **out,
					bool nothrow, int timeout_ms, char *errbuf, size_t errlen)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	int			done = 0;

	redis_conn_busy = true;
	for (int i = 0; i < ncmds; i++)
		if (redisAppendCommandArgv(redis_conn, cmds[i].argc, cmds[i].argv, cmds[i].argvlen) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", redis_conn->errstr);
			redis_discard();
			return false;
		}

	while (!done)
	{
		if (redisBufferWrite(redis_conn, &done) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", redis_conn->errstr);
			redis_discard();
			return false;
		}
		if (!done && !redis_wait(WL_SOCKET_WRITEABLE, deadline, nothrow))
		{
			snprintf(errbuf, errlen, "no answer within %d ms", timeout_ms);
			redis_discard();
			return false;
		}
	}

	for (int i = 0; i < ncmds; i++)
	{
		void	   *reply = NULL;

		for (;;)
		{
			if (redisGetReplyFromReader(redis_conn, &reply) != REDIS_OK)
			{
				snprintf(errbuf, errlen, "%s", redis_conn->errstr);
				redis_discard();
				return false;
			}
			if (reply != NULL)
				break;
			if (!redis_wait(WL_SOCKET_READABLE, deadline, nothrow))
			{
				snprintf(errbuf, errlen, "no answer within %d ms", timeout_ms);
				redis_discard();
				return false;
			}
			if (redisBufferRead(redis_conn) != REDIS_OK)
			{
				snprintf(errbuf, errlen, "%s", redis_conn->errstr);
				redis_discard();
				return false;
			}
		}
		if (nothrow)
		{
			bool		is_error = ((redisReply *) reply)->type == REDIS_REPLY_ERROR;

			if (is_error)
				snprintf(errbuf, errlen, "%s", ((redisReply *) reply)->str);
			freeReplyObject(reply);
			out[i] = NULL;
			if (is_error)
			{
				/* drain the remaining replies so the connection stays usable */
				continue;
			}
		}
		else
		{
			PG_TRY();
			{
				out[i] = redis_copy_reply(reply);
			}
			PG_FINALLY();
			{
				freeReplyObject(reply);
			}
			PG_END_TRY();
		}
	}
	redis_conn_busy = false;
	return true;
}

/*
 * Wait until fd is ready for event (WL_SOCKET_*) or the deadline passes
 * (false): for sockets other than redis_conn's (a connect in progress, a
 * sentinel), which would not pay for a kept WaitEventSet.  Unless nothrow,
 * interrupts are served.
 */
static bool
redis_wait_fd(int fd, int event, TimestampTz deadline, bool nothrow)
{
	for (;;)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		int			rc;

		if (remaining <= 0)
			return false;
		rc = WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | event,
							   fd, remaining, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			if (!nothrow)
				CHECK_FOR_INTERRUPTS();
		}
		if (rc & event)
			return true;
	}
}

/*
 * Open a TCP connection without blocking: hiredis starts the connect, the
 * wait is ours, so it is bounded by the deadline and cancel interrupts it.
 * Returns the context in non-blocking mode, or NULL with errbuf set.
 */
static redisContext *
redis_connect_tcp(const char *host, int port, TimestampTz deadline, bool nothrow,
				  char *errbuf, size_t errlen)
{
	redisContext *c = redisConnectNonBlock(host, port);
	bool		ready = false;
	int			soerr = 0;
	socklen_t	solen = sizeof(soerr);

	if (c == NULL || c->err)
	{
		snprintf(errbuf, errlen, "%s", c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		return NULL;
	}
	PG_TRY();
	{
		ready = redis_wait_fd(c->fd, WL_SOCKET_CONNECTED, deadline, nothrow);
	}
	PG_CATCH();
	{
		redisFree(c);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (!ready)
		snprintf(errbuf, errlen, "connection not established within regstage.redis_timeout (%d ms)",
				 regstage_redis_timeout_ms);
	else if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &solen) < 0 || soerr != 0)
		snprintf(errbuf, errlen, "%s", strerror(soerr ? soerr : errno));
	else
		return c;
	redisFree(c);
	return NULL;
}

/*
 * One command on a non-blocking context other than through redis_conn's
 * wait set: a sentinel's, or ROLE on a fresh connection.  *reply is
 * hiredis's (malloc'd; the caller frees it).  False with errbuf set on a
 * transport failure or timeout; the context is then unusable.
 */
static bool
redis_ctx_command(redisContext *c, RedisCommand *cmd, TimestampTz deadline, bool nothrow,
				  redisReply **reply, char *errbuf, size_t errlen)
{
	int			done = 0;
	void	   *r = NULL;

	if (redisAppendCommandArgv(c, cmd->argc, cmd->argv, cmd->argvlen) != REDIS_OK)
	{
		snprintf(errbuf, errlen, "%s", c->errstr);
		return false;
	}
	while (!done)
	{
		if (redisBufferWrite(c, &done) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", c->errstr);
			return false;
		}
		if (!done && !redis_wait_fd(c->fd, WL_SOCKET_WRITEABLE, deadline, nothrow))
		{
			snprintf(errbuf, errlen, "no answer within %d ms", regstage_redis_timeout_ms);
			return false;
		}
	}
	for (;;)
	{
		if (redisGetReplyFromReader(c, &r) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", c->errstr);
			return false;
		}
		if (r != NULL)
			break;
		if (!redis_wait_fd(c->fd, WL_SOCKET_READABLE, deadline, nothrow))
		{
			snprintf(errbuf, errlen, "no answer within %d ms", regstage_redis_timeout_ms);
			return false;
		}
		if (redisBufferRead(c) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", c->errstr);
			return false;
		}
	}
	*reply = r;
	return true;
}

/* Append "what; " to a fixed buffer, silently cut when full. */
static void
append_detail(char *buf, size_t len, const char *what)
{
	size_t		used = strlen(buf);

	if (used + 1 < len)
		snprintf(buf + used, len - used, "%s%s", used ? "; " : "", what);
}

/*
 * Ask the sentinels of regstage.redis_sentinels, in order, for the address
 * of regstage.redis_master_name (SENTINEL get-master-addr-by-name).  Each
 * sentinel gets regstage.redis_timeout for its connect and its answer; the
 * first that names a master wins.  False with f set when none is reachable
 * or none knows the master.
 */
static bool
redis_sentinel_lookup(char *host, size_t hostlen, int *port, bool nothrow, RedisConnectFailure *f)
{
	char		list[REDIS_MAX_SENTINELS * 272];
	char		details[768] = "";
	char	   *tok;
	char	   *save = NULL;
	int			reached = 0;

	strlcpy(list, regstage_redis_sentinels, sizeof(list));
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		char		shost[256];
		char		err[256];
		char	   *colon;
		int			sport;
		TimestampTz deadline;
		redisContext *c;
		RedisCommand cmd;
		volatile bool ok = false;
		redisReply *volatile reply = NULL;

		while (*tok == ' ')
			tok++;
		colon = strrchr(tok, ':');
		if (colon == NULL)
			continue;			/* the check hook refuses it */
		sport = atoi(colon + 1);
		*colon = '\0';
		if (tok[0] == '[' && colon > tok + 1 && colon[-1] == ']')
		{
			colon[-1] = '\0';
			tok++;
		}
		strlcpy(shost, tok, sizeof(shost));

		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), regstage_redis_timeout_ms);
		c = redis_connect_tcp(shost, sport, deadline, nothrow, err, sizeof(err));
		if (c == NULL)
		{
			char		d[320];

			snprintf(d, sizeof(d), "%s:%d: %s", shost, sport, err);
			append_detail(details, sizeof(details), d);
			continue;
		}
		redis_cmd_init(&cmd);
		redis_cmd_arg(&cmd, "SENTINEL");
		redis_cmd_arg(&cmd, "get-master-addr-by-name");
		redis_cmd_arg(&cmd, regstage_redis_master_name);
		PG_TRY();
		{
			redisReply *r = NULL;

			ok = redis_ctx_command(c, &cmd, deadline, nothrow, &r, err, sizeof(err));
			reply = r;
		}
		PG_FINALLY();
		{
			redisFree(c);
		}
		PG_END_TRY();
		if (!ok)
		{
			char		d[320];

			snprintf(d, sizeof(d), "%s:%d: %s", shost, sport, err);
			append_detail(details, sizeof(details), d);
			continue;
		}
		reached++;
		if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
			reply->element[0]->type == REDIS_REPLY_STRING &&
			reply->element[1]->type == REDIS_REPLY_STRING)
		{
			strlcpy(host, reply->element[0]->str, hostlen);
			*port = atoi(reply->element[1]->str);
			freeReplyObject(reply);
			return true;
		}
		{
			char		d[320];

			snprintf(d, sizeof(d), "%s:%d: %s", shost, sport,
					 reply->type == REDIS_REPLY_ERROR ? reply->str : "does not know it");
			append_detail(details, sizeof(details), d);
		}
		freeReplyObject(reply);
	}

	f->code = ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION;
	strlcpy(f->detail, details, sizeof(f->detail));
	if (reached == 0)
	{
		snprintf(f->msg, sizeof(f->msg),
				 "could not reach any Redis Sentinel of regstage.redis_sentinels (%s): %s",
				 regstage_redis_sentinels, details);
		f->hint = "Check that the sentinels are running and that regstage.redis_sentinels lists them as host:port, comma-separated.";
	}
	else
	{
		snprintf(f->msg, sizeof(f->msg),
				 "the Redis Sentinels (%s) know no master named \"%s\": %s",
				 regstage_redis_sentinels, regstage_redis_master_name, details);
		f->hint = "Set regstage.redis_master_name to the name of the sentinels' \"sentinel monitor\" line (redis-cli -p <sentinel port> SENTINEL masters lists them).";
	}
	return false;
}

/*
 * Connect redis_conn to host:port (or the unix socket host), make it
 * non-blocking, then AUTH and SELECT in one round trip.  False with f set.
 */
static bool
redis_open(const char *host, int port, const char *identity, bool nothrow, RedisConnectFailure *f)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), regstage_redis_timeout_ms);
	redisContext *c;
	char		password[REGSTAGE_SECRET_MAX + 2];
	int			code;

	f->hint = REDIS_HINT_PLAIN;
	/* the password (regstage.redis_password_file wins): never raises here */
	if (!regstage_redis_password_value(password, sizeof(password), f->detail, sizeof(f->detail), &code))
	{
		f->code = code;
		snprintf(f->msg, sizeof(f->msg), "could not connect to Redis at %s: %s", redis_address(), f->detail);
		return false;
	}
	if (host[0] == '/')
	{
		struct timeval tv;
		int			flags;

		tv.tv_sec = regstage_redis_timeout_ms / 1000;
		tv.tv_usec = (regstage_redis_timeout_ms % 1000) * 1000;
		c = redisConnectUnixWithTimeout(host, tv);
		if (c == NULL || c->err)
		{
			snprintf(f->detail, sizeof(f->detail), "%s", c ? c->errstr : "out of memory");
			if (c)
				redisFree(c);
			c = NULL;
		}
		else
		{
			/* From here on every wait is ours (latch + socket), not hiredis's. */
			flags = fcntl(c->fd, F_GETFL, 0);
			if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0)
			{
				snprintf(f->detail, sizeof(f->detail), "could not make the socket non-blocking: %m");
				redisFree(c);
				c = NULL;
			}
			else
				c->flags &= ~REDIS_BLOCK;
		}
	}
	else
		c = redis_connect_tcp(host, port, deadline, nothrow, f->detail, sizeof(f->detail));
	if (c == NULL)
	{
		f->code = ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION;
		snprintf(f->msg, sizeof(f->msg), "could not connect to Redis at %s: %s", redis_address(), f->detail);
		return false;
	}
	redis_conn = c;
	strlcpy(redis_conn_identity, identity, sizeof(redis_conn_identity));

	/* AUTH and SELECT in one round trip */
	if (password[0] != '\0' || regstage_redis_db != 0)
	{
		RedisCommand cmds[2];
		RedisValue *replies[2] = {NULL, NULL};
		char		dbbuf[16];
		char	   *errbuf = f->detail;
		size_t		errlen = sizeof(f->detail);
		int			n = 0;

		if (password[0] != '\0')
		{
			redis_cmd_init(&cmds[n]);
			redis_cmd_arg(&cmds[n], "AUTH");
			redis_cmd_arg(&cmds[n], password);
			n++;
		}
		if (regstage_redis_db != 0)
		{
			snprintf(dbbuf, sizeof(dbbuf), "%d", regstage_redis_db);
			redis_cmd_init(&cmds[n]);
			redis_cmd_arg(&cmds[n], "SELECT");
			redis_cmd_arg(&cmds[n], dbbuf);
			n++;
		}
		errbuf[0] = '\0';
		if (!redis_roundtrip_raw(cmds, n, replies, nothrow, regstage_redis_timeout_ms, errbuf, errlen))
		{
			f->code = ERRCODE_CONNECTION_FAILURE;
			snprintf(f->msg, sizeof(f->msg), "could not connect to Redis at %s: %s", redis_address(), f->detail);
			return false;
		}
		for (int i = 0; i < n; i++)
		{
			if (nothrow ? errbuf[0] != '\0' : replies[i]->type == REDIS_REPLY_ERROR)
			{
				if (!nothrow)
					snprintf(errbuf, errlen, "%s: %s", cmds[i].argv[0], replies[i]->str);
				redis_discard();
				f->code = (strcmp(cmds[i].argv[0], "AUTH") == 0)
					? ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
					: ERRCODE_CONNECTION_FAILURE;
				snprintf(f->msg, sizeof(f->msg), "could not connect to Redis at %s: %s", redis_address(), f->detail);
				return false;
			}
		}
	}
	return true;
}

/*
 * ROLE of the freshly opened redis_conn ("master", "slave", ...) into role.
 * False with f set on a transport failure (the connection is discarded).
 */
static bool
redis_role(char *role, size_t rolelen, bool nothrow, RedisConnectFailure *f)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), regstage_redis_timeout_ms);
	RedisCommand cmd;
	redisReply *reply = NULL;

	redis_cmd_init(&cmd);
	redis_cmd_arg(&cmd, "ROLE");
	redis_conn_busy = true;		/* an interrupt here leaves it to be discarded */
	if (!redis_ctx_command(redis_conn, &cmd, deadline, nothrow, &reply, f->detail, sizeof(f->detail)))
	{
		redis_discard();
		f->code = ERRCODE_CONNECTION_FAILURE;
		f->hint = "A failover may be in progress: retry in a few seconds.";
		snprintf(f->msg, sizeof(f->msg), "Redis at %s failed during ROLE: %s", redis_address(), f->detail);
		return false;
	}
	redis_conn_busy = false;
	if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
		reply->element[0]->type == REDIS_REPLY_STRING)
		strlcpy(role, reply->element[0]->str, rolelen);
	else if (reply->type == REDIS_REPLY_ERROR)
		snprintf(role, rolelen, "error \"%s\"", reply->str);
	else
		strlcpy(role, "unknown", rolelen);
	freeReplyObject(reply);
	return true;
}

/* Sleep ms on the latch (interruptible unless nothrow). */
static void
redis_pause(long ms, bool nothrow)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	if (!nothrow)
		CHECK_FOR_INTERRUPTS();
}

/*
 * Make sure redis_conn is a live connection made with the current settings,
 * to the master when sentinels are configured.  Returns false with f set
 * when Redis cannot be reached; the caller raises or logs it.
 */
static bool
redis_ensure_connected(bool nothrow, RedisConnectFailure *f)
{
	char		identity[sizeof(redis_conn_identity)];
	static bool exit_hook_registered = false;

	redis_compute_identity(identity, sizeof(identity));
	if (redis_conn && (redis_conn_busy || redis_conn->err ||
					   strcmp(identity, redis_conn_identity) != 0))
		redis_discard();
	if (redis_conn)
		return true;

	if (!exit_hook_registered)
	{
		on_proc_exit(redis_on_exit, (Datum) 0);
		exit_hook_registered = true;
	}

	if (!redis_use_sentinels())
		return redis_open(regstage_redis_host, regstage_redis_host[0] == '/' ? 0 : regstage_redis_port,
						  identity, nothrow, f);

	for (int attempt = 1;; attempt++)
	{
		char		host[256];
		char		role[128];
		int			port;

		redis_master_host[0] = '\0';
		if (!redis_sentinel_lookup(host, sizeof(host), &port, nothrow, f))
			return false;
		strlcpy(redis_master_host, host, sizeof(redis_master_host));
		redis_master_port = port;
		if (!redis_open(host, port, identity, nothrow, f))
		{
			f->hint = "The sentinels may not have noticed a failed master yet (down-after-milliseconds): retry in a few seconds.";
			return false;
		}
		if (!redis_role(role, sizeof(role), nothrow, f))
			return false;
		if (strcmp(role, "master") == 0)
			return true;

		/* a demoted master the sentinels still name: never write to it */
		redis_discard();
		if (attempt >= REDIS_ROLE_ATTEMPTS)
		{
			f->code = ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION;
			snprintf(f->detail, sizeof(f->detail), "ROLE is %s, not master", role);
			snprintf(f->msg, sizeof(f->msg),
					 "the Redis Sentinels name %s:%d as master \"%s\", but its ROLE is %s (asked %d times)",
					 host, port, regstage_redis_master_name, role, attempt);
			f->hint = "A failover is in progress: retry in a few seconds (the sentinels' failover-timeout).";
			return false;
		}
		redis_pause(REDIS_ROLE_RETRY_MS * attempt, nothrow);
	}
}

/* A READONLY error in a reply (or in an EXEC array): the server is a replica now. */
static const char *
redis_readonly_error(RedisValue *r)
{
	if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "READONLY") != NULL)
		return r->str;
	if (r->type == REDIS_REPLY_ARRAY)
		for (int j = 0; j < r->nelem; j++)
			if (r->elem[j]->type == REDIS_REPLY_ERROR && strstr(r->elem[j]->str, "READONLY") != NULL)
				return r->elem[j]->str;
	return NULL;
}

/*
 * One round trip that raises on failure.  Returns palloc'd replies; an
 * error reply for any command raises too.
 */
RedisValue **
redis_roundtrip(RedisCommand *cmds, int ncmds)
{
	RedisValue **replies = palloc0(sizeof(RedisValue *) * ncmds);
	char		errbuf[256];
	RedisConnectFailure f;

	if (!redis_ensure_connected(false, &f))
		ereport(ERROR,
				(errcode(f.code),
				 errmsg("%s", f.msg),
				 errhint("%s", f.hint)));
	if (!redis_roundtrip_raw(cmds, ncmds, replies, false, regstage_redis_timeout_ms,
							 errbuf, sizeof(errbuf)))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("Redis at %s failed during %s: %s", redis_address(), cmds[0].argv[0], errbuf),
				 errhint("The staged data is untouched; retry when Redis answers again (regstage.redis_timeout is %d ms).",
						 regstage_redis_timeout_ms)));

	for (int i = 0; i < ncmds; i++)
	{
		RedisValue *r = replies[i];
		const char *readonly = redis_readonly_error(r);

		if (readonly)
		{
			/* demoted by a failover: this connection is never used again */
			redis_discard();
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("Redis at %s refused %s as a replica: %s", redis_address(), cmds[i].argv[0], readonly),
					 errhint(redis_use_sentinels()
							 ? "The master changed (failover); nothing was written.  The next call asks the sentinels for the new master."
							 : "Redis at regstage.redis_host is a replica; nothing was written.  Point regstage.redis_host at the master, or set regstage.redis_sentinels.")));
		}
		if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOAUTH", 6) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("Redis at %s refused %s: %s", redis_address(), cmds[i].argv[0], r->str),
					 errhint("Set regstage.redis_password to the password Redis requires.")));
		if (r->type == REDIS_REPLY_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("Redis at %s refused %s: %s", redis_address(), cmds[i].argv[0], r->str),
					 errhint("Another client may have stored a value of the wrong type under regstage.key_prefix.")));
		/* errors inside MULTI/EXEC come back as elements of the EXEC array */
		if (r->type == REDIS_REPLY_ARRAY)
			for (int j = 0; j < r->nelem; j++)
				if (r->elem[j]->type == REDIS_REPLY_ERROR)
					ereport(ERROR,
							(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
							 errmsg("Redis at %s refused a command in a transaction: %s",
									redis_address(), r->elem[j]->str),
							 errhint("Another client may have stored a value of the wrong type under regstage.key_prefix.")));
	}
	return replies;
}


/*
 * One round trip that never raises, for a best-effort command inside a live
 * transaction (it may connect).  Returns false with errbuf set when Redis
 * could not be reached or refused a command.
 */
bool
redis_roundtrip_nothrow(RedisCommand *cmds, int ncmds, int timeout_ms, char *errbuf, size_t errlen)
{
	RedisValue *replies[8];
	RedisConnectFailure f;

	Assert(ncmds <= lengthof(replies));
	errbuf[0] = '\0';
	if (!redis_ensure_connected(true, &f))
	{
		snprintf(errbuf, errlen, "%s", f.detail);
		return false;
	}
	if (!redis_roundtrip_raw(cmds, ncmds, replies, true, timeout_ms, errbuf, errlen))
		return false;
	if (strstr(errbuf, "READONLY") != NULL)
		redis_discard();		/* a replica now: never used again */
	return errbuf[0] == '\0';
}

/*
 * Append one command in Redis's wire format (RESP) to buf: for commands
 * built before a commit and sent after it, when nothing may allocate.
 */
void
redis_format_command(StringInfo buf, int argc, const char *const *argv)
{
	appendStringInfo(buf, "*%d\r\n", argc);
	for (int i = 0; i < argc; i++)
	{
		size_t		len = strlen(argv[i]);

		appendStringInfo(buf, "$%zu\r\n", len);
		appendBinaryStringInfo(buf, argv[i], len);
		appendStringInfoString(buf, "\r\n");
	}
}

static int64
monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Wait with poll() until fd is ready for events or the deadline passes
 * (false).  No latch and no interrupts: after a commit they are held anyway,
 * and a WaitEventSet would have to be allocated.
 */
static bool
poll_socket(int fd, short events, int64 deadline_ms)
{
	for (;;)
	{
		struct pollfd pfd;
		int64		remaining = deadline_ms - monotonic_ms();
		int			rc;

		if (remaining <= 0)
			return false;
		pfd.fd = fd;
		pfd.events = events;
		pfd.revents = 0;
		rc = poll(&pfd, 1, (int) remaining);
		if (rc > 0)
			return true;
		if (rc < 0 && errno != EINTR)
			return true;		/* the next read or write reports the error */
	}
}

/*
 * Send one command already in wire format (cmd, len) on the open
 * connection and read its integer reply, within timeout_ms in all.  For use
 * after a commit: never raises, never reconnects (a connect blocks beyond
 * any deadline), never pallocs; hiredis's own buffers are malloc'd, whose
 * failure is an error return, not a longjmp.  Returns false with errbuf set
 * on any failure; a round trip cut by the deadline leaves the connection
 * marked busy, so the next caller in a live transaction reconnects.
 */
bool
redis_send_formatted_after_commit(const char *cmd, size_t len, int timeout_ms,
								  long long *integer, char *errbuf, size_t errlen)
{
	char		identity[sizeof(redis_conn_identity)];
	int64		deadline = monotonic_ms() + timeout_ms;
	int			done = 0;
	void	   *reply = NULL;
	redisReply *r;
	bool		ok = false;

	/*
	 * A commit whose wait for a synchronous standby was cut short (the
	 * postmaster died, or this backend is being terminated: PostgreSQL then
	 * ends the wait without the standby's acknowledgement) may exist on
	 * this node only, and be gone after a failover.  Its staged data stays:
	 * if the commit did survive, the next commit_registration() of the
	 * telegram_id refuses it and clears the data.
	 */
	if (ProcDiePending || !PostmasterIsAlive())
	{
		snprintf(errbuf, errlen, "kept on purpose: this server is going down, and the commit may not have reached a synchronous standby");
		return false;
	}
	redis_compute_identity(identity, sizeof(identity));
	if (redis_conn == NULL || redis_conn_busy || redis_conn->err ||
		strcmp(identity, redis_conn_identity) != 0)
	{
		snprintf(errbuf, errlen, "no open connection to reuse (none is opened after a commit)");
		return false;
	}

	redis_conn_busy = true;
	if (redisAppendFormattedCommand(redis_conn, cmd, len) != REDIS_OK)
	{
		snprintf(errbuf, errlen, "%s", redis_conn->errstr);
		return false;
	}
	while (!done)
	{
		if (redisBufferWrite(redis_conn, &done) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", redis_conn->errstr);
			return false;
		}
		if (!done && !poll_socket(redis_conn->fd, POLLOUT, deadline))
		{
			snprintf(errbuf, errlen, "no answer within %d ms", timeout_ms);
			return false;
		}
	}
	for (;;)
	{
		if (redisGetReplyFromReader(redis_conn, &reply) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", redis_conn->errstr);
			return false;
		}
		if (reply != NULL)
			break;
		if (!poll_socket(redis_conn->fd, POLLIN, deadline))
		{
			snprintf(errbuf, errlen, "no answer within %d ms", timeout_ms);
			return false;
		}
		if (redisBufferRead(redis_conn) != REDIS_OK)
		{
			snprintf(errbuf, errlen, "%s", redis_conn->errstr);
			return false;
		}
	}

	r = reply;
	if (r->type == REDIS_REPLY_INTEGER)
	{
		*integer = r->integer;
		ok = true;
	}
	else if (r->type == REDIS_REPLY_ERROR)
		snprintf(errbuf, errlen, "%s", r->str);
	else
		snprintf(errbuf, errlen, "unexpected reply type %d", r->type);
	/* the round trip is complete; a replica (READONLY) is left to be discarded */
	redis_conn_busy = (r->type == REDIS_REPLY_ERROR && strstr(r->str, "READONLY") != NULL);
	freeReplyObject(reply);
	return ok;
}
