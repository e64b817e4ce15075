/*
 * main.c — regstage-relay: configuration, signals, the parts.
 *
 * A receiver (long polling, or the webhook server) stores raw updates in
 * the inbox; processors apply them with regstage.process_next(), which
 * writes their Bot API calls to the outbox in the same transaction; the
 * sender delivers the outbox.  Each part has its own connection; the
 * database holds every update and every reply, so a crash loses neither.
 */
#include <curl/curl.h>
#include <errno.h>
#include <malloc.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"
#include "telegram.h"

RelayConfig relay_config;
atomic_bool relay_stop = false;
atomic_bool relay_fatal = false;
atomic_bool relay_drain = false;

static void
usage(FILE *out)
{
	fprintf(out,
			"regstage-relay " RELAY_VERSION " — Telegram <-> pg_regstage's inbox and outbox\n"
			"\n"
			"Usage: regstage-relay [--help] [--version]\n"
			"\n"
			"Environment:\n"
			"  TELEGRAM_BOT_TOKEN   bot token, <digits>:<35 characters> (required; never logged)\n"
			"  TELEGRAM_API_URL     Bot API base URL (default https://api.telegram.org)\n"
			"  DATABASE_URL         libpq connection string or URI (default: libpq's defaults)\n"
			"  RELAY_WORKERS        processors: connections running process_next (default 4)\n"
			"  RELAY_SEND_CONCURRENCY  Bot API calls in flight at once (default 32)\n"
			"  RELAY_SEND_TIMEOUT   seconds one Bot API call may take (default 30); a call\n"
			"                       of a relay that died is sent again 5 s after that\n"
			"  RELAY_POLL_TIMEOUT   getUpdates long-poll timeout in seconds (default 50)\n"
			"  RELAY_WEBHOOK_LISTEN host:port: take Telegram's webhook POSTs there instead\n"
			"                       of polling getUpdates (default: polling)\n"
			"  TELEGRAM_WEBHOOK_SECRET  the secret_token given to setWebhook (required in\n"
			"                       webhook mode; 1-256 characters A-Z a-z 0-9 _ -)\n"
			"  RELAY_MAX_ATTEMPTS   ignored: the database's regstage.max_attempts decides\n"
			"  RELAY_LOG_LEVEL      error, info (default) or debug\n"
			"  RELAY_CA_FILE        CA certificates (PEM) that verify the Bot API's TLS\n"
			"                       certificate (default: the system's CA directory)\n"
			"\n"
			"Updates are stored in regstage.inbox before Telegram is told they arrived;\n"
			"processors apply them in order per chat, any number in parallel; replies\n"
			"leave from regstage.outbox.  A crash loses nothing.  SIGTERM/SIGINT: stop\n"
			"receiving, finish the updates and sends in flight, exit 0.\n");
}

static int
env_int(const char *name, int def, int min, int max)
{
	const char *v = getenv(name);
	char	   *end;
	long		n;

	if (v == NULL || *v == '\0')
		return def;
	n = strtol(v, &end, 10);
	if (*end != '\0' || n < min || n > max)
	{
		fprintf(stderr, "regstage-relay: %s must be an integer from %d to %d\n", name, min, max);
		exit(2);
	}
	return (int) n;
}

static void
load_config(void)
{
	const char *level = getenv("RELAY_LOG_LEVEL");

	relay_config.token = getenv("TELEGRAM_BOT_TOKEN");
	relay_config.api_url = getenv("TELEGRAM_API_URL");
	relay_config.database_url = getenv("DATABASE_URL");
	if (relay_config.api_url == NULL || *relay_config.api_url == '\0')
		relay_config.api_url = "https://api.telegram.org";
	if (relay_config.database_url == NULL)
		relay_config.database_url = "";
	relay_config.workers = env_int("RELAY_WORKERS", 4, 1, 256);
	relay_config.send_concurrency = env_int("RELAY_SEND_CONCURRENCY", 32, 1, 256);
	relay_config.send_timeout_s = env_int("RELAY_SEND_TIMEOUT", 30, 1, 600);
	relay_config.poll_timeout_s = env_int("RELAY_POLL_TIMEOUT", 50, 0, 600);
	relay_config.webhook_listen = getenv("RELAY_WEBHOOK_LISTEN");
	if (relay_config.webhook_listen && *relay_config.webhook_listen == '\0')
		relay_config.webhook_listen = NULL;
	relay_config.webhook_secret = getenv("TELEGRAM_WEBHOOK_SECRET");
	relay_config.log_level = LOG_INFO;
	if (level && strcmp(level, "error") == 0)
		relay_config.log_level = LOG_ERROR;
	else if (level && strcmp(level, "debug") == 0)
		relay_config.log_level = LOG_DEBUG;
	if (!relay_token_valid(relay_config.token))
	{
		/* the value itself is not printed: it may be a real token, mistyped */
		fprintf(stderr, "regstage-relay: TELEGRAM_BOT_TOKEN is %s; a bot token is <digits>:<35 characters "
				"of A-Z a-z 0-9 _ -> as BotFather gives it (see --help)\n",
				relay_config.token == NULL || *relay_config.token == '\0' ? "not set" : "not a bot token");
		exit(2);
	}
	if (strncmp(relay_config.api_url, "http://", 7) != 0 && strncmp(relay_config.api_url, "https://", 8) != 0)
	{
		fprintf(stderr, "regstage-relay: TELEGRAM_API_URL must start with http:// or https://\n");
		exit(2);
	}
	if (relay_config.webhook_listen)
	{
		const char *sec = relay_config.webhook_secret;
		size_t		n = sec ? strlen(sec) : 0;

		/* Telegram's own rule for secret_token; the value is never printed */
		if (n == 0 || n > 256 || strspn(sec, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != n)
		{
			fprintf(stderr, "regstage-relay: webhook mode (RELAY_WEBHOOK_LISTEN) needs TELEGRAM_WEBHOOK_SECRET, "
					"1-256 characters of A-Z a-z 0-9 _ -, the secret_token given to setWebhook (it is %s)\n",
					n == 0 ? "not set" : "not of that shape");
			exit(2);
		}
	}
	relay_config.ca_file = getenv("RELAY_CA_FILE");
	if (relay_config.ca_file && *relay_config.ca_file == '\0')
		relay_config.ca_file = NULL;
	if (relay_config.ca_file && access(relay_config.ca_file, R_OK) != 0)
	{
		fprintf(stderr, "regstage-relay: RELAY_CA_FILE \"%s\" cannot be read: %s\n",
				relay_config.ca_file, strerror(errno));
		exit(2);
	}
}

/*
 * Which CAs verify the Bot API's certificate.  libcurl's default is the
 * system bundle file, which OpenSSL parses whole into every handle's store
 * (about 140 certificates, over 1 MB across the relay's handles); the
 * system's hashed CA directory gives the same trust and loads only the
 * certificates a handshake needs.  Used when libcurl knows that directory
 * and it is there; RELAY_CA_FILE replaces both (a private CA, or a local
 * Bot API server).
 */
static void
choose_ca_path(void)
{
#if LIBCURL_VERSION_NUM >= 0x075400
	CURL	   *c;
	char	   *path = NULL;

	if (relay_config.ca_file || (c = curl_easy_init()) == NULL)
		return;
	if (curl_easy_getinfo(c, CURLINFO_CAPATH, &path) == CURLE_OK && path &&
		access(path, R_OK | X_OK) == 0)
		relay_config.ca_path = strdup(path);
	curl_easy_cleanup(c);
#endif
}

static void
on_signal(int sig)
{
	atomic_store(&relay_stop, true);
}

/*
 * The relay is meant to stay under 10 MB resident, most of which are pages
 * of shared libraries that OpenSSL's default initialisation touches.  Before
 * libcurl initialises OpenSSL, initialise it without the parts the relay
 * never uses (each stage runs once, so libcurl's later call cannot add them):
 * the error-string tables (about 0.6 MB; a TLS failure still comes with
 * curl's own text) and the legacy by-name tables of every cipher and digest
 * (about 0.8 MB; TLS fetches its algorithms from the provider).  The
 * configuration file is still loaded, so a system-wide TLS policy applies.
 * One malloc arena: the workers mostly wait on the database, per-thread
 * arenas would only hold pages.
 */
static void
limit_memory(void)
{
	mallopt(M_ARENA_MAX, 1);
	OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_SSL_STRINGS | OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS |
					 OPENSSL_INIT_NO_ADD_ALL_CIPHERS | OPENSSL_INIT_NO_ADD_ALL_DIGESTS, NULL);
}

/*
 * Debian's libcurl links librtmp, which links GnuTLS, and GnuTLS initialises
 * itself when it is loaded: about 0.7 MB of pages and ASN.1 trees for a
 * protocol the relay never speaks (libcurl is limited to http and https,
 * which go through OpenSSL).  GnuTLS reads GNUTLS_NO_IMPLICIT_INIT before
 * main() runs, so the relay sets it and executes itself once more (same
 * pid); if that fails it simply goes on with GnuTLS initialised.
 */
static void
skip_gnutls_init(char **argv)
{
	if (getenv("GNUTLS_NO_IMPLICIT_INIT") != NULL)
		return;
	if (setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 1) == 0)
		execv("/proc/self/exe", argv);
}

int
main(int argc, char **argv)
{
	struct sigaction sa;
	int			rc = 0;

	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
		{
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0)
		{
			printf("regstage-relay " RELAY_VERSION "\n");
			return 0;
		}
		fprintf(stderr, "regstage-relay: unknown argument \"%s\"\n", argv[i]);
		usage(stderr);
		return 2;
	}
	skip_gnutls_init(argv);
	load_config();

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	limit_memory();
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
	{
		fprintf(stderr, "regstage-relay: could not initialise libcurl\n");
		return 1;
	}
	choose_ca_path();
	if (getenv("RELAY_MAX_ATTEMPTS"))
		relay_log(LOG_INFO, "RELAY_MAX_ATTEMPTS is ignored: the database's regstage.max_attempts decides");
	if (!sender_start() || !processors_start(relay_config.workers))
	{
		fprintf(stderr, "regstage-relay: could not start threads\n");
		return 1;
	}
	relay_log(LOG_INFO, "started: %d processors, %s, Bot API %s", relay_config.workers,
			  relay_config.webhook_listen ? "webhook mode" : "long polling", relay_config.api_url);

	if (relay_config.webhook_listen)
		rc = webhook_run();
	else
		receiver_run();

	/* receiving stopped: let the processors finish, then the sender drain */
	relay_log(LOG_INFO, "stopping: finishing the updates and sends in flight");
	processors_join();
	atomic_store(&relay_drain, true);
	sender_join();
	curl_global_cleanup();
	relay_log(LOG_INFO, "stopped");
	return relay_fatal || rc ? 1 : 0;
}
