#!/usr/bin/env bash
# bench/run.sh — reproducible benchmarks on throwaway servers; prints numbers.
#
#   bash bench/run.sh [commit|cleanup|conversation|relay|all]   (default all)
#
# Servers live under $REGSTAGE_BENCH_DIR (default /tmp/regstage-bench):
# PostgreSQL 25440 (fsync on: the floor and the commit both pay it), Redis
# 26390, the Bot API stand-in 28090, for commit also the S3 stand-in 28094
# (test/s3/s3_standin.py).  Every server is stopped by pid at exit.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/scripts/lib.sh"
WHAT=${1:-all}
W=${REGSTAGE_BENCH_DIR:-/tmp/regstage-bench}
PG_PORT=25440 REDIS_PORT=26390 API_PORT=28090 FAST_PORT=28091 RELAY_FAST_PORT=28092 RELAY_TLS_PORT=28093 S3_PORT=28094
N=${BENCH_N:-2000}		# registrations per round, 64 KiB
N_S3=${BENCH_N_S3:-300}		# registrations per size with storage = 's3'
N_LARGE=${BENCH_N_LARGE:-300}	# per round, 1 MiB
N_LATENCY=${BENCH_N_LATENCY:-400}	# at L = 50 ms
ROUNDS=${BENCH_ROUNDS:-3}

cleanup() {
	local -
	set +e
	stop_pidfile "$W/standin/standin.pid"
	stop_pidfile "$W/fast.pid"
	stop_pidfile "$W/fast-relay.pid"
	stop_pidfile "$W/s3/standin.pid"
	stop_pidfile "$W/tls/standin/standin.pid"
	stop_pidfile "$W/redis/redis.pid"
	stop_postgres "$W"
}
trap cleanup EXIT
ensure_packages
cleanup
rm -rf "$W"; mkdir -p "$W" "$W/bin"; chmod 0755 "$W"
build_and_install "$SRC"
INC=$($PG_CONFIG --includedir) LIB=$($PG_CONFIG --libdir)
gcc -O2 -Wall -Wextra -Werror -o "$W/bin/commit_bench" "$SRC/bench/commit_bench.c" -I"$INC" -L"$LIB" -lpq -lcrypto -lpthread -lcurl
gcc -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -o "$W/bin/botapi_fast" "$SRC/bench/botapi_fast.c" -lpthread
gcc -O2 -Wall -Wextra -Werror -o "$W/bin/list_floor" "$SRC/bench/list_floor.c"

TOKEN=$(new_token)
server_owned_dir 0750 "$W/uploads"
start_postgres "$W" $PG_PORT "
shared_preload_libraries = 'pg_regstage'
max_connections = 100
regstage.redis_port = $REDIS_PORT
regstage.telegram_api_url = 'http://127.0.0.1:$API_PORT'
regstage.bot_token = '$TOKEN'
regstage.upload_dir = '$W/uploads'
regstage.cleanup_interval = 0
log_min_messages = warning
"
start_redis "$W" $REDIS_PORT
start_standin "$W" $API_PORT "$TOKEN" "$SRC"
export PGHOST=$W/sock PGPORT=$PG_PORT PGUSER=postgres PGDATABASE=postgres
psql -qAtX -c "CREATE EXTENSION pg_regstage" >/dev/null
CONN="host=$W/sock port=$PG_PORT user=postgres dbname=postgres"

# Stage COUNT registrations (tids FIRST..FIRST+COUNT-1) straight into Redis, as any client could.
stage() {	# first count passport_file_id selfie_file_id
	python3 - "$1" "$2" "$3" "$4" <<'PY' | redis-cli -p "$REDIS_PORT" --pipe >/dev/null
import sys
first, n, p, s = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def cmd(*a):
    out = "*%d\r\n" % len(a)
    for x in a:
        x = str(x).encode()
        out += "$%d\r\n%s\r\n" % (len(x), x.decode())
    sys.stdout.write(out)
for t in range(first, first + n):
    k = "registration:%d:" % t
    cmd("SET", k + "language", "en", "EX", 86400)
    cmd("HSET", k + "data", "full_name", "Bench User", "phone", "+79160000000")
    cmd("EXPIRE", k + "data", 86400)
    cmd("HSET", k + "documents", "passport", p, "selfie", s)
    cmd("EXPIRE", k + "documents", 86400)
PY
}

# Same start for every measured run: dirty pages written, the page cache
# emptied (as root), so no run inherits the previous run's writeback or pays
# for first touches of fresh memory the previous one did not.
settle() {
	sync
	[ -w /proc/sys/vm/drop_caches ] && echo 1 >/proc/sys/vm/drop_caches
	return 0
}

bench_commit() {
	local first=1000000 c=8
	# the C stand-in: the Python one would take the CPU the commits are measured on
	"$W/bin/botapi_fast" $FAST_PORT "$TOKEN" & echo $! >"$W/fast.pid"
	sleep 0.3
	printf '\n## commit_registration: 2 documents per registration, %d clients\n\n' $c
	printf 'Floor and commit alternate over %d rounds (every round in fresh directories, nothing deleted\n' "$ROUNDS"
	printf 'in between), so drift of this shared machine hits both; the ratio is of the summed rounds.\n\n'
	printf '| S | L | mode | registrations | commits/s | p50 ms | p99 ms | backend peak RSS |\n|---|---|---|---|---|---|---|---|\n'
	for size in 65536 1048576; do
		local n=$N
		[ "$size" -gt 65536 ] && n=$N_LARGE
		# L = 0: throughput against the floor
		local fsum=0 csum=0 r
		for r in $(seq "$ROUNDS"); do
			local order="floor commit"
			[ $((r % 2)) -eq 0 ] && order="commit floor"
			local mode
			for mode in $order; do
				settle
				local u="$W/uploads/r$first-$mode"
				server_owned_dir 0750 "$u"
				local conn="$CONN options='-c regstage.telegram_api_url=http://127.0.0.1:$FAST_PORT -c regstage.upload_dir=$u'"
				local ops p50 p99 rss
				if [ "$mode" = floor ]; then
					read -r ops p50 p99 rss < <("$W/bin/commit_bench" floor "$conn" "$n" $c $((first + 500000)) "$size" "$u")
					fsum=$(python3 -c "print($fsum + $n / $ops)")
					printf '| %d KiB | - | floor (inserts with SHA-256 + fsync'"'"'d file writes), round %d | %d | %s | %s | %s | - |\n' $((size / 1024)) "$r" "$n" "$ops" "$p50" "$p99"
				else
					stage "$first" "$n" "bytes${size}_benchp" "bytes${size}_benchs"
					read -r ops p50 p99 rss < <("$W/bin/commit_bench" commit "$conn" "$n" $c "$first")
					csum=$(python3 -c "print($csum + $n / $ops)")
					printf '| %d KiB | 0 ms | commit_registration, round %d | %d | %s | %s | %s | %s MB |\n' $((size / 1024)) "$r" "$n" "$ops" "$p50" "$p99" $((rss / 1024))
				fi
			done
			first=$((first + 1000000))
		done
		RATIO+=("S=$((size / 1024)) KiB, L=0, C=$c: commit/floor throughput = $(python3 -c "print('%.2f' % ($fsum / $csum))") over $ROUNDS rounds of $n (target >= 0.6)")
		# L = 50 ms per request: the downloads of a registration overlap
		local lat=50 u="$W/uploads/l$first"
		server_owned_dir 0750 "$u"
		stage "$first" "$N_LATENCY" "delay${lat}_dldelay${lat}_bytes${size}_benchp" "delay${lat}_dldelay${lat}_bytes${size}_benchs"
		read -r ops p50 p99 rss < <("$W/bin/commit_bench" commit \
			"$CONN options='-c regstage.telegram_api_url=http://127.0.0.1:$FAST_PORT -c regstage.upload_dir=$u'" "$N_LATENCY" $c "$first")
		printf '| %d KiB | %d ms | commit_registration | %d | %s | %s | %s | %s MB |\n' $((size / 1024)) "$lat" "$N_LATENCY" "$ops" "$p50" "$p99" $((rss / 1024))
		RATIO+=("S=$((size / 1024)) KiB, L=${lat} ms, C=$c: p50 / (getFile + download = $((2 * lat)) ms) = $(python3 -c "print('%.2f' % ($p50 / (2 * $lat)))") (target <= 1.3)")
		first=$((first + 1000000))
		psql -qAtX -c "SET client_min_messages = warning; TRUNCATE regstage.users CASCADE" >/dev/null
		rm -rf "${W:?}/uploads/"*
	done
	bench_commit_s3
}

# The same commits with regstage.storage = 's3', beside the S3 server's own
# floor.  The server is the S3 stand-in (Python, in memory, every SigV4
# signature checked): on this machine it takes 2-PUT registrations faster
# than s3rver (Node, on disk), and its speed bounds the figure.
bench_commit_s3() {
	local first=9000000 c=8 size n=$N_S3 ops p50 p99 rss
	mkdir -p "$W/s3"
	server_owned_dir 0700 "$W/s3/keys"
	head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40 >"$W/s3/keys/secret"
	chmod 0600 "$W/s3/keys/secret"
	cp "$W/s3/keys/secret" "$W/s3/standin-secret"
	[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$W/s3/keys/secret"
	python3 "$SRC/test/s3/s3_standin.py" --port $S3_PORT --access-key BENCH --secret-file "$W/s3/standin-secret" \
		--pidfile "$W/s3/standin.pid" >"$W/s3/standin.log" 2>&1 &
	for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/_log" && break; sleep 0.1; done
	local s3opts="-c regstage.storage=s3 -c regstage.s3_endpoint=http://127.0.0.1:$S3_PORT -c regstage.s3_bucket=verified"
	s3opts+=" -c regstage.s3_access_key=BENCH -c regstage.s3_secret_key_file=$W/s3/keys/secret"
	printf '\n## commit_registration with storage = '"'"'s3'"'"' (S3 stand-in on loopback), %d clients\n\n' $c
	printf '| S | storage | mode | registrations | commits/s | p50 ms | p99 ms | backend peak RSS |\n|---|---|---|---|---|---|---|---|\n'
	for size in 65536 1048576; do
		settle
		local u="$W/uploads/s3-$first"
		server_owned_dir 0750 "$u"
		read -r ops p50 p99 rss < <("$W/bin/commit_bench" s3floor "http://127.0.0.1:$S3_PORT/open" "$n" $c "$first" "$size")
		printf '| %d KiB | s3 | floor (2 unsigned PUTs per registration, no database) | %d | %s | %s | %s | - |\n' $((size / 1024)) "$n" "$ops" "$p50" "$p99"
		local fops=$ops
		stage "$first" "$n" "bytes${size}_benchp" "bytes${size}_benchs"
		read -r ops p50 p99 rss < <("$W/bin/commit_bench" commit \
			"$CONN options='-c regstage.telegram_api_url=http://127.0.0.1:$FAST_PORT -c regstage.upload_dir=$u $s3opts'" "$n" $c "$first")
		printf '| %d KiB | s3 | commit_registration | %d | %s | %s | %s | %s MB |\n' $((size / 1024)) "$n" "$ops" "$p50" "$p99" $((rss / 1024))
		local cops=$ops
		first=$((first + 1000000))
		stage "$first" "$n" "bytes${size}_benchp" "bytes${size}_benchs"
		read -r ops p50 p99 rss < <("$W/bin/commit_bench" commit \
			"$CONN options='-c regstage.telegram_api_url=http://127.0.0.1:$FAST_PORT -c regstage.upload_dir=$u'" "$n" $c "$first")
		printf '| %d KiB | local | commit_registration (same run, same count) | %d | %s | %s | %s | %s MB |\n' $((size / 1024)) "$n" "$ops" "$p50" "$p99" $((rss / 1024))
		RATIO+=("S=$((size / 1024)) KiB, C=$c, storage = s3: commit/s3-floor throughput = $(python3 -c "print('%.2f' % ($cops / $fops))"), s3/local commits = $(python3 -c "print('%.2f' % ($cops / $ops))") over $n registrations")
		first=$((first + 1000000))
		psql -qAtX -c "SET client_min_messages = warning; TRUNCATE regstage.users CASCADE" >/dev/null
		rm -rf "${W:?}/uploads/"*
	done
	stop_pidfile "$W/s3/standin.pid"
}

RATIO=()
FIND_NOTE=()
CEILING=()
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
case "$WHAT" in
	commit|all) bench_commit ;;
esac
case "$WHAT" in
	cleanup|all) [ -f "$SRC/bench/cleanup_bench.sh" ] && . "$SRC/bench/cleanup_bench.sh" ;;
esac
case "$WHAT" in
	conversation|all) [ -f "$SRC/bench/conversation_bench.sh" ] && . "$SRC/bench/conversation_bench.sh" ;;
esac
case "$WHAT" in
	relay|all) [ -f "$SRC/bench/relay_bench.sh" ] && . "$SRC/bench/relay_bench.sh" ;;
esac
[ ${#FIND_NOTE[@]} -gt 0 ] && { printf '\nthe floor of a full scan on this file system:\n'; printf -- '- %s\n' "${FIND_NOTE[@]}" "${CEILING[@]}"; }
printf '\n## ratios\n\n'
for r in "${RATIO[@]}"; do echo "- $r"; done
