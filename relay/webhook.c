/*
 * webhook.c — webhook mode: a small HTTP/1.1 server for Telegram's POSTs.
 *
 * One thread, poll() over the listening socket and at most WH_MAX_CONNS
 * connections (a new one takes the slot of the one that has waited longest
 * when all are open).  A request is read whole and framed by http.c
 * (headers up to 8 KiB, a Content-Length body up to 1 MiB; no chunked
 * bodies), its X-Telegram-Bot-Api-Secret-Token compared in constant time
 * with TELEGRAM_WEBHOOK_SECRET (wrong or missing: 401, nothing stored),
 * and the update stored with store_updates; 200 is answered only after that
 * committed, 503 when it could not be (Telegram then delivers it again).
 * A connection idle or slow for WH_TIMEOUT_MS is closed.  Keep-alive is
 * honoured.  Any number of relays may take webhooks for one database: the
 * inbox ignores an update_id stored before, and process_next orders chats.
 */
#define _GNU_SOURCE				/* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "db.h"
#include "http.h"
#include "relay.h"
#include "scan.h"

#define WH_MAX_CONNS 64
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
	if (stored > 0)
		processors_wake(id);
	relay_log(LOG_DEBUG, "webhook: update %lld stored (%s)", (long long) id, stored ? "new" : "seen before");
	return 200;
}

static const char *
reason(int status)
{
	switch (status)
	{
		case 200:
			return "OK";
		case 400:
			return "Bad Request";
		case 401:
			return "Unauthorized";
		case 405:
			return "Method Not Allowed";
		case 411:
			return "Length Required";
		case 413:
			return "Payload Too Large";
		case 431:
			return "Request Header Fields Too Large";
		default:
			return "Service Unavailable";
	}
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
		HttpRequest req;
		const char *body;
		int64_t		id;
		int			status;

		switch (http_parse_request(c->buf, c->len, &req))
		{
			case HTTP_NEED_MORE:
				return true;
			case HTTP_REJECT:
				respond(c, req.status, reason(req.status), true);
				return false;
			case HTTP_COMPLETE:
				break;
		}
		body = c->buf + req.head_len;
		if (!req.is_post)
			status = 405;
		else if (req.secret == NULL ||
				 !http_secret_equal(req.secret, req.secret_len,
									relay_config.webhook_secret, strlen(relay_config.webhook_secret)))
		{
			relay_log(LOG_ERROR, "webhook: a request without the right secret token, refused (401)");
			status = 401;
		}
		else if (!scan_update_id(body, req.body_len, &id))
		{
			char		shown[400];

			relay_printable(body, req.body_len > 120 ? 120 : req.body_len, shown, sizeof(shown));
			relay_log(LOG_ERROR, "webhook: an update without an update_id cannot be stored (%zu bytes): %s",
					  req.body_len, shown);
			status = 400;
		}
		else
			status = store(body, req.body_len, id);
		respond(c, status, reason(status), req.close_after);
		if (c->fd < 0)
			return false;
		/* keep-alive: what follows this request stays */
		memmove(c->buf, c->buf + req.total, c->len - req.total);
		c->len -= req.total;
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

			if (cap > HTTP_HEAD_MAX + HTTP_BODY_MAX + 4096)
				cap = HTTP_HEAD_MAX + HTTP_BODY_MAX + 4096;
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

/*
 * Accept every waiting connection.  With every slot taken, the connection
 * that has waited longest for its request gives its slot up: a peer that
 * opens connections and sends slowly or nothing (slow loris) can delay
 * Telegram's posts by a moment, never lock them out for WH_TIMEOUT_MS.
 */
static void
accept_all(int lfd)
{
	for (;;)
	{
		int			fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		WhConn	   *slot = NULL;

		if (fd < 0)
			return;
		for (int i = 0; i < WH_MAX_CONNS; i++)
		{
			if (conns[i].fd < 0)
			{
				slot = &conns[i];
				break;
			}
			if (slot == NULL || conns[i].deadline < slot->deadline)
				slot = &conns[i];
		}
		if (slot->fd >= 0)
		{
			relay_log(LOG_DEBUG, "webhook: %d connections open, the one waiting longest closed", WH_MAX_CONNS);
			conn_close(slot);
		}
		slot->fd = fd;
		slot->deadline = relay_now_ms() + WH_TIMEOUT_MS;
	}
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
		}
		pfds[n] = (struct pollfd) {.fd = lfd, .events = POLLIN};
		map[n++] = -1;
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
			accept_all(lfd);
		}
	}
	for (int i = 0; i < WH_MAX_CONNS; i++)
		if (conns[i].fd >= 0)
			conn_close(&conns[i]);
	close(lfd);
	db_drop(&db);
	return 0;
}
