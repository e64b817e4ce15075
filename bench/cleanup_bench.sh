# bench/cleanup_bench.sh — sourced by bench/run.sh: cleanup_orphans() over
# 100k and 1M files (half of them referenced), against a script's way (cleanup_baseline.py).
bench_cleanup() {
	local dir=$W/uploads-cleanup
	printf '\n## cleanup_orphans(): scan of upload_dir, half the files referenced\n\n'
	printf '| files | cleanup_orphans s | of which in the kernel | files/s | backend private memory growth | baseline s | of which in the kernel | baseline files/s | baseline RSS | speed-up |\n|---|---|---|---|---|---|---|---|---|---|\n'
	for nfiles in ${BENCH_CLEANUP_FILES:-100000 1000000}; do
		local users=$((nfiles / 2))
		rm -rf "$dir"; server_owned_dir 0750 "$dir"
		python3 - "$dir" "$users" <<'PY'
import os, sys
root, users = sys.argv[1], int(sys.argv[2])
uid = gid = None
if os.geteuid() == 0:
    import pwd
    pw = pwd.getpwnam("postgres"); uid, gid = pw.pw_uid, pw.pw_gid
for t in range(1, users + 1):
    d = os.path.join(root, str(t))
    os.mkdir(d)
    for name in ("passport-%016x.jpg" % t, "selfie-%016x.jpg" % t):
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o640))
    if uid is not None:
        os.chown(d, uid, gid)
PY
		[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$dir"
		# every other user is registered: its two files are referenced
		psql -qAtX -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET client_min_messages = warning;
TRUNCATE regstage.users CASCADE;
INSERT INTO regstage.users (telegram_id, full_name, phone, language)
	SELECT t, 'Bench', '+79160000000', 'en' FROM generate_series(1, $users, 2) t;
INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256)
	SELECT u.id, d, 'AgAC', u.telegram_id || '/' || d || '-' || lpad(to_hex(u.telegram_id), 16, '0') || '.jpg', 1, repeat('a', 64)
	  FROM regstage.users u, (VALUES ('passport'), ('selfie')) v(d);
VACUUM ANALYZE regstage.documents;
SQL
		sync	# the new inodes written out: no writeback during either run
		find "$dir" >/dev/null	# both runs start from a warm cache
		local out
		out=$(psql -qAtX <<SQL
SET regstage.upload_dir = '$dir';
SELECT pg_backend_pid() AS pid \gset
\setenv BACKEND_PID :pid
\! (while grep RssAnon /proc/\$BACKEND_PID/status; do sleep 0.05; done) >$W/rss-samples 2>/dev/null &
\! awk '{print \$15}' /proc/\$BACKEND_PID/stat >$W/stime0
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT * FROM regstage.cleanup_orphans(max_age => '1000 days', tmp_max_age => '1000 days');
SELECT round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 2);
\! awk '{print \$15}' /proc/\$BACKEND_PID/stat >$W/stime1
SQL
)
		# private memory of the backend (RssAnon; shared buffers are not its own), sampled every 50 ms
		local hwm0 hwm1 secs
		hwm0=$(head -1 "$W/rss-samples" | awk '{print $2}')
		hwm1=$(awk '{print $2}' "$W/rss-samples" | sort -n | tail -1)
		secs=$(echo "$out" | tail -1)
		# the backend's system CPU time (field 15 of /proc/PID/stat, in clock ticks)
		local ksecs
		ksecs=$(python3 -c "import os; print('%.2f' % (($(cat "$W/stime1") - $(cat "$W/stime0")) / os.sysconf('SC_CLK_TCK')))")
		find "$dir" >/dev/null	# both runs start from a warm cache
		read -r bfiles bsecs brss _ bksecs < <(python3 "$SRC/bench/cleanup_baseline.py" "$dir")
		local fsecs
		fsecs=$( { /usr/bin/time -f %e find "$dir" -type f >/dev/null; } 2>&1 | tail -1)
		local lsecs
		lsecs=$("$W/bin/list_floor" "$dir" | awk '{print $3}')
		FIND_NOTE+=("$nfiles files: find -type f alone takes $fsecs s; listing every directory and nothing else (bench/list_floor.c) $lsecs s")
		printf '| %d | %s | %s | %.0f | %d MB | %s | %s | %.0f | %d MB | %.1fx |\n' "$nfiles" "$secs" "$ksecs" \
			"$(python3 -c "print($nfiles / $secs)")" $(((hwm1 - hwm0) / 1024)) "$bsecs" "$bksecs" \
			"$(python3 -c "print($bfiles / $bsecs)")" $((brss / 1024)) "$(python3 -c "print($bsecs / $secs)")"
		# Even with no time outside the kernel, a full scan cannot beat baseline s / kernel s.
		CEILING+=("$nfiles files: a full scan that spent no time outside the kernel would be at most $(python3 -c "print('%.1f' % ($bsecs / max($ksecs, 0.01)))")x the baseline ($bsecs s / $ksecs s of kernel work); 10x would mean $(python3 -c "print('%.2f' % ($bsecs / 10))") s")
		RATIO+=("cleanup, $nfiles files: $(python3 -c "print('%.1f' % ($bsecs / $secs))")x the baseline's files/s (target >= 10x at 1M), backend memory growth $(((hwm1 - hwm0) / 1024)) MB (target <= 64 MB)")
		rm -rf "$dir"
	done
}
bench_cleanup
