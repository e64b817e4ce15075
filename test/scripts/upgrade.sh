#!/usr/bin/env bash
# Upgrade and dump/restore suite (run by scripts/test.sh against its cluster).
#
# For every upgrade script pg_regstage--A--B.sql that is installed: install
# A, fill it (users, documents, a DBA's texts, staged work in Redis), ALTER
# EXTENSION UPDATE to the default version, and compare the schema with a fresh
# install of that version — pg_dump --schema-only of schema regstage, after
# both extensions' members were detached so pg_dump prints them.  Then a dump
# of a filled database restored into a new one keeps the DBA's texts, users
# and documents.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"
W=${REGSTAGE_TEST_DIR:?run me from scripts/test.sh}/upgrade
rm -rf "$W"; mkdir -p "$W"
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At)
fail=0
ok()  { printf '  ok   %s\n' "$*"; }
bad() { printf '  FAIL %s\n' "$*"; fail=1; }

EXTDIR=$("$PG_CONFIG" --sharedir)/extension
DEFAULT=$(sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$EXTDIR/pg_regstage.control")

fresh_db() {	# name [version]
	"$PG_BIN/dropdb" --if-exists "$1"
	"$PG_BIN/createdb" "$1"
	"${PSQL[@]}" -d "$1" -c "CREATE EXTENSION pg_regstage ${2:+VERSION '$2'}"
}

# Data a 1.0 install (or later) holds; the same statements work on every version.
fill() {	# db tid-base
	"${PSQL[@]}" -d "$1" <<SQL
INSERT INTO regstage.users (telegram_id, full_name, phone, language, status)
VALUES ($2 + 1, 'Anna Upgrade', '+491512345678', 'en', 'APPROVED'),
       ($2 + 2, 'Ivan Upgrade', '+79161234567', 'ru', 'PENDING');
INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
SELECT id, 'passport', 'AgACp' || telegram_id, telegram_id || '/passport.jpg', 10, repeat('a', 64)
  FROM regstage.users WHERE telegram_id > $2;
-- a DBA's own language and an edited shipped text
INSERT INTO regstage.messages (language, key, text) VALUES
  ('de', 'language_name', 'Deutsch'), ('de', 'ask_full_name', 'Bitte senden Sie Ihren vollen Namen.');
UPDATE regstage.messages SET text = 'Hello! Pick a language.' WHERE language = 'en' AND key = 'choose_language';
SELECT regstage.stage_language($2 + 3, 'ru');
SELECT regstage.stage_user_data($2 + 3, '{"full_name": "Staged Person"}');
SQL
}

# Detach every member, drop the (now empty) extension: pg_dump then prints
# the objects themselves.  Also prints what pg_dump would not show: the
# configuration tables registered for dump, with their conditions.
detach_and_dump() {	# db out
	"${PSQL[@]}" -d "$1" >"$2.config" <<'SQL'
SELECT c::regclass::text || ' ' || coalesce(cond, '')
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(c, cond)
 WHERE e.extname = 'pg_regstage' ORDER BY 1;
SQL
	"${PSQL[@]}" -d "$1" <<'SQL'
DO $$
DECLARE
	member text;
BEGIN
	FOR member IN
		-- (a procedure is described as a function; ROUTINE names both)
		SELECT regexp_replace(pg_describe_object(classid, objid, 0), '^function ', 'routine ') FROM pg_depend
		 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
		   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_regstage')
	LOOP
		EXECUTE 'ALTER EXTENSION pg_regstage DROP ' || member;
	END LOOP;
END
$$;
DROP EXTENSION pg_regstage;
SQL
	"$PG_BIN/pg_dump" --schema-only --schema=regstage -d "$1" |
		grep -v -e '^-- Dumped' -e '^$' -e '^\\restrict' -e '^\\unrestrict' >"$2.sql"
	cat "$2.config" >>"$2.sql"
}

echo "== upgrade paths to $DEFAULT"
"${PSQL[@]}" -d postgres -c "SELECT 1" >/dev/null
paths=0
for script in "$EXTDIR"/pg_regstage--*--*.sql; do
	[ -e "$script" ] || continue
	base=$(basename "$script" .sql); base=${base#pg_regstage--}
	from=${base%%--*}
	paths=$((paths + 1))
	fresh_db upg_old "$from"
	fill upg_old 900000
	"${PSQL[@]}" -d upg_old -c "ALTER EXTENSION pg_regstage UPDATE"
	v=$("${PSQL[@]}" -d upg_old -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_regstage'")
	[ "$v" = "$DEFAULT" ] && ok "$from -> $DEFAULT: ALTER EXTENSION UPDATE" || bad "$from -> $DEFAULT: version is $v"

	got=$("${PSQL[@]}" -d upg_old <<'SQL'
SELECT (SELECT count(*) FROM regstage.users) || ' users, ' ||
       (SELECT count(*) FROM regstage.documents) || ' documents, ' ||
       (SELECT text FROM regstage.messages WHERE language = 'de' AND key = 'language_name') || ', ' ||
       (SELECT text FROM regstage.messages WHERE language = 'en' AND key = 'choose_language') || ', ' ||
       (regstage.staged(900003)->'data'->>'full_name');
SQL
)
	want='2 users, 2 documents, Deutsch, Hello! Pick a language., Staged Person'
	[ "$got" = "$want" ] && ok "$from -> $DEFAULT: data kept ($got)" || bad "$from -> $DEFAULT: data: '$got', want '$want'"
	"${PSQL[@]}" -d upg_old -c "SELECT regstage.clear_registration(900003)" >/dev/null

	# a role the old version made keeps what a bot needs
	if [ "$("${PSQL[@]}" -d postgres -c "SELECT count(*) FROM pg_roles WHERE rolname = 'regstage_bot'")" = 1 ]; then
		n=$("${PSQL[@]}" -d upg_old -c "SELECT count(*) FROM regstage.bot_functions() f
			WHERE NOT has_function_privilege('regstage_bot', f, 'EXECUTE')")
		[ "$n" = 0 ] && ok "$from -> $DEFAULT: regstage_bot can still run every bot function" ||
			bad "$from -> $DEFAULT: regstage_bot lacks $n bot functions"
	fi

	fresh_db upg_new
	"${PSQL[@]}" -d upg_new -c "DO \$\$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'regstage_bot')
		THEN PERFORM regstage.grant_bot_access('regstage_bot'); END IF; END \$\$"
	detach_and_dump upg_old "$W/upgraded-$from"
	detach_and_dump upg_new "$W/fresh-$from"
	if diff -u "$W/fresh-$from.sql" "$W/upgraded-$from.sql" >"$W/diff-$from"; then
		ok "$from -> $DEFAULT: schema identical to a fresh install ($(grep -c '^CREATE' "$W/fresh-$from.sql") CREATE statements)"
	else
		bad "$from -> $DEFAULT: schema differs from a fresh install:"; head -60 "$W/diff-$from"
	fi
	"$PG_BIN/dropdb" upg_old; "$PG_BIN/dropdb" upg_new
done
[ "$paths" -gt 0 ] && ok "$paths upgrade script(s) tested" || bad "no upgrade script installed in $EXTDIR"

echo "== pg_dump | psql keeps what a DBA changed"
fresh_db dump_src
fill dump_src 910000
"${PSQL[@]}" -d dump_src -c "SELECT regstage.clear_registration(910003)" >/dev/null
"$PG_BIN/dropdb" --if-exists dump_dst
"$PG_BIN/createdb" dump_dst
"$PG_BIN/pg_dump" -d dump_src >"$W/dump.sql"
"${PSQL[@]}" -d dump_dst -f "$W/dump.sql" >"$W/restore.out" 2>&1 || { bad "restore failed:"; tail -20 "$W/restore.out"; }
state() {
	"${PSQL[@]}" -d "$1" <<'SQL'
SELECT 'messages ' || md5(string_agg(language || '|' || key || '|' || text, ';' ORDER BY language, key)) FROM regstage.messages;
SELECT 'users ' || string_agg(telegram_id || ':' || full_name || ':' || status, ',' ORDER BY telegram_id) FROM regstage.users;
SELECT 'documents ' || string_agg(file_path, ',' ORDER BY file_path) FROM regstage.documents;
SQL
}
state dump_src >"$W/src.state"; state dump_dst >"$W/dst.state"
if diff -u "$W/src.state" "$W/dst.state"; then
	ok "restored: the DBA's texts, users and documents ($(grep -c . "$W/src.state") tables compared)"
else
	bad "restored database differs"
fi
n=$("${PSQL[@]}" -d dump_dst -c "SELECT count(*) FROM regstage.messages WHERE (language, key) IN (('de','ask_full_name'), ('en','choose_language'))
	AND text IN ('Bitte senden Sie Ihren vollen Namen.', 'Hello! Pick a language.')")
[ "$n" = 2 ] && ok "restored: a new language and an edited shipped text" || bad "restored: $n of 2 DBA texts"
# the identity sequence continues after the restored rows
id=$("${PSQL[@]}" -d dump_dst -c "INSERT INTO regstage.users (telegram_id, full_name, phone, language) VALUES (919999, 'After Restore', '+15550001', 'en') RETURNING id")
max=$("${PSQL[@]}" -d dump_src -c "SELECT max(id) FROM regstage.users")
[ "$id" -gt "$max" ] && ok "restored: new users get new ids ($id > $max)" || bad "restored: new id $id not above $max"
"$PG_BIN/dropdb" dump_src; "$PG_BIN/dropdb" dump_dst
exit $fail
