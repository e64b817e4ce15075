-- pg_cron schedules regstage.cleanup_orphans() and it really runs.
-- (Its own database and upload directory: this suite runs beside the others.)
\set VERBOSITY terse
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_regstage CASCADE;
RESET client_min_messages;
CREATE EXTENSION pg_regstage;
SELECT current_setting('regstage_test.fixtures') || '/work/cron' AS dir \gset
CREATE TEMP TABLE sh_out (line text);
SELECT format('rm -rf %1$s && mkdir -p %1$s/7 && echo x > %1$s/7/old-orphan.jpg && echo x > %1$s/7/new-orphan.jpg && touch -d "3 days ago" %1$s/7/old-orphan.jpg', :'dir') AS cmd \gset
COPY sh_out FROM PROGRAM :'cmd';
SELECT current_database() AS regdb \gset
ALTER DATABASE :"regdb" SET regstage.upload_dir = :'dir';

\c postgres
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_cron;
RESET client_min_messages;
SELECT cron.schedule_in_database('regstage-cleanup', '* * * * *',
	'SELECT * FROM regstage.cleanup_orphans()', :'regdb') > 0 AS scheduled;
DO $$
BEGIN
	FOR i IN 1..300 LOOP
		PERFORM 1 FROM cron.job_run_details d JOIN cron.job j USING (jobid)
		 WHERE j.jobname = 'regstage-cleanup' AND d.status IN ('succeeded', 'failed');
		EXIT WHEN FOUND;
		PERFORM pg_sleep(0.5);
	END LOOP;
END
$$;
SELECT d.status, d.database = :'regdb' AS in_our_database
  FROM cron.job_run_details d JOIN cron.job j USING (jobid)
 WHERE j.jobname = 'regstage-cleanup' ORDER BY d.runid LIMIT 1;
SELECT cron.unschedule('regstage-cleanup');
\c :regdb
-- the job deleted the old orphan and kept the recent one
SELECT format('cd %s && find . -type f | sort', current_setting('regstage.upload_dir')) AS cmd \gset
CREATE TEMP TABLE sh_out (line text);
COPY sh_out FROM PROGRAM :'cmd';
SELECT * FROM sh_out;
ALTER DATABASE :"regdb" RESET regstage.upload_dir;
