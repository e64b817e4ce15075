/*
 * upload.h — the upload store under regstage.upload_dir.
 *
 * Files and directories made here belong to the (sub)transaction that made
 * them, like PostgreSQL's own pending relation deletes: an abort of that
 * (sub)transaction unlinks them, a commit keeps them.
 *
 * Layout:  <upload_dir>/<telegram_id>/<doc_type>-<sha256 prefix>.<ext>
 *          <upload_dir>/<telegram_id>/.<doc_type>-<pid>-<n>.part   (downloads in progress)
 */
#ifndef REGSTAGE_UPLOAD_H
#define REGSTAGE_UPLOAD_H

#define UPLOAD_TMP_SUFFIX ".part"
#define UPLOAD_FILE_MODE 0640
#define UPLOAD_DIR_MODE 0750

/* A temporary file being downloaded into. */
typedef struct UploadTemp
{
	char		path[MAXPGPATH];
	int			fd;
} UploadTemp;

extern void upload_register_callbacks(void);
extern const char *upload_check_dir(void);
extern void upload_temp_create(UploadTemp *tmp, int64 telegram_id, const char *doc_type);
extern char *upload_finish(UploadTemp *tmp, int64 telegram_id, const char *doc_type,
						   const char *sha256_hex, const char *ext);
extern void upload_sync_user_dir(int64 telegram_id);

#endif
