# bench/relay_bench.sh — sourced by bench/run.sh: updates/s end to end
# (stand-in -> relay -> handle_update -> reply at the stand-in) for 1, 100
# and 1,000 simulated chats, and the relay's peak RSS.
bench_relay() {
	local total=${BENCH_RELAY_UPDATES:-3000}
	printf '\n## relay end to end: %d text-step updates through getUpdates, handle_update and sendMessage\n\n' "$total"
	printf '| chats | updates/s | relay peak RSS (VmHWM) | of which private (RssAnon) |\n|---|---|---|---|\n'
	psql -qAtX -c "DO \$\$ BEGIN CREATE ROLE bench_relay LOGIN IN ROLE regstage_bot; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" >/dev/null
	for chats in 1 100 1000; do
		curl -s -X POST "http://127.0.0.1:$API_PORT/_test/reset" -d '{}' >/dev/null
		psql -qAtX -c "SELECT regstage.stage_language(t, 'en') FROM generate_series(5000001, 5000000 + $chats) t" >/dev/null
		python3 - "$API_PORT" "$chats" "$total" <<'PY'
import json, sys, urllib.request
port, chats, total = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ups = []
for i in range(total):
    tid = 5000001 + i % chats
    ups.append({"message": {"message_id": i, "date": 1, "text": "Ivan Petrov",
                            "from": {"id": tid, "first_name": "B"}, "chat": {"id": tid, "type": "private"}}})
for k in range(0, total, 1000):
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%d/_test/updates" % port,
                           data=json.dumps(ups[k:k + 1000]).encode(), method="POST"), timeout=60).read()
PY
		local t0 t1 pid hwm anon
		t0=$(date +%s.%N)
		TELEGRAM_BOT_TOKEN=$TOKEN TELEGRAM_API_URL=http://127.0.0.1:$API_PORT RELAY_LOG_LEVEL=error RELAY_WORKERS=4 \
		DATABASE_URL="host=$W/sock port=$PG_PORT dbname=postgres user=bench_relay" \
			"$SRC/relay/regstage-relay" 2>>"$W/relay-bench.log" &
		pid=$!
		while [ "$(curl -s "http://127.0.0.1:$API_PORT/_test/calls" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -lt "$total" ]; do
			sleep 0.2
			kill -0 $pid || break
		done
		t1=$(date +%s.%N)
		hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
		anon=$(awk '/RssAnon/ {print $2}' /proc/$pid/status)
		kill -TERM $pid; wait $pid || true
		printf '| %d | %.0f | %.1f MB | %.1f MB |\n' "$chats" "$(python3 -c "print($total / ($t1 - $t0))")" "$(python3 -c "print($hwm / 1024)")" "$(python3 -c "print($anon / 1024)")"
		RATIO+=("relay, $chats chats: $(python3 -c "print('%.0f' % ($total / ($t1 - $t0)))") updates/s (target >= 1000), RSS $(python3 -c "print('%.1f' % ($hwm / 1024))") MB (target <= 10 MB; $(python3 -c "print('%.1f' % ($anon / 1024))") MB private, the rest shared library pages)")
	done
}
bench_relay
