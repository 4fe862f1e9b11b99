// Joins the user namespace named by GOPASTA_USERNS before the Go runtime
// starts. See doc.go for why this cannot be done in Go.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int gopasta_userns_joined;

__attribute__((constructor)) static void gopasta_nsenter(void)
{
	const char *stage = getenv("GOPASTA_STAGE");
	const char *path = getenv("GOPASTA_USERNS");
	int fd;

	/* Only the daemon child the front process started acts on it. */
	if (!stage || strcmp(stage, "daemon") || !path || !*path)
		return;

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
