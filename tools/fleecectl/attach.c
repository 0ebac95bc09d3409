// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl attach: put the fleece origin target on a device's I/O path.
 *
 * In place (device-mapper devices with linear/striped tables, e.g. LVM
 * logical volumes), the way LVM inserts snapshot-origin:
 *   1. create N-real (UUID FLEECE-REAL-N) holding the device's table;
 *   2. load "0 <len> fleece <N-real> <chunk>" into the device;
 *   3. suspend and resume the device: the new table goes live.  The user's
 *      path keeps working and its user need not restart.
 *
 * On top (any other block device, or --on-top): create /dev/mapper/N
 * (UUID FLEECE-ORIGIN-N) with "0 <len> fleece <device> <chunk>"; the
 * device's user must switch to /dev/mapper/N.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "fleecectl.h"

int parse_attach_opts(int argc, char **argv, struct attach_opts *o)
{
	static const struct option lo[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "chunk-size", required_argument, NULL, 'c' },
		{ "on-top", no_argument, NULL, 't' },
		{ "discard-policy", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->chunk_sectors = CHUNK_DEFAULT_SECTORS;
	optind = 0;
	while ((c = getopt_long(argc, argv, "n:c:td:h", lo, NULL)) != -1) {
		switch (c) {
		case 'n':
			o->name = optarg;
			if (!valid_name(optarg))
				return err(EXIT_USAGE, NULL, "invalid --name \"%s\": use up to %d of A-Z a-z 0-9 . _ + -",
					   optarg, NAME_MAX_LEN);
			break;
		case 'c':
			if (parse_chunk_size(optarg, &o->chunk_sectors))
				return err(EXIT_USAGE, NULL,
					   "invalid --chunk-size \"%s\": a power of two from 4K to 1M", optarg);
			break;
		case 't':
			o->on_top = 1;
			break;
		case 'd':
			if (!valid_discard_policy(optarg))
				return err(EXIT_USAGE, NULL,
					   "invalid --discard-policy \"%s\": use defer, copy or ignore", optarg);
			o->discard_policy = optarg;
			break;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1)
		return err(EXIT_USAGE, NULL, "attach needs exactly one DEVICE (see %s attach --help)", g_prog);
	o->device = argv[optind];
	return 0;
}

/* The fleece table's parameters; the default discard policy is not spelled out. */
static void origin_params(char *buf, size_t size, unsigned maj, unsigned min,
			  const struct attach_opts *o)
{
	int n = snprintf(buf, size, "%u:%u %u", maj, min, o->chunk_sectors);

	if (o->discard_policy && strcmp(o->discard_policy, DM_FLEECE_DISCARD_DEFER))
		snprintf(buf + n, size - n, " 2 discard_policy %s", o->discard_policy);
}

static int exists(const char *dm)
{
	struct dmx_info i;

	return dmx_info(dm, &i) == 1;
}

static int check_free_names(const char *name, int on_top)
{
	char dm[DMNAME_LEN + 16];

	if (on_top && exists(name))
		return err(EXIT_BUSY, name, "a device-mapper device with this name exists already");
	snprintf(dm, sizeof(dm), "%s%s", name, SUFFIX_REAL);
	if (exists(dm))
		return err(EXIT_BUSY, dm, "exists already; pick another --name");
	snprintf(dm, sizeof(dm), "%s%s", name, SUFFIX_VIEW);
	if (exists(dm))
		return err(EXIT_BUSY, dm, "exists already; pick another --name");
	return 0;
}

static int attach_in_place(const struct attach_opts *o, const struct dmx_info *dev)
{
	struct dm_table_lines old = { 0 }, new = { 0 };
	struct dmx_info ri;
	char name[DMNAME_LEN], real[DMNAME_LEN + 8], uuid[DMNAME_LEN + 32], params[96];
	uint64_t size;
	int r;

	snprintf(name, sizeof(name), "%s", o->name ? o->name : dev->name);
	if (!valid_name(name))
		return err(EXIT_USAGE, dev->name, "cannot use the device name as a fleece name; pass --name");
	if (!strncmp(dev->uuid, UUID_PREFIX, strlen(UUID_PREFIX)))
		return err(EXIT_BUSY, dev->name, "is a fleecectl device already (UUID %s)", dev->uuid);
	if (dmx_table(dev->name, 0, &old))
		return err(EXIT_FAIL, dev->name, "cannot read its table: %s", strerror(dmx_errno));
	if (!dev->live_table || old.n == 0) {
		r = err(EXIT_BUSY, dev->name, "has no active table");
		goto out;
	}
	for (int i = 0; i < old.n; i++) {
		if (!strcmp(old.t[i].type, TARGET_ORIGIN)) {
			r = err(EXIT_BUSY, dev->name, "is attached already");
			hint("see '%s status'", g_prog);
			goto out;
		}
		if (strcmp(old.t[i].type, "linear") && strcmp(old.t[i].type, "striped")) {
			r = err(EXIT_BUSY, dev->name, "its table uses the \"%s\" target, which cannot be moved in place",
				old.t[i].type);
			hint("only linear and striped tables (plain LVM volumes) move in place;");
			hint("use --on-top to create /dev/mapper/NAME on top of it instead");
			goto out;
		}
	}
	if (dev->inactive_table) {
		r = err(EXIT_BUSY, dev->name, "has a table loaded but not active (a reload in progress?)");
		hint("finish or clear it first (dmsetup resume/clear %s)", dev->name);
		goto out;
	}
	if (dev->suspended) {
		r = err(EXIT_BUSY, dev->name, "is suspended");
		hint("resume it first (dmsetup resume %s)", dev->name);
		goto out;
	}
	size = dm_table_size(&old);
	if (size < o->chunk_sectors) {
		r = err(EXIT_USAGE, dev->name, "is smaller than one chunk");
		goto out;
	}
	if ((r = check_free_names(name, 0)))
		goto out;

	/* 1. the old table moves to N-real (private: no udev scans) */
	snprintf(real, sizeof(real), "%s%s", name, SUFFIX_REAL);
	snprintf(uuid, sizeof(uuid), "%s%s", UUID_REAL, name);
	if (dmx_create(real, uuid, &old, UDEV_FLAGS_PRIVATE)) {
		r = err(EXIT_FAIL, real, "cannot create: %s", strerror(dmx_errno));
		goto out;
	}
	if (dmx_info(real, &ri) != 1) {
		r = err(EXIT_FAIL, real, "disappeared after creation");
		goto out_real;
	}
	vmsg("created %s (%u:%u) with the old table of %s", real, ri.major, ri.minor, dev->name);

	/* 2. the fleece origin table on top of it */
	origin_params(params, sizeof(params), ri.major, ri.minor, o);
	new.n = 1;
	new.t[0].start = 0;
	new.t[0].len = size;
	snprintf(new.t[0].type, sizeof(new.t[0].type), "%s", TARGET_ORIGIN);
	new.t[0].params = params;
	if (dmx_load(dev->name, &new)) {
		r = err(dmx_errno == EBUSY ? EXIT_BUSY : EXIT_FAIL, dev->name,
			"the kernel refused the fleece table: %s", strerror(dmx_errno));
		kernel_reason(dev->major, dev->minor);
		goto out_real;
	}
	/* 3. swap: suspend flushes in-flight I/O and freezes a mounted fs */
	critical_begin();
	if (dmx_suspend(dev->name, 1) && (dmx_errno != EBUSY || dmx_suspend(dev->name, 0))) {
		r = err(EXIT_FAIL, dev->name, "cannot suspend: %s", strerror(dmx_errno));
		critical_end();
		dmx_clear(dev->name);
		goto out_real;
	}
	if (dmx_resume(dev->name, 0)) {
		r = err(EXIT_FAIL, dev->name, "cannot resume with the fleece table: %s", strerror(dmx_errno));
		/* put the old table back */
		if (dmx_load(dev->name, &old) || dmx_resume(dev->name, 0)) {
			critical_end();
			hint("the device is left suspended: restore it with 'dmsetup resume %s'", dev->name);
			goto out;
		}
		critical_end();
		goto out_real;
	}
	critical_end();
	msg("attached %s in place as fleece \"%s\" (chunk size %u KiB); its path keeps working",
	    dev->name, name, o->chunk_sectors / 2);
	msg("old table moved to %s/%s; next: %s snapshot %s --exception FILE|DEVICE",
	    dm_dir(), real, g_prog, name);
	r = EXIT_OK;
	goto out;

out_real:
	if (dmx_remove(real, 0, UDEV_FLAGS_PRIVATE))
		hint("could not remove %s: remove it with 'dmsetup remove %s'", real, real);
out:
	dm_table_free(&old);
	return r;
}

static int attach_on_top(const struct attach_opts *o, const char *path, const struct stat *st,
			 const struct dmx_info *dm)
{
	struct dm_table_lines t = { 0 };
	char name[DMNAME_LEN + 16], uuid[DMNAME_LEN + 32], params[96], tmp[PATH_MAX], node[PATH_MAX];
	uint64_t bytes;
	int fd, r;

	if (o->name) {
		snprintf(name, sizeof(name), "%s", o->name);
	} else if (dm && dm->exists) {
		snprintf(name, sizeof(name), "%s-fleece", dm->name);
	} else {
		snprintf(tmp, sizeof(tmp), "%s", path);
		snprintf(name, sizeof(name), "%s", basename(tmp));
	}
	if (!valid_name(name))
		return err(EXIT_USAGE, path, "cannot derive a fleece name (\"%s\"); pass --name", name);
	/* O_EXCL on a block device: fails while mounted or held by another device */
	fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC);
	if (fd < 0) {
		if (errno == EBUSY) {
			err(EXIT_BUSY, path, "is in use (mounted, or held by another device)");
			hint("stop its users (umount), attach, then use %s/%s instead of %s", dm_dir(), name, path);
			return EXIT_BUSY;
		}
		return err(EXIT_FAIL, path, "cannot open: %s", strerror(errno));
	}
	if (ioctl(fd, BLKGETSIZE64, &bytes)) {
		r = err(EXIT_FAIL, path, "cannot get its size: %s", strerror(errno));
		close(fd);
		return r;
	}
	close(fd);
	if (bytes / 512 < o->chunk_sectors)
		return err(EXIT_USAGE, path, "is smaller than one chunk");
	if ((r = check_free_names(name, 1)))
		return r;

	snprintf(uuid, sizeof(uuid), "%s%s", UUID_ORIGIN, name);
	origin_params(params, sizeof(params), major(st->st_rdev), minor(st->st_rdev), o);
	t.n = 1;
	t.t[0].start = 0;
	t.t[0].len = bytes / 512;
	snprintf(t.t[0].type, sizeof(t.t[0].type), "%s", TARGET_ORIGIN);
	t.t[0].params = params;
	if (dmx_create(name, uuid, &t, 0)) {
		struct dmx_info ni;

		r = err(dmx_errno == EBUSY ? EXIT_BUSY : EXIT_FAIL, name, "cannot create the fleece origin on %s: %s",
			path, strerror(dmx_errno));
		/* a failed create can leave an empty device behind */
		if (dmx_info(name, &ni) == 1) {
			kernel_reason(ni.major, ni.minor);
			dmx_remove(name, 0, 0);
		} else {
			hint("the kernel log may say why: dmesg | grep fleece");
		}
		return r;
	}
	if (dm_node_path(node, sizeof(node), name))
		snprintf(node, sizeof(node), "%s/%s", dm_dir(), name);
	msg("created %s on top of %s as fleece \"%s\" (chunk size %u KiB)", node, path, name,
	    o->chunk_sectors / 2);
	msg("switch the device's users to %s: writes that go to %s directly are not seen by the snapshot",
	    node, path);
	return EXIT_OK;
}

int cmd_attach(int argc, char **argv)
{
	struct attach_opts o;
	struct dmx_info dm;
	struct stat st;
	int r;

	if ((r = parse_attach_opts(argc, argv, &o)))
		return r;
	if ((r = need_fleece_targets()))
		return r;
	if (stat(o.device, &st)) {
		/* a bare dm name is fine too */
		char p[PATH_MAX];

		snprintf(p, sizeof(p), "%s/%s", dm_dir(), o.device);
		if (strchr(o.device, '/') || stat(p, &st))
			return err(EXIT_NOTFOUND, o.device, "no such device");
		o.device = strdup(p);
	}
	if (!S_ISBLK(st.st_mode))
		return err(EXIT_USAGE, o.device, "not a block device");
	r = dmx_info_devno(major(st.st_rdev), minor(st.st_rdev), &dm);
	if (r < 0)
		return err(EXIT_FAIL, o.device, "cannot query device-mapper: %s", strerror(dmx_errno));
	if (r == 1 && !strncmp(dm.uuid, UUID_PREFIX, strlen(UUID_PREFIX)))
		return err(EXIT_BUSY, o.device, "is a fleecectl device already (%s)", dm.uuid);
	if (r == 1 && !o.on_top)
		return attach_in_place(&o, &dm);
	return attach_on_top(&o, o.device, &st, r == 1 ? &dm : NULL);
}
