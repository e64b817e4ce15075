/*
 * staging.c — the SQL-callable staging API.
 *
 * Each function validates its input completely before touching Redis (bad
 * input writes nothing), then makes exactly one Redis round trip.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "guc.h"
#include "primary.h"
#include "redis_staging.h"
#include "steps.h"
#include "staging.h"
#include "validate.h"

PG_FUNCTION_INFO_V1(regstage_stage_language);
PG_FUNCTION_INFO_V1(regstage_stage_user_data);
PG_FUNCTION_INFO_V1(regstage_stage_document);
PG_FUNCTION_INFO_V1(regstage_staged);
PG_FUNCTION_INFO_V1(regstage_stage_text_answer);
PG_FUNCTION_INFO_V1(regstage_missing);
PG_FUNCTION_INFO_V1(regstage_missing_from);
PG_FUNCTION_INFO_V1(regstage_extend_ttl);
PG_FUNCTION_INFO_V1(regstage_clear_registration);
PG_FUNCTION_INFO_V1(regstage_normalize_phone);

static int64
telegram_id_arg(FunctionCallInfo fcinfo)
{
	validate_telegram_id(PG_ARGISNULL(0), PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0));
	return PG_GETARG_INT64(0);
}

static char *
text_arg(FunctionCallInfo fcinfo, int n, const char *name)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be NULL", name)));
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

Datum
regstage_stage_language(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id = telegram_id_arg(fcinfo);
	char	   *language = text_arg(fcinfo, 1, "language");

	primary_required(fcinfo);
	validate_language(language);
	redis_stage_language(telegram_id, language);
	PG_RETURN_VOID();
}

static const char *const data_keys[] = {"full_name", "phone", "username", "email"};

static void
check_data_key(const char *name)
{
	for (int i = 0; i < lengthof(data_keys); i++)
		if (strcmp(name, data_keys[i]) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid key \"%s\" in stage_user_data()",
					strlen(name) > 40 ? "(too long)" : name),
			 errhint("Allowed keys are full_name, phone, username and email.")));
}

/* Validate and normalise one field of stage_user_data(). */
static char *
normalize_data_field(const char *name, const char *value)
{
	check_data_key(name);
	if (strcmp(name, "full_name") == 0)
		return validate_full_name(value);
	if (strcmp(name, "phone") == 0)
		return validate_phone(value);
	if (strcmp(name, "username") == 0)
		return validate_username(value);
	return validate_email(value);
}

Datum
regstage_stage_user_data(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id = telegram_id_arg(fcinfo);
	Jsonb	   *data;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	List	   *fields = NIL;
	char	   *key = NULL;

	primary_required(fcinfo);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("data must not be NULL")));
	data = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_OBJECT(data) || JB_ROOT_COUNT(data) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("data must be a non-empty JSON object"),
				 errhint("For example: {\"full_name\": \"Ivan Petrov\", \"phone\": \"+79161234567\"}.")));

	it = JsonbIteratorInit(&data->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE)
		{
			StagedField *f = palloc(sizeof(StagedField));

			if (v.type != jbvString)
			{
				check_data_key(key);
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for \"%s\": must be a JSON string", key)));
			}
			f->name = key;
			f->value = normalize_data_field(key, pnstrdup(v.val.string.val, v.val.string.len));
			fields = lappend(fields, f);
		}
	}
	redis_stage_data_fields(telegram_id, fields);
	PG_RETURN_VOID();
}

Datum
regstage_stage_document(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id = telegram_id_arg(fcinfo);
	char	   *doc_type = text_arg(fcinfo, 1, "doc_type");
	char	   *file_id = text_arg(fcinfo, 2, "file_id");

	primary_required(fcinfo);
	validate_doc_type(doc_type);
	validate_file_id(file_id);
	redis_stage_document(telegram_id, doc_type, file_id);
	PG_RETURN_VOID();
}

static void
append_fields_json(StringInfo buf, List *fields)
{
	ListCell   *lc;

	appendStringInfoChar(buf, '{');
	foreach(lc, fields)
	{
		StagedField *f = lfirst(lc);

		if (foreach_current_index(lc) > 0)
			appendStringInfoString(buf, ", ");
		escape_json(buf, f->name);
		appendStringInfoString(buf, ": ");
		escape_json(buf, f->value);
	}
	appendStringInfoChar(buf, '}');
}

/* staged()'s value: {"language", "data", "documents", "ttl"}, or NULL when nothing is staged. */
static Datum
staged_to_jsonb(StagedRegistration *s, bool *isnull)
{
	StringInfoData buf;

	*isnull = !s->exists;
	if (!s->exists)
		return (Datum) 0;
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"language\": ");
	if (s->language)
		escape_json(&buf, s->language);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoString(&buf, ", \"data\": ");
	append_fields_json(&buf, s->data);
	appendStringInfoString(&buf, ", \"documents\": ");
	append_fields_json(&buf, s->documents);
	appendStringInfo(&buf, ", \"ttl\": " INT64_FORMAT "}", s->ttl_s);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

Datum
regstage_staged(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	bool		isnull;
	Datum		result;

	primary_required(fcinfo);
	result = staged_to_jsonb(redis_fetch_staged(telegram_id_arg(fcinfo)), &isnull);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/*
 * The value a typed answer would be staged as at a typed step, or NULL when
 * it is not acceptable there (validated like stage_user_data's values).
 */
static const char *
text_step_candidate(const char *step, const char *answer)
{
	char	   *why;

	if (strcmp(step, "full_name") == 0)
		return normalize_full_name(answer, &why);
	if (strcmp(step, "phone") == 0)
		return strlen(answer) <= 64 ? normalize_phone(answer) : NULL;
	elog(ERROR, "no rule for the typed step \"%s\"", step);
	return NULL;				/* keep the compiler quiet */
}

/*
 * stage_text_answer(telegram_id, answer, username): a typed answer, staged
 * as the full name or the phone — whichever the conversation is at — in
 * one Redis round trip.  Returns {"step": <first missing of language,
 * full_name, phone, or "document">, "staged": <written?>, "state": <staged()
 * afterwards>}.  An answer that is not a valid name (phone) is not written
 * at the name (phone) step.
 */
Datum
regstage_stage_text_answer(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id = telegram_id_arg(fcinfo);
	char	   *answer = text_arg(fcinfo, 1, "answer");
	char	   *username = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	const char *candidates[REGSTAGE_N_TEXT_STEPS];
	char	   *step;
	bool		wrote;
	bool		isnull;
	Datum		state;
	StagedRegistration *s;
	StringInfoData buf;

	primary_required(fcinfo);
	if (username && (username[0] == '\0' || strlen(username) > 64 ||
					 strspn(username, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != strlen(username)))
		username = NULL;		/* optional: an odd one is simply not kept */
	for (int i = 0; i < REGSTAGE_N_TEXT_STEPS; i++)
		candidates[i] = text_step_candidate(regstage_text_steps[i], answer);
	s = redis_stage_text_answer(telegram_id, username, regstage_text_steps, candidates,
								REGSTAGE_N_TEXT_STEPS, &step, &wrote);
	state = staged_to_jsonb(s, &isnull);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"step\": ");
	escape_json(&buf, step);
	appendStringInfo(&buf, ", \"staged\": %s, \"state\": %s}", wrote ? "true" : "false",
					 isnull ? "null" : DatumGetCString(DirectFunctionCall1(jsonb_out, state)));
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/*
 * What a staged registration still needs, in asking order (steps.h): the
 * language, the typed steps, then the document types of
 * regstage.required_documents.
 */
List *
staging_missing_items(StagedRegistration *s)
{
	List	   *missing = NIL;
	ListCell   *lc;

	if (s->language == NULL)
		missing = lappend(missing, REGSTAGE_STEP_LANGUAGE);
	for (int i = 0; i < REGSTAGE_N_TEXT_STEPS; i++)
		if (redis_staged_field(s->data, regstage_text_steps[i]) == NULL)
			missing = lappend(missing, (char *) regstage_text_steps[i]);
	foreach(lc, regstage_required_document_list())
		if (redis_staged_field(s->documents, lfirst(lc)) == NULL)
			missing = lappend(missing, lfirst(lc));
	return missing;
}

static ArrayType *
text_array_from_list(List *items)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(items), 1));
	ListCell   *lc;

	foreach(lc, items)
		elems[foreach_current_index(lc)] = CStringGetTextDatum(lfirst(lc));
	return construct_array(elems, list_length(items), TEXTOID, -1, false, TYPALIGN_INT);
}

Datum
regstage_missing(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	int64		telegram_id = telegram_id_arg(fcinfo);

	primary_required(fcinfo);
	PG_RETURN_ARRAYTYPE_P(text_array_from_list(staging_missing_items(redis_fetch_staged(telegram_id))));
}

/* The members of a staged() object's "data" or "documents" as StagedFields. */
static List *
fields_from_jsonb(Jsonb *staged, const char *key)
{
	JsonbValue *obj = getKeyJsonValueFromContainer(&staged->root, key, strlen(key), NULL);
	List	   *fields = NIL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *name = NULL;

	if (obj == NULL || obj->type != jbvBinary)
		return NIL;
	it = JsonbIteratorInit(obj->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			name = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && v.type == jbvString && name)
		{
			StagedField *f = palloc(sizeof(StagedField));

			f->name = name;
			f->value = pnstrdup(v.val.string.val, v.val.string.len);
			fields = lappend(fields, f);
		}
	}
	return fields;
}

/* missing_from(staged jsonb): missing() over a value staged() returned. */
Datum
regstage_missing_from(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	StagedRegistration s = {0};

	if (!PG_ARGISNULL(0))
	{
		Jsonb	   *staged = PG_GETARG_JSONB_P(0);
		JsonbValue *lang;

		if (JB_ROOT_IS_OBJECT(staged))
		{
			lang = getKeyJsonValueFromContainer(&staged->root, "language", 8, NULL);
			if (lang && lang->type == jbvString)
				s.language = pnstrdup(lang->val.string.val, lang->val.string.len);
			s.data = fields_from_jsonb(staged, "data");
			s.documents = fields_from_jsonb(staged, "documents");
		}
	}
	PG_RETURN_ARRAYTYPE_P(text_array_from_list(staging_missing_items(&s)));
}

Datum
regstage_extend_ttl(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	primary_required(fcinfo);
	PG_RETURN_BOOL(redis_extend_ttl(telegram_id_arg(fcinfo)));
}

Datum
regstage_clear_registration(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	primary_required(fcinfo);
	PG_RETURN_BOOL(redis_clear(telegram_id_arg(fcinfo)));
}

/* normalize_phone(text): the normalised number, or NULL when implausible. */
Datum
regstage_normalize_phone(PG_FUNCTION_ARGS)
{
	REGSTAGE_REQUIRE_PRELOAD();
	char	   *normalized = normalize_phone(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	if (normalized == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(normalized));
}
