// Joins the user namespace named by GOPASTA_USERNS before the Go runtime
// starts, and then, if GOPASTA_ISOLATE is set, detaches into new mount,
// IPC and UTS namespaces owned by it. See nsenter.go for why this cannot
// be done in Go.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int gopasta_userns_joined;
// 0: not asked; 1: done; -errno: unshare failed (the daemon decides).
int gopasta_isolated;

__attribute__((constructor)) static void gopasta_nsenter(void)
{
	const char *stage = getenv("GOPASTA_STAGE");
	const char *path = getenv("GOPASTA_USERNS");
	const char *isolate = getenv("GOPASTA_ISOLATE");
	int fd;

	/* Only the daemon child the front process started acts on it. */
	if (!stage || strcmp(stage, "daemon"))
		return;

	if (path && *path) {
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			fprintf(stderr, "gopasta: cannot open user namespace %s: %s\n",
				path, strerror(errno));
			exit(1);
		}
		if (setns(fd, CLONE_NEWUSER)) {
			fprintf(stderr, "gopasta: cannot join user namespace %s: %s\n",
				path, strerror(errno));
			exit(1);
		}
		close(fd);
		gopasta_userns_joined = 1;
	}

	/* After the join, so that the new namespaces belong to the user
	 * namespace whose capabilities the daemon has: pivot_root() later
	 * needs CAP_SYS_ADMIN over the mount namespace. A mount namespace
	 * cannot be unshared by a process whose threads share their
	 * filesystem information, which every Go thread does. */
	if (isolate && !strcmp(isolate, "unshare")) {
		if (unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS))
			gopasta_isolated = -errno;
		else
			gopasta_isolated = 1;
	}
}
