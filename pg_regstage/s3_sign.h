/*
 * s3_sign.h — AWS Signature Version 4 (pure C, OpenSSL; no backend headers).
 *
 * The S3 client lets libcurl sign ordinary requests (CURLOPT_AWS_SIGV4);
 * libcurl cannot presign, so the query-string form of SigV4 is computed
 * here.  The general signer is exposed too, so that a test program can
 * check it against AWS's published vectors.  Nothing here raises or
 * longjmps: failures are return values, and every allocation is freed
 * before return (except the presigned URL, which the caller frees).
 */
#ifndef REGSTAGE_S3_SIGN_H
#define REGSTAGE_S3_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define S3_SIGN_MAX_EXPIRES 604800	/* SigV4's limit: 7 days */

/* sha256 of the empty string: the payload hash of a request without a body */
#define S3_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef struct S3SignPair
{
	const char *name;
	const char *value;
} S3SignPair;

/* One request to sign; strings are raw (the signer encodes them). */
typedef struct S3SignRequest
{
	const char *method;			/* "GET" */
	const char *path;			/* "/bucket/key", not yet URI-encoded */
	const S3SignPair *query;	/* any order; raw names and values */
	int			nquery;
	const S3SignPair *headers;	/* any order and case; must include host */
	int			nheaders;
	const char *payload_hash;	/* hex sha256, "UNSIGNED-PAYLOAD" */
	const char *amz_date;		/* "20130524T000000Z" */
	const char *region;
	const char *service;		/* "s3" */
	const char *access_key;
	const char *secret_key;
} S3SignRequest;

/* What the signer computed; hex strings are NUL-terminated. */
typedef struct S3SignResult
{
	char		canonical_request_hash[65];
	char		signature[65];
	char		signed_headers[512];	/* "host;x-amz-date" */
} S3SignResult;

extern void s3_sha256_hex(const void *data, size_t len, char out[65]);
extern bool s3_amz_date(time_t t, char out[17]);
extern size_t s3_uri_encode(const char *in, size_t inlen, bool keep_slash, char *out, size_t outsz);
extern int	s3_sign(const S3SignRequest *req, S3SignResult *res);

/*
 * A presigned GET (or other method) URL: base_url is "scheme://host[:port]"
 * (no trailing slash), host the Host header a client will send for it.
 * Returns a malloc'd string, or NULL (bad arguments or out of memory).
 */
typedef struct S3PresignRequest
{
	const char *method;
	const char *base_url;
	const char *host;
	const char *path;			/* raw, starts with "/" */
	const S3SignPair *extra_query;	/* e.g. response-content-type; may be NULL */
	int			nextra;
	const char *region;
	const char *access_key;
	const char *secret_key;
	const char *amz_date;
	long		expires;		/* seconds, 1 .. S3_SIGN_MAX_EXPIRES */
} S3PresignRequest;

extern char *s3_presign(const S3PresignRequest *req);

#endif
