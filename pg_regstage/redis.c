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
 * hiredis allocates with malloc: every reply is copied into palloc'd memory
 * and freed before anything can ereport, so no reply leaks across a longjmp.
 *
 * After a commit (redis_send_formatted_after_commit) the rules are
 * stricter: no reconnect, no WaitEventSet, no palloc, only poll() on the
 * open socket against a monotonic deadline.
 */
#include "postgres.h"

#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <hiredis/hiredis.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
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
static char redis_conn_identity[1024];	/* settings the connection was made with */

/* Where Redis is, for messages: "host:port" or "unix socket path". */
const char *
redis_address(void)
{
	static char addr[MAXPGPATH + 32];

	if (regstage_redis_host[0] == '/')
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
	snprintf(buf, len, "%s|%d|%d|%s|%s", regstage_redis_host, regstage_redis_port,
			 regstage_redis_db, regstage_redis_password, regstage_redis_password_file);
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
 * Make sure redis_conn is a live connection made with the current settings.
 * Returns false (nothrow) or raises when Redis cannot be reached.
 */
static bool
redis_ensure_connected(bool nothrow, char *errbuf, size_t errlen, int *errcode_out)
{
	char		identity[sizeof(redis_conn_identity)];
	struct timeval tv;
	redisContext *c;
	int			flags;
	static bool exit_hook_registered = false;
	char		password[REGSTAGE_SECRET_MAX + 2];

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

	if (!regstage_redis_password_value(password, sizeof(password), errbuf, errlen, errcode_out))
		return false;
	tv.tv_sec = regstage_redis_timeout_ms / 1000;
	tv.tv_usec = (regstage_redis_timeout_ms % 1000) * 1000;
	if (regstage_redis_host[0] == '/')
		c = redisConnectUnixWithTimeout(regstage_redis_host, tv);
	else
		c = redisConnectWithTimeout(regstage_redis_host, regstage_redis_port, tv);
	if (c == NULL || c->err)
	{
		snprintf(errbuf, errlen, "%s", c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		*errcode_out = ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION;
		return false;
	}

	/* From here on every wait is ours (latch + socket), not hiredis's. */
	flags = fcntl(c->fd, F_GETFL, 0);
	if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0)
	{
		snprintf(errbuf, errlen, "could not make the socket non-blocking: %m");
		redisFree(c);
		*errcode_out = ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION;
		return false;
	}
	c->flags &= ~REDIS_BLOCK;
	redis_conn = c;
	strlcpy(redis_conn_identity, identity, sizeof(redis_conn_identity));

	/* AUTH and SELECT in one round trip */
	if (password[0] != '\0' || regstage_redis_db != 0)
	{
		RedisCommand cmds[2];
		RedisValue *replies[2] = {NULL, NULL};
		char		dbbuf[16];
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
			*errcode_out = ERRCODE_CONNECTION_FAILURE;
			return false;
		}
		for (int i = 0; i < n; i++)
		{
			if (nothrow ? errbuf[0] != '\0' : replies[i]->type == REDIS_REPLY_ERROR)
			{
				if (!nothrow)
					snprintf(errbuf, errlen, "%s: %s", cmds[i].argv[0], replies[i]->str);
				redis_discard();
				*errcode_out = (strcmp(cmds[i].argv[0], "AUTH") == 0)
					? ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
					: ERRCODE_CONNECTION_FAILURE;
				return false;
			}
		}
	}
	return true;
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
	int			code = ERRCODE_CONNECTION_FAILURE;

	if (!redis_ensure_connected(false, errbuf, sizeof(errbuf), &code))
		ereport(ERROR,
				(errcode(code),
				 errmsg("could not connect to Redis at %s: %s", redis_address(), errbuf),
				 errhint("Check that Redis is running and that regstage.redis_host, regstage.redis_port and regstage.redis_password are right.")));
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
	int			code;

	Assert(ncmds <= lengthof(replies));
	errbuf[0] = '\0';
	if (!redis_ensure_connected(true, errbuf, errlen, &code))
		return false;
	if (!redis_roundtrip_raw(cmds, ncmds, replies, true, timeout_ms, errbuf, errlen))
		return false;
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
	freeReplyObject(reply);
	redis_conn_busy = false;	/* the round trip is complete */
	return ok;
}
