/*
 * dirwalk.h — reading a directory tree under regstage.upload_dir without
 * following symbolic links.
 *
 * Each directory is opened relative to its parent's descriptor (O_NOFOLLOW
 * below the root), so a directory swapped for a symlink is never entered
 * and no path is looked up from the root again.  The open directories form
 * a stack, one per depth; dirwalk_close_all() closes whatever is still open
 * after an error or a cancel (call it in PG_FINALLY).  Descriptors are
 * accounted with ReserveExternalFD, like PostgreSQL's other raw fds.  A
 * stack that is never read costs no buffers: the cleanup's batch mode uses
 * one to reach a file's directory again, component by component, so its
 * deletes stay relative to a descriptor there too.
 */
#ifndef REGSTAGE_DIRWALK_H
#define REGSTAGE_DIRWALK_H

#include <dirent.h>

#define DIRWALK_MAX_DEPTH 16

typedef struct DirReader
{
	int			fd;
	int			read_errno;		/* set when reading stopped on an error */
#ifdef __linux__
	char	   *buf;			/* getdents64 buffer, kept for the walk */
	ssize_t		len;
	ssize_t		pos;
#else
	DIR		   *dir;
#endif
} DirReader;

typedef struct DirWalk
{
	DirReader	dirs[DIRWALK_MAX_DEPTH];
	int			ndirs;			/* dirs[0 .. ndirs - 1] are open */
	MemoryContext cxt;			/* for the buffers */
} DirWalk;

extern void dirwalk_init(DirWalk *w, MemoryContext cxt);

/* Open name (relative to parent_fd) at depth; false with errno on failure. */
extern bool dirwalk_open(DirWalk *w, int depth, int parent_fd, const char *name);

/*
 * The next entry's name (without "." and "..") and type (DT_*), or NULL at
 * the end; then dirwalk_read_errno() says whether it was an error.  The
 * name is valid until the next call at this depth.
 */
extern const char *dirwalk_next(DirWalk *w, int depth, unsigned char *type);

extern void dirwalk_close(DirWalk *w, int depth);
extern void dirwalk_close_all(DirWalk *w);

static inline int
dirwalk_fd(DirWalk *w, int depth)
{
	return w->dirs[depth].fd;
}

static inline int
dirwalk_read_errno(DirWalk *w, int depth)
{
	return w->dirs[depth].read_errno;
}

#endif
