/*
 * redis.c — the per-backend Redis connection and the staging keys.
 *
 * One connection per backend, opened lazily and reused.  hiredis runs in
 * non-blocking mode and every wait goes through WaitLatchOrSocket, so a
 * round trip is bounded by regstage.redis_timeout and cancel /
 * statement_timeout / pg_terminate_backend interrupt it.  A round trip that
 * did not finish (I/O error, timeout, interrupt) leaves the connection
 * marked busy; the next call discards it and reconnects.
 *
 * hiredis allocates with malloc: every reply is copied into palloc'd memory
 * and freed before anything can ereport, so no reply leaks across a longjmp.
 */
#include "postgres.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "redis.h"

#define KEY_BUFSIZE 128

/* A Redis reply copied out of hiredis's malloc'd tree. */
typedef struct RedisValue
{
	int			type;			/* REDIS_REPLY_* */
	long long	integer;
	char	   *str;			/* NUL-terminated copy for STRING/STATUS/ERROR */
	size_t		len;
	int			nelem;
	struct RedisValue **elem;
} RedisValue;

/* One command: argv with explicit lengths (binary safe). */
typedef struct RedisCommand
{
	int			argc;
	const char *argv[16];
	size_t		argvlen[16];
} RedisCommand;

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
static const char *
redis_address(void)
{
	static char addr[MAXPGPATH + 32];

	if (regstage_redis_host[0] == '/')
		snprintf(addr, sizeof(addr), "unix socket %s", regstage_redis_host);
	else
		snprintf(addr, sizeof(addr), "%s:%d", regstage_redis_host, regstage_redis_port);
	return addr;
}

static void
redis_key(char *buf, int64 telegram_id, const char *suffix)
{
	snprintf(buf, KEY_BUFSIZE, "%s:" INT64_FORMAT ":%s", regstage_key_prefix, telegram_id, suffix);
}

static void
cmd_init(RedisCommand *cmd)
{
	cmd->argc = 0;
}

static void
cmd_arg(RedisCommand *cmd, const char *arg)
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
			cmd_init(&cmds[n]);
			cmd_arg(&cmds[n], "AUTH");
			cmd_arg(&cmds[n], password);
			n++;
		}
		if (regstage_redis_db != 0)
		{
			snprintf(dbbuf, sizeof(dbbuf), "%d", regstage_redis_db);
			cmd_init(&cmds[n]);
			cmd_arg(&cmds[n], "SELECT");
			cmd_arg(&cmds[n], dbbuf);
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
static RedisValue **
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

/* Append EXPIRE <key> <ttl> for all three keys. */
static int
add_expire_all(RedisCommand *cmds, int n, char keys[3][KEY_BUFSIZE], char *ttlbuf)
{
	for (int k = 0; k < 3; k++)
	{
		cmd_init(&cmds[n]);
		cmd_arg(&cmds[n], "EXPIRE");
		cmd_arg(&cmds[n], keys[k]);
		cmd_arg(&cmds[n], ttlbuf);
		n++;
	}
	return n;
}

static void
all_keys(char keys[3][KEY_BUFSIZE], int64 telegram_id)
{
	redis_key(keys[0], telegram_id, "language");
	redis_key(keys[1], telegram_id, "data");
	redis_key(keys[2], telegram_id, "documents");
}

/*
 * MULTI; <write>; EXPIRE x3; EXEC — the write and the TTL refresh of all
 * three keys are applied together, in one round trip.
 */
static void
redis_write_with_ttl(int64 telegram_id, RedisCommand *write)
{
	char		keys[3][KEY_BUFSIZE];
	char		ttlbuf[16];
	RedisCommand cmds[6];
	int			n = 0;

	all_keys(keys, telegram_id);
	snprintf(ttlbuf, sizeof(ttlbuf), "%d", regstage_ttl_s);
	cmd_init(&cmds[n]);
	cmd_arg(&cmds[n++], "MULTI");
	cmds[n++] = *write;
	n = add_expire_all(cmds, n, keys, ttlbuf);
	cmd_init(&cmds[n]);
	cmd_arg(&cmds[n++], "EXEC");
	(void) redis_roundtrip(cmds, n);
}

void
redis_stage_language(int64 telegram_id, const char *language)
{
	char		key[KEY_BUFSIZE];
	RedisCommand set;

	redis_key(key, telegram_id, "language");
	cmd_init(&set);
	cmd_arg(&set, "SET");
	cmd_arg(&set, key);
	cmd_arg(&set, language);
	redis_write_with_ttl(telegram_id, &set);
}

void
redis_stage_data_fields(int64 telegram_id, List *fields)
{
	char		key[KEY_BUFSIZE];
	RedisCommand hset;
	ListCell   *lc;

	Assert(list_length(fields) >= 1 && list_length(fields) <= 7);
	redis_key(key, telegram_id, "data");
	cmd_init(&hset);
	cmd_arg(&hset, "HSET");
	cmd_arg(&hset, key);
	foreach(lc, fields)
	{
		StagedField *f = lfirst(lc);

		cmd_arg(&hset, f->name);
		cmd_arg(&hset, f->value);
	}
	redis_write_with_ttl(telegram_id, &hset);
}

void
redis_stage_document(int64 telegram_id, const char *doc_type, const char *file_id)
{
	char		key[KEY_BUFSIZE];
	RedisCommand hset;

	redis_key(key, telegram_id, "documents");
	cmd_init(&hset);
	cmd_arg(&hset, "HSET");
	cmd_arg(&hset, key);
	cmd_arg(&hset, doc_type);
	cmd_arg(&hset, file_id);
	redis_write_with_ttl(telegram_id, &hset);
}

static int
staged_field_cmp(const ListCell *a, const ListCell *b)
{
	return strcmp(((StagedField *) lfirst(a))->name, ((StagedField *) lfirst(b))->name);
}

static List *
hash_to_fields(RedisValue *v)
{
	List	   *fields = NIL;

	if (v->type != REDIS_REPLY_ARRAY)
		return NIL;
	for (int i = 0; i + 1 < v->nelem; i += 2)
	{
		StagedField *f = palloc(sizeof(StagedField));

		/* written by another client: a NUL byte would silently cut the value */
		if (memchr(v->elem[i]->str, '\0', v->elem[i]->len) != NULL ||
			memchr(v->elem[i + 1]->str, '\0', v->elem[i + 1]->len) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a staged value of \"%s\" contains a NUL byte", v->elem[i]->str),
					 errhint("Another client wrote it; clear the registration with regstage.clear_registration().")));
		f->name = v->elem[i]->str;
		f->value = v->elem[i + 1]->str;
		fields = lappend(fields, f);
	}
	list_sort(fields, staged_field_cmp);
	return fields;
}

/*
 * Fill a StagedRegistration from six replies: language, data HGETALL,
 * documents HGETALL, and the three TTLs.
 */
static StagedRegistration *
staged_from_replies(RedisValue **r, const char *language_key)
{
	StagedRegistration *s = palloc0(sizeof(StagedRegistration));

	if (r[0]->type == REDIS_REPLY_STRING)
		s->language = r[0]->str;
	else if (r[0]->type != REDIS_REPLY_NIL)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Redis key \"%s\" does not hold a string", language_key)));
	s->data = hash_to_fields(r[1]);
	s->documents = hash_to_fields(r[2]);
	s->exists = (s->language != NULL || s->data != NIL || s->documents != NIL);
	s->ttl_s = -1;
	for (int k = 0; k < 3; k++)
	{
		long long	ttl = r[3 + k]->integer;

		/* -2: key absent; -1: key without TTL (written by another client) */
		if (ttl >= 0 && (s->ttl_s < 0 || ttl < s->ttl_s))
			s->ttl_s = ttl;
	}
	return s;
}

/*
 * Read language, data, documents and their TTLs atomically (MULTI/EXEC),
 * in one round trip.
 */
StagedRegistration *
redis_fetch_staged(int64 telegram_id)
{
	char		keys[3][KEY_BUFSIZE];
	RedisCommand cmds[8];
	RedisValue **replies;
	RedisValue *exec;
	int			n = 0;

	all_keys(keys, telegram_id);
	cmd_init(&cmds[n]);
	cmd_arg(&cmds[n++], "MULTI");
	cmd_init(&cmds[n]);
	cmd_arg(&cmds[n], "GET");
	cmd_arg(&cmds[n++], keys[0]);
	cmd_init(&cmds[n]);
	cmd_arg(&cmds[n], "HGETALL");
	cmd_arg(&cmds[n++], keys[1]);
	cmd_init(&cmds[n]);
	cmd_arg(&cmds[n], "HGETALL");
	cmd_arg(&cmds[n++], keys[2]);
	for (int k = 0; k < 3; k++)
	{
		cmd_init(&cmds[n]);
		cmd_arg(&cmds[n], "TTL");
		cmd_arg(&cmds[n++], keys[k]);
	}
	cmd_init(&cmds[n]);
	cmd_arg(&cmds[n++], "EXEC");
	replies = redis_roundtrip(cmds, n);

	exec = replies[n - 1];
	if (exec->type != REDIS_REPLY_ARRAY || exec->nelem != 6)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Redis at %s answered EXEC with an unexpected reply", redis_address())));
	return staged_from_replies(exec->elem, keys[0]);
}

/*
 * A typed answer, staged where the conversation stands, in one round trip:
 * the script finds the first missing text item (full_name, then phone) and
 * stores the matching candidate there, or nothing; it returns the step it
 * found, whether it wrote, and the staged state afterwards.  Candidates are
 * validated by the caller; NULL means "not acceptable as that item".
 */
static const char *const stage_text_script =
"local lang = redis.call('GET', KEYS[1])\n"
"local step = 'document'\n"
"if not lang then step = 'language'\n"
"elseif redis.call('HEXISTS', KEYS[2], 'full_name') == 0 then step = 'full_name'\n"
"elseif redis.call('HEXISTS', KEYS[2], 'phone') == 0 then step = 'phone' end\n"
"local wrote = 0\n"
"if step == 'full_name' and ARGV[2] ~= '' then\n"
"  if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'full_name', ARGV[2], 'username', ARGV[4])\n"
"  else redis.call('HSET', KEYS[2], 'full_name', ARGV[2]) end\n"
"  wrote = 1\n"
"elseif step == 'phone' and ARGV[3] ~= '' then\n"
"  redis.call('HSET', KEYS[2], 'phone', ARGV[3])\n"
"  wrote = 1\n"
"end\n"
"if wrote == 1 then for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end end\n"
"return {step, wrote, lang, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),\n"
"        redis.call('TTL', KEYS[1]), redis.call('TTL', KEYS[2]), redis.call('TTL', KEYS[3])}\n";

StagedRegistration *
redis_stage_text_answer(int64 telegram_id, const char *full_name, const char *username,
						const char *phone, char **step, bool *wrote)
{
	char		keys[3][KEY_BUFSIZE];
	char		ttlbuf[16];
	RedisCommand eval;
	RedisValue **replies;
	RedisValue *r;

	all_keys(keys, telegram_id);
	snprintf(ttlbuf, sizeof(ttlbuf), "%d", regstage_ttl_s);
	cmd_init(&eval);
	cmd_arg(&eval, "EVAL");
	cmd_arg(&eval, stage_text_script);
	cmd_arg(&eval, "3");
	for (int k = 0; k < 3; k++)
		cmd_arg(&eval, keys[k]);
	cmd_arg(&eval, ttlbuf);
	cmd_arg(&eval, full_name ? full_name : "");
	cmd_arg(&eval, phone ? phone : "");
	cmd_arg(&eval, username ? username : "");
	replies = redis_roundtrip(&eval, 1);
	r = replies[0];
	if (r->type != REDIS_REPLY_ARRAY || r->nelem != 8 || r->elem[0]->type != REDIS_REPLY_STRING)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Redis at %s answered the staging script with an unexpected reply", redis_address())));
	*step = r->elem[0]->str;
	*wrote = (r->elem[1]->integer == 1);
	return staged_from_replies(&r->elem[2], keys[0]);
}

const char *
redis_staged_field(List *fields, const char *name)
{
	ListCell   *lc;

	foreach(lc, fields)
	{
		StagedField *f = lfirst(lc);

		if (strcmp(f->name, name) == 0)
			return f->value;
	}
	return NULL;
}

bool
redis_extend_ttl(int64 telegram_id)
{
	char		keys[3][KEY_BUFSIZE];
	char		ttlbuf[16];
	RedisCommand cmds[3];
	RedisValue **replies;
	bool		any = false;

	all_keys(keys, telegram_id);
	snprintf(ttlbuf, sizeof(ttlbuf), "%d", regstage_ttl_s);
	(void) add_expire_all(cmds, 0, keys, ttlbuf);
	replies = redis_roundtrip(cmds, 3);
	for (int k = 0; k < 3; k++)
		any |= (replies[k]->integer == 1);
	return any;
}

static void
build_del(RedisCommand *cmd, char keys[3][KEY_BUFSIZE], int64 telegram_id)
{
	all_keys(keys, telegram_id);
	cmd_init(cmd);
	cmd_arg(cmd, "DEL");
	for (int k = 0; k < 3; k++)
		cmd_arg(cmd, keys[k]);
}

bool
redis_clear(int64 telegram_id)
{
	char		keys[3][KEY_BUFSIZE];
	RedisCommand del;
	RedisValue **replies;

	build_del(&del, keys, telegram_id);
	replies = redis_roundtrip(&del, 1);
	return replies[0]->integer > 0;
}

bool
redis_clear_nothrow(int64 telegram_id, char *errbuf, size_t errlen)
{
	char		keys[3][KEY_BUFSIZE];
	RedisCommand del;
	RedisValue *reply = NULL;
	int			code;

	errbuf[0] = '\0';
	build_del(&del, keys, telegram_id);
	if (!redis_ensure_connected(true, errbuf, errlen, &code))
		return false;
	/* after commit a short wait is all we can afford; staging expires anyway */
	if (!redis_roundtrip_raw(&del, 1, &reply, true, Min(regstage_redis_timeout_ms, 1000),
							 errbuf, errlen))
		return false;
	return errbuf[0] == '\0';
}
