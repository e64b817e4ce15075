#!/usr/bin/env bash
# The fault, security and load suite: its own PostgreSQL cluster (crashed
# and restarted on purpose), its own Redis (stopped, hung, emptied), its own
# Bot API stand-in, the relay, a small tmpfs as a full disk.
# Called by scripts/test.sh (REGSTAGE_TEST_DIR exported).
#
# REGSTAGE_STORAGE=s3 runs the same matrix with regstage.storage = 's3'
# (called so by test/scripts/s3.sh): under $REGSTAGE_TEST_DIR/faults-s3, on
# other ports, against the S3 stand-in (test/s3/servers.sh; its "verified"
# bucket checks every signature and, like S3, keeps nothing of an
# interrupted PUT, where s3rver keeps what arrived); the
# cases that only the local backend has (disk full, fsync, upload_dir
# permissions, symbolic links, the ownership marker) and those no backend
# changes are listed as not run, with the reason.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"
. "$SRC/test/lib/relays.sh"

STORAGE=${REGSTAGE_STORAGE:-local}
case $STORAGE in
local)
	W=$REGSTAGE_TEST_DIR/faults
	PG_PORT=25436 REDIS_PORT=26382 API_PORT=28082
	;;
s3)
	W=$REGSTAGE_TEST_DIR/faults-s3
	PG_PORT=25438 REDIS_PORT=26383 API_PORT=28083
	S3_STANDIN_PORT=29011 S3_CLOSED_PORT=29012
	. "$SRC/test/s3/servers.sh"
	;;
*) echo "REGSTAGE_STORAGE must be local or s3, not $STORAGE" >&2; exit 2 ;;
esac
SMALL=$W/small
export REGSTAGE_RELAY_PIDS; REGSTAGE_RELAY_PIDS=$(relay_pidfile "$(basename "$W")")
cleanup() {
	local -
	set +e
	[ -f "$W/redis/redis.pid" ] && kill -CONT "$(cat "$W/redis/redis.pid")" 2>/dev/null
	stop_relays "$REGSTAGE_RELAY_PIDS"
	stop_pidfile "$W/standin/standin.pid"
	stop_pidfile "$W/redis/redis.pid"
	stop_postgres "$W"
	if [ "$STORAGE" = s3 ]; then s3_servers_stop "$W"; fi
	if mountpoint -q "$SMALL"; then umount "$SMALL"; fi	# an if: the trap's last status is the script's
}
trap cleanup EXIT
stop_relays "$REGSTAGE_RELAY_PIDS"	# relays of a crashed earlier run
rm -rf "$W"; mkdir -p "$W/bin"; chmod 0755 "$W"
TOKEN=$(new_token)
server_owned_dir 0750 "$W/uploads"
server_owned_dir 0750 "$SMALL"

ENOSPC_MODE=none
STORAGE_CONF=
if [ "$STORAGE" = local ]; then
	# A full disk: a 512 KiB tmpfs; without the right to mount one, a preloaded
	# shim fails writes under it with ENOSPC instead (test/faults/enospc_shim.c).
	ENOSPC_MODE=tmpfs
	if [ "${REGSTAGE_FAULTS_ENOSPC:-}" = shim ] || ! mount -t tmpfs -o size=512k,mode=0750 tmpfs "$SMALL" 2>/dev/null; then
		ENOSPC_MODE=shim
		gcc -shared -fPIC -O2 -o "$W/bin/enospc_shim.so" "$SRC/test/faults/enospc_shim.c" -ldl
		export LD_PRELOAD=$W/bin/enospc_shim.so REGSTAGE_ENOSPC_DIR=$SMALL
	fi
	[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$SMALL"

	# fsync failing with EIO where $W/eio.ctl says (test/faults/eio_shim.c)
	gcc -shared -fPIC -O2 -o "$W/bin/eio_shim.so" "$SRC/test/faults/eio_shim.c" -ldl
	export LD_PRELOAD="$W/bin/eio_shim.so${LD_PRELOAD:+ $LD_PRELOAD}" REGSTAGE_EIO_CTL=$W/eio.ctl
else
	s3_servers_start "$W" "" $S3_STANDIN_PORT
	STORAGE_CONF="
regstage.storage = 's3'
regstage.s3_endpoint = 'http://127.0.0.1:$S3_STANDIN_PORT'
regstage.s3_bucket = 'verified'
regstage.s3_access_key = 'S3RVER'
regstage.s3_prefix = 'faults'
regstage.s3_secret_key_file = '$W/keys/secret'"
fi

start_postgres "$W" $PG_PORT "$STORAGE_CONF
shared_preload_libraries = 'pg_regstage'
fsync = off
restart_after_crash = on
regstage.redis_port = $REDIS_PORT
regstage.redis_timeout = '500ms'
regstage.telegram_api_url = 'http://127.0.0.1:$API_PORT'
regstage.bot_token = '$TOKEN'
regstage.upload_dir = '$W/uploads'
regstage.download_timeout = '3s'
regstage.cleanup_interval = 0
"
unset LD_PRELOAD
start_redis "$W" $REDIS_PORT
start_standin "$W" $API_PORT "$TOKEN" "$SRC"

export FAULT_SUITE_DIR=$W FAULT_SUITE_PG_PORT=$PG_PORT FAULT_SUITE_API_PORT=$API_PORT FAULT_SUITE_TOKEN=$TOKEN
export FAULT_SUITE_BIN=$SRC/relay/regstage-relay FAULT_SUITE_REDIS_PORT=$REDIS_PORT FAULT_SUITE_SMALL=$SMALL
export FAULT_SUITE_ENOSPC_MODE=$ENOSPC_MODE FAULT_SUITE_SRC=$SRC PG_BIN FAULT_SUITE_STORAGE=$STORAGE
if [ "$STORAGE" = s3 ]; then
	export FAULT_SUITE_S3=http://127.0.0.1:$S3_STANDIN_PORT
	export FAULT_SUITE_S3_CLOSED=http://127.0.0.1:$S3_CLOSED_PORT FAULT_SUITE_S3_NAMESPACE=faults/postgres/
fi
python3 "$SRC/test/faults/fault_suite.py"
