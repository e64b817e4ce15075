# The secrets (bot token, Redis password) and the ways they could leak.
#
#   preloaded: shared_preload_libraries as the README says, secrets in
#              settings — a non-superuser sees neither (the superuser does:
#              the probe can see them) and cannot set any secret setting.
#   files:     preloaded, secrets in regstage.bot_token_file and
#              regstage.redis_password_file — nobody sees them in a
#              setting, a registration commits with the token and the Redis
#              password coming only from the files, a file with loose
#              permissions or another owner is refused by path; started
#              with http_proxy/HTTPS_PROXY/ALL_PROXY pointing at a recording
#              listener that no commit touches unless regstage.http_proxy
#              names it.
#   late:      pg_regstage NOT preloaded — CREATE EXTENSION works, every C
#              function refuses with 55000 and a hint; a secret written into
#              postgresql.conf there is readable by every role (why
#              preloading is required), the file secrets are not.
#
# Needs the Redis-less environment of scripts/test.sh: the Bot API stand-in
# (API_PORT, REGSTAGE_TEST_TOKEN).  Starts its own Redis with a password.
# The real token is never written into a setting or any file under
# tmp_check (scripts/test.sh greps them for it).
use strict;
use warnings;
use File::Temp;
use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $token = $ENV{REGSTAGE_TEST_TOKEN};
my $api_port = $ENV{API_PORT};
plan skip_all => 'needs the Bot API stand-in of scripts/test.sh (REGSTAGE_TEST_TOKEN, API_PORT)'
  unless $token && $api_port;

sub random_word { join '', map { ('a' .. 'z', 0 .. 9)[ int rand 36 ] } 1 .. $_[0] }

# Secret files live outside tmp_check, readable by the server's OS user only.
my $secrets = File::Temp::tempdir('regstage_secrets_XXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $secrets;
sub write_secret
{
	my ($name, $content, $mode) = @_;
	my $path = "$secrets/$name";
	open my $fh, '>', $path or die "$path: $!";
	print $fh $content;
	close $fh;
	chmod $mode // 0600, $path;
	return $path;
}
my $redis_password = 'redis-' . random_word(24);
my $token_file = write_secret('bot_token', "$token\n");
my $redis_password_file = write_secret('redis_password', $redis_password);

# ---- a Redis of our own, with a password --------------------------------
my $redis_port = PostgreSQL::Test::Cluster::get_free_port();
my $redis_dir = File::Temp::tempdir('regstage_redis_XXXX', TMPDIR => 1, CLEANUP => 1);
system('redis-server', '--port', $redis_port, '--bind', '127.0.0.1', '--requirepass', $redis_password,
	'--save', '', '--appendonly', 'no', '--daemonize', 'yes', '--pidfile', "$redis_dir/redis.pid",
	'--logfile', "$redis_dir/redis.log", '--dir', $redis_dir) == 0
  or BAIL_OUT('could not start redis-server');

# ---- a "proxy" that records connections and answers 502 -----------------
my $proxy_log = "$secrets/proxy.log";
my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 16, ReuseAddr => 1)
  or BAIL_OUT("listener: $!");
my $proxy_url = 'http://127.0.0.1:' . $listener->sockport;
my $proxy_pid = fork // BAIL_OUT("fork: $!");
if ($proxy_pid == 0)
{
	while (my $c = $listener->accept)
	{
		# one line per connection; the request line carries the token: not recorded
		open my $fh, '>>', $proxy_log or POSIX::_exit(1);
		print $fh "connection\n";
		close $fh;
		eval {
			local $SIG{ALRM} = sub { die "timeout\n" };
			alarm 5;
			while (defined(my $line = <$c>)) { last if $line =~ /^\r?\n$/; }
			alarm 0;
		};
		print $c "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
		close $c;
	}
	POSIX::_exit(0);
}
close $listener;
sub proxy_connections { -e $proxy_log ? scalar(() = slurp_file($proxy_log) =~ /connection/g) : 0 }

END
{
	kill 'TERM', $proxy_pid if $proxy_pid;
	if (open my $fh, '<', "$redis_dir/redis.pid") { my $pid = <$fh>; kill 'TERM', $pid if $pid; }
}

# ---- helpers ---------------------------------------------------------------
my @secret_settings = qw(regstage.bot_token regstage.redis_password regstage.bot_token_file
  regstage.redis_password_file regstage.http_proxy);

# Everything a role can learn about settings, as one text.
sub probe
{
	my ($node, $role) = @_;
	my $out = '';
	my @sql;
	for my $name (@secret_settings)
	{
		push @sql, "SHOW $name", "SELECT current_setting('$name', true)";
	}
	push @sql,
	  "SELECT name, setting, reset_val, boot_val FROM pg_settings WHERE name LIKE 'regstage.%'",
	  'SHOW ALL', 'SELECT name, setting FROM pg_file_settings',
	  "SELECT pg_read_file('postgresql.conf')", "SELECT pg_read_file('postgresql.auto.conf')";
	for my $sql (@sql)
	{
		my ($stdout, $stderr);
		$node->psql('postgres', $sql, stdout => \$stdout, stderr => \$stderr,
			on_error_stop => 0, extra_params => [ '-U', $role ]);
		$out .= "$sql\n$stdout\n$stderr\n";
	}
	return $out;
}

# ok/ERROR text of one statement run as a role; the token never reaches the output
sub run_as
{
	my ($node, $role, $sql) = @_;
	my ($stdout, $stderr);
	$node->psql('postgres', $sql, stdout => \$stdout, stderr => \$stderr,
		on_error_stop => 1, extra_params => [ '-U', $role, '-v', 'VERBOSITY=verbose' ]);
	my $out = "$stdout\n$stderr";
	die "the bot token appeared in the output of: $sql" if index($out, $token) >= 0;
	return $out;
}

# stage a whole registration and commit it, in one session (after $prefix, e.g. a SET)
sub register
{
	my ($node, $tid, $role, $prefix) = @_;
	return run_as($node, $role // 'postgres', ($prefix // '') . qq{
SELECT regstage.stage_language($tid, 'en');
SELECT regstage.stage_user_data($tid, '{"full_name": "Probe User", "phone": "+79161234567"}');
SELECT regstage.stage_document($tid, 'passport', 'AgACp_s$tid');
SELECT regstage.stage_document($tid, 'selfie', 'AgACs_s$tid');
SELECT 'committed ' || regstage.commit_registration($tid);
});
}

# ALTER SYSTEM, reload, and wait until new sessions see it
sub set_system
{
	my ($node, $name, $value) = @_;
	my $set = defined $value ? "SET $name = '$value'" : "RESET $name";
	$node->safe_psql('postgres', "ALTER SYSTEM $set; SELECT pg_reload_conf()");
	my $want = defined $value ? "'$value'" : "(SELECT reset_val FROM pg_settings WHERE name = '$name')";
	$node->poll_query_until('postgres', "SELECT current_setting('$name') = $want")
	  or die "$name was not reloaded";
}

sub new_node
{
	my ($name, $conf, %env) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', $conf);
	{
		local %ENV = (%ENV, %env);
		delete @ENV{qw(no_proxy NO_PROXY)};
		$node->start;
	}
	return $node;
}

my $common_conf = qq{
regstage.redis_port = $redis_port
regstage.telegram_api_url = 'http://127.0.0.1:$api_port'
regstage.download_timeout = '10s'
regstage.cleanup_interval = 0
};

# ==== preloaded, secrets in settings ========================================
my $settings_token = '123456:settings-' . random_word(20);
my $settings_redis_password = 'settings-redis-' . random_word(20);
my $pre = new_node('preloaded', qq{
shared_preload_libraries = 'pg_regstage'
regstage.upload_dir = '${\ PostgreSQL::Test::Utils::tempdir}'
regstage.bot_token = '$settings_token'
regstage.redis_password = '$settings_redis_password'
regstage.http_proxy = 'http://proxy-user:proxy-secret\@127.0.0.1:1'
$common_conf});
$pre->safe_psql('postgres', 'CREATE EXTENSION pg_regstage; CREATE ROLE probe LOGIN;');

my $seen = probe($pre, 'probe');
unlike($seen, qr/\Q$settings_token\E/, 'preloaded: a non-superuser sees no bot_token setting');
unlike($seen, qr/\Q$settings_redis_password\E/, 'preloaded: a non-superuser sees no redis_password setting');
unlike($seen, qr/proxy-secret/, 'preloaded: a non-superuser sees no http_proxy setting');
$seen = probe($pre, 'postgres');
like($seen, qr/\Q$settings_token\E/, 'preloaded: the superuser sees the bot_token setting (the probe works)');
like($seen, qr/\Q$settings_redis_password\E/, 'preloaded: the superuser sees the redis_password setting');

for my $name (@secret_settings)
{
	my $denied = qr/permission denied to set parameter "\Q$name\E"|parameter "\Q$name\E" cannot be changed now/;
	like(run_as($pre, 'probe', "SET $name = '/tmp/x'"), $denied, "preloaded: a non-superuser cannot SET $name");
	like(run_as($pre, 'probe', "SELECT set_config('$name', '/tmp/x', false)"), $denied,
		"preloaded: a non-superuser cannot set_config $name");
	like(run_as($pre, 'probe', "ALTER ROLE probe SET $name = '/tmp/x'"),
		$denied,
		"preloaded: a non-superuser cannot ALTER ROLE ... SET $name");
}

# ==== preloaded, secrets in files, a proxy in the environment ==============
my $files = new_node('files', qq{
shared_preload_libraries = 'pg_regstage'
regstage.upload_dir = '${\ PostgreSQL::Test::Utils::tempdir}'
regstage.bot_token_file = '$token_file'
regstage.redis_password_file = '$redis_password_file'
$common_conf},
	http_proxy => $proxy_url, https_proxy => $proxy_url, HTTPS_PROXY => $proxy_url,
	ALL_PROXY => $proxy_url, all_proxy => $proxy_url);
$files->safe_psql('postgres', q{
CREATE EXTENSION pg_regstage;
CREATE ROLE probe LOGIN;
GRANT USAGE ON SCHEMA regstage TO probe;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA regstage TO probe;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA regstage TO probe;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA regstage TO probe;
});

$seen = probe($files, 'probe');
unlike($seen, qr/\Q$token\E/, 'files: a non-superuser sees no bot token');
unlike($seen, qr/\Q$redis_password\E/, 'files: a non-superuser sees no Redis password');
unlike($seen, qr/\Q$token_file\E/, 'files: a non-superuser does not even see the token file path');
$seen = probe($files, 'postgres');
like($seen, qr/\Q$token_file\E/, 'files: the superuser sees the token file path (the probe works)');
unlike($seen, qr/\Q$token\E/, 'files: not even the superuser finds the token in a setting');
unlike($seen, qr/\Q$redis_password\E/, 'files: not even the superuser finds the Redis password in a setting');

like(register($files, 7001, 'probe'), qr/committed \d+/,
	'files: a registration commits with the token and the Redis password from files only');
is(proxy_connections(), 0, 'the proxy of the environment (http_proxy, HTTPS_PROXY, ALL_PROXY) was not used');

like(register($files, 7002, 'postgres', "SET regstage.bot_token = '123:wrong';"),
	qr/committed \d+/, 'files: the file wins over regstage.bot_token');

write_secret('bot_token', "123:wrong\n");
like(register($files, 7003), qr/HTTP 40[14]/, 'files: a changed file is read by the next commit (a wrong token)');
write_secret('bot_token', $token);
like(register($files, 7003), qr/committed \d+/, 'files: and again (the right token, without a newline)');

chmod 0640, $token_file;
my $out = register($files, 7004);
like($out, qr/regstage\.bot_token_file "\Q$token_file\E" has group or other permissions \(mode 0640\)/,
	'files: a token file readable by the group is refused, naming the path');
like($out, qr/HINT:.*mode 0600/, 'files: ... with a hint');
chmod 0600, $token_file;

set_system($files, 'regstage.bot_token_file', '/etc/passwd');
like(register($files, 7004), qr{regstage\.bot_token_file "/etc/passwd" is not owned by the server's OS user},
	'files: a token file of another owner is refused');
set_system($files, 'regstage.bot_token_file', "$secrets/nonexistent");
like(register($files, 7004), qr{could not open regstage\.bot_token_file "\Q$secrets\E/nonexistent": No such file},
	'files: a missing token file is named');
set_system($files, 'regstage.bot_token_file', undef);
write_secret('bot_token', "$token\nsecond line\n");
like(register($files, 7004), qr/regstage\.bot_token_file "\Q$token_file\E" has more than one line/,
	'files: a token file of more than one line is refused, without showing it');
write_secret('bot_token', "$token\r\n");
like(register($files, 7004), qr/committed \d+/, 'files: a token file ending in CRLF works');

chmod 0604, $redis_password_file;
like(run_as($files, 'postgres', 'SELECT regstage.staged(7004)'),
	qr/regstage\.redis_password_file "\Q$redis_password_file\E" has group or other permissions \(mode 0604\)/,
	'files: a Redis password file readable by others is refused, naming the path');
chmod 0600, $redis_password_file;
unlike(slurp_file($files->logfile), qr/\Q$redis_password\E/, 'files: the Redis password is not in the server log');

is(proxy_connections(), 0, 'no commit went to the proxy of the environment');
like(register($files, 7005, 'postgres', "SET regstage.http_proxy = '$proxy_url';"),
	qr/HTTP 502/, 'with regstage.http_proxy set, the commit goes through that proxy');
ok(proxy_connections() > 0, 'the proxy recorded the connection');

# ==== not preloaded ==========================================================
my $visible = 'visible-' . random_word(20);
my $late = new_node('late', qq{
regstage.upload_dir = '${\ PostgreSQL::Test::Utils::tempdir}'
regstage.bot_token_file = '$token_file'
regstage.redis_password_file = '$redis_password_file'
regstage.redis_password = '$visible'
regstage.database = 'postgres'
$common_conf});
my ($rc, $stdout, $stderr) = $late->psql('postgres', 'CREATE EXTENSION pg_regstage; SELECT 42');
is($rc, 0, 'late: CREATE EXTENSION works without preloading');
is($stdout, '42', 'late: ... and the session goes on');
unlike($stderr, qr/FATAL/, 'late: ... without a FATAL');
$late->safe_psql('postgres', q{
CREATE ROLE probe LOGIN;
GRANT USAGE ON SCHEMA regstage TO probe;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA regstage TO probe;
});

# every C function of the extension, called with plausible arguments
my $calls = $late->safe_psql('postgres', q{
SELECT format('SELECT regstage.%I(%s)', p.proname,
	coalesce(string_agg(CASE t.typname WHEN 'int8' THEN '1' WHEN 'text' THEN '''x'''
		WHEN 'jsonb' THEN '''{}''' WHEN 'interval' THEN '''1h''' WHEN 'bool' THEN 'true'
		ELSE 'NULL' END || '::' || t.typname, ', ' ORDER BY a.ord), ''))
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
  LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY a(typ, ord) ON true
  LEFT JOIN pg_type t ON t.oid = a.typ
 WHERE p.pronamespace = 'regstage'::regnamespace AND l.lanname = 'c'
 GROUP BY p.oid, p.proname ORDER BY p.proname});
my @calls = split /\n/, $calls;
cmp_ok(scalar @calls, '>=', 14, 'late: the extension has its C functions');
for my $role ('postgres', 'probe')
{
	for my $call (@calls)
	{
		like(run_as($late, $role, $call),
			qr/ERROR:  55000: pg_regstage must be loaded via shared_preload_libraries.*HINT:  Add pg_regstage to shared_preload_libraries in postgresql.conf and restart the server/s,
			"late: $call refuses ($role)");
	}
}

$seen = probe($late, 'probe');
unlike($seen, qr/\Q$token\E/, 'late: a non-superuser sees no bot token from the file');
unlike($seen, qr/\Q$redis_password\E/, 'late: a non-superuser sees no Redis password from the file');
like($seen, qr/\Q$visible\E/,
	'late: but a secret written into postgresql.conf is readable by every role (why preloading is required)');

done_testing();
