/*
 * redis.h — the per-backend Redis connection (transport only).
 *
 * Lazy connect with regstage.redis_timeout, AUTH and SELECT, non-blocking
 * round trips bounded by the timeout and interruptible by cancel, and the
 * reconnect after a cut round trip.  With regstage.redis_sentinels the
 * master is asked of Redis Sentinel and checked with ROLE before use; a
 * READONLY reply (the master became a replica) drops the connection.  The key layout is redis_staging.c's.
 * Replies come back palloc'd, so callers may ereport freely; transport
 * failures raise 08xxx errors naming the server.
 */
#ifndef REGSTAGE_REDIS_H
#define REGSTAGE_REDIS_H

#include "lib/stringinfo.h"

/* regstage.redis_sentinels lists at most this many host:port entries */
#define REDIS_MAX_SENTINELS 16

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

extern void redis_cmd_init(RedisCommand *cmd);
extern void redis_cmd_arg(RedisCommand *cmd, const char *arg);
extern const char *redis_address(void);

/* ncmds commands in one write, their replies in one read; raises on failure */
extern RedisValue **redis_roundtrip(RedisCommand *cmds, int ncmds);

/* the same, best effort inside a live transaction: false + errbuf on failure */
extern bool redis_roundtrip_nothrow(RedisCommand *cmds, int ncmds, int timeout_ms,
									char *errbuf, size_t errlen);

/* Commands prepared before a commit and sent after it. */
extern void redis_format_command(StringInfo buf, int argc, const char *const *argv);
extern bool redis_send_formatted_after_commit(const char *cmd, size_t len, int timeout_ms,
											  long long *integer, char *errbuf, size_t errlen);

#endif
