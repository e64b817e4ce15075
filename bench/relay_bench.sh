# bench/relay_bench.sh — sourced by bench/run.sh: updates/s end to end
# (stand-in getUpdates -> relay -> handle_update -> sendMessage at the
# stand-in) for 1, 100 and 1,000 simulated chats, and the relay's peak RSS.
#
# The stand-in is bench/botapi_fast.c serving the updates itself (the Python
# stand-in would take about a third of the two cores the relay and
# PostgreSQL are measured on).  Every round starts from update_id 1, so
# handle_update's memory of seen update_ids is emptied between rounds.
# Run the relay against API_URL until count_fn (a function printing how many
# replies the stand-in has seen) reaches TOTAL; sets UPS, HWM_MB, ANON_MB.
run_relay() {	# api_url total count_fn [VAR=value ...]
	local api=$1 total=$2 count_fn=$3 t0 t1 pid
	shift 3
	t0=$(date +%s.%N)
	env "$@" TELEGRAM_BOT_TOKEN="$TOKEN" TELEGRAM_API_URL="$api" RELAY_LOG_LEVEL=error RELAY_WORKERS=4 \
		DATABASE_URL="host=$W/sock port=$PG_PORT dbname=postgres user=bench_relay" \
		"$SRC/relay/regstage-relay" 2>>"$W/relay-bench.log" &
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

bench_relay() {
	local total=${BENCH_RELAY_UPDATES:-3000} port=$RELAY_FAST_PORT
	printf '\n## relay end to end: %d text-step updates through getUpdates, handle_update and sendMessage\n\n' "$total"
	printf '| chats | updates/s | relay peak RSS (VmHWM) | of which private (RssAnon) |\n|---|---|---|---|\n'
	psql -qAtX -c "DO \$\$ BEGIN CREATE ROLE bench_relay LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$; SELECT regstage.grant_bot_access('bench_relay')" >/dev/null
	for chats in 1 100 1000; do
		psql -qAtX -c "TRUNCATE regstage.seen_updates" >/dev/null
		psql -qAtX -c "SELECT regstage.stage_language(t, 'en') FROM generate_series(5000001, 5000000 + $chats) t" >/dev/null
		"$W/bin/botapi_fast" "$port" "$TOKEN" "$total" "$chats" 5000001 & echo $! >"$W/fast-relay.pid"
		sleep 0.3
		run_relay "http://127.0.0.1:$port" "$total" fast_sent
		stop_pidfile "$W/fast-relay.pid"
		printf '| %d | %s | %s MB | %s MB |\n' "$chats" "$UPS" "$HWM_MB" "$ANON_MB"
		RATIO+=("relay, $chats chats: $UPS updates/s (target >= 1000), RSS $HWM_MB MB (target <= 10 MB; $ANON_MB MB private, the rest shared library pages)")
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
	run_relay "https://127.0.0.1:$port" "$total" tls_calls RELAY_CA_FILE="$W/tls-cert.pem"
	stop_pidfile "$W/tls/standin/standin.pid"
	printf '| %d, over https (Python stand-in) | %s | %s MB | %s MB |\n' "$chats" "$UPS" "$HWM_MB" "$ANON_MB"
	RATIO+=("relay over https, $chats chats: RSS $HWM_MB MB (TLS in use; the throughput is the Python stand-in's)")
}
bench_relay
