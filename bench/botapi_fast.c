/*
 * botapi_fast — a minimal Bot API stand-in in C for the commit and relay
 * benchmarks, so that the stand-in does not take the CPU PostgreSQL and the
 * relay are measured on (the Python one in test/standin/ is the functional
 * stand-in).
 *
 *   botapi_fast PORT TOKEN
 *
 * POST /bot<token>/getFile {"file_id": "..."}  -> file_path documents/file_<file_id>.jpg
 * GET  /file/bot<token>/documents/file_<file_id>.jpg -> the content
 * file_id directives as in the Python stand-in: bytes<N>, delay<ms>, dldelay<ms>.
 *
 *   botapi_fast PORT TOKEN UPDATES CHATS FIRST_TID [RATE]   (the relay benchmark)
 *
 * also serves UPDATES typed answers over getUpdates from CHATS chats, counts
 * the answers (the sendMessage with a keyboard each update gets), and
 * reports the count at GET /_bench/sent and the reply
 * latency at GET /_bench/latency ("p50 p99" in ms: from the first time an
 * update was served by getUpdates to its reply's sendMessage; the k-th reply
 * of a chat answers that chat's k-th update); GET /_bench/latency_others
 * leaves out the first chat's replies (the one the benchmark blocks).  With
 * RATE, update k becomes available (k - 1) / RATE seconds after the first
 * getUpdates, as users send them, and its latency counts from then: a relay
 * that stops fetching while one update is stuck shows it.
 * One thread per keep-alive connection.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static const char *token;
static char *content;			/* deterministic bytes, JPEG magic first */
#define CONTENT_MAX (32 * 1024 * 1024)

static long
directive(const char *file_id, const char *name, long def)
{
	char		pat[32];
	const char *p;

	snprintf(pat, sizeof(pat), "%s", name);
	for (p = file_id; (p = strstr(p, pat)) != NULL; p++)
		if ((p == file_id || p[-1] == '_') && p[strlen(pat)] >= '0' && p[strlen(pat)] <= '9')
			return atol(p + strlen(pat));
	return def;
}

/* Header and body in one writev, as a real server sends them: one wakeup of the reader, not two. */
static int
write_response(int fd, const char *hdr, const char *body, size_t body_len)
{
	struct iovec iov[2] = {{(void *) hdr, strlen(hdr)}, {(void *) body, body_len}};
	int			n = 2;
	struct iovec *v = iov;

	while (n > 0)
	{
		ssize_t		w = writev(fd, v, n);

		if (w <= 0)
			return -1;
		while (n > 0 && (size_t) w >= v->iov_len)
		{
			w -= v->iov_len;
			v++;
			n--;
		}
		if (n > 0)
		{
			v->iov_base = (char *) v->iov_base + w;
			v->iov_len -= w;
		}
	}
	return 0;
}

/*
 * The relay benchmark's updates: update_id 1..updates_total, a typed answer
 * ("Ivan Petrov") from chat first_tid + (update_id - 1) % chats.  getUpdates
 * honours offset and limit; with nothing left it waits a second and answers
 * empty, like a long poll that timed out.
 */
static long updates_total = 0;
static long updates_chats = 1;
static long long updates_first_tid = 0;
static atomic_long messages_sent;
static double updates_rate = 0; /* updates a second become available; 0: all at once */
static double pace_start = 0;	/* paced: the first getUpdates */
static pthread_mutex_t pace_lock = PTHREAD_MUTEX_INITIALIZER;
static double *served_at;		/* per update_id: first served (paced: available), seconds */
static double *latency;			/* per update_id: its reply's latency, seconds */
static atomic_long *replies;	/* per chat: replies so far */

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
record_reply(const char *body)
{
	const char *p = strstr(body, "\"chat_id\"");
	long long	chat;
	long		idx;
	long		k;
	long		id;

	if (p == NULL || (p = strchr(p, ':')) == NULL || updates_total == 0)
		return;
	chat = strtoll(p + 1, NULL, 10);
	idx = (long) (chat - updates_first_tid);
	if (idx < 0 || idx >= updates_chats)
		return;
	k = atomic_fetch_add(&replies[idx], 1);
	id = idx + 1 + k * updates_chats;
	if (id <= updates_total && served_at[id] > 0)
		latency[id] = now_s() - served_at[id];
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a, y = *(const double *) b;

	return x < y ? -1 : x > y;
}

/* p50 and p99 of the replies' latency; others: leave out the first chat's */
static void
latency_text(char *out, size_t outlen, bool others)
{
	double	   *v = malloc(sizeof(double) * (updates_total + 1));
	long		n = 0;

	for (long id = 1; v && id <= updates_total; id++)
		if (latency[id] > 0 && !(others && (id - 1) % updates_chats == 0))
			v[n++] = latency[id];
	if (n == 0)
		snprintf(out, outlen, "0 0");
	else
	{
		qsort(v, n, sizeof(double), cmp_double);
		snprintf(out, outlen, "%.1f %.1f", v[n / 2] * 1000, v[(long) ((n - 1) * 0.99)] * 1000);
	}
	free(v);
}

static long
json_number(const char *body, const char *key, long def)
{
	const char *p = strstr(body, key);

	if (p == NULL || (p = strchr(p + strlen(key), ':')) == NULL)
		return def;
	return strtol(p + 1, NULL, 10);
}

static int
serve_get_updates(int fd, const char *body)
{
	long		offset = json_number(body, "\"offset\"", 0);
	long		limit = json_number(body, "\"limit\"", 100);
	long		first = offset > 1 ? offset : 1;
	char	   *out = malloc(64 + (limit > 0 ? limit : 1) * 256);
	size_t		len;
	char		hdr[256];
	int			rc;

	if (out == NULL)
		return -1;
	if (first > updates_total)
		sleep(1);
	else if (updates_rate > 0)
	{
		/* paced: wait (a long poll) until the first one asked for is there */
		double		wait;

		pthread_mutex_lock(&pace_lock);
		if (pace_start == 0)
			pace_start = now_s();
		pthread_mutex_unlock(&pace_lock);
		wait = pace_start + (first - 1) / updates_rate - now_s();
		if (wait > 0)
			usleep((useconds_t) (wait > 1 ? 1e6 : wait * 1e6));
	}
	len = sprintf(out, "{\"ok\":true,\"result\":[");
	for (long id = first; id <= updates_total && id < first + limit; id++)
	{
		long long	chat = updates_first_tid + (id - 1) % updates_chats;

		if (updates_rate > 0)
		{
			double		avail = pace_start + (id - 1) / updates_rate;

			if (avail > now_s())
				break;
			served_at[id] = avail;	/* a user sent it then */
		}
		else if (served_at[id] == 0)
			served_at[id] = now_s();
		len += sprintf(out + len, "%s{\"update_id\":%ld,\"message\":{\"message_id\":%ld,\"date\":1,"
					   "\"text\":\"Ivan Petrov\",\"from\":{\"id\":%lld,\"first_name\":\"B\"},"
					   "\"chat\":{\"id\":%lld,\"type\":\"private\"}}}",
					   id == first ? "" : ",", id, id, chat, chat);
	}
	len += sprintf(out + len, "]}");
	snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", len);
	rc = write_response(fd, hdr, out, len);
	free(out);
	return rc;
}

static void *
serve(void *arg)
{
	int			fd = (int) (long) arg;
	char		req[65536];
	size_t		have = 0;

	for (;;)
	{
		char	   *end, *cl, *body;
		size_t		body_len = 0, total;
		char		path[1024], method[8], file_id[512], hdr[512], json[1024];

		while ((end = memmem(req, have, "\r\n\r\n", 4)) == NULL)
		{
			ssize_t		r = read(fd, req + have, sizeof(req) - have - 1);

			if (r <= 0)
				goto done;
			have += r;
		}
		req[have] = '\0';
		if (sscanf(req, "%7s %1023s", method, path) != 2)
			goto done;
		cl = strcasestr(req, "\r\nContent-Length:");
		if (cl && cl < end)
			body_len = strtoul(cl + 17, NULL, 10);
		body = end + 4;
		total = (body - req) + body_len;
		while (have < total)
		{
			ssize_t		r = read(fd, req + have, sizeof(req) - have - 1);

			if (r <= 0)
				goto done;
			have += r;
		}
		req[have] = '\0';

		file_id[0] = '\0';
		if (strcmp(method, "POST") == 0 && strstr(path, "/getUpdates") && strstr(path, token))
		{
			if (serve_get_updates(fd, body))
				goto done;
		}
		else if (strcmp(method, "POST") == 0 && strstr(path, "/sendMessage") && strstr(path, token))
		{
			const char *ok = "{\"ok\":true,\"result\":{\"message_id\":1,\"date\":1,\"chat\":{\"id\":1,\"type\":\"private\"}}}";

			/*
			 * An update's answer is its reply with a keyboard ("Please share
			 * your phone"); a typed name at the phone step is also told it
			 * is not a phone number first.  One answer per update.
			 */
			if (strstr(body, "\"reply_markup\""))
			{
				atomic_fetch_add(&messages_sent, 1);
				record_reply(body);
			}
			snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
					 strlen(ok));
			if (write_response(fd, hdr, ok, strlen(ok)))
				goto done;
		}
		else if (strcmp(method, "GET") == 0 && (strcmp(path, "/_bench/latency") == 0 ||
												strcmp(path, "/_bench/latency_others") == 0))
		{
			latency_text(json, sizeof(json), strcmp(path, "/_bench/latency_others") == 0);
			snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", strlen(json));
			if (write_response(fd, hdr, json, strlen(json)))
				goto done;
		}
		else if (strcmp(method, "GET") == 0 && strcmp(path, "/_bench/sent") == 0)
		{
			snprintf(json, sizeof(json), "%ld", (long) atomic_load(&messages_sent));
			snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", strlen(json));
			if (write_response(fd, hdr, json, strlen(json)))
				goto done;
		}
		else if (strcmp(method, "POST") == 0 && strstr(path, "/getFile") && strstr(path, token))
		{
			char	   *q = strstr(body, "\"file_id\"");

			if (q && (q = strchr(q + 9, '"')) != NULL)
				sscanf(q + 1, "%511[^\"]", file_id);
			usleep(directive(file_id, "delay", 0) * 1000);
			snprintf(json, sizeof(json),
					 "{\"ok\":true,\"result\":{\"file_id\":\"%s\",\"file_unique_id\":\"u\",\"file_size\":%ld,"
					 "\"file_path\":\"documents/file_%s.jpg\"}}", file_id, directive(file_id, "bytes", 2048), file_id);
			snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
					 strlen(json));
			if (write_response(fd, hdr, json, strlen(json)))
				goto done;
		}
		else if (strcmp(method, "GET") == 0 && strstr(path, token) &&
				 sscanf(path, "/file/bot%*[^/]/documents/file_%511[^.].jpg", file_id) == 1)
		{
			long		n = directive(file_id, "bytes", 2048);

			if (n > CONTENT_MAX)
				n = CONTENT_MAX;
			usleep(directive(file_id, "dldelay", 0) * 1000);
			snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %ld\r\n\r\n", n);
			if (write_response(fd, hdr, content, n))
				goto done;
		}
		else
		{
			const char *nf = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

			if (write_response(fd, nf, "", 0))
				goto done;
		}
		memmove(req, req + total, have - total);
		have -= total;
	}
done:
	close(fd);
	return NULL;
}

int
main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int			one = 1, ls;

	if (argc != 3 && argc != 6 && argc != 7)
	{
		fprintf(stderr, "usage: botapi_fast PORT TOKEN [UPDATES CHATS FIRST_TID [RATE]]\n");
		return 2;
	}
	token = argv[2];
	if (argc == 7)
		updates_rate = atof(argv[6]);
	if (argc >= 6)
	{
		updates_total = atol(argv[3]);
		updates_chats = atol(argv[4]) > 0 ? atol(argv[4]) : 1;
		updates_first_tid = atoll(argv[5]);
		served_at = calloc(updates_total + 1, sizeof(double));
		latency = calloc(updates_total + 1, sizeof(double));
		replies = calloc(updates_chats, sizeof(atomic_long));
	}
	content = malloc(CONTENT_MAX);
	for (long i = 0; i < CONTENT_MAX; i++)
		content[i] = (char) (i * 2654435761u >> 13);
	memcpy(content, "\xff\xd8\xff\xe0", 4);
	addr.sin_port = htons(atoi(argv[1]));
	ls = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *) &addr, sizeof(addr)) != 0 || listen(ls, 1024) != 0)
	{
		perror("botapi_fast");
		return 1;
	}
	for (;;)
	{
		int			fd = accept(ls, NULL, NULL);
		pthread_t	t;
		pthread_attr_t attr;

		if (fd < 0)
			continue;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&attr, 256 * 1024);
		if (pthread_create(&t, &attr, serve, (void *) (long) fd) != 0)
			close(fd);
		pthread_attr_destroy(&attr);
	}
}
