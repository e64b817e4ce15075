/*
 * s3.h — document storage in an S3-compatible object store.
 *
 * Keys given to and returned by this module are relative to the database's
 * namespace; the object key in the bucket is
 *
 *     [<regstage.s3_prefix>/]<database name>/<key>
 *
 * (the database name with every byte but A-Z a-z 0-9 _ - and a non-leading
 * "." written as ~XX), so two databases never see each other's objects.
 * Requests are path-style: <regstage.s3_endpoint>/<bucket>/<object key>,
 * signed with SigV4 by libcurl; presigned URLs are computed in s3_sign.c.
 * Every function raises on failure with a SQLSTATE (08001 endpoint down,
 * 08006 timeout / 5xx, 28000 refused credentials, 58P01 bucket missing,
 * 57014 cancel) and a message naming the operation and the object key.
 */
#ifndef REGSTAGE_S3_H
#define REGSTAGE_S3_H

#include <curl/curl.h>

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

/* regstage.storage */
typedef enum RegstageStorage
{
	REGSTAGE_STORAGE_LOCAL,
	REGSTAGE_STORAGE_S3
} RegstageStorage;

extern int	regstage_storage;
extern char *regstage_s3_endpoint;
extern char *regstage_s3_bucket;
extern char *regstage_s3_region;
extern char *regstage_s3_prefix;
extern char *regstage_s3_access_key;
extern char *regstage_s3_secret_key_file;

extern void s3_define_gucs(void);

/* "<telegram_id>/<doc_type>-<32 random hex>": a key that cannot collide */
extern char *s3_document_key(int64 telegram_id, const char *doc_type);
/* is key usable as a key (s3_object_key would accept it)? */
extern bool s3_key_is_valid(const char *key);
/* the object key in the bucket for a key of this database */
extern char *s3_object_key(const char *key);

/*
 * A PUT fed while its data arrives, as a second easy handle on the
 * caller's curl multi.  The producer's write callback hands each chunk to
 * s3_upload_offer() and returns what it returns (the chunk's length, or
 * CURL_WRITEFUNC_PAUSE while the bounded buffer is full, or 0 when more
 * bytes arrive than content_length).  After every curl_multi_perform the
 * caller calls s3_upload_pump(), which resumes whichever side can go on.
 * See regstage_s3_stream_put() in s3.c for a complete driver loop.
 */
typedef struct S3Upload S3Upload;

#define S3_UPLOAD_BUFFER_SIZE (256 * 1024)

extern S3Upload *s3_upload_begin(const char *key, int64 content_length);
extern void s3_upload_attach(S3Upload *u, CURLM *multi);
extern size_t s3_upload_offer(S3Upload *u, const char *buf, size_t len);
extern void s3_upload_input_done(S3Upload *u);
extern bool s3_upload_pump(S3Upload *u, CURL *producer);
extern bool s3_upload_owns(S3Upload *u, CURL *easy);
extern void s3_upload_check_input(S3Upload *u);
extern void s3_upload_finish(S3Upload *u, CURLcode result);
extern void s3_upload_release(S3Upload *u);
extern size_t s3_upload_high_water(S3Upload *u);

/* whole requests, each on the backend's own curl multi */
extern void s3_put(const char *key, const char *data, size_t len);
extern bool s3_head(const char *key, int64 *size);
extern void s3_delete(const char *key);

typedef struct S3Object
{
	char	   *key;			/* relative to the database's namespace */
	TimestampTz last_modified;
	int64		size;
} S3Object;

typedef struct S3ListPage
{
	List	   *objects;		/* of S3Object *, in key order */
	char	   *next_token;		/* NULL on the last page */
} S3ListPage;

/*
 * Deletes that must not raise: at the abort of the (sub)transaction that
 * made an object, and after the commit of the one that deleted its row.
 * s3_delete_target(), inside the transaction (it may raise), returns the
 * object's URL and keeps a copy of the credentials the delete will use;
 * s3_delete_nothrow() then deletes urls[0..n) concurrently, bounded by
 * budget_ms in all, without raising, allocating from PostgreSQL or
 * waiting for a cancel.  It returns how many were not deleted (the first
 * failure described in errbuf).  s3_forget_delete_credentials() wipes the
 * copy at the end of the transaction.
 */
extern char *s3_delete_target(const char *key);
extern int	s3_delete_nothrow(char *const *urls, int n, long budget_ms, char *errbuf, size_t errlen);
extern void s3_forget_delete_credentials(void);

extern S3ListPage *s3_list(const char *prefix, const char *continuation_token, int max_keys);
extern char *s3_presign_get(const char *key, int ttl_seconds);

#endif
