/*
 * enospc_shim.so — the fault suite's fallback when it may not mount a small
 * tmpfs: preloaded into its PostgreSQL cluster, it fails every write() to a
 * file under $REGSTAGE_ENOSPC_DIR with ENOSPC, as a full disk would.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

ssize_t
write(int fd, const void *buf, size_t count)
{
	static ssize_t (*real_write) (int, const void *, size_t);
	const char *dir = getenv("REGSTAGE_ENOSPC_DIR");

	if (real_write == NULL)
		real_write = (ssize_t (*) (int, const void *, size_t)) dlsym(RTLD_NEXT, "write");
	if (dir && *dir && fd > 2)
	{
		char		link[64], target[4096];
		ssize_t		n;

		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		n = readlink(link, target, sizeof(target) - 1);
		if (n > 0)
		{
			target[n] = '\0';
			if (strncmp(target, dir, strlen(dir)) == 0)
			{
				errno = ENOSPC;
				return -1;
			}
		}
	}
	return real_write(fd, buf, count);
}
