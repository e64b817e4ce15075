#!/usr/bin/env bash
# The README's bring-up command, offline: up.sh, a whole registration typed
# into the terminal chat through a pipe, its approval by the same person as
# the admin, the rows checked with psql, down.sh.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC"
trap 'bash scripts/down.sh >/dev/null 2>&1 || true' EXIT
rm -rf .local
REGSTAGE_NO_CHAT=1 bash scripts/up.sh </dev/null >/dev/null
. .local/env
# The person at the terminal is an admin too: /admin lists the registration,
# its button (1) shows the review, Approve (1) reaches them as the user.  The
# empty lines let the chat print replies still arriving before a number is read.
out=$(printf '/start\n2\nJane Roe\n/contact\n/photo passport\n/photo selfie\n/start\n/admin\n1\n\n\n1\n\n/quit\n' |
	timeout 120 python3 scripts/chat.py)
echo "$out" | sed 's/^/  /'
grep -q "Registration complete" <<<"$out"
grep -q "You are registered" <<<"$out"
grep -q "Waiting for review: 1," <<<"$out"
grep -q "\[1\] Jane Roe (#" <<<"$out"
grep -q "\[1\] ✅ Approve" <<<"$out"
grep -q "Your registration is approved" <<<"$out"
[ "$(psql -AtX -c "SELECT status || ' ' || reviewed_by FROM regstage.users WHERE telegram_id = 100001")" = "APPROVED 100001" ] ||
	{ echo "the terminal admin's approval is not in regstage.users"; exit 1; }
rows=$(psql -AtX -c "SELECT count(*) FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
	WHERE u.telegram_id = 100001 AND regstage.document_file_exists(d.file_path)")
[ "$rows" = 2 ] || { echo "expected 2 documents on disk, got $rows"; exit 1; }
pids=$(cat .local/relay/relay.pid .local/redis/redis.pid .local/standin/standin.pid; head -1 .local/pgdata/postmaster.pid)
bash scripts/down.sh >/dev/null
for p in $pids; do
	if kill -0 "$p" 2>/dev/null; then echo "process $p still running after down.sh"; exit 1; fi
done
echo "bring-up, terminal chat and down.sh: ok"
