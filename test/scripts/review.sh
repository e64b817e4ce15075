#!/usr/bin/env bash
# The review suite: the admin review in Telegram, end to end — Telegram-shaped
# updates in through the stand-in's getUpdates and regstage-relay, the Bot API
# calls out as the stand-in records them, the rows and files checked after
# each.  Its own PostgreSQL cluster (25437: the suite changes settings with
# ALTER SYSTEM and starts the cleanup worker), the shared test Redis (keys
# under its own prefix) and its own Bot API stand-in (28086).
# Called by scripts/test.sh, which exports REGSTAGE_TEST_DIR and REDIS_PORT.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"
. "$SRC/test/lib/relays.sh"

W=$REGSTAGE_TEST_DIR/review
PG_PORT=25437 API_PORT=28086
ADMIN_CHAT=-1009000000001
export REGSTAGE_RELAY_PIDS; REGSTAGE_RELAY_PIDS=$(relay_pidfile review)
cleanup() {
	local -
	set +e
	stop_relays "$REGSTAGE_RELAY_PIDS"
	stop_pidfile "$W/standin/standin.pid"
	stop_postgres "$W"
}
trap cleanup EXIT
stop_relays "$REGSTAGE_RELAY_PIDS"	# relays of a crashed earlier run
rm -rf "$W"; mkdir -p "$W"; chmod 0755 "$W"
TOKEN=$(new_token)
server_owned_dir 0750 "$W/uploads"

start_postgres "$W" $PG_PORT "
shared_preload_libraries = 'pg_regstage'
fsync = off
synchronous_commit = off
regstage.redis_port = $REDIS_PORT
regstage.key_prefix = 'reviewsuite'
regstage.telegram_api_url = 'http://127.0.0.1:$API_PORT'
regstage.bot_token = '$TOKEN'
regstage.upload_dir = '$W/uploads'
regstage.download_timeout = '20s'
regstage.admin_chat_id = '$ADMIN_CHAT'
regstage.cleanup_interval = 0
regstage.database = 'postgres'
"
start_standin "$W" $API_PORT "$TOKEN" "$SRC"
export REVIEW_SUITE_DIR=$W REVIEW_SUITE_PG_PORT=$PG_PORT REVIEW_SUITE_API_PORT=$API_PORT
export REVIEW_SUITE_TOKEN=$TOKEN REVIEW_SUITE_BIN=$SRC/relay/regstage-relay REVIEW_SUITE_ADMIN_CHAT=$ADMIN_CHAT
export REVIEW_SUITE_SRC=$SRC PG_BIN
python3 "$SRC/test/review/review_suite.py"
