#!/usr/bin/env bash
# The S3 storage suite: the SigV4 signer against AWS's published vectors,
# then the backend's S3 client (pg_regstage/s3.c) against s3rver (a real
# S3 implementation in Node.js) and a Python stand-in for what s3rver
# cannot play (signature and expiry checks, 403/5xx/slow answers).
# Uses the cluster scripts/test.sh started (PGHOST, PGPORT exported) and
# starts its own servers on ports 29000 (s3rver) and 29001 (stand-in),
# stopped by pid.  s3rver is installed with npm into
# $REGSTAGE_S3RVER_DIR (default /var/tmp/regstage-s3rver) when missing.
set -Eeuo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/lib.sh"

W=${REGSTAGE_TEST_DIR:?run me from scripts/test.sh}/s3
S3RVER_PORT=29000 STANDIN_PORT=29001 CLOSED_PORT=29002
S3RVER_DIR=${REGSTAGE_S3RVER_DIR:-/var/tmp/regstage-s3rver}
S3RVER_VERSION=3.7.1

cleanup() {
	local -
	set +e
	stop_pidfile "$W/s3rver.pid"
	stop_pidfile "$W/standin.pid"
}
trap cleanup EXIT
cleanup
rm -rf "$W"; mkdir -p "$W/bin" "$W/s3rver-data"; chmod 0755 "$W"

log "s3: SigV4 vectors"
gcc -Wall -Wextra -Werror -I"$SRC/pg_regstage" "$SRC/test/s3/sign_vectors.c" "$SRC/pg_regstage/s3_sign.c" \
	-lcrypto -o "$W/bin/sign_vectors"

for cmd in node npm; do
	command -v $cmd >/dev/null || { echo "$cmd not found: apt-get install -y nodejs npm" >&2; exit 1; }
done
if [ ! -x "$S3RVER_DIR/node_modules/.bin/s3rver" ] ||
	! grep -q "\"version\": \"$S3RVER_VERSION\"" "$S3RVER_DIR/node_modules/s3rver/package.json"; then
	log "s3: npm install s3rver@$S3RVER_VERSION into $S3RVER_DIR"
	mkdir -p "$S3RVER_DIR"
	npm install --prefix "$S3RVER_DIR" --no-audit --no-fund --loglevel=error "s3rver@$S3RVER_VERSION" >&2
fi

# The secret access key: a file only the server's OS user can read.
SECRET=$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)
server_owned_dir 0700 "$W/keys"
printf '%s\n' "$SECRET" > "$W/keys/secret"
chmod 0600 "$W/keys/secret"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$W/keys/secret"
printf '%s\n' "$SECRET" > "$W/standin-secret"	# the stand-in's copy (root only)
chmod 0600 "$W/standin-secret"

# s3rver makes ListObjectsV2 continuation tokens with DES: OpenSSL 3 has it
# only in its legacy provider
node --openssl-legacy-provider "$S3RVER_DIR/node_modules/s3rver/bin/s3rver.js" -d "$W/s3rver-data" -a 127.0.0.1 -p $S3RVER_PORT \
	--no-vhost-buckets --configure-bucket docs >"$W/s3rver.log" 2>&1 &
echo $! > "$W/s3rver.pid"
python3 "$SRC/test/s3/s3_standin.py" --port $STANDIN_PORT --access-key S3RVER \
	--secret-file "$W/standin-secret" --pidfile "$W/standin.pid" >"$W/standin.log" 2>&1 &
for _ in $(seq 100); do
	curl -s -o /dev/null "http://127.0.0.1:$S3RVER_PORT/" && curl -s -o /dev/null "http://127.0.0.1:$STANDIN_PORT/_log" && break
	sleep 0.1
done

export S3_SUITE_DIR=$W S3_SUITE_SECRET=$SECRET S3_SUITE_S3RVER_PORT=$S3RVER_PORT
export S3_SUITE_STANDIN_PORT=$STANDIN_PORT S3_SUITE_CLOSED_PORT=$CLOSED_PORT
export S3_SUITE_VECTORS=$W/bin/sign_vectors S3_SUITE_PG_LOG=$REGSTAGE_TEST_DIR/log/postgres.log
rc=0
python3 "$SRC/test/s3/s3_suite.py" || rc=1
# the extension's commit path and cleanup on s3rver (needs the Bot API stand-in of scripts/test.sh)
python3 "$SRC/test/s3/s3_commit.py" || rc=1
exit $rc
