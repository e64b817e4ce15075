#!/usr/bin/env bash
# The S3 storage suite: the SigV4 signer against AWS's published vectors,
# then the backend's S3 client (pg_regstage/s3.c) against s3rver (a real
# S3 implementation in Node.js) and a Python stand-in for what s3rver
# cannot play (signature and expiry checks, 403/5xx/slow answers).
# Uses the cluster scripts/test.sh started (PGHOST, PGPORT exported) and
# starts its own servers on ports 29000 (s3rver) and 29001 (stand-in),
# stopped by pid (test/s3/servers.sh).  Then the fault matrix's s3 pass:
# test/scripts/faults.sh with REGSTAGE_STORAGE=s3, on its own servers.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"

W=${REGSTAGE_TEST_DIR:?run me from scripts/test.sh}/s3
S3RVER_PORT=29000 STANDIN_PORT=29001 CLOSED_PORT=29002
. "$SRC/test/s3/servers.sh"

cleanup() {
	local -
	set +e
	s3_servers_stop "$W"
}
trap cleanup EXIT
cleanup
rm -rf "$W"; mkdir -p "$W/bin"; chmod 0755 "$W"

log "s3: SigV4 vectors"
gcc -Wall -Wextra -Werror -I"$SRC/pg_regstage" "$SRC/test/s3/sign_vectors.c" "$SRC/pg_regstage/s3_sign.c" \
	-lcrypto -o "$W/bin/sign_vectors"
s3_servers_start "$W" $S3RVER_PORT $STANDIN_PORT
SECRET=$S3_SECRET

export S3_SUITE_DIR=$W S3_SUITE_SECRET=$SECRET S3_SUITE_S3RVER_PORT=$S3RVER_PORT
export S3_SUITE_STANDIN_PORT=$STANDIN_PORT S3_SUITE_CLOSED_PORT=$CLOSED_PORT
export S3_SUITE_VECTORS=$W/bin/sign_vectors S3_SUITE_PG_LOG=$REGSTAGE_TEST_DIR/log/postgres.log
rc=0
python3 "$SRC/test/s3/s3_suite.py" || rc=1
# the extension's commit path and cleanup on s3rver (needs the Bot API stand-in of scripts/test.sh)
python3 "$SRC/test/s3/s3_commit.py" || rc=1
# the fault matrix's s3 pass: its own cluster, Redis, Bot API stand-in and S3
# server (REGSTAGE_S3_MATRIX=0: the caller runs it elsewhere, e.g. in the background)
if [ "${REGSTAGE_S3_MATRIX:-1}" != 0 ]; then
	log "s3: the fault matrix with regstage.storage = 's3'"
	REGSTAGE_STORAGE=s3 bash "$SRC/test/scripts/faults.sh" || rc=1
fi
exit $rc
