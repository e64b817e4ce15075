/*
 * s3_sign.c — AWS Signature Version 4, header and query-string forms.
 *
 *   canonical request = method \n URI \n query \n headers \n signed \n payload
 *   string to sign    = AWS4-HMAC-SHA256 \n date \n scope \n sha256(canonical)
 *   signing key       = HMAC chain "AWS4"+secret -> date -> region -> service -> aws4_request
 *
 * Paths are encoded the S3 way: once, every byte but A-Z a-z 0-9 - . _ ~ and
 * "/".  Pure C with malloc'd scratch buffers (freed before return), so the
 * same file links into the backend, the vector test and the fuzzer.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "s3_sign.h"

/* A growable string; a failed allocation sticks and is checked at the end. */
typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		failed;
} Buf;

static void
buf_add(Buf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 256;
		char	   *p;

		while (b->len + n + 1 > cap)
			cap *= 2;
		p = realloc(b->data, cap);
		if (p == NULL)
		{
			b->failed = true;
			return;
		}
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
buf_adds(Buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static bool
is_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		c == '-' || c == '.' || c == '_' || c == '~';
}

/*
 * URI-encode in[0..inlen) into out (NUL-terminated when it fits); returns
 * the encoded length, so a call with outsz 0 measures.
 */
size_t
s3_uri_encode(const char *in, size_t inlen, bool keep_slash, char *out, size_t outsz)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t		n = 0;

	for (size_t i = 0; i < inlen; i++)
	{
		unsigned char c = (unsigned char) in[i];

		if (is_unreserved(c) || (keep_slash && c == '/'))
		{
			if (n + 1 < outsz)
				out[n] = (char) c;
			n++;
		}
		else
		{
			if (n + 3 < outsz)
			{
				out[n] = '%';
				out[n + 1] = hex[c >> 4];
				out[n + 2] = hex[c & 15];
			}
			n += 3;
		}
	}
	if (outsz > 0)
		out[n < outsz ? n : outsz - 1] = '\0';
	return n;
}

static void
buf_add_encoded(Buf *b, const char *s, bool keep_slash)
{
	size_t		len = strlen(s);
	size_t		need = s3_uri_encode(s, len, keep_slash, NULL, 0);
	char	   *tmp = malloc(need + 1);

	if (tmp == NULL)
	{
		b->failed = true;
		return;
	}
	s3_uri_encode(s, len, keep_slash, tmp, need + 1);
	buf_add(b, tmp, need);
	free(tmp);
}

static void
hex_of(const unsigned char *d, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++)
	{
		out[2 * i] = hex[d[i] >> 4];
		out[2 * i + 1] = hex[d[i] & 15];
	}
	out[2 * n] = '\0';
}

void
s3_sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char d[SHA256_DIGEST_LENGTH];

	SHA256((const unsigned char *) data, len, d);
	hex_of(d, sizeof(d), out);
}

/* "YYYYMMDDTHHMMSSZ" of t in UTC */
bool
s3_amz_date(time_t t, char out[17])
{
	struct tm	tm;

	if (gmtime_r(&t, &tm) == NULL)
		return false;
	return strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) == 16;
}

static bool
hmac(const unsigned char *key, size_t keylen, const char *data, size_t datalen,
	 unsigned char out[32])
{
	unsigned int outlen = 0;

	return HMAC(EVP_sha256(), key, (int) keylen, (const unsigned char *) data, datalen,
				out, &outlen) != NULL && outlen == 32;
}

/* An encoded query pair, sorted by name then value as SigV4 wants. */
typedef struct EncPair
{
	Buf			name;
	Buf			value;
} EncPair;

static int
encpair_cmp(const void *a, const void *b)
{
	const EncPair *x = a;
	const EncPair *y = b;
	int			c = strcmp(x->name.data ? x->name.data : "", y->name.data ? y->name.data : "");

	return c ? c : strcmp(x->value.data ? x->value.data : "", y->value.data ? y->value.data : "");
}

/* Append the canonical query string of pairs (two lists, e.g. X-Amz-* and extras). */
static void
add_canonical_query(Buf *out, const S3SignPair *a, int na, const S3SignPair *b, int nb)
{
	int			n = na + nb;
	EncPair    *pairs;

	if (n == 0)
		return;
	pairs = calloc(n, sizeof(EncPair));
	if (pairs == NULL)
	{
		out->failed = true;
		return;
	}
	for (int i = 0; i < n; i++)
	{
		const S3SignPair *p = i < na ? &a[i] : &b[i - na];

		buf_add_encoded(&pairs[i].name, p->name ? p->name : "", false);
		buf_add(&pairs[i].name, "", 0);
		buf_add_encoded(&pairs[i].value, p->value ? p->value : "", false);
		buf_add(&pairs[i].value, "", 0);
		if (pairs[i].name.failed || pairs[i].value.failed)
			out->failed = true;
	}
	if (!out->failed)
	{
		qsort(pairs, n, sizeof(EncPair), encpair_cmp);
		for (int i = 0; i < n; i++)
		{
			if (i > 0)
				buf_adds(out, "&");
			buf_add(out, pairs[i].name.data, pairs[i].name.len);
			buf_adds(out, "=");
			buf_add(out, pairs[i].value.data, pairs[i].value.len);
		}
	}
	for (int i = 0; i < n; i++)
	{
		free(pairs[i].name.data);
		free(pairs[i].value.data);
	}
	free(pairs);
}

/* A header lower-cased and trimmed, for sorting. */
typedef struct CanonHeader
{
	Buf			name;
	Buf			value;
} CanonHeader;

static int
canonheader_cmp(const void *a, const void *b)
{
	return strcmp(((const CanonHeader *) a)->name.data, ((const CanonHeader *) b)->name.data);
}

/* Append "name:value\n" lines; signed_headers gets "a;b;c". */
static bool
add_canonical_headers(Buf *out, const S3SignPair *hs, int n, char *signed_headers, size_t shsize)
{
	CanonHeader *h = calloc(n > 0 ? n : 1, sizeof(CanonHeader));
	bool		ok = true;
	size_t		shlen = 0;

	if (h == NULL)
		return false;
	for (int i = 0; i < n && ok; i++)
	{
		const char *v = hs[i].value ? hs[i].value : "";
		bool		space = false;

		for (const char *p = hs[i].name; *p; p++)
		{
			char		c = (char) tolower((unsigned char) *p);

			buf_add(&h[i].name, &c, 1);
		}
		buf_add(&h[i].name, "", 0);
		/* trim, and fold runs of spaces into one */
		while (*v == ' ' || *v == '\t')
			v++;
		for (; *v; v++)
		{
			if (*v == ' ' || *v == '\t')
			{
				space = true;
				continue;
			}
			if (space && h[i].value.len > 0)
				buf_add(&h[i].value, " ", 1);
			space = false;
			buf_add(&h[i].value, v, 1);
		}
		buf_add(&h[i].value, "", 0);
		ok = !h[i].name.failed && !h[i].value.failed && h[i].name.len > 0;
	}
	if (ok)
	{
		qsort(h, n, sizeof(CanonHeader), canonheader_cmp);
		for (int i = 0; i < n; i++)
		{
			buf_add(out, h[i].name.data, h[i].name.len);
			buf_adds(out, ":");
			buf_add(out, h[i].value.data, h[i].value.len);
			buf_adds(out, "\n");
			if (shlen + h[i].name.len + 2 > shsize)
				ok = false;
			else
			{
				if (i > 0)
					signed_headers[shlen++] = ';';
				memcpy(signed_headers + shlen, h[i].name.data, h[i].name.len);
				shlen += h[i].name.len;
			}
		}
		if (shsize > 0)
			signed_headers[shlen < shsize ? shlen : shsize - 1] = '\0';
	}
	for (int i = 0; i < n; i++)
	{
		free(h[i].name.data);
		free(h[i].value.data);
	}
	free(h);
	return ok && !out->failed;
}

static bool
valid_amz_date(const char *d)
{
	if (d == NULL || strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z')
		return false;
	for (int i = 0; i < 15; i++)
		if (i != 8 && !isdigit((unsigned char) d[i]))
			return false;
	return true;
}

/*
 * The signature of a request whose canonical query is already built
 * (shared by s3_sign and s3_presign).
 */
static int
sign_with_query(const S3SignRequest *r, const char *canonical_query, S3SignResult *res)
{
	Buf			creq = {0};
	Buf			sts = {0};
	char		date8[9];
	unsigned char k[32];
	unsigned char sig[32];
	Buf			kkey = {0};
	int			rc = -1;

	if (!valid_amz_date(r->amz_date) || r->method == NULL || r->region == NULL ||
		r->service == NULL || r->secret_key == NULL || r->payload_hash == NULL)
		return -1;
	memcpy(date8, r->amz_date, 8);
	date8[8] = '\0';

	buf_adds(&creq, r->method);
	buf_adds(&creq, "\n");
	if (r->path == NULL || r->path[0] == '\0')
		buf_adds(&creq, "/");
	else
		buf_add_encoded(&creq, r->path, true);
	buf_adds(&creq, "\n");
	buf_adds(&creq, canonical_query);
	buf_adds(&creq, "\n");
	if (!add_canonical_headers(&creq, r->headers, r->nheaders, res->signed_headers,
							   sizeof(res->signed_headers)))
		goto done;
	buf_adds(&creq, "\n");
	buf_adds(&creq, res->signed_headers);
	buf_adds(&creq, "\n");
	buf_adds(&creq, r->payload_hash);
	if (creq.failed)
		goto done;
	s3_sha256_hex(creq.data, creq.len, res->canonical_request_hash);

	buf_adds(&sts, "AWS4-HMAC-SHA256\n");
	buf_adds(&sts, r->amz_date);
	buf_adds(&sts, "\n");
	buf_adds(&sts, date8);
	buf_adds(&sts, "/");
	buf_adds(&sts, r->region);
	buf_adds(&sts, "/");
	buf_adds(&sts, r->service);
	buf_adds(&sts, "/aws4_request\n");
	buf_adds(&sts, res->canonical_request_hash);

	buf_adds(&kkey, "AWS4");
	buf_adds(&kkey, r->secret_key);
	if (sts.failed || kkey.failed)
		goto done;
	if (!hmac((unsigned char *) kkey.data, kkey.len, date8, 8, k) ||
		!hmac(k, 32, r->region, strlen(r->region), k) ||
		!hmac(k, 32, r->service, strlen(r->service), k) ||
		!hmac(k, 32, "aws4_request", 12, k) ||
		!hmac(k, 32, sts.data, sts.len, sig))
		goto done;
	hex_of(sig, 32, res->signature);
	rc = 0;

done:
	/* the derived key material and the secret copy do not outlive the call */
	if (kkey.data)
		memset(kkey.data, 0, kkey.cap);
	memset(k, 0, sizeof(k));
	free(kkey.data);
	free(creq.data);
	free(sts.data);
	return rc;
}

int
s3_sign(const S3SignRequest *r, S3SignResult *res)
{
	Buf			q = {0};
	int			rc;

	buf_add(&q, "", 0);
	add_canonical_query(&q, r->query, r->nquery, NULL, 0);
	if (q.failed)
	{
		free(q.data);
		return -1;
	}
	rc = sign_with_query(r, q.data, res);
	free(q.data);
	return rc;
}

char *
s3_presign(const S3PresignRequest *p)
{
	char		date8[9];
	char		expires[24];
	Buf			credential = {0};
	Buf			query = {0};
	Buf			url = {0};
	S3SignPair	amz[5];
	S3SignPair	host;
	S3SignRequest r;
	S3SignResult res;
	char	   *result = NULL;

	if (!valid_amz_date(p->amz_date) || p->expires < 1 || p->expires > S3_SIGN_MAX_EXPIRES ||
		p->base_url == NULL || p->host == NULL || p->path == NULL || p->path[0] != '/' ||
		p->access_key == NULL || p->region == NULL || p->method == NULL)
		return NULL;
	memcpy(date8, p->amz_date, 8);
	date8[8] = '\0';
	snprintf(expires, sizeof(expires), "%ld", p->expires);

	buf_adds(&credential, p->access_key);
	buf_adds(&credential, "/");
	buf_adds(&credential, date8);
	buf_adds(&credential, "/");
	buf_adds(&credential, p->region);
	buf_adds(&credential, "/s3/aws4_request");
	if (credential.failed)
		goto done;

	amz[0] = (S3SignPair) {"X-Amz-Algorithm", "AWS4-HMAC-SHA256"};
	amz[1] = (S3SignPair) {"X-Amz-Credential", credential.data};
	amz[2] = (S3SignPair) {"X-Amz-Date", p->amz_date};
	amz[3] = (S3SignPair) {"X-Amz-Expires", expires};
	amz[4] = (S3SignPair) {"X-Amz-SignedHeaders", "host"};
	buf_add(&query, "", 0);
	add_canonical_query(&query, amz, 5, p->extra_query, p->extra_query ? p->nextra : 0);
	if (query.failed)
		goto done;

	host = (S3SignPair) {"host", p->host};
	memset(&r, 0, sizeof(r));
	r.method = p->method;
	r.path = p->path;
	r.headers = &host;
	r.nheaders = 1;
	r.payload_hash = "UNSIGNED-PAYLOAD";
	r.amz_date = p->amz_date;
	r.region = p->region;
	r.service = "s3";
	r.access_key = p->access_key;
	r.secret_key = p->secret_key;
	if (sign_with_query(&r, query.data, &res) != 0)
		goto done;

	buf_adds(&url, p->base_url);
	buf_add_encoded(&url, p->path, true);
	buf_adds(&url, "?");
	buf_add(&url, query.data, query.len);
	buf_adds(&url, "&X-Amz-Signature=");
	buf_adds(&url, res.signature);
	if (!url.failed)
	{
		result = url.data;
		url.data = NULL;
	}

done:
	free(credential.data);
	free(query.data);
	free(url.data);
	return result;
}
