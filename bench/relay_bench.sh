# bench/relay_bench.sh — sourced by bench/run.sh: updates/s end to end
# (stand-in getUpdates -> relay -> PostgreSQL -> sendMessage at the
# stand-in), reply latency p50/p99 and the relay's peak RSS, for 1, 100 and
# 1,000 simulated chats; each round in pairs, in the same run (three pairs,
# BENCH_RELAY_REPEAT, the two in turn; the medians compared): "before", the
# relay of commit dd080f4 (in-memory dispatcher calling handle_update, built
# from `git show dd080f4:relay/...` in a temporary directory), and "after",
# this tree's relay (inbox, process_next, outbox).  Then 100 chats again
# with one of them blocked for 30 s: the other chats' reply latency.
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

# One round: the stand-in serving TOTAL updates of CHATS chats to one relay,
# all at once (rate 0; latency from when getUpdates first served an update)
# or RATE a second (latency from when each became available, the first
# chat's left out).  With block, the first chat's first update is held for
# BLOCK_S seconds: a transaction holds its update_id in seen_updates (both
# relays insert it there before applying an update, so theirs waits, as
# behind any long commit), and the round ends when every other chat's
# replies arrived.  Sets UPS, LAT ("p50 p99"), HWM_MB, ANON_MB.
relay_round() {	# chats variant [rate [block]]
	local chats=$1 variant=$2 rate=${3:-0} block=${4:-} bin=$SRC/relay/regstage-relay total=$TOTAL port=$RELAY_FAST_PORT hold
	[ "$variant" = before ] && bin=$OLD_RELAY
	psql -qAtX -c "TRUNCATE regstage.seen_updates, regstage.inbox, regstage.outbox" >/dev/null
	psql -qAtX -c "SELECT regstage.stage_language(t, 'en') FROM generate_series(5000001, 5000000 + $chats) t" >/dev/null
	"$W/bin/botapi_fast" "$port" "$TOKEN" "$total" "$chats" 5000001 "$rate" & echo $! >"$W/fast-relay.pid"
	if [ -n "$block" ]; then
		PGAPPNAME=bench_block psql -qAtX -c "BEGIN" -c "INSERT INTO regstage.seen_updates (update_id) VALUES (1)" \
			-c "SELECT pg_sleep($BLOCK_S)" -c "ROLLBACK" >/dev/null 2>&1 &
		hold=$!
		# the chat's update count: update_ids 1, 1 + chats, ...
		total=$((total - (total + chats - 1) / chats))
	fi
	sleep 0.3
	run_relay "$bin" "http://127.0.0.1:$port" "$total" fast_sent
	if [ "$rate" != 0 ]; then
		LAT=$(curl -s "http://127.0.0.1:$port/_bench/latency_others")
	fi
	if [ -n "$block" ]; then
		psql -qAtX -c "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = 'bench_block'" >/dev/null
		wait "$hold" || true
	fi
	[ "$rate" != 0 ] || LAT=$(curl -s "http://127.0.0.1:$port/_bench/latency")
	stop_pidfile "$W/fast-relay.pid"
}

ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
median() { python3 -c "import statistics, sys; print('%.0f' % statistics.median(map(float, sys.argv[1:])))" "$@"; }

bench_relay() {
	local chats variant ups_old p99_old p99_free
	TOTAL=${BENCH_RELAY_UPDATES:-3000} BLOCK_S=${BENCH_RELAY_BLOCK_S:-30} RATE=${BENCH_RELAY_RATE:-300}
	REPEAT=${BENCH_RELAY_REPEAT:-3}
	build_old_relay
	printf '\n## relay end to end: %d text-step updates through getUpdates, PostgreSQL and sendMessage\n\n' "$TOTAL"
	printf '| chats | relay | updates/s | reply p50 | reply p99 | relay peak RSS (VmHWM) | of which private (RssAnon) |\n|---|---|---|---|---|---|---|\n'
	psql -qAtX -c "DO \$\$ BEGIN CREATE ROLE bench_relay LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$; SELECT regstage.grant_bot_access('bench_relay')" >/dev/null
	# Each chat count: REPEAT pairs of rounds, before and after in turn, so
	# that a slow spell of a shared machine (a round's throughput moves by a
	# third from one minute to the next here) falls on both alike; the ratio
	# is of the two medians, and each pair's own ratio is listed with it.
	for chats in 1 100 1000; do
		local ups_before=() ups_after=() pairs=() k hwm=0 anon=0
		for k in $(seq "$REPEAT"); do
			for variant in before after; do
				relay_round $chats $variant
				printf '| %d (pair %d) | %s | %s | %s ms | %s ms | %s MB | %s MB |\n' "$chats" "$k" "$variant" "$UPS" ${LAT% *} ${LAT#* } "$HWM_MB" "$ANON_MB"
				if [ $variant = before ]; then
					ups_before+=("$UPS")
				else
					ups_after+=("$UPS")
					pairs+=("$(ratio "$UPS" "${ups_before[-1]}")")
					hwm=$(python3 -c "print(max($hwm, $HWM_MB))") anon=$(python3 -c "print(max($anon, $ANON_MB))")
				fi
			done
		done
		ups_old=$(median "${ups_before[@]}") UPS=$(median "${ups_after[@]}")
		RATIO+=("relay, $chats chats: median $UPS updates/s vs $ups_old before over $REPEAT pairs ($(ratio "$UPS" "$ups_old")x, target >= 0.8x; each pair: ${pairs[*]}), RSS at most $hwm MB (target <= 10 MB; $anon MB private)")
	done
	# 100 chats writing at RATE updates/s, latency from when each was sent;
	# then the same with one chat blocked for BLOCK_S seconds: the other 99.
	# BENCH_RELAY_PACED_UPDATES = RATE x BLOCK_S keeps the chat blocked for
	# the whole round (the default 3,000 at 300/s: the first 10 s of it).
	local all=$TOTAL
	TOTAL=${BENCH_RELAY_PACED_UPDATES:-$TOTAL}
	for variant in before after; do
		relay_round 100 $variant $RATE
		printf '| 100 at %d/s (the first chat'"'"'s left out) | %s | %s | %s ms | %s ms | %s MB | %s MB |\n' "$RATE" "$variant" "$UPS" ${LAT% *} ${LAT#* } "$HWM_MB" "$ANON_MB"
		p99_free=${LAT#* }
		relay_round 100 $variant $RATE block
		printf '| 100 at %d/s, the first blocked %d s (the other 99) | %s | %s | %s ms | %s ms | %s MB | %s MB |\n' "$RATE" "$BLOCK_S" "$variant" "$UPS" ${LAT% *} ${LAT#* } "$HWM_MB" "$ANON_MB"
		RATIO+=("relay, 100 chats at $RATE/s, one blocked $BLOCK_S s, $variant: the other chats' reply p99 ${LAT#* } ms vs ${p99_free} ms with none blocked ($(ratio "${LAT#* }" "$p99_free")x, target: unchanged)")
		[ $variant = before ] && p99_old=${LAT#* }
	done
	RATIO+=("relay, 100 chats at $RATE/s, one blocked $BLOCK_S s: the other chats' reply p99 after/before ${LAT#* }/${p99_old} ms = $(ratio "${LAT#* }" "$p99_old")x")
	TOTAL=$all
	bench_relay_https "$TOTAL"
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
