#!/usr/bin/env python3
"""The seed's way of finding orphans, as the baseline for cleanup_orphans():
walk the upload folder, stat every file, load every referenced path from the
database, take the set difference.  Scan only (nothing is deleted), like the
measured cleanup_orphans(max_age => '1000 days') run.

usage: cleanup_baseline.py UPLOAD_DIR   (PG* environment for psql)
prints: files  seconds  peak_rss_kb  orphans
"""
import os
import resource
import subprocess
import sys
import time

root = sys.argv[1]
t0 = time.time()
referenced = set(subprocess.run(["psql", "-AtXc", "SELECT file_path FROM regstage.documents"],
                                check=True, capture_output=True, text=True).stdout.split("\n"))
now = time.time()
files = orphans = 0
for dirpath, dirnames, filenames in os.walk(root):
    for name in filenames:
        path = os.path.join(dirpath, name)
        st = os.stat(path)
        files += 1
        rel = os.path.relpath(path, root)
        if rel not in referenced and now - st.st_mtime > 1000 * 86400:
            orphans += 1
elapsed = time.time() - t0
print(files, "%.2f" % elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, orphans)
