/*
 * redis_staging.c — the staging keys in Redis: their names, the Lua script,
 * and every staging command.  The only file that knows the key layout
 *
 *     <regstage.key_prefix>:<telegram_id>:language     string
 *     <regstage.key_prefix>:<telegram_id>:data         hash
 *     <regstage.key_prefix>:<telegram_id>:documents    hash
 *
 * (all three with the TTL regstage.ttl).  Each function is one round trip
 * through redis.c.
 */
#include "postgres.h"

#include <hiredis/hiredis.h>

#include "utils/memutils.h"

#include "guc.h"
#include "redis.h"
#include "redis_staging.h"
#include "xact.h"

#define KEY_BUFSIZE 128

/* The staged-key DEL of a transaction, built before its commit. */
struct RedisPreparedClear
{
	int			nregistrations;
	StringInfoData cmd;			/* DEL <3 keys per registration>, wire format */
};

static void
redis_key(char *buf, int64 telegram_id, const char *suffix)
{
	snprintf(buf, KEY_BUFSIZE, "%s:" INT64_FORMAT ":%s", regstage_key_prefix, telegram_id, suffix);
}

/* Append EXPIRE <key> <ttl> for all three keys. */
static int
add_expire_all(RedisCommand *cmds, int n, char keys[3][KEY_BUFSIZE], char *ttlbuf)
{
	for (int k = 0; k < 3; k++)
	{
		redis_cmd_init(&cmds[n]);
		redis_cmd_arg(&cmds[n], "EXPIRE");
		redis_cmd_arg(&cmds[n], keys[k]);
		redis_cmd_arg(&cmds[n], ttlbuf);
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
	redis_cmd_init(&cmds[n]);
	redis_cmd_arg(&cmds[n++], "MULTI");
	cmds[n++] = *write;
	n = add_expire_all(cmds, n, keys, ttlbuf);
	redis_cmd_init(&cmds[n]);
	redis_cmd_arg(&cmds[n++], "EXEC");
	xact_note_outside_change();	/* before: a reply lost to a timeout may follow a write */
	(void) redis_roundtrip(cmds, n);
}

void
redis_stage_language(int64 telegram_id, const char *language)
{
	char		key[KEY_BUFSIZE];
	RedisCommand set;

	redis_key(key, telegram_id, "language");
	redis_cmd_init(&set);
	redis_cmd_arg(&set, "SET");
	redis_cmd_arg(&set, key);
	redis_cmd_arg(&set, language);
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
	redis_cmd_init(&hset);
	redis_cmd_arg(&hset, "HSET");
	redis_cmd_arg(&hset, key);
	foreach(lc, fields)
	{
		StagedField *f = lfirst(lc);

		redis_cmd_arg(&hset, f->name);
		redis_cmd_arg(&hset, f->value);
	}
	redis_write_with_ttl(telegram_id, &hset);
}

void
redis_stage_document(int64 telegram_id, const char *doc_type, const char *file_id)
{
	char		key[KEY_BUFSIZE];
	RedisCommand hset;

	redis_key(key, telegram_id, "documents");
	redis_cmd_init(&hset);
	redis_cmd_arg(&hset, "HSET");
	redis_cmd_arg(&hset, key);
	redis_cmd_arg(&hset, doc_type);
	redis_cmd_arg(&hset, file_id);
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
	redis_cmd_init(&cmds[n]);
	redis_cmd_arg(&cmds[n++], "MULTI");
	redis_cmd_init(&cmds[n]);
	redis_cmd_arg(&cmds[n], "GET");
	redis_cmd_arg(&cmds[n++], keys[0]);
	redis_cmd_init(&cmds[n]);
	redis_cmd_arg(&cmds[n], "HGETALL");
	redis_cmd_arg(&cmds[n++], keys[1]);
	redis_cmd_init(&cmds[n]);
	redis_cmd_arg(&cmds[n], "HGETALL");
	redis_cmd_arg(&cmds[n++], keys[2]);
	for (int k = 0; k < 3; k++)
	{
		redis_cmd_init(&cmds[n]);
		redis_cmd_arg(&cmds[n], "TTL");
		redis_cmd_arg(&cmds[n++], keys[k]);
	}
	redis_cmd_init(&cmds[n]);
	redis_cmd_arg(&cmds[n++], "EXEC");
	replies = redis_roundtrip(cmds, n);

	exec = replies[n - 1];
	if (exec->type != REDIS_REPLY_ARRAY || exec->nelem != 6)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Redis at %s answered EXEC with an unexpected reply", redis_address())));
	return staged_from_replies(exec->elem, keys[0]);
}

/*
 * A typed answer, staged where the conversation stands, in one round trip.
 * The caller passes the typed steps in asking order (steps.h), each with its
 * candidate value ("" when the answer is not acceptable as that item): the
 * script finds the first step missing from the data hash and stores its
 * candidate there, or nothing.  The sender's username rides along with the
 * first typed answer stored.  It returns the step it found ("language" or
 * "document" when the typed steps are not where the conversation is),
 * whether it wrote, and the staged state afterwards.
 *
 *   KEYS: language, data, documents   ARGV: ttl, username, step1, cand1, ...
 */
static const char *const stage_text_script =
"local lang = redis.call('GET', KEYS[1])\n"
"local step = 'document'\n"
"local cand = ''\n"
"if not lang then step = 'language'\n"
"else\n"
"  for i = 3, #ARGV, 2 do\n"
"    if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then step = ARGV[i]; cand = ARGV[i + 1]; break end\n"
"  end\n"
"end\n"
"local wrote = 0\n"
"if cand ~= '' then\n"
"  redis.call('HSET', KEYS[2], step, cand)\n"
"  if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[2], 'username') == 0 then\n"
"    redis.call('HSET', KEYS[2], 'username', ARGV[2])\n"
"  end\n"
"  wrote = 1\n"
"end\n"
"if wrote == 1 then for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end end\n"
"return {step, wrote, lang, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),\n"
"        redis.call('TTL', KEYS[1]), redis.call('TTL', KEYS[2]), redis.call('TTL', KEYS[3])}\n";

StagedRegistration *
redis_stage_text_answer(int64 telegram_id, const char *username, const char *const *steps,
						const char *const *candidates, int nsteps, char **step, bool *wrote)
{
	char		keys[3][KEY_BUFSIZE];
	char		ttlbuf[16];
	RedisCommand eval;
	RedisValue **replies;
	RedisValue *r;

	all_keys(keys, telegram_id);
	snprintf(ttlbuf, sizeof(ttlbuf), "%d", regstage_ttl_s);
	redis_cmd_init(&eval);
	redis_cmd_arg(&eval, "EVAL");
	redis_cmd_arg(&eval, stage_text_script);
	redis_cmd_arg(&eval, "3");
	for (int k = 0; k < 3; k++)
		redis_cmd_arg(&eval, keys[k]);
	redis_cmd_arg(&eval, ttlbuf);
	redis_cmd_arg(&eval, username ? username : "");
	for (int i = 0; i < nsteps; i++)
	{
		redis_cmd_arg(&eval, steps[i]);
		redis_cmd_arg(&eval, candidates[i] ? candidates[i] : "");
	}
	replies = redis_roundtrip(&eval, 1);
	r = replies[0];
	if (r->type != REDIS_REPLY_ARRAY || r->nelem != 8 || r->elem[0]->type != REDIS_REPLY_STRING)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("Redis at %s answered the staging script with an unexpected reply", redis_address())));
	*step = r->elem[0]->str;
	*wrote = (r->elem[1]->integer == 1);
	/*
	 * After the round trip: most answers write nothing (a name typed at
	 * the phone step).  An error here may hide a write, but the error puts
	 * the update back to be processed again anyway.
	 */
	if (*wrote)
		xact_note_outside_change();
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
	redis_cmd_init(cmd);
	redis_cmd_arg(cmd, "DEL");
	for (int k = 0; k < 3; k++)
		redis_cmd_arg(cmd, keys[k]);
}

bool
redis_clear(int64 telegram_id)
{
	char		keys[3][KEY_BUFSIZE];
	RedisCommand del;
	RedisValue **replies;

	build_del(&del, keys, telegram_id);
	xact_note_outside_change();
	replies = redis_roundtrip(&del, 1);
	return replies[0]->integer > 0;
}

/*
 * Best-effort clear inside a live transaction (the refusal of an already
 * registered telegram_id): false with errbuf set when Redis failed.
 */
bool
redis_clear_nothrow(int64 telegram_id, char *errbuf, size_t errlen)
{
	char		keys[3][KEY_BUFSIZE];
	RedisCommand del;

	build_del(&del, keys, telegram_id);
	xact_note_outside_change();
	return redis_roundtrip_nothrow(&del, 1, Min(regstage_redis_timeout_ms, 1000), errbuf, errlen);
}

/*
 * Before a commit: one DEL of the three staged keys of every given
 * telegram_id, in wire format, in TopMemoryContext (the commit callback
 * sends it).  May raise: it runs at pre-commit.
 */
RedisPreparedClear *
redis_prepare_clear(const int64 *telegram_ids, int n)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	RedisPreparedClear *p = palloc0(sizeof(RedisPreparedClear));
	const char **argv = palloc(sizeof(char *) * (1 + 3 * n));
	static const char *const suffixes[3] = {"language", "data", "documents"};
	int			argc = 0;

	argv[argc++] = "DEL";
	for (int i = 0; i < n; i++)
		for (int k = 0; k < 3; k++)
		{
			char	   *key = palloc(KEY_BUFSIZE);

			redis_key(key, telegram_ids[i], suffixes[k]);
			argv[argc++] = key;
		}
	p->nregistrations = n;
	initStringInfo(&p->cmd);
	redis_format_command(&p->cmd, argc, argv);
	for (int i = 1; i < argc; i++)
		pfree((char *) argv[i]);
	pfree(argv);
	MemoryContextSwitchTo(old);
	return p;
}

/*
 * After the commit: send the prepared DEL.  One round trip bounded by
 * regstage.redis_timeout (at most 1 s: the client waits for COMMIT), no
 * reconnect, never raises.  False with errbuf set on failure.
 */
bool
redis_run_prepared_clear(RedisPreparedClear *p, char *errbuf, size_t errlen)
{
	long long	deleted;

	return redis_send_formatted_after_commit(p->cmd.data, p->cmd.len,
											 Min(regstage_redis_timeout_ms, 1000),
											 &deleted, errbuf, errlen);
}

void
redis_free_prepared_clear(RedisPreparedClear *p)
{
	pfree(p->cmd.data);
	pfree(p);
}
