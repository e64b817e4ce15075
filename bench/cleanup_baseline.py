#!/usr/bin/env python3
"""The straightforward way of finding orphans, as the baseline for
cleanup_orphans(): list the files under the upload folder, load every
referenced path from the database, take the set difference, and look at the
age (stat) of the orphans only (a script-level cleanup of the kind the
extension replaces).  Scan only (nothing is deleted), like the measured
cleanup_orphans(max_age => '1000 days') run.

usage: cleanup_baseline.py UPLOAD_DIR   (PG* environment for psql)
prints: files  seconds  peak_rss_kb  orphans  kernel_seconds (its system CPU time)
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
files = set()
for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    for name in filenames:
        files.add(name if rel == "." else rel + "/" + name)
now = time.time()
orphans = 0
for rel in files - referenced:
    st = os.stat(os.path.join(root, rel))
    if now - st.st_mtime > 1000 * 86400:
        orphans += 1
elapsed = time.time() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(len(files), "%.2f" % elapsed, usage.ru_maxrss, orphans, "%.2f" % usage.ru_stime)
