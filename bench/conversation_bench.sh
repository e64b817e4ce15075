# bench/conversation_bench.sh — sourced by bench/run.sh: handle_update()
# calls/s for a mixed update stream (pgbench), at 1 and 8 clients.
bench_conversation() {
	local dir=$W/pgbench
	mkdir -p "$dir"
	psql -qAtX -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
SET client_min_messages = warning;
TRUNCATE regstage.users CASCADE;
DROP SEQUENCE IF EXISTS bench_update_id;
CREATE SEQUENCE bench_update_id START 1000000000;
SELECT regstage.stage_language(t, 'en') FROM generate_series(3000001, 3010000) t;  -- users mid-conversation
SQL
	# a new user's /start; a name typed by a user at the name (or phone) step; a language button
	cat >"$dir/start.sql" <<'SQL'
\set tid random(4000000, 9000000)
SELECT regstage.handle_update(jsonb_build_object('update_id', nextval('bench_update_id'), 'message', jsonb_build_object('message_id', 1, 'date', 1, 'text', '/start', 'from', jsonb_build_object('id', :tid, 'first_name', 'B', 'language_code', 'en'), 'chat', jsonb_build_object('id', :tid, 'type', 'private'))));
SQL
	cat >"$dir/name.sql" <<'SQL'
\set tid random(3000001, 3010000)
SELECT regstage.handle_update(jsonb_build_object('update_id', nextval('bench_update_id'), 'message', jsonb_build_object('message_id', 1, 'date', 1, 'text', 'Ivan Petrov', 'from', jsonb_build_object('id', :tid, 'first_name', 'B', 'username', 'bench_user'), 'chat', jsonb_build_object('id', :tid, 'type', 'private'))));
SQL
	cat >"$dir/button.sql" <<'SQL'
\set tid random(3000001, 3010000)
SELECT regstage.handle_update(jsonb_build_object('update_id', nextval('bench_update_id'), 'callback_query', jsonb_build_object('id', 'cb', 'data', 'lang:en', 'from', jsonb_build_object('id', :tid, 'first_name', 'B'), 'message', jsonb_build_object('message_id', 1, 'date', 1, 'chat', jsonb_build_object('id', :tid, 'type', 'private')))));
SQL
	printf '\n## handle_update(): mixed stream (40%% /start, 30%% text at a text step, 30%% button), 10 s each\n\n'
	printf '| clients | calls/s | mean latency ms |\n|---|---|---|\n'
	for c in 1 8; do
		local out tps lat
		out=$("$PG_BIN/pgbench" -n -c "$c" -j "$c" -T 10 -f "$dir/start.sql@4" -f "$dir/name.sql@3" -f "$dir/button.sql@3" 2>&1)
		tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
		lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
		printf '| %d | %s | %s |\n' "$c" "$tps" "$lat"
		RATIO+=("handle_update at $c client(s): $tps calls/s")
	done
}
bench_conversation
