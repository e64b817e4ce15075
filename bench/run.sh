#!/usr/bin/env bash
# bench/run.sh — reproducible benchmarks on throwaway servers; prints numbers.
#
#   bash bench/run.sh [commit|cleanup|conversation|relay|all]   (default all)
#
# Servers live under $REGSTAGE_BENCH_DIR (default /tmp/regstage-bench):
# PostgreSQL 25440 (fsync on: the floor and the commit both pay it), Redis
# 26390, the Bot API stand-in 28090.  Every server is stopped by pid at exit.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/scripts/lib.sh"
WHAT=${1:-all}
W=${REGSTAGE_BENCH_DIR:-/tmp/regstage-bench}
PG_PORT=25440 REDIS_PORT=26390 API_PORT=28090 FAST_PORT=28091
N=${BENCH_N:-600}

cleanup() {
	local -
	set +e
	stop_pidfile "$W/standin/standin.pid"
	stop_pidfile "$W/fast.pid"
	stop_pidfile "$W/redis/redis.pid"
	stop_postgres "$W"
}
trap cleanup EXIT
ensure_packages
cleanup
rm -rf "$W"; mkdir -p "$W" "$W/bin"; chmod 0755 "$W"
build_and_install "$SRC"
INC=$($PG_CONFIG --includedir) LIB=$($PG_CONFIG --libdir)
gcc -O2 -Wall -Wextra -Werror -o "$W/bin/commit_bench" "$SRC/bench/commit_bench.c" -I"$INC" -L"$LIB" -lpq -lpthread
gcc -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -o "$W/bin/botapi_fast" "$SRC/bench/botapi_fast.c" -lpthread

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

# Stage N registrations (tids FIRST..FIRST+N-1) straight into Redis, as any client could.
stage() {	# first passport_file_id selfie_file_id
	python3 - "$1" "$N" "$2" "$3" <<'PY' | redis-cli -p "$REDIS_PORT" --pipe >/dev/null
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

bench_commit() {
	local first=1000000 c=8
	# the C stand-in: the Python one would take the CPU the commits are measured on
	"$W/bin/botapi_fast" $FAST_PORT "$TOKEN" & echo $! >"$W/fast.pid"
	sleep 0.3
	local CONN="$CONN options='-c regstage.telegram_api_url=http://127.0.0.1:$FAST_PORT'"
	printf '\n## commit_registration: %d registrations of 2 documents, %d clients\n\n' "$N" "$c"
	printf '| S | L | mode | commits/s | p50 ms | p99 ms | backend peak RSS |\n|---|---|---|---|---|---|---|\n'
	for size in 65536 1048576; do
		for lat in 0 50; do
			local p s
			if [ "$lat" = 0 ]; then p="bytes${size}_benchp" s="bytes${size}_benchs"
			else p="delay${lat}_dldelay${lat}_bytes${size}_benchp" s="delay${lat}_dldelay${lat}_bytes${size}_benchs"; fi
			if [ "$lat" = 0 ]; then
				read -r fops fp50 fp99 frss < <("$W/bin/commit_bench" floor "$CONN" "$N" $c $((first + 500000)) "$size" "$W/uploads")
				printf '| %d KiB | - | floor (inserts + fsync'"'"'d file writes) | %s | %s | %s | - |\n' $((size / 1024)) "$fops" "$fp50" "$fp99"
			fi
			stage "$first" "$p" "$s"
			local sp=$(cat "$W/fast.pid") c0
			c0=$(cpu_of "$sp")
			read -r ops p50 p99 rss < <("$W/bin/commit_bench" commit "$CONN" "$N" $c "$first")
			STANDIN_CPU="$(( ($(cpu_of "$sp") - c0) * 10 )) ms"
			printf '| %d KiB | %d ms | commit_registration | %s | %s | %s | %s MB |\n' $((size / 1024)) "$lat" "$ops" "$p50" "$p99" $((rss / 1024))
			echo "    (Bot API stand-in CPU during the run: $STANDIN_CPU)" >&2
			if [ "$lat" = 0 ]; then
				RATIO+=("S=$((size / 1024)) KiB, L=0, C=$c: commit/floor throughput = $(python3 -c "print('%.2f' % ($ops / $fops))") (target >= 0.6)")
			else
				RATIO+=("S=$((size / 1024)) KiB, L=${lat} ms, C=$c: p50 / (getFile + download = $((2 * lat)) ms) = $(python3 -c "print('%.2f' % ($p50 / (2 * $lat)))") (target <= 1.3)")
			fi
			first=$((first + N))
			psql -qAtX -c "SET client_min_messages = warning; TRUNCATE regstage.users CASCADE" >/dev/null
			rm -rf "${W:?}/uploads/"*
		done
	done
}

RATIO=()
FIND_NOTE=()
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
[ ${#FIND_NOTE[@]} -gt 0 ] && { printf '\nthe file system floor (directory traversal only, C):\n'; printf -- '- %s\n' "${FIND_NOTE[@]}"; }
printf '\n## ratios\n\n'
for r in "${RATIO[@]}"; do echo "- $r"; done
