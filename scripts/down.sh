#!/usr/bin/env bash
# scripts/down.sh — stop what scripts/up.sh started, each by its pid.
set -Euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/scripts/lib.sh"
L=$SRC/.local
[ -d "$L" ] || { echo "nothing to stop"; exit 0; }
stop_pidfile "$L/relay/relay.pid"
stop_pidfile "$L/standin/standin.pid"
stop_pidfile "$L/redis/redis.pid"
stop_postgres "$L"
rm -f "$L/env"
echo "stopped (data kept in $L; remove it with: rm -rf $L)"
