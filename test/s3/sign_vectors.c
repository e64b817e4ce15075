/*
 * sign_vectors.c — pg_regstage/s3_sign.c against AWS's published SigV4
 * vectors: the Signature Version 4 test suite (get-vanilla,
 * get-vanilla-query-order-key-case, post-vanilla), the four worked
 * examples of the S3 API reference ("Signature Calculations for the
 * Authorization Header": GET Object, PUT Object, GET Bucket Lifecycle, GET
 * Bucket (List Objects)) and its presigned-URL example ("Authenticating
 * Requests: Using Query Parameters").  Exits non-zero on any mismatch.
 *
 *   cc -I pg_regstage test/s3/sign_vectors.c pg_regstage/s3_sign.c -lcrypto
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3_sign.h"

#define SUITE_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define S3_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define S3_HOST "examplebucket.s3.amazonaws.com"
#define S3_DATE "20130524T000000Z"

static int failures = 0;

static void
expect(const char *name, const char *got, const char *want)
{
	if (got != NULL && strcmp(got, want) == 0)
		printf("ok   %s\n", name);
	else
	{
		printf("FAIL %s\n     got  %s\n     want %s\n", name, got ? got : "(null)", want);
		failures++;
	}
}

static void
vector(const char *name, const char *method, const char *path,
	   const S3SignPair *query, int nquery, const S3SignPair *headers, int nheaders,
	   const char *payload, const char *date, const char *region, const char *service,
	   const char *secret, const char *want_signed, const char *want_sig)
{
	S3SignRequest r = {0};
	S3SignResult res;
	char		label[200];

	r.method = method;
	r.path = path;
	r.query = query;
	r.nquery = nquery;
	r.headers = headers;
	r.nheaders = nheaders;
	r.payload_hash = payload;
	r.amz_date = date;
	r.region = region;
	r.service = service;
	r.access_key = "unused";
	r.secret_key = secret;
	if (s3_sign(&r, &res) != 0)
	{
		printf("FAIL %s: s3_sign failed\n", name);
		failures++;
		return;
	}
	snprintf(label, sizeof(label), "%s: signed headers", name);
	expect(label, res.signed_headers, want_signed);
	snprintf(label, sizeof(label), "%s: signature", name);
	expect(label, res.signature, want_sig);
}

int
main(void)
{
	char		hash[65];
	char		date[17];
	char		enc[64];

	/* the SigV4 test suite (service "service") */
	{
		S3SignPair	h[] = {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T123600Z"}};
		S3SignPair	q[] = {{"Param2", "value2"}, {"Param1", "value1"}};

		vector("get-vanilla", "GET", "/", NULL, 0, h, 2, S3_EMPTY_SHA256, "20150830T123600Z",
			   "us-east-1", "service", SUITE_SECRET, "host;x-amz-date",
			   "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
		vector("get-vanilla-query-order-key-case", "GET", "/", q, 2, h, 2, S3_EMPTY_SHA256,
			   "20150830T123600Z", "us-east-1", "service", SUITE_SECRET, "host;x-amz-date",
			   "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
		vector("post-vanilla", "POST", "/", NULL, 0, h, 2, S3_EMPTY_SHA256, "20150830T123600Z",
			   "us-east-1", "service", SUITE_SECRET, "host;x-amz-date",
			   "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
	}

	/* the S3 API reference examples */
	{
		S3SignPair	get[] = {{"Host", S3_HOST}, {"Range", "bytes=0-9"},
		{"x-amz-content-sha256", S3_EMPTY_SHA256}, {"x-amz-date", S3_DATE}};
		S3SignPair	put[] = {{"Host", S3_HOST}, {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
			{"x-amz-date", S3_DATE}, {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
		{"x-amz-content-sha256", "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"}};
		S3SignPair	plain[] = {{"Host", S3_HOST}, {"x-amz-content-sha256", S3_EMPTY_SHA256},
		{"x-amz-date", S3_DATE}};
		S3SignPair	lifecycle[] = {{"lifecycle", ""}};
		S3SignPair	list[] = {{"prefix", "J"}, {"max-keys", "2"}};

		s3_sha256_hex("Welcome to Amazon S3.", 21, hash);
		expect("PUT Object payload hash", hash,
			   "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
		vector("S3 GET Object", "GET", "/test.txt", NULL, 0, get, 4, S3_EMPTY_SHA256, S3_DATE,
			   "us-east-1", "s3", S3_SECRET, "host;range;x-amz-content-sha256;x-amz-date",
			   "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
		vector("S3 PUT Object (a $ in the key)", "PUT", "/test$file.text", NULL, 0, put, 5, hash, S3_DATE,
			   "us-east-1", "s3", S3_SECRET,
			   "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
			   "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
		vector("S3 GET Bucket Lifecycle", "GET", "/", lifecycle, 1, plain, 3, S3_EMPTY_SHA256, S3_DATE,
			   "us-east-1", "s3", S3_SECRET, "host;x-amz-content-sha256;x-amz-date",
			   "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
		vector("S3 GET Bucket (List Objects)", "GET", "/", list, 2, plain, 3, S3_EMPTY_SHA256, S3_DATE,
			   "us-east-1", "s3", S3_SECRET, "host;x-amz-content-sha256;x-amz-date",
			   "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
	}

	/* the presigned-URL example; its expiry is X-Amz-Date + X-Amz-Expires */
	{
		S3PresignRequest p = {0};
		char	   *url;

		/* 2013-05-24T00:00:00Z: the example's signing time, as the backend computes it */
		expect("amz date of 1369353600", s3_amz_date((time_t) 1369353600, date) ? date : NULL, S3_DATE);
		expect("amz date of 0", s3_amz_date((time_t) 0, date) ? date : NULL, "19700101T000000Z");
		expect("amz date of a leap day", s3_amz_date((time_t) 951782400, date) ? date : NULL,
			   "20000229T000000Z");
		p.method = "GET";
		p.base_url = "https://" S3_HOST;
		p.host = S3_HOST;
		p.path = "/test.txt";
		p.region = "us-east-1";
		p.access_key = "AKIAIOSFODNN7EXAMPLE";
		p.secret_key = S3_SECRET;
		p.amz_date = date;
		s3_amz_date((time_t) 1369353600, date);
		p.expires = 86400;
		url = s3_presign(&p);
		expect("presigned GET", url,
			   "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
			   "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
			   "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
			   "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
		free(url);

		p.expires = 0;
		expect("expires 0 refused", s3_presign(&p) ? "a URL" : "refused", "refused");
		p.expires = S3_SIGN_MAX_EXPIRES + 1;
		expect("expires over 7 days refused", s3_presign(&p) ? "a URL" : "refused", "refused");
		p.expires = 60;
		p.amz_date = "2013-05-24";
		expect("a malformed date refused", s3_presign(&p) ? "a URL" : "refused", "refused");
	}

	s3_uri_encode("a b/ü~", strlen("a b/ü~"), true, enc, sizeof(enc));
	expect("path encoding keeps / and ~", enc, "a%20b/%C3%BC~");
	s3_uri_encode("a/b+c=", 6, false, enc, sizeof(enc));
	expect("query encoding encodes / + =", enc, "a%2Fb%2Bc%3D");
	expect("encoded length measured without a buffer",
		   s3_uri_encode("a b", 3, true, NULL, 0) == 5 ? "5" : "other", "5");

	printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
	return failures ? 1 : 0;
}
