// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl backup: read the view, write a raw sparse image.
 *
 * The view is read with O_DIRECT in units of --io-size (default 1 MiB, a
 * multiple of the chunk size).  4 KiB blocks that are all zero are not
 * written, so a regular output file stays sparse; a block device as output
 * gets every block.
 *
 * --release: after a unit's data is on stable storage (fdatasync of the
 * output, batched every RELEASE_BATCH bytes), the chunks it covers are
 * released: the kernel stops protecting them and frees their exception
 * slots.  This keeps the exception store small on long backups.
 *
 * Exit codes: 0 done; 8 the snapshot is or became invalid (reason from the
 * status line); 9 read error on the view (e.g. a released chunk) or write
 * error on the output; 6 the output ran out of space.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "fleecectl.h"

#define ZERO_BLOCK 4096u
#define RELEASE_BATCH (32ull << 20)
#define DEFAULT_IO (1ull << 20)

int parse_backup_opts(int argc, char **argv, struct backup_opts *o)
{
	static const struct option lo[] = {
		{ "to", required_argument, NULL, 'o' },
		{ "release", no_argument, NULL, 'r' },
		{ "force", no_argument, NULL, 'f' },
		{ "progress", no_argument, NULL, 'P' },
		{ "no-progress", no_argument, NULL, 'N' },
		{ "io-size", required_argument, NULL, 'I' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->progress = -1;
	o->io_bytes = DEFAULT_IO;
	optind = 0;
	while ((c = getopt_long(argc, argv, "o:rfh", lo, NULL)) != -1) {
		switch (c) {
		case 'o':
			o->to = optarg;
			break;
		case 'r':
			o->release = 1;
			break;
		case 'f':
			o->force = 1;
			break;
		case 'P':
			o->progress = 1;
			break;
		case 'N':
			o->progress = 0;
			break;
		case 'I':
			if (parse_size(optarg, &o->io_bytes, NULL) || o->io_bytes < 4096 ||
			    o->io_bytes > (64ull << 20) || (o->io_bytes & (o->io_bytes - 1)))
				return err(EXIT_USAGE, NULL, "invalid --io-size \"%s\": a power of two, 4K..64M", optarg);
			break;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1)
		return err(EXIT_USAGE, NULL, "backup needs exactly one NAME (see %s backup --help)", g_prog);
	o->name = argv[optind];
	if (!o->to)
		return err(EXIT_USAGE, o->name, "backup needs --to FILE");
	return 0;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct progress {
	int tty;
	double start, last;
	int last_pct;
	uint64_t total;
};

static void progress_show(struct progress *p, uint64_t done, int final)
{
	double t = now(), el = t - p->start, rate = el > 0 ? done / el : 0;
	int pct = p->total ? (int)(done * 100 / p->total) : 100;
	char a[32], b[32], eta[32];

	if (p->tty) {
		char bar[31];
		int fill = pct * 30 / 100;

		if (!final && t - p->last < 0.25)
			return;
		memset(bar, '#', fill);
		memset(bar + fill, '.', 30 - fill);
		bar[30] = 0;
		fprintf(stderr, "\r[%s] %3d%%  %s / %s  %.1f MB/s  ETA %s ", bar, pct, fmt_size(a, sizeof(a), done),
			fmt_size(b, sizeof(b), p->total), rate / 1e6,
			fmt_eta(eta, sizeof(eta), rate > 0 ? (p->total - done) / rate : -1));
		if (final)
			fputc('\n', stderr);
	} else {
		if (!final && pct / 10 == p->last_pct / 10)
			return;
		fprintf(stderr, "%s: backup %3d%%  %s of %s  %.1f MB/s  ETA %s\n", g_prog, pct,
			fmt_size(a, sizeof(a), done), fmt_size(b, sizeof(b), p->total), rate / 1e6,
			fmt_eta(eta, sizeof(eta), rate > 0 ? (p->total - done) / rate : -1));
	}
	p->last = t;
	p->last_pct = pct;
}

/* Why did a read of the view fail?  Prints the error, returns the exit code. */
static int read_failed(struct fleece_set *s, int e, uint64_t off)
{
	char sz[32];

	set_refresh(s);
	if (!s->have_view) {
		err(EXIT_INVALID, s->name, "the snapshot ended during the backup (%s removed)", s->view);
		return EXIT_INVALID;
	}
	if (s->have_status && s->st.state == ST_INVALID) {
		err(EXIT_INVALID, s->view, "the snapshot became invalid (error: %s) at %s; the backup is incomplete",
		    s->st.error, fmt_size(sz, sizeof(sz), off));
		if (!strcmp(s->st.error, "full"))
			hint("the exception store filled up: use a bigger --exception/--size, or back up with --release");
		else if (!strcmp(s->st.error, "timeout"))
			hint("a copy took longer than cbw_timeout_ms; raise --cbw-timeout or use 0");
		return EXIT_INVALID;
	}
	err(EXIT_IO, s->view, "read error at byte %" PRIu64 ": %s%s", off, strerror(e),
	    s->have_status && s->st.chunks_released ? " (was that range released?)" : "");
	return EXIT_IO;
}

static int write_all(int fd, const char *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* Write the non-zero 4 KiB runs of buf (or everything, when !sparse). */
static int write_unit(int fd, const char *buf, size_t len, uint64_t off, int sparse, uint64_t *data)
{
	size_t i = 0;

	if (!sparse) {
		*data += len;
		return write_all(fd, buf, len, off);
	}
	while (i < len) {
		size_t j, bl = len - i < ZERO_BLOCK ? len - i : ZERO_BLOCK;

		if (is_all_zero(buf + i, bl)) {
			i += bl;
			continue;
		}
		for (j = i + bl; j < len; j += ZERO_BLOCK) {
			size_t b2 = len - j < ZERO_BLOCK ? len - j : ZERO_BLOCK;

			if (is_all_zero(buf + j, b2))
				break;
		}
		if (j > len)
			j = len;
		if (write_all(fd, buf + i, j - i, off + i))
			return -1;
		*data += j - i;
		i = j;
	}
	return 0;
}

static int release_range(struct fleece_set *s, int out, uint64_t from, uint64_t to, uint64_t *released)
{
	char m[96];

	if (to <= from)
		return 0;
	if (fdatasync(out))
		return err(EXIT_IO, s->name, "cannot sync the output before releasing: %s", strerror(errno));
	snprintf(m, sizeof(m), DM_FLEECE_MSG_RELEASE " %" PRIu64 " %" PRIu64, from / 512, (to - from) / 512);
	if (dmx_message(s->view, m, NULL, 0)) {
		warn_msg(s->view, "release %" PRIu64 "..%" PRIu64 " failed: %s", from, to, strerror(dmx_errno));
		return 0;
	}
	*released += to - from;
	return 0;
}

/* One backup on its way: the view, the output and how far it got. */
struct backup {
	char node[PATH_MAX];		/* the view's device node */
	int in, out;			/* the view, the output */
	int sparse;			/* the output is a file: zero blocks stay holes */
	uint64_t size;			/* of the view, in bytes */
	uint64_t io;			/* bytes per read */
	uint64_t off;			/* copied so far */
	uint64_t data;			/* of that, bytes written */
	uint64_t released;
	void *buf;
	struct progress pg;
	double t0;
};

/* There must be a snapshot, and a valid one. */
static int check_backupable(const struct fleece_set *s)
{
	if (!s->have_view) {
		err(EXIT_BUSY, s->name, "has no snapshot to back up");
		hint("take one first: %s snapshot %s --exception FILE|DEVICE", g_prog, s->name);
		return EXIT_BUSY;
	}
	if (s->have_status && s->st.state == ST_INVALID) {
		err(EXIT_INVALID, s->view, "the snapshot is invalid (error: %s); nothing to back up", s->st.error);
		hint("end it and take a new one: %s end %s", g_prog, s->name);
		return EXIT_INVALID;
	}
	return 0;
}

/* Open the view with O_DIRECT and get its size. */
static int open_view(const struct fleece_set *s, struct backup *b)
{
	if (dm_node_path(b->node, sizeof(b->node), s->view))
		return err(EXIT_FAIL, s->view, "no device node in %s and cannot make one", dm_dir());
	b->in = open(b->node, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (b->in < 0)
		return err(EXIT_FAIL, b->node, "cannot open: %s", strerror(errno));
	if (ioctl(b->in, BLKGETSIZE64, &b->size))
		return err(EXIT_FAIL, b->node, "cannot get its size: %s", strerror(errno));
	return 0;
}

/* A new file (or any file with --force), or a block device at least as big as the view. */
static int open_output(const struct backup_opts *o, struct backup *b)
{
	struct stat ost;
	char a[32], c[32];
	int flags;

	flags = O_WRONLY | O_CREAT | O_CLOEXEC;
	if (stat(o->to, &ost) == 0 && S_ISBLK(ost.st_mode)) {
		b->sparse = 0;
	} else {
		b->sparse = 1;
		flags |= o->force ? O_TRUNC : O_EXCL;
	}
	b->out = open(o->to, flags, 0600);
	if (b->out < 0) {
		if (errno == EEXIST)
			return err(EXIT_BUSY, o->to, "exists already; pass --force to overwrite it");
		return err(EXIT_FAIL, o->to, "cannot open for writing: %s", strerror(errno));
	}
	if (!b->sparse) {
		uint64_t osz;

		if (ioctl(b->out, BLKGETSIZE64, &osz) == 0 && osz < b->size)
			return err(EXIT_NOSPACE, o->to, "is smaller (%s) than the snapshot (%s)",
				   fmt_size(a, sizeof(a), osz), fmt_size(c, sizeof(c), b->size));
	}
	return 0;
}

/* The read buffer: --io-size, at least one chunk. */
static int alloc_buffer(const struct backup_opts *o, const struct fleece_set *s, struct backup *b)
{
	b->io = o->io_bytes;
	if (s->chunk_sectors && b->io < s->chunk_sectors * 512ull)
		b->io = s->chunk_sectors * 512ull;
	if (posix_memalign(&b->buf, 4096, b->io))
		return err(EXIT_FAIL, NULL, "out of memory");
	return 0;
}

static void start_progress(const struct backup_opts *o, struct backup *b)
{
	char a[32];

	b->pg.tty = o->progress == -1 ? isatty(2) : o->progress;
	if (g_quiet)
		b->pg.tty = 0;
	b->pg.total = b->size;
	b->pg.start = b->pg.last = b->t0 = now();
	b->pg.last_pct = -1;
	if (!g_quiet)
		msg("backing up %s (%s) to %s%s", b->node, fmt_size(a, sizeof(a), b->size), o->to,
		    o->release ? ", releasing chunks as they are written" : "");
}

/* Read the view unit by unit, write each, release what is on stable storage. */
static int copy_view(const struct backup_opts *o, struct fleece_set *s, struct backup *b)
{
	uint64_t rel_from = 0;
	int r;

	while (b->off < b->size) {
		size_t want = b->size - b->off < b->io ? (size_t)(b->size - b->off) : (size_t)b->io, got = 0;

		while (got < want) {
			ssize_t n = pread(b->in, (char *)b->buf + got, want - got, (off_t)(b->off + got));

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return read_failed(s, n < 0 ? errno : EIO, b->off + got);
			got += (size_t)n;
		}
		if (write_unit(b->out, b->buf, want, b->off, b->sparse, &b->data))
			return err(errno == ENOSPC ? EXIT_NOSPACE : EXIT_IO, o->to, "write error at byte %" PRIu64 ": %s",
				   b->off, strerror(errno));
		b->off += want;
		if (o->release && (b->off - rel_from >= RELEASE_BATCH || b->off == b->size)) {
			if ((r = release_range(s, b->out, rel_from, b->off, &b->released)))
				return r;
			rel_from = b->off;
		}
		if (!g_quiet)
			progress_show(&b->pg, b->off, b->off == b->size);
	}
	return 0;
}

/* The output's full size (a file may end in a hole), on stable storage. */
static int finish_output(const struct backup_opts *o, const struct backup *b)
{
	if (b->sparse && ftruncate(b->out, (off_t)b->size))
		return err(EXIT_IO, o->to, "cannot set the size: %s", strerror(errno));
	if (fsync(b->out))
		return err(EXIT_IO, o->to, "cannot sync: %s", strerror(errno));
	return 0;
}

static void print_backup(const struct backup_opts *o, struct fleece_set *s, const struct backup *b)
{
	double el;
	char a[32], c[32];

	/* A snapshot that broke after our last read does not spoil the copy. */
	set_refresh(s);
	el = now() - b->t0;
	msg("backup of %s complete: %s in %.1f s (%.1f MB/s), %s of data%s%s", s->name,
	    fmt_size(a, sizeof(a), b->size), el, el > 0 ? b->size / el / 1e6 : 0.0, fmt_size(c, sizeof(c), b->data),
	    b->sparse ? " (zero blocks left sparse)" : "",
	    o->release ? ", all chunks released" : "");
}

/* After a failed copy: what is written so far is synced, and said to be incomplete. */
static void report_incomplete(const struct backup_opts *o, const struct backup *b, int r)
{
	char a[32], c[32];

	if (b->pg.tty && !g_quiet)
		fputc('\n', stderr);
	if (b->out >= 0)
		fsync(b->out);
	err(r, o->to, "is incomplete: %s of %s written", fmt_size(a, sizeof(a), b->off),
	    fmt_size(c, sizeof(c), b->size));
}

int cmd_backup(int argc, char **argv)
{
	struct backup_opts o;
	struct fleece_set s;
	struct backup b = { .in = -1, .out = -1 };
	int r;

	if ((r = parse_backup_opts(argc, argv, &o)))
		return r;
	if ((r = need_fleece_targets()))
		return r;
	if ((r = set_resolve(o.name, &s)))
		return r;
	if ((r = check_backupable(&s)))
		return r;
	if ((r = open_view(&s, &b)))
		goto out;
	if ((r = open_output(&o, &b)))
		goto out;
	if ((r = alloc_buffer(&o, &s, &b)))
		goto out;
	start_progress(&o, &b);
	if ((r = copy_view(&o, &s, &b))) {
		report_incomplete(&o, &b, r);
		goto out;
	}
	if ((r = finish_output(&o, &b)))
		goto out;
	print_backup(&o, &s, &b);
	r = EXIT_OK;
out:
	free(b.buf);
	if (b.in >= 0)
		close(b.in);
	if (b.out >= 0)
		close(b.out);
	return r;
}
