"""What the s3 suite's two scripts (s3_suite.py, s3_commit.py) share: the
servers test/scripts/s3.sh started, psql runs whose whole output is kept in
outputs.log (the secrecy checks read it), and plain HTTP fetches."""
import os
import subprocess
import urllib.error
import urllib.request

D = os.environ["S3_SUITE_DIR"]
S3RVER = "http://127.0.0.1:%s" % os.environ["S3_SUITE_S3RVER_PORT"]
STANDIN = "http://127.0.0.1:%s" % os.environ["S3_SUITE_STANDIN_PORT"]
SECRET_FILE = os.path.join(D, "keys", "secret")
outputs = open(os.path.join(D, "outputs.log"), "a")
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def psql(sql, db, user="postgres", stop=True):
    """Run a script; (rc, stdout, stderr), all of it kept in outputs.log."""
    cmd = ["psql", "-X", "-qAt", "-v", "VERBOSITY=verbose", "-d", db, "-U", user, "-f", "-"]
    if stop:
        cmd[1:1] = ["-v", "ON_ERROR_STOP=1"]
    p = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=300)
    outputs.write("-- %s\n%s\n%s\n%s\n" % (db, sql, p.stdout, p.stderr))
    outputs.flush()
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def fetch(url):
    """(status, body) of a GET, error statuses included."""
    try:
        with http.open(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
