# bench/relay_bench.sh — sourced by bench/run.sh: updates/s end to end
# (stand-in getUpdates -> relay -> PostgreSQL -> sendMessage at the
# stand-in), reply latency p50/p99 and the relay's peak RSS, for 1, 100 and
# 1,000 simulated chats; each round twice, in the same run: "before", the
# relay of commit dd080f4 (in-memory dispatcher calling handle_update, built
# from `git show dd080f4:relay/...` in a temporary directory), and "after",
# this tree's relay (inbox, process_next, outbox).
#
# The stand-in is bench/botapi_fast.c serving the updates itself (the Python
# stand-in would take about a third of the two cores the relay and
# PostgreSQL are measured on).  Every round starts from update_id 1, so
# handle_update's memory of seen update_ids is emptied between rounds.
# Run the relay against API_URL until count_fn (a function printing how many
# replies the stand-in has seen) reaches TOTAL; sets UPS, HWM_MB, ANON_MB.
run_relay() {	# binary api_url total count_fn [VAR=value ...]
	local bin=$1 api=$2 total=$3 count_fn=$4 t0 t1 pid
	shift 4
	t0=$(date +%s.%N)
	env "$@" TELEGRAM_BOT_TOKEN="$TOKEN" TELEGRAM_API_URL="$api" RELAY_LOG_LEVEL=error RELAY_WORKERS=4 \
		DATABASE_URL="host=$W/sock port=$PG_PORT dbname=postgres user=bench_relay" \
		"$bin" 2>>"$W/relay-bench.log" &
	pid=$!
	while [ "$($count_fn)" -lt "$total" ]; do
		sleep 0.05
		kill -0 $pid || break
	done
	t1=$(date +%s.%N)
	UPS=$(python3 -c "print('%.0f' % ($total / ($t1 - $t0)))")
	HWM_MB=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' /proc/$pid/status)
	ANON_MB=$(awk '/RssAnon/ {printf "%.1f", $2 / 1024}' /proc/$pid/status)
	kill -TERM $pid; wait $pid || true
}

fast_sent() { curl -s "http://127.0.0.1:$RELAY_FAST_PORT/_bench/sent"; }

# the relay of dd080f4, built in a temporary directory
build_old_relay() {
	local d=$W/old-relay f
	rm -rf "$d"; mkdir -p "$d"
	for f in $(git -C "$SRC" ls-tree --name-only dd080f4 relay/); do
		git -C "$SRC" show "dd080f4:$f" >"$d/$(basename "$f")"
	done
	make -s -C "$d" >/dev/null
	OLD_RELAY=$d/regstage-relay
}

bench_relay() {
	local total=${BENCH_RELAY_UPDATES:-3000} port=$RELAY_FAST_PORT variant bin lat ups_old
	build_old_relay
	printf '\n## relay end to end: %d text-step updates through getUpdates, PostgreSQL and sendMessage\n\n' "$total"
	printf '| chats | relay | updates/s | reply p50 | reply p99 | relay peak RSS (VmHWM) | of which private (RssAnon) |\n|---|---|---|---|---|---|---|\n'
	psql -qAtX -c "DO \$\$ BEGIN CREATE ROLE bench_relay LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$; SELECT regstage.grant_bot_access('bench_relay')" >/dev/null
	for chats in 1 100 1000; do
		for variant in before after; do
			bin=$SRC/relay/regstage-relay
			[ $variant = before ] && bin=$OLD_RELAY
			psql -qAtX -c "TRUNCATE regstage.seen_updates, regstage.inbox, regstage.outbox" >/dev/null
			psql -qAtX -c "SELECT regstage.stage_language(t, 'en') FROM generate_series(5000001, 5000000 + $chats) t" >/dev/null
			"$W/bin/botapi_fast" "$port" "$TOKEN" "$total" "$chats" 5000001 & echo $! >"$W/fast-relay.pid"
			sleep 0.3
			run_relay "$bin" "http://127.0.0.1:$port" "$total" fast_sent
			lat=$(curl -s "http://127.0.0.1:$port/_bench/latency")
			stop_pidfile "$W/fast-relay.pid"
			printf '| %d | %s | %s | %s ms | %s ms | %s MB | %s MB |\n' "$chats" "$variant" "$UPS" ${lat% *} ${lat#* } "$HWM_MB" "$ANON_MB"
			if [ $variant = before ]; then
				ups_old=$UPS
			else
				RATIO+=("relay, $chats chats: $UPS updates/s vs $ups_old before ($(python3 -c "print('%.2f' % ($UPS / $ups_old))")x, target >= 0.8x), reply p50/p99 ${lat% *}/${lat#* } ms, RSS $HWM_MB MB (target <= 10 MB; $ANON_MB MB private)")
			fi
		done
	done
	bench_relay_https "$total"
}

# The same over https, as with the real Telegram: the Python stand-in behind
# TLS with a throwaway CA (RELAY_CA_FILE).  Its throughput is the Python
# stand-in's; the figure here is the relay's RSS with TLS in use.
bench_relay_https() {
	local total=$1 port=$RELAY_TLS_PORT chats=100
	make_test_cert "$W"
	start_standin "$W/tls" "$port" "$TOKEN" "$SRC" "$W/tls-cert.pem" "$W/tls-key.pem"
	psql -qAtX -c "TRUNCATE regstage.seen_updates" >/dev/null
	python3 - "$port" "$chats" "$total" "$W/tls-cert.pem" <<'PY'
import json, ssl, sys, urllib.request
port, chats, total, ca = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ups = [{"update_id": i + 1, "message": {"message_id": i, "date": 1, "text": "Ivan Petrov",
        "from": {"id": 5000001 + i % chats, "first_name": "B"}, "chat": {"id": 5000001 + i % chats, "type": "private"}}}
       for i in range(total)]
for k in range(0, total, 1000):
    urllib.request.urlopen(urllib.request.Request("https://127.0.0.1:%d/_test/updates" % port,
                           data=json.dumps(ups[k:k + 1000]).encode(), method="POST"), timeout=60, context=ctx).read()
PY
	tls_calls() {
		curl -s --cacert "$W/tls-cert.pem" "https://127.0.0.1:$RELAY_TLS_PORT/_test/calls" |
			python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
	}
	psql -qAtX -c "TRUNCATE regstage.inbox, regstage.outbox" >/dev/null
	run_relay "$SRC/relay/regstage-relay" "https://127.0.0.1:$port" "$total" tls_calls RELAY_CA_FILE="$W/tls-cert.pem"
	stop_pidfile "$W/tls/standin/standin.pid"
	printf '| %d, over https (Python stand-in) | after | %s | | | %s MB | %s MB |\n' "$chats" "$UPS" "$HWM_MB" "$ANON_MB"
	RATIO+=("relay over https, $chats chats: RSS $HWM_MB MB (TLS in use; the throughput is the Python stand-in's)")
}
bench_relay
