// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl: loop devices for exception files.
 *
 * The loop device is configured with LO_FLAGS_AUTOCLEAR: once the view's
 * table holds it and fleecectl closes its own descriptor, the kernel
 * detaches it as soon as the view lets go -- even if the view is removed
 * by hand with dmsetup.  Direct I/O is asked for and silently dropped by
 * the kernel when the file system cannot do it (tmpfs on 6.1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fleecectl.h"

int loop_attach(const char *path, char *dev, size_t len, unsigned *major_out, unsigned *minor_out)
{
	struct loop_config cfg;
	struct stat st;
	int ctl, ffd, lfd = -1, num, tries;

	ffd = open(path, O_RDWR | O_CLOEXEC);
	if (ffd < 0)
		return -errno;
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		int e = errno;

		close(ffd);
		return -e;
	}
	for (tries = 0; tries < 16; tries++) {
		num = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (num < 0)
			break;
		snprintf(dev, len, "/dev/loop%d", num);
		lfd = open(dev, O_RDWR | O_CLOEXEC);
		if (lfd < 0 && errno == ENOENT) {
			/* no devtmpfs node (static /dev): make it */
			mknod(dev, S_IFBLK | 0660, makedev(7, num));
			lfd = open(dev, O_RDWR | O_CLOEXEC);
		}
		if (lfd < 0)
			break;
		memset(&cfg, 0, sizeof(cfg));
		cfg.fd = (unsigned)ffd;
		cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
		snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", path);
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0)
			goto ok;
		if (errno == EINVAL) {
			/* a kernel that refuses direct I/O for this file */
			cfg.info.lo_flags &= ~LO_FLAGS_DIRECT_IO;
			if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0)
				goto ok;
		}
		if (errno != EBUSY)
			break;
		close(lfd);	/* raced with another loop user: next one */
		lfd = -1;
	}
	{
		int e = errno ? errno : EBUSY;

		if (lfd >= 0)
			close(lfd);
		close(ctl);
		close(ffd);
		return -e;
	}
ok:
	close(ctl);
	close(ffd);
	if (fstat(lfd, &st) == 0) {
		*major_out = major(st.st_rdev);
		*minor_out = minor(st.st_rdev);
	}
	return lfd;
}

int loop_backing_file(unsigned major_, unsigned minor_, char *buf, size_t len)
{
	char p[128];
	FILE *f;

	buf[0] = 0;
	snprintf(p, sizeof(p), "/sys/dev/block/%u:%u/loop/backing_file", major_, minor_);
	f = fopen(p, "re");
	if (!f)
		return -1;
	if (!fgets(buf, (int)len, f))
		buf[0] = 0;
	fclose(f);
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

int loop_detach(const char *dev, const char *path)
{
	struct stat st;
	char back[PATH_MAX];
	int fd, r = 0;

	if (stat(dev, &st) || !S_ISBLK(st.st_mode))
		return 0;
	if (loop_backing_file(major(st.st_rdev), minor(st.st_rdev), back, sizeof(back)))
		return 0;	/* already gone (autoclear did it) */
	if (path && strcmp(back, path))
		return 0;	/* reused by someone else */
	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, LOOP_CLR_FD, 0) && errno != ENXIO)
		r = -errno;
	close(fd);
	return r;
}
