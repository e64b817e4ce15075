# test/s3/servers.sh — sourced by test/scripts/s3.sh and test/scripts/faults.sh
# (REGSTAGE_STORAGE=s3): the S3 servers a suite runs against, on loopback.
#
#   s3_servers_start DIR S3RVER_PORT STANDIN_PORT
#
# installs s3rver with npm into $REGSTAGE_S3RVER_DIR (default
# /var/tmp/regstage-s3rver) when missing, writes a random secret access key
# to DIR/keys/secret (mode 0600, the server's OS user's) and the stand-in's
# copy to DIR/standin-secret, starts s3rver (bucket "docs", data under
# DIR/s3rver-data; not when S3RVER_PORT is empty) and test/s3/s3_standin.py,
# and waits for them.  Sets S3_SECRET.  s3_servers_stop DIR stops both by pid.
S3RVER_DIR=${REGSTAGE_S3RVER_DIR:-/var/tmp/regstage-s3rver}
S3RVER_VERSION=3.7.1

s3_servers_stop() {
	stop_pidfile "$1/s3rver.pid"
	stop_pidfile "$1/standin.pid"
}

s3_servers_start() {
	local dir=$1 s3rver_port=$2 standin_port=$3 cmd
	if [ -n "$s3rver_port" ]; then
		for cmd in node npm; do
			command -v $cmd >/dev/null || { echo "$cmd not found: apt-get install -y nodejs npm" >&2; return 1; }
		done
	fi
	if [ -n "$s3rver_port" ] && { [ ! -x "$S3RVER_DIR/node_modules/.bin/s3rver" ] ||
		! grep -q "\"version\": \"$S3RVER_VERSION\"" "$S3RVER_DIR/node_modules/s3rver/package.json"; }; then
		log "s3: npm install s3rver@$S3RVER_VERSION into $S3RVER_DIR"
		mkdir -p "$S3RVER_DIR"
		npm install --prefix "$S3RVER_DIR" --no-audit --no-fund --loglevel=error "s3rver@$S3RVER_VERSION" >&2
	fi

	# The secret access key: a file only the server's OS user can read.
	S3_SECRET=$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40)
	server_owned_dir 0700 "$dir/keys"
	printf '%s\n' "$S3_SECRET" > "$dir/keys/secret"
	chmod 0600 "$dir/keys/secret"
	[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir/keys/secret"
	printf '%s\n' "$S3_SECRET" > "$dir/standin-secret"	# the stand-in's copy (root only)
	chmod 0600 "$dir/standin-secret"

	# s3rver makes ListObjectsV2 continuation tokens with DES: OpenSSL 3 has it
	# only in its legacy provider
	if [ -n "$s3rver_port" ]; then
		mkdir -p "$dir/s3rver-data"
		node --openssl-legacy-provider "$S3RVER_DIR/node_modules/s3rver/bin/s3rver.js" -d "$dir/s3rver-data" \
			-a 127.0.0.1 -p "$s3rver_port" --no-vhost-buckets --configure-bucket docs >"$dir/s3rver.log" 2>&1 &
		echo $! > "$dir/s3rver.pid"
	fi
	python3 "$SRC/test/s3/s3_standin.py" --port "$standin_port" --access-key S3RVER \
		--secret-file "$dir/standin-secret" --pidfile "$dir/standin.pid" >"$dir/standin.log" 2>&1 &
	for _ in $(seq 100); do
		{ [ -z "$s3rver_port" ] || curl -s -o /dev/null "http://127.0.0.1:$s3rver_port/"; } &&
			curl -s -o /dev/null "http://127.0.0.1:$standin_port/_log" && return 0
		sleep 0.1
	done
	echo "the S3 servers did not start (logs: $dir/s3rver.log, $dir/standin.log)" >&2
	return 1
}
