#!/usr/bin/env bash
# scripts/up.sh — the whole system on the embedded default.
#
#   bash scripts/up.sh                          offline demo: Bot API stand-in + terminal chat
#   TELEGRAM_BOT_TOKEN=123:abc bash scripts/up.sh   serve the real Telegram
#
# Installs missing Debian packages, builds and installs pg_regstage and the
# relay, then starts under .local/ (git-ignored): a PostgreSQL cluster
# (port 25432, database "regstage"), Redis (26379), the upload directory,
# the relay, and — without a token — the Bot API stand-in (28079).
# Stop everything with: bash scripts/down.sh
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/scripts/lib.sh"

PG_PORT=${REGSTAGE_PG_PORT:-25432} REDIS_PORT=${REGSTAGE_REDIS_PORT:-26379} API_PORT=${REGSTAGE_API_PORT:-28079}
L=$SRC/.local

if [ -f "$L/env" ]; then
	echo "already running (see $L/env); stop it first: bash scripts/down.sh" >&2
	exit 1
fi
ensure_packages
build_and_install "$SRC"

# The server user must reach the project folder; a checkout under /root is
# not reachable, so the data then lives in /var/tmp with .local linking to it.
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$SRC"; then
	real=/var/tmp/regstage-local-$(echo "$SRC" | md5sum | cut -c1-8)
	mkdir -p "$real"; chmod 0755 "$real"
	[ -L "$L" ] || { rm -rf "$L"; ln -s "$real" "$L"; }
fi
mkdir -p "$L"; chmod 0755 "$L" 2>/dev/null || true
L=$(cd "$L" && pwd -P)

if [ -n "${TELEGRAM_BOT_TOKEN:-}" ]; then
	TOKEN=$TELEGRAM_BOT_TOKEN
	API_URL=${TELEGRAM_API_URL:-https://api.telegram.org}
	OFFLINE=0
else
	TOKEN=$(new_token)
	API_URL=http://127.0.0.1:$API_PORT
	OFFLINE=1
fi

stop_on_error() { log "bring-up failed; stopping what was started"; bash "$SRC/scripts/down.sh" || true; }
trap stop_on_error ERR

server_owned_dir 0750 "$L/uploads"
log "PostgreSQL on port $PG_PORT"
start_postgres "$L" "$PG_PORT" "
shared_preload_libraries = 'pg_regstage'
regstage.redis_port = $REDIS_PORT
regstage.telegram_api_url = '$API_URL'
regstage.bot_token = '$TOKEN'
regstage.upload_dir = '$L/uploads'
regstage.database = 'regstage'
"
log "Redis on port $REDIS_PORT"
start_redis "$L" "$REDIS_PORT"
if [ $OFFLINE -eq 1 ]; then
	log "Bot API stand-in on port $API_PORT (no TELEGRAM_BOT_TOKEN: offline demo)"
	start_standin "$L" "$API_PORT" "$TOKEN" "$SRC"
fi

export PGHOST=$L/sock PGPORT=$PG_PORT PGUSER=postgres
psql -qAtX -d postgres -c "CREATE DATABASE regstage" >/dev/null
psql -qAtX -d regstage -v ON_ERROR_STOP=1 <<SQL >/dev/null
CREATE EXTENSION pg_regstage;
CREATE ROLE regstage_relay LOGIN;
SELECT regstage.grant_bot_access('regstage_relay');
SQL
if [ $OFFLINE -eq 1 ]; then
	# the person at the terminal (scripts/chat.py) reviews registrations too: /admin
	psql -qAtX -d regstage -v ON_ERROR_STOP=1 -c "INSERT INTO regstage.admins (telegram_id, name)
		VALUES (${REGSTAGE_CHAT_USER:-100001}, 'Terminal admin') ON CONFLICT DO NOTHING" >/dev/null
fi
# the cleanup worker connects to "regstage", which exists now
as_server_user "$PG_BIN/pg_ctl" -D "$L/pgdata" -w restart -m fast -l "$L/log/postgres.log" >/dev/null

log "relay"
mkdir -p "$L/relay"
TELEGRAM_BOT_TOKEN=$TOKEN TELEGRAM_API_URL=$API_URL \
DATABASE_URL="host=$L/sock port=$PG_PORT dbname=regstage user=regstage_relay" \
	nohup "$SRC/relay/regstage-relay" >>"$L/relay/relay.log" 2>&1 &
echo $! >"$L/relay/relay.pid"
sleep 0.5
kill -0 "$(cat "$L/relay/relay.pid")" || { tail "$L/relay/relay.log"; false; }

cat >"$L/env" <<ENV
export PGHOST=$L/sock PGPORT=$PG_PORT PGUSER=postgres PGDATABASE=regstage
export REGSTAGE_STANDIN_URL=http://127.0.0.1:$API_PORT
ENV
trap - ERR

cat <<MSG

pg_regstage is up.
  psql:        . .local/env && psql          (database "regstage")
  rows:        SELECT * FROM regstage.pending_review;
  review:      /admin in the chat (offline demo: you are an admin), or SELECT * FROM regstage.stats;
  uploads:     $L/uploads
  logs:        $L/log/postgres.log, $L/relay/relay.log
  stop:        bash scripts/down.sh
MSG
if [ $OFFLINE -eq 1 ]; then
	echo "  chat:        python3 scripts/chat.py        (no Telegram account needed)"
	if [ -t 0 ] && [ "${REGSTAGE_NO_CHAT:-}" != 1 ]; then
		echo
		REGSTAGE_STANDIN_URL=http://127.0.0.1:$API_PORT exec python3 "$SRC/scripts/chat.py"
	fi
fi
