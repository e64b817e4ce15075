/*
 * dirwalk.c — the directory stack behind cleanup_orphans() and
 * upload_files(): openat relative to the parent, getdents64 on Linux (one
 * buffer per depth, kept for the whole walk), fdopendir/readdir elsewhere.
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "storage/fd.h"
#include "utils/memutils.h"

#include "dirwalk.h"

#define DIRWALK_BUF_SIZE 32768

void
dirwalk_init(DirWalk *w, MemoryContext cxt)
{
	memset(w, 0, sizeof(*w));
	for (int i = 0; i < DIRWALK_MAX_DEPTH; i++)
		w->dirs[i].fd = -1;
	w->cxt = cxt;
}

bool
dirwalk_open(DirWalk *w, int depth, int parent_fd, const char *name)
{
	DirReader  *r = &w->dirs[depth];
	int			fd;
	int			save_errno;

	Assert(depth < DIRWALK_MAX_DEPTH && depth == w->ndirs);
	ReserveExternalFD();
	fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (depth > 0 ? O_NOFOLLOW : 0));
	if (fd < 0)
		goto fail;
#ifdef __linux__
	r->len = r->pos = 0;		/* the buffer comes with the first read */
#else
	r->dir = fdopendir(fd);
	if (r->dir == NULL)
	{
		save_errno = errno;
		close(fd);
		errno = save_errno;
		goto fail;
	}
#endif
	r->fd = fd;
	r->read_errno = 0;
	w->ndirs = depth + 1;
	return true;

fail:
	save_errno = errno;
	ReleaseExternalFD();
	errno = save_errno;
	return false;
}

const char *
dirwalk_next(DirWalk *w, int depth, unsigned char *type)
{
	DirReader  *r = &w->dirs[depth];
	const char *name;

	for (;;)
	{
#ifdef __linux__
		struct dirent64 *d;

		if (r->pos >= r->len)
		{
			ssize_t		n;

			if (r->buf == NULL)
				r->buf = MemoryContextAlloc(w->cxt, DIRWALK_BUF_SIZE);
			n = getdents64(r->fd, r->buf, DIRWALK_BUF_SIZE);

			if (n <= 0)
			{
				r->read_errno = n < 0 ? errno : 0;
				return NULL;
			}
			r->len = n;
			r->pos = 0;
		}
		d = (struct dirent64 *) (r->buf + r->pos);
		r->pos += d->d_reclen;
		*type = d->d_type;
		name = d->d_name;
#else
		struct dirent *de;

		errno = 0;
		de = readdir(r->dir);
		if (de == NULL)
		{
			r->read_errno = errno;
			return NULL;
		}
		*type = de->d_type;
		name = de->d_name;
#endif
		if (!(name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))))
			return name;
	}
}

void
dirwalk_close(DirWalk *w, int depth)
{
	DirReader  *r = &w->dirs[depth];

	Assert(depth == w->ndirs - 1);
#ifdef __linux__
	close(r->fd);
#else
	closedir(r->dir);
#endif
	r->fd = -1;
	ReleaseExternalFD();
	w->ndirs = depth;
}

void
dirwalk_close_all(DirWalk *w)
{
	while (w->ndirs > 0)
		dirwalk_close(w, w->ndirs - 1);
}
