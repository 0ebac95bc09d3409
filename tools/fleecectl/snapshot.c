// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl snapshot: create the view N-view at an atomic point in time.
 *
 *   0. set up the exception store (a block device, or a file through a
 *      loop device that fleecectl owns);
 *   1. create N-view and load "fleece-view <origin> <exception> ..." into
 *      it -- the kernel checks everything here, before anything freezes;
 *   2. suspend the origin, which flushes in-flight writes and freezes a
 *      mounted file system;
 *   3. resume the view: this is the point in time;
 *   4. resume the origin.
 *
 * Overflow: when the exception store is full and a write needs one more
 * copy, cbw_error decides: break_snapshot (default) makes the snapshot
 * invalid (state "invalid", error "full") and the write goes on;
 * break_write fails that write with EIO and keeps the snapshot.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
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

int parse_snapshot_opts(int argc, char **argv, struct snapshot_opts *o)
{
	static const struct option lo[] = {
		{ "exception", required_argument, NULL, 'e' },
		{ "size", required_argument, NULL, 's' },
		{ "cbw-error", required_argument, NULL, 'E' },
		{ "cbw-timeout", required_argument, NULL, 'T' },
		{ "max-copies", required_argument, NULL, 'M' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	uint64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((c = getopt_long(argc, argv, "e:s:h", lo, NULL)) != -1) {
		switch (c) {
		case 'e':
			o->exception = optarg;
			break;
		case 's':
			if (parse_size(optarg, &o->size_bytes, &o->size_percent))
				return err(EXIT_USAGE, NULL, "invalid --size \"%s\": e.g. 512M, 2G, 25%%", optarg);
			break;
		case 'E':
			if (parse_cbw_error(optarg, &o->vt.cbw_error))
				return err(EXIT_USAGE, NULL, "invalid --cbw-error \"%s\": break_snapshot or break_write",
					   optarg);
			break;
		case 'T':
			if (parse_u64(optarg, &v) || v > DM_FLEECE_MAX_CBW_TIMEOUT_MS)
				return err(EXIT_USAGE, NULL, "invalid --cbw-timeout \"%s\": milliseconds, 0..%u",
					   optarg, DM_FLEECE_MAX_CBW_TIMEOUT_MS);
			o->vt.cbw_timeout_ms = v;
			break;
		case 'M':
			if (parse_u64(optarg, &v) || v == 0 || v > DM_FLEECE_MAX_COPIES)
				return err(EXIT_USAGE, NULL, "invalid --max-copies \"%s\": 1..%u", optarg,
					   DM_FLEECE_MAX_COPIES);
			o->vt.max_copies = v;
			break;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1)
		return err(EXIT_USAGE, NULL, "snapshot needs exactly one NAME (see %s snapshot --help)", g_prog);
	o->name = argv[optind];
	if (!o->exception)
		return err(EXIT_USAGE, o->name, "snapshot needs --exception FILE|DEVICE for the copied chunks");
	return 0;
}

struct exception {
	char path[PATH_MAX];	/* what the user gave, resolved */
	char dev[PATH_MAX];	/* block device the view uses */
	unsigned major, minor;
	uint64_t bytes;
	int is_file, created, loop_fd;
};

static int same_dev(unsigned ma, unsigned mi, unsigned ma2, unsigned mi2)
{
	return ma == ma2 && mi == mi2;
}

/* The exception store must not be the origin or anything it sits on. */
static int check_not_origin(const struct fleece_set *s, const char *what, unsigned ma, unsigned mi)
{
	if (same_dev(ma, mi, s->origin_major, s->origin_minor) ||
	    same_dev(ma, mi, s->backing_major, s->backing_minor) ||
	    (s->have_real && same_dev(ma, mi, s->real_major, s->real_minor))) {
		err(EXIT_USAGE, what, "lives on the origin %s itself: copies would be written into the device they protect",
		    s->origin);
		hint("put the exception store on another device");
		return EXIT_USAGE;
	}
	return 0;
}

static int setup_file(const struct snapshot_opts *o, const struct fleece_set *s, struct exception *e)
{
	uint64_t chunk = (uint64_t)s->chunk_sectors * 512, want;
	struct stat st;
	int fd, r;

	fd = open(o->exception, O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0600);
	if (fd >= 0) {
		e->created = 1;
	} else if (errno == EEXIST) {
		fd = open(o->exception, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return err(EXIT_FAIL, o->exception, "cannot open: %s", strerror(errno));
	} else {
		return err(EXIT_FAIL, o->exception, "cannot create: %s", strerror(errno));
	}
	if (!realpath(o->exception, e->path))
		snprintf(e->path, sizeof(e->path), "%s", o->exception);
	if (fstat(fd, &st)) {
		r = err(EXIT_FAIL, o->exception, "cannot stat: %s", strerror(errno));
		goto fail;
	}
	if ((r = check_not_origin(s, o->exception, major(st.st_dev), minor(st.st_dev))))
		goto fail;
	if (o->size_percent)
		want = s->size_sectors * 512 / 100 * o->size_percent;
	else if (o->size_bytes)
		want = o->size_bytes;
	else if (e->created)
		want = s->size_sectors * 512 / 100 * EXCEPTION_DEFAULT_PERCENT;
	else
		want = (uint64_t)st.st_size;
	want = (want + chunk - 1) / chunk * chunk;
	if (want > (uint64_t)st.st_size) {
		/* allocate for real: a sparse file could hit ENOSPC mid-backup */
		r = posix_fallocate(fd, 0, (off_t)want);
		if (r == EOPNOTSUPP || r == EINVAL) {
			warn_msg(o->exception, "cannot preallocate here; using a sparse file");
			r = ftruncate(fd, (off_t)want) ? errno : 0;
		}
		if (r) {
			char sz[32];

			r = err(r == ENOSPC || r == EFBIG ? EXIT_NOSPACE : EXIT_FAIL, o->exception,
				"cannot make it %s: %s", fmt_size(sz, sizeof(sz), want), strerror(r));
			hint("free space, pick a smaller --size, or put it elsewhere");
			goto fail;
		}
		vmsg("%s: %s %" PRIu64 " bytes", o->exception, e->created ? "created" : "grew to", want);
	}
	e->bytes = want > (uint64_t)st.st_size ? want : (uint64_t)st.st_size;
	e->is_file = 1;
	close(fd);
	fd = -1;
	e->loop_fd = loop_attach(e->path, e->dev, sizeof(e->dev), &e->major, &e->minor);
	if (e->loop_fd < 0) {
		r = err(EXIT_FAIL, o->exception, "cannot attach a loop device: %s", strerror(-e->loop_fd));
		hint("is the loop module loaded (modprobe loop)?");
		goto fail;
	}
	vmsg("%s on %s (%u:%u)", e->path, e->dev, e->major, e->minor);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	if (e->created)
		unlink(o->exception);
	e->created = 0;
	return r;
}

static int setup_exception(const struct snapshot_opts *o, const struct fleece_set *s, struct exception *e)
{
	struct stat st;
	int fd, r;

	memset(e, 0, sizeof(*e));
	e->loop_fd = -1;
	if (stat(o->exception, &st) || S_ISREG(st.st_mode))
		return setup_file(o, s, e);
	if (!S_ISBLK(st.st_mode))
		return err(EXIT_USAGE, o->exception, "neither a block device nor a regular file");
	if (o->size_bytes || o->size_percent)
		return err(EXIT_USAGE, o->exception, "--size only applies to an exception file; a device is used whole");
	if ((r = check_not_origin(s, o->exception, major(st.st_rdev), minor(st.st_rdev))))
		return r;
	fd = open(o->exception, O_RDWR | O_EXCL | O_CLOEXEC);
	if (fd < 0) {
		if (errno == EBUSY) {
			err(EXIT_BUSY, o->exception, "is in use (mounted, or held by another device)");
			hint("pick an unused device or a file");
			return EXIT_BUSY;
		}
		return err(EXIT_FAIL, o->exception, "cannot open: %s", strerror(errno));
	}
	if (ioctl(fd, BLKGETSIZE64, &e->bytes)) {
		r = err(EXIT_FAIL, o->exception, "cannot get its size: %s", strerror(errno));
		close(fd);
		return r;
	}
	close(fd);
	snprintf(e->path, sizeof(e->path), "%s", o->exception);
	snprintf(e->dev, sizeof(e->dev), "%s", o->exception);
	e->major = major(st.st_rdev);
	e->minor = minor(st.st_rdev);
	return 0;
}

static void undo_exception(struct exception *e, const char *name)
{
	if (e->loop_fd >= 0) {
		close(e->loop_fd);	/* autoclear detaches it */
		e->loop_fd = -1;
	}
	if (e->is_file)
		loop_detach(e->dev, e->path);
	if (e->created)
		unlink(e->path);
	{
		char p[PATH_MAX];

		set_path(p, sizeof(p), name, "exception");
		unlink(p);
	}
}

/* Refuse a half set up set, an existing snapshot and an unknown chunk size. */
static int check_idle(const struct fleece_set *s)
{
	uint64_t chunk_bytes = (uint64_t)s->chunk_sectors * 512;

	if (!s->have_origin) {
		err(EXIT_BUSY, s->name, "is half set up (%s has no origin on top)", s->real);
		hint("clean up with '%s detach %s' and attach again", g_prog, s->name);
		return EXIT_BUSY;
	}
	if (s->have_view) {
		err(EXIT_BUSY, s->name, "a snapshot exists already (%s/%s, state %s)", dm_dir(), s->view,
		    s->have_status ? state_name(s->st.state) : "unknown");
		hint("end it first: %s end %s", g_prog, s->name);
		return EXIT_BUSY;
	}
	if (s->have_status && s->st.state != ST_IDLE) {
		err(EXIT_BUSY, s->origin, "the origin reports a snapshot (%s) but %s does not exist",
		    state_name(s->st.state), s->view);
		hint("check 'dmsetup ls' and 'dmsetup status %s'", s->origin);
		return EXIT_BUSY;
	}
	if (!chunk_bytes)
		return err(EXIT_FAIL, s->origin, "cannot read the chunk size from its table");
	return 0;
}

/*
 * The store must hold EXCEPTION_MIN_CHUNKS chunks.  Warn under the size
 * fleecectl(8) SIZING advises: EXCEPTION_ADVISED_PERCENT of the origin, and
 * with discard_policy copy, an fstrim may copy every free chunk as well.
 */
static int check_exception_size(const struct snapshot_opts *o, const struct fleece_set *s,
				const struct exception *e, uint64_t *slots)
{
	uint64_t chunk_bytes = (uint64_t)s->chunk_sectors * 512;
	char sz[32];

	*slots = e->bytes / chunk_bytes;
	if (*slots < EXCEPTION_MIN_CHUNKS) {
		err(EXIT_NOSPACE, o->exception, "is too small: %s holds %" PRIu64 " chunks of %" PRIu64
		    " KiB, at least %u are needed", fmt_size(sz, sizeof(sz), e->bytes), *slots, chunk_bytes / 1024,
		    EXCEPTION_MIN_CHUNKS);
		hint("use a bigger device or --size (default for a new file: %u%% of the origin)",
		     EXCEPTION_DEFAULT_PERCENT);
		return EXIT_NOSPACE;
	}
	if (*slots * 100 < s->size_sectors / s->chunk_sectors * EXCEPTION_ADVISED_PERCENT) {
		warn_msg(o->exception, "holds only %" PRIu64 " of %" PRIu64 " chunks (under the advised %u%%):"
			 " if more than that changes before the backup ends, the snapshot %s", *slots,
			 s->size_sectors / s->chunk_sectors, EXCEPTION_ADVISED_PERCENT,
			 o->vt.cbw_error == CBW_BREAK_WRITE ? "stays but writes fail" : "becomes invalid");
		hint("see SIZING in fleecectl(8); --size sets the size of a new file");
	}
	if (!strcmp(s->discard_policy, DM_FLEECE_DISCARD_COPY))
		warn_msg(s->name, "has discard_policy copy: an fstrim during the backup copies every free chunk"
			 " and can fill the store; attach with --discard-policy defer to avoid that");
	return 0;
}

/* Record the exception store before the view exists, for 'end'. */
static int record_exception(const struct fleece_set *s, const struct exception *e)
{
	struct kv kv = { 0 };
	char p[PATH_MAX];

	kv_set(&kv, "device", "%s", e->dev);
	kv_set(&kv, "devno", "%u:%u", e->major, e->minor);
	kv_set(&kv, "file", "%s", e->is_file ? e->path : "");
	kv_set(&kv, "loop", "%d", e->is_file);
	kv_set(&kv, "created", "%d", e->created);
	kv_set(&kv, "bytes", "%" PRIu64, e->bytes);
	set_path(p, sizeof(p), s->name, "exception");
	if (kv_save(&kv, p))
		return err(EXIT_FAIL, p, "cannot write state: %s", strerror(errno));
	return 0;
}

/* 1a. Create N-view, without a table yet. */
static int create_view(struct fleece_set *s)
{
	char uuid[DMNAME_LEN + 32];
	struct dmx_info vi;

	snprintf(uuid, sizeof(uuid), "%s%s", UUID_VIEW, s->name);
	if (dmx_create(s->view, uuid, NULL, UDEV_FLAGS_VIEW))
		return err(dmx_errno == EBUSY ? EXIT_BUSY : EXIT_FAIL, s->view, "cannot create: %s",
			   strerror(dmx_errno));
	if (dmx_info(s->view, &vi) == 1) {
		s->view_major = vi.major;
		s->view_minor = vi.minor;
	}
	return 0;
}

/*
 * 1b. Load "fleece-view <origin> <exception> ..." into N-view: the kernel
 * checks everything here, before anything freezes.
 */
static int load_view(struct snapshot_opts *o, const struct fleece_set *s, struct exception *e)
{
	struct dm_table_lines t = { 0 };
	char params[256];
	int r;

	o->vt.origin_major = s->origin_major;
	o->vt.origin_minor = s->origin_minor;
	o->vt.exc_major = e->major;
	o->vt.exc_minor = e->minor;
	if (format_view_params(params, sizeof(params), &o->vt) < 0)
		return err(EXIT_FAIL, s->view, "table line too long");
	t.n = 1;
	t.t[0].start = 0;
	t.t[0].len = s->size_sectors;
	snprintf(t.t[0].type, sizeof(t.t[0].type), "%s", TARGET_VIEW);
	t.t[0].params = params;
	vmsg("%s: 0 %" PRIu64 " %s %s", s->view, s->size_sectors, TARGET_VIEW, params);
	if (dmx_load(s->view, &t)) {
		if (dmx_errno == EBUSY)
			r = EXIT_BUSY;
		else if (dmx_errno == ENOSPC)
			r = EXIT_NOSPACE;
		else
			r = EXIT_FAIL;
		err(r, s->view, "the kernel refused the view: %s", strerror(dmx_errno));
		kernel_reason(s->view_major, s->view_minor);
		return r;
	}
	/* the view holds the loop device now; autoclear frees it with the view */
	if (e->loop_fd >= 0) {
		close(e->loop_fd);
		e->loop_fd = -1;
	}
	return 0;
}

/*
 * 2..4. The point in time: suspend the origin, resume the view, resume the
 * origin, with no signal and no page fault in between (critical_begin()).
 * On failure, *taken tells whether the snapshot exists all the same (only
 * the origin's resume failed): then the view must stay.
 */
static int take_point_in_time(const struct fleece_set *s, int *taken)
{
	uint32_t cookie = 0;
	int r;

	*taken = 0;
	critical_begin();
	if (dmx_suspend(s->origin, 1)) {
		/*
		 * EBUSY: the file system on it is frozen already (fsfreeze), and
		 * 6.1 cannot freeze it a second time.  It is consistent as it is.
		 */
		if (dmx_errno != EBUSY || dmx_suspend(s->origin, 0)) {
			r = err(EXIT_FAIL, s->origin, "cannot suspend: %s", strerror(dmx_errno));
			critical_end();
			return r;
		}
		vmsg("%s: its file system is frozen already; suspended without freezing it", s->origin);
	}
	/*
	 * The udev wait for the view comes after the origin's resume: udev's
	 * rules may read the view, and its reads go to the suspended origin.
	 */
	if (dmx_resume_nowait(s->view, UDEV_FLAGS_VIEW, &cookie)) {
		r = err(EXIT_FAIL, s->view, "cannot start the snapshot: %s", strerror(dmx_errno));
		kernel_reason(s->view_major, s->view_minor);
		if (dmx_resume_nowait(s->origin, 0, &cookie))
			hint("%s is left suspended: 'dmsetup resume %s'", s->origin, s->origin);
		critical_end();
		dmx_udev_wait(cookie);
		return r;
	}
	*taken = 1;
	if (dmx_resume_nowait(s->origin, 0, &cookie)) {
		critical_end();
		r = err(EXIT_FAIL, s->origin, "cannot resume after the snapshot: %s", strerror(dmx_errno));
		hint("the snapshot exists; resume the origin with 'dmsetup resume %s'", s->origin);
		dmx_udev_wait(cookie);
		return r;
	}
	critical_end();
	dmx_udev_wait(cookie);
	return 0;
}

static void print_snapshot(const struct snapshot_opts *o, struct fleece_set *s, const struct exception *e,
			   uint64_t slots)
{
	uint64_t chunk_bytes = (uint64_t)s->chunk_sectors * 512;
	char sz[32], node[PATH_MAX];

	set_refresh(s);
	if (dm_node_path(node, sizeof(node), s->view))
		snprintf(node, sizeof(node), "%s/%s", dm_dir(), s->view);
	msg("snapshot of %s taken: %s (%s, state %s)", s->name, node,
	    fmt_size(sz, sizeof(sz), s->size_sectors * 512), s->have_status ? state_name(s->st.state) : "unknown");
	msg("exception store: %s%s%s, %" PRIu64 " chunks of %" PRIu64 " KiB; when full: %s", e->dev,
	    e->is_file ? " on " : "", e->is_file ? e->path : "", slots, chunk_bytes / 1024,
	    o->vt.cbw_error == CBW_BREAK_WRITE ? "writes to the origin fail (break_write)"
					       : "the snapshot becomes invalid (break_snapshot)");
}

int cmd_snapshot(int argc, char **argv)
{
	struct snapshot_opts o;
	struct fleece_set s;
	struct exception e;
	uint64_t slots;
	int r, taken;

	if ((r = parse_snapshot_opts(argc, argv, &o)))
		return r;
	if ((r = need_fleece_targets()))
		return r;
	if ((r = set_resolve(o.name, &s)))
		return r;
	if ((r = check_idle(&s)))
		return r;

	/* 0. the exception store */
	if ((r = ensure_set_dir(s.name)))
		return r;
	if ((r = setup_exception(&o, &s, &e)))
		return r;
	if ((r = check_exception_size(&o, &s, &e, &slots)))
		goto fail_exc;
	if ((r = record_exception(&s, &e)))
		goto fail_exc;

	/* 1. create and load the view */
	if ((r = create_view(&s)))
		goto fail_exc;
	if ((r = load_view(&o, &s, &e)))
		goto fail_view;

	/* 2..4. suspend the origin, resume the view, resume the origin */
	r = take_point_in_time(&s, &taken);
	if (r && taken)
		return r;	/* the snapshot exists; the origin may be left suspended */
	if (r)
		goto fail_view;

	print_snapshot(&o, &s, &e, slots);
	return EXIT_OK;

fail_view:
	dmx_remove(s.view, 0, UDEV_FLAGS_VIEW);
fail_exc:
	undo_exception(&e, s.name);
	return r;
}
