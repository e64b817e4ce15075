#!/usr/bin/env bash
# The relay suite: regstage-relay against its own PostgreSQL cluster (so it
# may restart it), the shared test Redis, and its own Bot API stand-in.
# Called by scripts/test.sh, which exports REGSTAGE_TEST_DIR and REDIS_PORT.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"

W=$REGSTAGE_TEST_DIR/relay
PG_PORT=25435 API_PORT=28081 TLS_API_PORT=28084
cleanup() {
	local -
	set +e
	pkill -f "regstage-relay-suite-marker" 2>/dev/null
	stop_pidfile "$W/standin/standin.pid"
	stop_pidfile "$W/tls/standin/standin.pid"
	stop_postgres "$W"
}
trap cleanup EXIT
rm -rf "$W"; mkdir -p "$W"; chmod 0755 "$W"
TOKEN=$(new_token)
server_owned_dir 0750 "$W/uploads"
start_postgres "$W" $PG_PORT "
shared_preload_libraries = 'pg_regstage'
fsync = off
synchronous_commit = off
regstage.redis_port = $REDIS_PORT
regstage.key_prefix = 'relaysuite'
regstage.telegram_api_url = 'http://127.0.0.1:$API_PORT'
regstage.bot_token = '$TOKEN'
regstage.upload_dir = '$W/uploads'
regstage.download_timeout = '30s'
regstage.cleanup_interval = 0
"
start_standin "$W" $API_PORT "$TOKEN" "$SRC"
# a second stand-in over https, with a certificate of a throwaway CA
make_test_cert "$W"
start_standin "$W/tls" $TLS_API_PORT "$TOKEN" "$SRC" "$W/tls-cert.pem" "$W/tls-key.pem"
export RELAY_SUITE_TLS_API_PORT=$TLS_API_PORT RELAY_SUITE_TLS_CA=$W/tls-cert.pem
export RELAY_SUITE_DIR=$W RELAY_SUITE_PG_PORT=$PG_PORT RELAY_SUITE_API_PORT=$API_PORT
export RELAY_SUITE_TOKEN=$TOKEN RELAY_SUITE_BIN=$SRC/relay/regstage-relay PG_BIN
python3 "$SRC/test/relay/relay_suite.py"
