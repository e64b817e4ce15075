# test/lib/relays.sh — the relays a suite starts, stopped by pid.
#
# test/lib/regstage_testlib.py's Relay appends the pid of every relay it
# starts to $REGSTAGE_RELAY_PIDS.  The file lives beside the run's directory,
# not in it: a run removes the directory of the run before it, and must still
# find the relays that run left behind when it crashed.

relay_pidfile() {	# <suite name>: where that suite's relay pids are kept
	printf '%s.relays-%s.pids' "${REGSTAGE_TEST_DIR%/}" "$1"
}

# stop_relays <pid file>: stop exactly the relays listed there (SIGTERM, then
# SIGKILL after 5 s).  A pid is only signalled while it is still a process
# started with this pid file in its environment, so a pid reused since by
# another process is left alone.
stop_relays() {
	local f=$1 pid alive live=()
	[ -f "$f" ] || return 0
	while read -r pid; do
		[[ $pid =~ ^[0-9]+$ ]] || continue
		tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "REGSTAGE_RELAY_PIDS=$f" || continue
		kill "$pid" 2>/dev/null && live+=("$pid")
	done <"$f"
	for _ in $(seq 50); do
		alive=0
		for pid in "${live[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ $alive -eq 0 ] && break
		sleep 0.1
	done
	for pid in "${live[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
	rm -f "$f"
	return 0
}
