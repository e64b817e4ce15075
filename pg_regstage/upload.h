/*
 * upload.h — the upload store under regstage.upload_dir.
 *
 * Files and directories made here belong to the (sub)transaction that made
 * them (xact.c): an abort of that (sub)transaction unlinks them, a commit
 * keeps them.  A name that exists already is never replaced, and never
 * marked for unlinking.
 *
 * Layout:  <upload_dir>/<telegram_id>/<doc_type>-<sha256 prefix>.<ext>
 *          <upload_dir>/<telegram_id>/.<doc_type>-<pid>-<n>.part   (downloads in progress)
 */
#ifndef REGSTAGE_UPLOAD_H
#define REGSTAGE_UPLOAD_H

#define UPLOAD_TMP_SUFFIX ".part"
#define UPLOAD_FILE_MODE 0640
#define UPLOAD_DIR_MODE 0750

/*
 * A user's directory, opened without following a symbolic link; every file
 * of the registration is made relative to it.
 */
typedef struct UploadUserDir
{
	int64		telegram_id;
	char		path[MAXPGPATH];
	int			fd;
} UploadUserDir;

/* A temporary file being downloaded into. */
typedef struct UploadTemp
{
	char		path[MAXPGPATH];	/* for messages and the pending list */
	char		name[64];		/* relative to the user's directory */
	int			fd;				/* -1 once closed */
} UploadTemp;

extern const char *upload_check_dir(void);
extern void upload_open_user_dir(UploadUserDir *dir, int64 telegram_id);
extern void upload_close_user_dir(UploadUserDir *dir);
extern void upload_temp_create(UploadTemp *tmp, UploadUserDir *dir, const char *doc_type);
extern void upload_temp_discard(UploadTemp *tmp);
extern char *upload_finish(UploadTemp *tmp, UploadUserDir *dir, const char *doc_type,
						   const char *sha256_hex, const char *ext);
extern void upload_fsync_dir(const char *path);

extern bool upload_relpath_is_safe(const char *rel);

#endif
