# The orphan-cleanup background worker in a temporary instance: its
# scheduler starts a run at regstage.cleanup_interval, picks up a new
# interval on reload, survives a failing run, serves the barrier of any DROP
# DATABASE, holds no connection to its own database between runs (a plain
# DROP DATABASE of it works), says once that the database is missing, and
# stops promptly.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $uploads = PostgreSQL::Test::Utils::tempdir;
my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_regstage'
regstage.upload_dir = '$uploads'
regstage.cleanup_interval = 1
regstage.cleanup_max_age = '1h'
regstage.cleanup_tmp_max_age = '1h'
regstage.database = 'postgres'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_regstage');

# the scheduler is visible with a clear backend_type, in no database
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_regstage cleanup' AND datname IS NULL"),
	'the scheduler shows in pg_stat_activity as "pg_regstage cleanup", connected to no database');

# an orphan older than cleanup_max_age is removed by the worker, a new one kept
mkdir "$uploads/42";
for my $f ("$uploads/42/old.jpg", "$uploads/42/new.jpg") { open my $fh, '>', $f or die; print $fh "x"; close $fh; }
utime(time - 7200, time - 7200, "$uploads/42/old.jpg");
my $offset = -s $node->logfile;
ok($node->wait_for_log(qr/pg_regstage cleanup: finished; deleted 1, kept 1, errors 0/, $offset),
	'a worker run deleted the old orphan and kept the recent one');
ok(!-e "$uploads/42/old.jpg" && -e "$uploads/42/new.jpg", 'files on disk agree');

# reload with a new interval: picked up without a restart
sub worker_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_regstage cleanup'");
}
my $pid = worker_pid();
$offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "regstage.cleanup_interval = 2\n");
$node->reload;
ok($node->wait_for_log(qr/interval changed from 1 s to 2 s/, $offset), 'reload changes the interval');
is($node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_regstage cleanup'"), $pid,
	'same worker process after the reload');

# a failing run is logged and the next run still happens, with the same
# scheduler (a crash and a restart by the postmaster would pass otherwise)
$offset = -s $node->logfile;
rename $uploads, "$uploads.away" or die;
ok($node->wait_for_log(qr/pg_regstage cleanup run failed: could not access upload directory/, $offset),
	'a failing run is logged');
rename "$uploads.away", $uploads or die;
$offset = -s $node->logfile;
ok($node->wait_for_log(qr/pg_regstage cleanup: finished/, $offset), 'the next run succeeds');
is(worker_pid(), $pid, 'the same scheduler before and after the failing run');
unlike(substr(slurp_file($node->logfile), 0), qr/background worker "pg_regstage cleanup(?: run)?" \(PID \d+\) exited/,
	'neither the scheduler nor a run exited with an error');

# interval 0 disables the worker's runs: nothing starts after the reload is
# applied (the worker reloads between runs, so none is in progress then)
$offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "regstage.cleanup_interval = 0\n");
$node->reload;
ok($node->wait_for_log(qr/interval changed from 2 s to 0 s/, $offset), 'interval 0 accepted');
my $applied = index(slurp_file($node->logfile), 'interval changed from 2 s to 0 s', $offset);
sleep 3;
unlike(substr(slurp_file($node->logfile), $applied), qr/cleanup: starting/, 'no runs while disabled');

# DROP DATABASE of any database waits until every backend, the worker
# included, has absorbed its ProcSignalBarrier: the worker serves it
$node->safe_psql('postgres', 'CREATE DATABASE scratch');
my $t0 = time;
$node->safe_psql('postgres', 'DROP DATABASE scratch');
ok(time - $t0 < 5, 'DROP DATABASE of another database is not blocked (barrier served)');
is(worker_pid(), $pid, 'the worker served the barrier without exiting');

# a stopped worker (SIGTERM) is restarted by the postmaster
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_regstage cleanup' AND pid <> $pid"),
	'worker restarted after SIGTERM');

# the worker's own database: runs connect to it, and leave it between runs
$node->safe_psql('postgres', 'CREATE DATABASE workerdb');
$node->safe_psql('workerdb', 'CREATE EXTENSION pg_regstage');
# (its own upload directory: the first one belongs to database "postgres")
my $uploads2 = PostgreSQL::Test::Utils::tempdir;
$node->append_conf('postgresql.conf',
	"regstage.database = 'workerdb'\nregstage.upload_dir = '$uploads2'\nregstage.cleanup_interval = 1\n");
$node->restart;
$offset = -s $node->logfile;
ok($node->wait_for_log(qr/pg_regstage cleanup: finished/, $offset), 'a run in regstage.database (workerdb)');
ok($node->poll_query_until('workerdb', "SELECT count(*) >= 2 FROM regstage.cleanup_runs"),
	'runs are recorded in workerdb every second');
# A plain DROP DATABASE: no pg_regstage process holds the database between
# runs, and a run in progress ends within milliseconds (DROP DATABASE waits
# up to 5 s for other sessions to leave).
$t0 = time;
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE workerdb');
is($ret, 0, "plain DROP DATABASE of the worker's database succeeds ($err)");
ok(time - $t0 < 5, "plain DROP DATABASE of the worker's database is prompt");
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'workerdb'"), '0',
	'the worker\'s database is gone');
ok($node->wait_for_log(qr/database "workerdb" \(regstage.database\) does not exist; no cleanup until it is created/,
	$offset), 'the scheduler says the database is missing');
sleep 3;
my $log = substr(slurp_file($node->logfile), $offset);
my $said = () = $log =~ /does not exist; no cleanup until it is created/g;
is($said, 1, 'said once, not every second');
unlike($log, qr/FATAL:  database "workerdb" does not exist/, 'no run started into the missing database');
# once the database exists again, runs go on there
$offset = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE DATABASE workerdb');
$node->safe_psql('workerdb', 'CREATE EXTENSION pg_regstage');
ok($node->wait_for_log(qr/database "workerdb" exists again/, $offset), 'the scheduler sees it again');
ok($node->poll_query_until('workerdb', "SELECT count(*) >= 1 FROM regstage.cleanup_runs"),
	'runs go on in the re-created database');

# fast shutdown is prompt
$t0 = time;
$node->stop('fast');
ok(time - $t0 < 10, 'fast shutdown is prompt');

done_testing();
