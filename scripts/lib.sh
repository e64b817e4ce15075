# scripts/lib.sh — shared by scripts/test.sh and scripts/up.sh / down.sh.
# Debian packages, build + install, and throwaway PostgreSQL / Redis /
# Bot API stand-in servers that are always stopped by pid.

PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
export PG_CONFIG

REGSTAGE_PACKAGES="make gcc postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-$PG_MAJOR-cron
 libhiredis-dev libcurl4-openssl-dev libssl-dev openssl libjansson-dev libpq-dev redis-server redis-tools
 libipc-run-perl python3 procps curl time clang libclang-rt-14-dev
 redis-sentinel patroni etcd-server etcd-client haproxy"

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

# Install what is missing (apt-get update once); a non-root user is told what to run.
ensure_packages() {
	local missing=() p
	for p in $REGSTAGE_PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	# the S3 suite's server (s3rver) runs on Node; a Node from elsewhere
	# (nodesource bundles npm) is as good as Debian's
	command -v node >/dev/null || missing+=(nodejs)
	command -v npm >/dev/null || missing+=(npm)
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing Debian packages; install them as root:" >&2
		echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
		exit 1
	fi
	log "installing ${missing[*]}"
	# keep apt from creating or starting clusters/servers on the default ports
	printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d
	mkdir -p /etc/postgresql-common
	grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf ||
		echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	rm -f /usr/sbin/policy-rc.d
}

# Servers run as "postgres" when we are root (postgres refuses root), else as us.
as_server_user() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

server_owned_dir() {	# mkdir owned by the server user; $1 = mode, rest = dirs
	local mode=$1; shift
	if [ "$(id -u)" -eq 0 ]; then install -d -o postgres -g postgres -m "$mode" "$@"
	else install -d -m "$mode" "$@"; fi
}

build_and_install() {	# $1 = source tree
	log "build and install ($1)"
	make -C "$1" -s PG_CONFIG="$PG_CONFIG" WERROR="${WERROR:-0}"
	make -C "$1" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}

# start_postgres <dir> <port> <extra conf text>
start_postgres() {
	local W=$1 port=$2 conf=$3
	server_owned_dir 0755 "$W/log" "$W/sock"
	server_owned_dir 0700 "$W/pgdata"
	(cd "$W" && as_server_user "$PG_BIN/initdb" -D "$W/pgdata" -U postgres --auth=trust -E UTF8 \
		--locale=C.UTF-8 --no-sync >"$W/log/initdb.log" 2>&1) || { cat "$W/log/initdb.log"; return 1; }
	cat >>"$W/pgdata/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$W/sock'
$conf
CONF
	(cd "$W" && as_server_user "$PG_BIN/pg_ctl" -D "$W/pgdata" -l "$W/log/postgres.log" -w -t 60 start >/dev/null) ||
		{ tail -30 "$W/log/postgres.log"; return 1; }
}

stop_postgres() {	# by the postmaster pid in postmaster.pid
	local W=$1 pid
	[ -f "$W/pgdata/postmaster.pid" ] || return 0
	pid=$(head -1 "$W/pgdata/postmaster.pid")
	(cd "$W" && as_server_user "$PG_BIN/pg_ctl" -D "$W/pgdata" -m fast -w -t 30 stop >/dev/null 2>&1) ||
		kill -9 "$pid" 2>/dev/null || true
}

start_redis() {	# <dir> <port>
	local W=$1 port=$2
	mkdir -p "$W/redis"
	redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
		--pidfile "$W/redis/redis.pid" --logfile "$W/redis/redis.log" --dir "$W/redis"
	for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
	echo "redis did not start" >&2; return 1
}

stop_pidfile() {	# kill the process named in a pid file, then wait for it
	local f=$1 pid
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	if kill "$pid" 2>/dev/null; then
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
}

start_standin() {	# <dir> <port> <token> <src tree> [<cert> <key>: serve https]
	local W=$1 port=$2 token=$3 src=$4 cert=${5:-} key=${6:-}
	local tls=() probe=("http://127.0.0.1:$port/_test/pending")
	[ -n "$cert" ] && tls=(--tls-cert "$cert" --tls-key "$key") probe=(--cacert "$cert" "https://127.0.0.1:$port/_test/pending")
	mkdir -p "$W/standin"
	python3 "$src/test/standin/botapi_standin.py" --port "$port" --token "$token" "${tls[@]}" \
		--pidfile "$W/standin/standin.pid" >"$W/standin/standin.log" 2>&1 &
	for _ in $(seq 50); do
		curl -s -o /dev/null "${probe[@]}" 2>/dev/null && return 0; sleep 0.1
	done
	echo "Bot API stand-in did not start" >&2; return 1
}

make_test_cert() {	# <dir>: a throwaway self-signed certificate for 127.0.0.1 -> <dir>/tls-cert.pem, tls-key.pem
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=regstage throwaway CA" \
		-keyout "$1/tls-key.pem" -out "$1/tls-cert.pem" -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null
}

new_token() {	# a random token in Telegram's shape; never printed
	printf '%s:%s' "$((RANDOM * 32768 + RANDOM))" "$(head -c 60 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 35)"
}
