#!/usr/bin/env bash
# The README's bring-up command, offline: up.sh, a whole registration typed
# into the terminal chat through a pipe, the rows checked with psql, down.sh.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC"
trap 'bash scripts/down.sh >/dev/null 2>&1 || true' EXIT
rm -rf .local
REGSTAGE_NO_CHAT=1 bash scripts/up.sh </dev/null >/dev/null
. .local/env
out=$(printf '/start\n2\nJane Roe\n/contact\n/photo passport\n/photo selfie\n/start\n/quit\n' |
	timeout 120 python3 scripts/chat.py)
echo "$out" | sed 's/^/  /'
grep -q "Registration complete" <<<"$out"
grep -q "You are registered" <<<"$out"
rows=$(psql -AtX -c "SELECT count(*) FROM regstage.pending_review WHERE telegram_id = 100001 AND file_exists")
[ "$rows" = 2 ] || { echo "expected 2 documents on disk, got $rows"; exit 1; }
pids=$(cat .local/relay/relay.pid .local/redis/redis.pid .local/standin/standin.pid; head -1 .local/pgdata/postmaster.pid)
bash scripts/down.sh >/dev/null
for p in $pids; do
	if kill -0 "$p" 2>/dev/null; then echo "process $p still running after down.sh"; exit 1; fi
done
echo "bring-up, terminal chat and down.sh: ok"
