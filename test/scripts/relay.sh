#!/usr/bin/env bash
# The relay suite: regstage-relay against its own PostgreSQL cluster (so it
# may restart it), the shared test Redis, and its own Bot API stand-in.
# Called by scripts/test.sh, which exports REGSTAGE_TEST_DIR and REDIS_PORT.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"
. "$SRC/test/lib/relays.sh"

W=$REGSTAGE_TEST_DIR/relay
PG_PORT=25435 API_PORT=28081 TLS_API_PORT=28084
export REGSTAGE_RELAY_PIDS; REGSTAGE_RELAY_PIDS=$(relay_pidfile relay)
cleanup() {
	local -
	set +e
	stop_relays "$REGSTAGE_RELAY_PIDS"
	stop_pidfile "$W/standin/standin.pid"
	stop_pidfile "$W/tls/standin/standin.pid"
	stop_postgres "$W"
}
trap cleanup EXIT
stop_relays "$REGSTAGE_RELAY_PIDS"	# relays of a crashed earlier run
rm -rf "$W"; mkdir -p "$W/bin"; chmod 0755 "$W"
TOKEN=$(new_token)
server_owned_dir 0750 "$W/uploads"

# the relay's unit tests (redaction, token shape, backoff, the getUpdates
# scanner), under ASan + UBSan
R=$SRC/relay
clang -g -O1 -std=gnu11 -fsanitize=address,undefined -fno-sanitize-recover=all -I"$R" -I"$($PG_CONFIG --includedir)" \
	"$SRC/test/relay/relay_unit.c" "$R/scan.c" "$R/log.c" \
	-L"$($PG_CONFIG --libdir)" -lpq -lcurl -ljansson -lpthread -o "$W/bin/relay_unit"
# the relay under ThreadSanitizer: the flags shared by threads and signal handler
clang -g -O1 -std=gnu11 -fsanitize=thread -I"$R" -I"$($PG_CONFIG --includedir)" "$R"/*.c \
	-L"$($PG_CONFIG --libdir)" -lpq -lcurl -ljansson -lssl -lcrypto -lpthread -o "$W/bin/regstage-relay-tsan"

start_postgres "$W" $PG_PORT "
shared_preload_libraries = 'pg_regstage'
fsync = off
synchronous_commit = off
regstage.redis_port = $REDIS_PORT
regstage.key_prefix = 'relaysuite'
regstage.telegram_api_url = 'http://127.0.0.1:$API_PORT'
regstage.bot_token = '$TOKEN'
regstage.upload_dir = '$W/uploads'
regstage.download_timeout = '60s'
regstage.max_attempts = 3
regstage.cleanup_interval = 0
"
start_standin "$W" $API_PORT "$TOKEN" "$SRC"
# a second stand-in over https, with a certificate of a throwaway CA
make_test_cert "$W"
start_standin "$W/tls" $TLS_API_PORT "$TOKEN" "$SRC" "$W/tls-cert.pem" "$W/tls-key.pem"
export RELAY_SUITE_TLS_API_PORT=$TLS_API_PORT RELAY_SUITE_TLS_CA=$W/tls-cert.pem
export RELAY_SUITE_DIR=$W RELAY_SUITE_PG_PORT=$PG_PORT RELAY_SUITE_API_PORT=$API_PORT
export RELAY_SUITE_TOKEN=$TOKEN RELAY_SUITE_BIN=$SRC/relay/regstage-relay PG_BIN
rc=0
python3 "$SRC/test/relay/relay_suite.py" || rc=$?

# The suite's last case left a relay running on purpose: the cleanup, by the
# pid file, must stop it as it would stop the relays of a crashed run.
if [ -f "$W/left-running.pid" ]; then
	pid=$(cat "$W/left-running.pid")
	stop_relays "$REGSTAGE_RELAY_PIDS"
	if kill -0 "$pid" 2>/dev/null; then
		echo "FAIL: the relay left running (pid $pid) survived the cleanup" >&2
		kill -9 "$pid"
		rc=1
	else
		echo "ok: the relay left running was stopped by its pid file" >&2
	fi
elif [ -n "${REGSTAGE_CASES:-}" ]; then
	echo "skipped: the cleanup check (its case was not selected by REGSTAGE_CASES)" >&2
else
	echo "FAIL: no relay was left running for the cleanup check" >&2
	rc=1
fi
exit $rc
