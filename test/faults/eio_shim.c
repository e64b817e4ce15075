/*
 * eio_shim.so — an I/O error on fsync, on demand, for the fault suite.
 * Preloaded into its PostgreSQL cluster, it fails fsync() and fdatasync()
 * with EIO (as a failing NFS or CIFS server would) for descriptors whose
 * path matches a line of the file $REGSTAGE_EIO_CTL:
 *
 *     file <prefix>    regular files at or under <prefix>
 *     dir <prefix>     directories at or under <prefix>
 *
 * The file is read at every call, so a test switches faults on and off by
 * writing or removing it; without it every call goes through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int
injected(int fd)
{
	const char *ctl = getenv("REGSTAGE_EIO_CTL");
	char		link[64], target[4096], line[4200];
	struct stat st;
	ssize_t		n;
	FILE	   *f;
	int			hit = 0;
	int			save_errno = errno;

	if (ctl == NULL || *ctl == '\0' || fd < 0 || (f = fopen(ctl, "r")) == NULL)
	{
		errno = save_errno;
		return 0;
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n > 0 && fstat(fd, &st) == 0)
	{
		target[n] = '\0';
		while (!hit && fgets(line, sizeof(line), f))
		{
			const char *kind = S_ISDIR(st.st_mode) ? "dir " : "file ";
			size_t		klen = strlen(kind);
			char	   *prefix = line + klen;
			size_t		plen;

			line[strcspn(line, "\n")] = '\0';
			if (strncmp(line, kind, klen) != 0)
				continue;
			plen = strlen(prefix);
			if (plen > 0 && strncmp(target, prefix, plen) == 0 &&
				(target[plen] == '\0' || target[plen] == '/'))
				hit = 1;
		}
	}
	fclose(f);
	errno = save_errno;
	return hit;
}

int
fsync(int fd)
{
	static int	(*real_fsync) (int);

	if (real_fsync == NULL)
		real_fsync = (int (*) (int)) dlsym(RTLD_NEXT, "fsync");
	if (injected(fd))
	{
		errno = EIO;
		return -1;
	}
	return real_fsync(fd);
}

int
fdatasync(int fd)
{
	static int	(*real_fdatasync) (int);

	if (real_fdatasync == NULL)
		real_fdatasync = (int (*) (int)) dlsym(RTLD_NEXT, "fdatasync");
	if (injected(fd))
	{
		errno = EIO;
		return -1;
	}
	return real_fdatasync(fd);
}
