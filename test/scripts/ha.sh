#!/usr/bin/env bash
# The high-availability suite: Redis Sentinel failover under a stream of
# staging calls, three relays in webhook mode behind HAProxy (one killed
# mid-stream) and two relays polling one bot (Telegram's 409), a plain
# streaming replica (standby refusals, promote with the relay on a
# multi-host URI, a relay on the standby alone), and Patroni + etcd +
# HAProxy (the leader killed mid-stream).  Runs standalone, on its own servers and ports
# (29401-29481) under $REGSTAGE_TEST_DIR/ha (default /tmp/regstage-ha);
# every process it starts is stopped by pid on exit, also on failure.
# Needs the extension installed (make install) and relay/regstage-relay built.
#
#   bash test/scripts/ha.sh            HA_PARTS="redis relays standby patroni" (default: all four)
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"

W=${REGSTAGE_TEST_DIR:+$REGSTAGE_TEST_DIR/ha}
W=${W:-/tmp/regstage-ha}
HA_PACKAGES="patroni etcd-server etcd-client redis-sentinel haproxy"

# stop_recorded: every pid in $W/pids, newest first, while it is still one of ours
stop_recorded() {
	local line pid name pids=() names=()
	[ -f "$W/pids" ] || return 0
	while read -r pid name; do pids=("$pid" "${pids[@]}"); names=("$name" "${names[@]}"); done <"$W/pids"
	for i in "${!pids[@]}"; do
		pid=${pids[$i]}
		kill -0 "$pid" 2>/dev/null || continue
		# a pid reused since by someone else's process is left alone: ours name
		# the run's directory or one of its ports (Redis rewrites its title)
		if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qE -- "$W|[: ]294[0-8][0-9]( |\$)" ||
			tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "HA_DIR=$W"; then
			kill -KILL "$pid" 2>/dev/null && echo "cleanup: stopped ${names[$i]} (pid $pid)" >&2
		fi
	done
	# postmasters started by Patroni, and their children, by the pid in postmaster.pid
	for f in "$W"/*/data/postmaster.pid; do
		[ -f "$f" ] || continue
		pid=$(head -1 "$f")
		if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$W"; then
			kill -KILL "$pid" 2>/dev/null && echo "cleanup: stopped postmaster of $(dirname "$f") (pid $pid)" >&2
		fi
	done
	rm -f "$W/pids"
}
cleanup() {
	local -
	set +e
	stop_recorded
}
trap cleanup EXIT
trap 'exit 130' INT TERM

missing=()
for p in $HA_PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing Debian packages; as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
		exit 1
	fi
	log "installing ${missing[*]}"
	# keep the packages from starting their default services (etcd, haproxy, sentinel)
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
		{ rm -f /usr/sbin/policy-rc.d; exit 1; }
	rm -f /usr/sbin/policy-rc.d
fi
[ -x "$SRC/relay/regstage-relay" ] || { echo "build first: make (relay/regstage-relay is missing)" >&2; exit 1; }

stop_recorded		# servers of an aborted earlier run
rm -rf "$W"; mkdir -p "$W"; chmod 0755 "$W"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$W"

PG_BIN=${HA_PG_BIN:-$PG_BIN}	# a private PostgreSQL tree may stand in (development)
export HA_DIR=$W HA_SRC=$SRC PG_BIN
HA_TOKEN=$(new_token); export HA_TOKEN
HA_SU_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'); export HA_SU_PASS
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGPASSFILE

rc=0
timeout --foreground 420 python3 -u "$SRC/test/ha/ha_suite.py" || rc=$?
[ $rc -eq 124 ] && echo "FAIL: the HA suite ran longer than 420 s" >&2

# the bot token must appear in no log of the run
if grep -rlF --include='*.log' -e "$HA_TOKEN" "$W"; then
	echo "FAIL: the bot token leaked into the logs above" >&2
	rc=1
else
	echo "ok: the bot token appears in no log of the run" >&2
fi
if [ $rc -ne 0 ]; then
	for f in "$W"/pg1/postgres.log "$W"/pg2/postgres.log "$W"/patroni*/postgres.log "$W"/relay-*.log "$W"/haproxy*.log; do
		[ -f "$f" ] || continue
		echo "---- $f (last 25 lines)" >&2
		tail -25 "$f" | grep -vF -- "$HA_TOKEN" >&2 || true
	done
fi
exit $rc
