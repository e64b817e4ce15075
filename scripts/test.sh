#!/usr/bin/env bash
# scripts/test.sh — every test suite on throwaway servers.  What CI runs.
#
#   bash scripts/test.sh
#
# Installs missing Debian packages, builds and installs pg_regstage and the
# relay, starts a PostgreSQL cluster (port 25434), Redis (26381) and the
# Bot API stand-in (28080) under $REGSTAGE_TEST_DIR (default
# /tmp/regstage-test), runs pg_regress, pg_isolation_regress, the pg_cron
# suite (in parallel: it waits for a minute boundary), the TAP suites and
# the relay suite, then stops every server by pid — also on failure or ^C.
# Exits non-zero on any failure and prints the diffs.
#
#   REGSTAGE_SUITES="pg_regress faults" bash scripts/test.sh
#
# runs only the named suites (names as in the summary); the others show as
# "skipped".  A suite whose test files are absent shows as "MISSING" and fails
# the run.  Each suite's output is also kept in $W/log/suite-<name>.out.  At
# the end every suite's bot token is looked for in every log and output
# directory the suites write ("token-secrecy").  Runs on one machine take
# turns (flock on $REGSTAGE_TEST_LOCK): they share the installed extension
# and the servers' ports.  The lock stays with flock itself (-o), so a server
# a failed run leaves behind does not hold it for every later run.
set -Eeuo pipefail

if [ -z "${REGSTAGE_TEST_LOCKED:-}" ]; then
	export REGSTAGE_TEST_LOCKED=1
	exec flock -o "${REGSTAGE_TEST_LOCK:-/tmp/regstage-test.lock}" bash "$0" "$@"
fi

SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/scripts/lib.sh"

W=${REGSTAGE_TEST_DIR:-/tmp/regstage-test}
PG_PORT=25434 REDIS_PORT=26381 API_PORT=28080
TREE=$W/tree

cleanup() {
	local -
	set +e
	[ -n "${CRON_PID:-}" ] && kill "$CRON_PID" 2>/dev/null
	[ -n "${HA_PID:-}" ] && kill "$HA_PID" 2>/dev/null
	for f in "$W"/fixtures/work/*/*.pid; do stop_pidfile "$f"; done	# servers of the SQL tests, if one died
	stop_pidfile "$W/standin/standin.pid"
	stop_pidfile "$W/redis/redis.pid"
	stop_postgres "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_packages
cleanup			# servers of an aborted earlier run
rm -rf "$W"
mkdir -p "$W"
chmod 0755 "$W"

# A copy of the checkout the server user may write to (results/, tmp_check/).
mkdir -p "$TREE"
tar -C "$SRC" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . | tar -C "$TREE" -xf -
WERROR=1 build_and_install "$TREE"	# warnings are errors here, not for users
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$TREE"

TOKEN=$(new_token)
server_owned_dir 0750 "$W/uploads"
mkdir -p "$W/fixtures/readonly" && chmod 0755 "$W/fixtures/readonly"	# root-owned: Permission denied
touch "$W/fixtures/notadir"
server_owned_dir 0750 "$W/fixtures/work"	# scratch upload dirs for the cleanup tests

start_postgres "$W" $PG_PORT "
shared_preload_libraries = 'pg_regstage, pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = log
regstage.redis_port = $REDIS_PORT
regstage.telegram_api_url = 'http://127.0.0.1:$API_PORT'
regstage.bot_token = '$TOKEN'
regstage.upload_dir = '$W/uploads'
regstage.download_timeout = '10s'
regstage.cleanup_interval = 0
regstage_test.fixtures = '$W/fixtures'
regstage_test.api_port = '$API_PORT'
"
start_redis "$W" $REDIS_PORT
start_standin "$W" $API_PORT "$TOKEN" "$TREE"

export PGHOST=$W/sock PGPORT=$PG_PORT PGUSER=postgres
export REGSTAGE_TEST_DIR=$W REGSTAGE_TEST_TOKEN=$TOKEN REDIS_PORT API_PORT
export PG_TEST_TIMEOUT_DEFAULT=60
rc=0
declare -A RESULT

SUITES=${REGSTAGE_SUITES:-}
wanted() {	# is suite $1 selected (all are when REGSTAGE_SUITES is empty)?
	[ -z "$SUITES" ] && return 0
	case " $SUITES " in *" $1 "*) return 0 ;; esac
	[ "$1" = faults-s3 ] && wanted s3 && return 0	# the s3 suite's fault-matrix pass
	RESULT[$1]=skipped
	return 1
}

# Every suite and the files it runs: a suite whose files are absent is
# "MISSING" and fails the run (a deleted test must not vanish from the summary).
present() {	# suite name, glob...: are the suite's files there?
	local name=$1 f; shift
	for f in "$@"; do [ -e "$f" ] && return 0; done
	RESULT[$name]=MISSING; rc=1
	log "suite $name: its test files ($*) are missing"
	return 1
}

run_suite() {	# name, command...: the output also goes to $W/log/suite-<name>.out (token check)
	local name=$1; shift
	wanted "$name" || return 0
	local t0=$SECONDS
	log "suite: $name"
	if "$@" 2>&1 | tee "$W/log/suite-$name.out"; then RESULT[$name]=ok; else RESULT[$name]=FAILED; rc=1; fi
	RESULT[$name]+=" ($((SECONDS - t0)) s)"
}

# pg_cron fires on minute boundaries: start it first, in its own database.
PG_REGRESS=$($PG_CONFIG --pkglibdir)/pgxs/src/test/regress/pg_regress
if wanted pg_cron && present pg_cron "$TREE"/test/cron/sql/*.sql; then
	log "suite: pg_cron (in the background)"
	(cd "$TREE" && as_server_user "$PG_REGRESS" --bindir="$PG_BIN" --inputdir=test/cron \
		--outputdir=test/cron --dbname=cron_regression cleanup_cron >"$W/log/cron.out" 2>&1) &
	CRON_PID=$!
fi

cd "$TREE"
if wanted pg_regress && present pg_regress sql/*.sql; then
	run_suite pg_regress as_server_user make -s installcheck ISOLATION= TAP_TESTS=
	[ -f regression.diffs ] && cat regression.diffs
fi
if wanted isolation && present isolation test/isolation/specs/*.spec; then
	run_suite isolation as_server_user make -s installcheck REGRESS= TAP_TESTS=
	[ -f output_iso/regression.diffs ] && cat output_iso/regression.diffs
fi
if wanted tap && present tap t/*.pl; then
	run_suite tap as_server_user make -s installcheck REGRESS= ISOLATION= TAP_TESTS=1 PROVE_FLAGS=-v
fi
for s in bringup relay review faults; do
	wanted $s && present $s test/scripts/$s.sh && run_suite $s bash test/scripts/$s.sh
done
# The fault matrix once more with storage = 's3' (its own servers; part of
# the s3 suite's selection).  Before the background HA suite starts: its
# abort and cancel timings are not to share the two cores with anything.
if wanted faults-s3 && present faults-s3 test/scripts/faults.sh; then
	run_suite faults-s3 env REGSTAGE_STORAGE=s3 bash test/scripts/faults.sh
fi
# The HA suite runs its own servers (Sentinel, replicas, Patroni, etcd,
# HAProxy): in the background, beside the suites that need no timing.
if wanted ha && present ha test/scripts/ha.sh; then
	log "suite: ha (in the background)"
	bash test/scripts/ha.sh >"$W/log/suite-ha.out" 2>&1 &
	HA_PID=$!
fi
for s in fuzz upgrade; do
	wanted $s && present $s test/scripts/$s.sh && run_suite $s bash test/scripts/$s.sh
done
wanted s3 && present s3 test/scripts/s3.sh && run_suite s3 env REGSTAGE_S3_MATRIX=0 bash test/scripts/s3.sh
if [ -n "${HA_PID:-}" ]; then
	log "suite: ha (waiting for it)"
	if wait "$HA_PID"; then RESULT[ha]=ok; else RESULT[ha]=FAILED; rc=1; fi
	HA_PID=
	cat "$W/log/suite-ha.out"
fi

if [ -n "${CRON_PID:-}" ]; then
	log "suite: pg_cron (waiting for it)"
	if wait "$CRON_PID"; then RESULT[pg_cron]=ok; else RESULT[pg_cron]=FAILED; rc=1; fi
	CRON_PID=
	cat "$W/log/cron.out"
	[ -f test/cron/regression.diffs ] && cat test/cron/regression.diffs
fi

# No bot token may appear in any log or output.  Every suite that starts a
# cluster has its own token (in its postgresql.conf, the only place it is
# written); each token is looked for in every directory where the suites
# write logs and output, skipping the clusters' data directories.  A
# directory a suite that ran must have written, and does not exist, fails the
# check: grep would silently skip it.
log "check: no bot token appears in any log or output"
ran() { case "${RESULT[$1]:-}" in ok*|FAILED*) return 0 ;; esac; return 1; }
LOGDIRS=("$W/log" "$W/standin" "$W/redis")
[ -d "$W/fixtures/work" ] && LOGDIRS+=("$W/fixtures/work")
ran pg_regress && LOGDIRS+=("$TREE/results")
ran isolation && LOGDIRS+=("$TREE/output_iso")
ran tap && LOGDIRS+=("$TREE/tmp_check")
ran pg_cron && LOGDIRS+=("$TREE/test/cron/results")
ran relay && LOGDIRS+=("$W/relay")
ran review && LOGDIRS+=("$W/review")
ran faults && LOGDIRS+=("$W/faults")
ran s3 && LOGDIRS+=("$W/s3")
ran faults-s3 && LOGDIRS+=("$W/faults-s3")
ran bringup && LOGDIRS+=("$TREE/.local/")		# may be a symbolic link (up.sh): the slash follows it
CONFS=("$W/pgdata/postgresql.conf")
ran relay && CONFS+=("$W/relay/pgdata/postgresql.conf")
ran review && CONFS+=("$W/review/pgdata/postgresql.conf")
ran faults && CONFS+=("$W/faults/pgdata/postgresql.conf")
ran faults-s3 && CONFS+=("$W/faults-s3/pgdata/postgresql.conf")
ran bringup && CONFS+=("$TREE/.local/pgdata/postgresql.conf")
token_check=ok
TOKENS=()
for d in "${LOGDIRS[@]}"; do
	[ -d "$d" ] || { echo "token check: expected directory $d is missing" >&2; token_check=FAILED; }
done
for c in "${CONFS[@]}"; do
	t=$(sed -n "s/^regstage\.bot_token = '\(.*\)'\$/\1/p" "$c" 2>/dev/null | tail -1)
	if [ -n "$t" ]; then TOKENS+=("$t"); else echo "token check: no bot token found in $c" >&2; token_check=FAILED; fi
done
for t in "${TOKENS[@]}"; do
	for part in "$t" "${t#*:}"; do		# the whole token, and its secret half alone
		set +e
		grep -rlF --exclude-dir=pgdata -- "$part" "${LOGDIRS[@]}"
		g=$?
		set -e
		case $g in
		0) echo "a bot token leaked into the files above" >&2; token_check=FAILED ;;
		1) ;;
		*) echo "token check: grep failed (exit $g)" >&2; token_check=FAILED ;;
		esac
	done
done
RESULT[token-secrecy]=$token_check
[ "$token_check" = ok ] || rc=1

if [ $rc -ne 0 ]; then
	log "postgres.log (last 60 lines)"
	tail -60 "$W/log/postgres.log" | grep -vF -- "${TOKEN#*:}" || true
fi
log "summary"
for k in "${!RESULT[@]}"; do printf '  %-16s %s\n' "$k" "${RESULT[$k]}"; done | sort
exit $rc
