/*
 * webhook.c — webhook mode: a small HTTP/1.1 server for Telegram's POSTs.
 *
 * One thread, poll() over the listening socket and at most WH_MAX_CONNS
 * connections (more wait in the backlog).  A request is read whole
 * (headers up to 8 KiB, a Content-Length body up to 1 MiB; no chunked
 * bodies), its X-Telegram-Bot-Api-Secret-Token compared in constant time
 * with TELEGRAM_WEBHOOK_SECRET (wrong or missing: 401, nothing stored),
 * and the update stored with store_updates; 200 is answered only after that
 * committed, 503 when it could not be (Telegram then delivers it again).
 * A connection idle or slow for WH_TIMEOUT_MS is closed.  Keep-alive is
 * honoured.  Any number of relays may take webhooks for one database: the
 * inbox ignores an update_id stored before, and process_next orders chats.
 */
#define _GNU_SOURCE				/* memmem, accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "db.h"
#include "relay.h"
#include "scan.h"

#define WH_MAX_CONNS 64
#define WH_HEAD_MAX 8192
#define WH_BODY_MAX (1024 * 1024)
#define WH_TIMEOUT_MS 10000
#define WH_RECONNECT_MS 1000	/* a down database is tried at most this often */

typedef struct WhConn
{
	int			fd;
	char	   *buf;
	size_t		len;
	size_t		cap;
	long		deadline;
} WhConn;

static WhConn conns[WH_MAX_CONNS];
static PGconn *db;
static long next_connect_at;

static int
listen_on(const char *spec)
{
	char		host[256];
	const char *colon = strrchr(spec, ':');
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *ai;
	int			fd = -1;
	int			one = 1;
	int			rc;

	if (colon == NULL || colon == spec || (size_t) (colon - spec) >= sizeof(host) || colon[1] == '\0')
	{
		relay_log(LOG_ERROR, "RELAY_WEBHOOK_LISTEN \"%s\" is not host:port", spec);
		return -1;
	}
	memcpy(host, spec, colon - spec);
	host[colon - spec] = '\0';
	if (host[0] == '[' && host[strlen(host) - 1] == ']')
	{
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	if ((rc = getaddrinfo(host, colon + 1, &hints, &ai)) != 0)
	{
		relay_log(LOG_ERROR, "RELAY_WEBHOOK_LISTEN \"%s\": %s", spec, gai_strerror(rc));
		return -1;
	}
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
		bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0)
	{
		relay_log(LOG_ERROR, "cannot listen on %s: %s", spec, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static void
conn_close(WhConn *c)
{
	close(c->fd);
	free(c->buf);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

static void
respond(WhConn *c, int status, const char *reason, bool close_after)
{
	char		out[256];
	int			n = snprintf(out, sizeof(out),
							 "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: 2\r\n%s\r\n{}",
							 status, reason, close_after ? "Connection: close\r\n" : "");

	/* a small answer fits the socket buffer; a peer that reads nothing loses it */
	if (send(c->fd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
		close_after = true;
	if (close_after)
		conn_close(c);
}

/* constant time in the secret's content: every byte of the longer one is looked at */
static bool
secret_ok(const char *given, size_t glen)
{
	const char *want = relay_config.webhook_secret;
	size_t		wlen = strlen(want);
	size_t		n = glen > wlen ? glen : wlen;
	unsigned char diff = glen != wlen;

	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char) ((i < glen ? given[i] : 0) ^ (i < wlen ? want[i] : 0));
	return diff == 0;
}

/* The value of a header in [head, end), or NULL; *vlen its length. */
static const char *
header(const char *head, const char *end, const char *name, size_t *vlen)
{
	size_t		nlen = strlen(name);
	const char *p = memchr(head, '\n', end - head);	/* past the request line */

	while (p && ++p < end)
	{
		const char *eol = memchr(p, '\n', end - p);
		const char *v;

		if (eol == NULL)
			eol = end;
		if ((size_t) (eol - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0)
		{
			v = p + nlen + 1;
			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			*vlen = eol - v;
			while (*vlen > 0 && (v[*vlen - 1] == '\r' || v[*vlen - 1] == ' ' || v[*vlen - 1] == '\t'))
				(*vlen)--;
			return v;
		}
		p = eol;
	}
	return NULL;
}

/* Store one update: 200 once committed, 503 when the database cannot take it. */
static int
store(const char *body, size_t len, int64_t id)
{
	char		err[512];
	int			stored;

	if (!db_usable(db))
	{
		if (relay_now_ms() < next_connect_at)
			return 503;
		next_connect_at = relay_now_ms() + WH_RECONNECT_MS;
		if (db_try(&db, NULL, "webhook") == NULL)
			return 503;
	}
	stored = db_store_updates(db, 1, &id, &body, &len, err, sizeof(err));
	if (stored < 0)
	{
		relay_log(LOG_ERROR, "webhook: store_updates failed for update %lld, answered 503: %s", (long long) id, err);
		if (!db_usable(db))
			db_drop(&db);
		return 503;
	}
	relay_log(LOG_DEBUG, "webhook: update %lld stored (%s)", (long long) id, stored ? "new" : "seen before");
	return 200;
}

/*
 * Handle what the connection has read: whole requests are answered.
 * False when the connection was closed.
 */
static bool
serve(WhConn *c)
{
	while (c->fd >= 0)
	{
		char	   *eoh = c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
		size_t		head_len;
		const char *v;
		size_t		vlen;
		long		clen = 0;
		bool		close_after;
		int64_t		id;
		int			status;

		if (eoh == NULL)
		{
			if (c->len > WH_HEAD_MAX)
				respond(c, 431, "Request Header Fields Too Large", true);
			return c->fd >= 0;
		}
		head_len = eoh + 4 - c->buf;
		if ((v = header(c->buf, eoh + 2, "Transfer-Encoding", &vlen)) != NULL)
		{
			respond(c, 411, "Length Required", true);
			return false;
		}
		if ((v = header(c->buf, eoh + 2, "Content-Length", &vlen)) != NULL)
		{
			char		num[24];

			if (vlen == 0 || vlen >= sizeof(num) || strspn(v, "0123456789") < vlen)
			{
				respond(c, 400, "Bad Request", true);
				return false;
			}
			memcpy(num, v, vlen);
			num[vlen] = '\0';
			clen = strtol(num, NULL, 10);
			if (clen > WH_BODY_MAX)
			{
				respond(c, 413, "Payload Too Large", true);
				return false;
			}
		}
		if (c->len < head_len + (size_t) clen)
			return true;		/* the body is still coming */
		v = header(c->buf, eoh + 2, "Connection", &vlen);
		close_after = (v && vlen == 5 && strncasecmp(v, "close", 5) == 0) ||
			memmem(c->buf, eoh - c->buf, "HTTP/1.0", 8) != NULL;
		if (strncmp(c->buf, "POST ", 5) != 0)
			status = 405;
		else if ((v = header(c->buf, eoh + 2, "X-Telegram-Bot-Api-Secret-Token", &vlen)) == NULL ||
				 !secret_ok(v, vlen))
			status = 401;
		else if (!scan_update_id(c->buf + head_len, clen, &id))
		{
			char		shown[400];

			relay_printable(c->buf + head_len, clen > 120 ? 120 : clen, shown, sizeof(shown));
			relay_log(LOG_ERROR, "webhook: an update without an update_id cannot be stored (%ld bytes): %s",
					  clen, shown);
			status = 400;
		}
		else
			status = store(c->buf + head_len, clen, id);
		if (status == 401)
			relay_log(LOG_ERROR, "webhook: a request without the right secret token, refused (401)");
		respond(c, status, status == 200 ? "OK" : status == 401 ? "Unauthorized" : status == 405 ? "Method Not Allowed" :
				status == 400 ? "Bad Request" : "Service Unavailable", close_after);
		if (c->fd < 0)
			return false;
		/* keep-alive: what follows this request stays */
		memmove(c->buf, c->buf + head_len + clen, c->len - head_len - clen);
		c->len -= head_len + clen;
		c->deadline = relay_now_ms() + WH_TIMEOUT_MS;
	}
	return false;
}

static void
conn_read(WhConn *c)
{
	for (;;)
	{
		ssize_t		n;

		if (c->cap - c->len < 4096)
		{
			size_t		cap = c->cap ? c->cap * 2 : 16384;
			char	   *nb;

			if (cap > WH_HEAD_MAX + WH_BODY_MAX + 4096)
				cap = WH_HEAD_MAX + WH_BODY_MAX + 4096;
			if (cap <= c->len || (nb = realloc(c->buf, cap)) == NULL)
			{
				respond(c, 413, "Payload Too Large", true);
				return;
			}
			c->buf = nb;
			c->cap = cap;
		}
		n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
		if (n > 0)
		{
			c->len += n;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n < 0 && errno == EINTR)
			continue;
		conn_close(c);			/* closed by the peer, or an error */
		return;
	}
	serve(c);
}

int
webhook_run(void)
{
	int			lfd = listen_on(relay_config.webhook_listen);
	struct pollfd pfds[WH_MAX_CONNS + 1];
	int			map[WH_MAX_CONNS + 1];

	if (lfd < 0)
	{
		relay_request_stop(true);
		return 1;
	}
	for (int i = 0; i < WH_MAX_CONNS; i++)
		conns[i].fd = -1;
	relay_log(LOG_INFO, "webhook: listening on %s", relay_config.webhook_listen);
	db_try(&db, NULL, "webhook");
	while (!atomic_load(&relay_stop))
	{
		int			n = 0;
		int			active = 0;
		long		now = relay_now_ms();

		for (int i = 0; i < WH_MAX_CONNS; i++)
		{
			if (conns[i].fd < 0)
				continue;
			if (now > conns[i].deadline)
			{
				conn_close(&conns[i]);
				continue;
			}
			pfds[n] = (struct pollfd) {.fd = conns[i].fd, .events = POLLIN};
			map[n++] = i;
			active++;
		}
		if (active < WH_MAX_CONNS)
		{
			pfds[n] = (struct pollfd) {.fd = lfd, .events = POLLIN};
			map[n++] = -1;
		}
		if (poll(pfds, n, 200) <= 0)
			continue;
		for (int k = 0; k < n; k++)
		{
			if (pfds[k].revents == 0)
				continue;
			if (map[k] >= 0)
			{
				conn_read(&conns[map[k]]);
				continue;
			}
			for (int i = 0; i < WH_MAX_CONNS; i++)
			{
				int			fd;

				if (conns[i].fd >= 0)
					continue;
				fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd < 0)
					break;
				conns[i].fd = fd;
				conns[i].deadline = relay_now_ms() + WH_TIMEOUT_MS;
			}
		}
	}
	for (int i = 0; i < WH_MAX_CONNS; i++)
		if (conns[i].fd >= 0)
			conn_close(&conns[i]);
	close(lfd);
	db_drop(&db);
	return 0;
}
