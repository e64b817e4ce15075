/*
 * commit_bench — drives regstage.commit_registration() from C concurrent
 * clients, or the "floor": the same inserts (with the content's SHA-256) and
 * the same file writes (with fsync) done directly, with no Redis and no HTTP.
 *
 *   commit_bench commit   CONNINFO N CLIENTS FIRST_TID
 *   commit_bench floor    CONNINFO N CLIENTS FIRST_TID SIZE UPLOAD_DIR
 *   commit_bench s3floor  BUCKET_URL N CLIENTS FIRST_TID SIZE
 *
 * s3floor is the object store's floor: per registration two unsigned PUTs
 * of SIZE bytes to BUCKET_URL/<tid>/{passport,selfie} over keep-alive
 * connections, no database: what the S3 server takes at most.
 *
 * Prints: ops/s, p50 ms, p99 ms, peak backend RSS (VmHWM, kB; 0 for s3floor).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>
#include <openssl/evp.h>

static const char *mode, *conninfo, *upload_dir;
static int	nops, nclients;
static long long first_tid;
static long size_bytes;
static double *lat_ms;
static int	next_op;
static long max_hwm_kb;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void
die(const char *what, PGconn *c)
{
	fprintf(stderr, "commit_bench: %s: %s\n", what, c ? PQerrorMessage(c) : strerror(errno));
	exit(1);
}

static void
exec_ok(PGconn *c, const char *sql, int nparams, const char *const *params, ExecStatusType want)
{
	PGresult   *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(r) != want)
		die(sql, c);
	PQclear(r);
}

static void
write_file(const char *dir, const char *name, const char *buf)
{
	char		path[8300];
	int			fd;
	long		off = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
	if (fd < 0)
		die(path, NULL);
	while (off < size_bytes)
	{
		ssize_t		w = write(fd, buf + off, size_bytes - off);

		if (w < 0)
			die("write", NULL);
		off += w;
	}
	if (fsync(fd) != 0 || close(fd) != 0)
		die("fsync", NULL);
}

/* The row carries the content's SHA-256, so the floor computes it too. */
static void
sha256_hex(const char *buf, long len, char *hex)
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	if (!EVP_Digest(buf, len, md, &mdlen, EVP_sha256(), NULL))
		die("sha256", NULL);
	for (unsigned int i = 0; i < mdlen; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
}

/* The floor: what a commit must do at least, without Redis or the Bot API. */
static void
floor_op(PGconn *c, long long tid, const char *buf)
{
	char		tidbuf[32], dir[4096], rel[128], idbuf[32];
	const char *p[6];
	PGresult   *r;
	int			dfd;

	snprintf(tidbuf, sizeof(tidbuf), "%lld", tid);
	exec_ok(c, "BEGIN", 0, NULL, PGRES_COMMAND_OK);
	p[0] = tidbuf;
	r = PQexecParams(c, "INSERT INTO regstage.users (telegram_id, full_name, phone, language) "
					 "VALUES ($1, 'Bench User', '+79160000000', 'en') RETURNING id", 1, NULL, p, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		die("insert user", c);
	snprintf(idbuf, sizeof(idbuf), "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	snprintf(dir, sizeof(dir), "%s/floor-%lld", upload_dir, tid);
	if (mkdir(dir, 0750) != 0 && errno != EEXIST)
		die(dir, NULL);
	for (int d = 0; d < 2; d++)
	{
		const char *type = d == 0 ? "passport" : "selfie";
		char		sha[65];

		snprintf(rel, sizeof(rel), "floor-%lld/%s.jpg", tid, type);
		write_file(dir, d == 0 ? "passport.jpg" : "selfie.jpg", buf);
		sha256_hex(buf, size_bytes, sha);
		p[0] = idbuf;
		p[1] = type;
		p[2] = "AgACbench";
		p[3] = rel;
		{
			char		sz[32];

			snprintf(sz, sizeof(sz), "%ld", size_bytes);
			p[4] = sz;
			p[5] = sha;
			exec_ok(c, "INSERT INTO regstage.documents (user_id, doc_type, telegram_file_id, file_path, size_bytes, sha256) "
					"VALUES ($1, $2, $3, $4, $5, $6)", 6, p, PGRES_COMMAND_OK);
		}
	}
	/* durable names: the new directory's entries, and its own entry in upload_dir */
	dfd = open(dir, O_RDONLY);
	if (dfd < 0 || fsync(dfd) != 0)
		die("fsync dir", NULL);
	close(dfd);
	dfd = open(upload_dir, O_RDONLY);
	if (dfd < 0 || fsync(dfd) != 0)
		die("fsync upload_dir", NULL);
	close(dfd);
	exec_ok(c, "COMMIT", 0, NULL, PGRES_COMMAND_OK);
}

static size_t
discard_body(char *ptr __attribute__((unused)), size_t size, size_t nmemb, void *ud __attribute__((unused)))
{
	return size * nmemb;
}

/* The object store's floor: the two PUTs of one registration. */
static void
s3floor_op(CURL *e, long long tid, const char *buf)
{
	for (int d = 0; d < 2; d++)
	{
		char		url[8300];
		long		status = 0;
		CURLcode	rc;

		snprintf(url, sizeof(url), "%s/floor/%lld/%s", conninfo, tid, d == 0 ? "passport" : "selfie");
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, buf);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) size_bytes);
		curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard_body);
		rc = curl_easy_perform(e);
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
		if (rc != CURLE_OK || status != 200)
		{
			fprintf(stderr, "commit_bench: PUT %s: %s, HTTP %ld\n", url, curl_easy_strerror(rc), status);
			exit(1);
		}
	}
}

static void *
s3client(void *arg __attribute__((unused)))
{
	CURL	   *e = curl_easy_init();
	char	   *buf = malloc(size_bytes);
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/octet-stream");

	if (e == NULL || buf == NULL || h == NULL)
		die("out of memory", NULL);
	for (long i = 0; i < size_bytes; i++)
		buf[i] = (char) (i * 7919);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	for (;;)
	{
		int			op;
		double		t0;

		pthread_mutex_lock(&mu);
		op = next_op < nops ? next_op++ : -1;
		pthread_mutex_unlock(&mu);
		if (op < 0)
			break;
		t0 = now_ms();
		s3floor_op(e, first_tid + op, buf);
		lat_ms[op] = now_ms() - t0;
	}
	curl_easy_cleanup(e);
	curl_slist_free_all(h);
	free(buf);
	return NULL;
}

static void *
client(void *arg __attribute__((unused)))
{
	PGconn	   *c = PQconnectdb(conninfo);
	char	   *buf = NULL;
	PGresult   *r;
	char		path[64], line[256];
	FILE	   *f;

	if (PQstatus(c) != CONNECTION_OK)
		die("connect", c);
	if (strcmp(mode, "floor") == 0)
	{
		buf = malloc(size_bytes);
		for (long i = 0; i < size_bytes; i++)
			buf[i] = (char) (i * 7919);
	}
	for (;;)
	{
		int			op;
		double		t0;

		pthread_mutex_lock(&mu);
		op = next_op < nops ? next_op++ : -1;
		pthread_mutex_unlock(&mu);
		if (op < 0)
			break;
		t0 = now_ms();
		if (buf)
			floor_op(c, first_tid + op, buf);
		else
		{
			char		tidbuf[32];
			const char *p[1] = {tidbuf};

			snprintf(tidbuf, sizeof(tidbuf), "%lld", first_tid + op);
			exec_ok(c, "SELECT regstage.commit_registration($1)", 1, p, PGRES_TUPLES_OK);
		}
		lat_ms[op] = now_ms() - t0;
	}
	/* peak RSS of this client's backend (same machine) */
	r = PQexec(c, "SELECT pg_backend_pid()");
	snprintf(path, sizeof(path), "/proc/%s/status", PQgetvalue(r, 0, 0));
	PQclear(r);
	if ((f = fopen(path, "r")) != NULL)
	{
		while (fgets(line, sizeof(line), f))
		{
			long		kb;

			if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
			{
				pthread_mutex_lock(&mu);
				if (kb > max_hwm_kb)
					max_hwm_kb = kb;
				pthread_mutex_unlock(&mu);
			}
		}
		fclose(f);
	}
	PQfinish(c);
	free(buf);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a, y = *(const double *) b;

	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	pthread_t  *t;
	double		t0, elapsed;

	if (argc < 6)
	{
		fprintf(stderr, "usage: commit_bench commit|floor|s3floor CONNINFO|BUCKET_URL N CLIENTS FIRST_TID [SIZE [UPLOAD_DIR]]\n");
		return 2;
	}
	mode = argv[1];
	conninfo = argv[2];
	nops = atoi(argv[3]);
	nclients = atoi(argv[4]);
	first_tid = atoll(argv[5]);
	if (strcmp(mode, "floor") == 0)
	{
		if (argc < 8)
			return 2;
		size_bytes = atol(argv[6]);
		upload_dir = argv[7];
	}
	if (strcmp(mode, "s3floor") == 0)
	{
		if (argc < 7)
			return 2;
		size_bytes = atol(argv[6]);
		curl_global_init(CURL_GLOBAL_ALL);
	}
	lat_ms = calloc(nops, sizeof(double));
	t = calloc(nclients, sizeof(pthread_t));
	t0 = now_ms();
	for (int i = 0; i < nclients; i++)
		pthread_create(&t[i], NULL, strcmp(mode, "s3floor") == 0 ? s3client : client, NULL);
	for (int i = 0; i < nclients; i++)
		pthread_join(t[i], NULL);
	elapsed = now_ms() - t0;
	qsort(lat_ms, nops, sizeof(double), cmp_double);
	printf("%.1f %.1f %.1f %ld\n", nops / (elapsed / 1000.0), lat_ms[nops / 2],
		   lat_ms[(int) (nops * 0.99)], max_hwm_kb);
	return 0;
}
