// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleece-io: I/O generator and checker for the dm-fleece selftests.
 *
 *   fleece-io stress --origin DEV --view DEV --ref FILE --seconds N
 *            [--writers N] [--readers N] [--seed N] [--max-write KiB]
 *	Random writers (writes, discards, write-zeroes; 512 B to multi-chunk,
 *	aligned and not) hit the origin while readers check every view read
 *	against REF, the origin's content at the snapshot point.  Prints the
 *	totals and exits 1 on any mismatch or I/O error.
 *
 *   fleece-io stamp --dev DEV --blocks N --progress FILE
 *	One writer that writes block (i mod N) with stamp i, i = 1, 2, ...,
 *	with O_DIRECT, one at a time, and stores the number of completed
 *	writes in FILE after each.  Runs until killed.
 *
 *   fleece-io verify-loop --view DEV --ref FILE --seconds N [--readers N]
 *            [--origin DEV --writers N] [--seed N] [--max-write KiB]
 *            [--discards K]
 *	Readers read random ranges of the view (O_DIRECT, up to --max-write
 *	KiB) for N seconds, or until SIGTERM or SIGINT, and compare every read
 *	that succeeds with FILE; writers, if any, write to the origin as in
 *	stress.  Prints the number of reads that returned the reference (ok),
 *	that failed with EIO (eio), that returned other data (wrong), that
 *	failed otherwise (other), and the writes that failed (write_errors);
 *	exits 1 on a wrong or other read or a failed write.  Failed reads are
 *	expected once a snapshot is invalid; wrong data never is.  K of every
 *	16 writer ops are discards (default 1; one more is a write-zeroes).
 *
 *   fleece-io fill --dev DEV [--seed N]
 *	Fills DEV with pseudo-random data, fast.
 *
 *   fleece-io check-stamps --dev DEV --blocks N --min K1 --max K2
 *	Checks that DEV holds exactly the state after the first k stamp writes
 *	for one k in [K1, K2]: the point in time is a prefix of the write
 *	history, neither torn nor mixed.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/fs.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512ULL
#define BLOCK 4096ULL

static const char *origin_path, *view_path, *ref_path, *progress_path;
static unsigned int seconds = 10, nr_writers = 2, nr_readers = 2;
static unsigned long long seed = 1, max_write = 1024 * 1024, nr_blocks;
static unsigned long long stamp_min, stamp_max;
static unsigned long long dev_bytes;
static int ref_fd;
static volatile int stop;
static int no_zeroes;	/* FLEECE_IO_NO_ZEROES: no BLKZEROOUT */
static unsigned int discard_share = 1;	/* --discards: of 16 writer ops */

static atomic_ullong reads_checked, blocks_checked, mismatches, read_errors;
static atomic_ullong writes_done, discards_done, zeroes_done, write_errors;
static atomic_ullong reads_ok, reads_eio, reads_wrong, reads_other;

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fill(void *buf, size_t len, uint64_t *s)
{
	uint64_t *p = buf;
	size_t i;

	for (i = 0; i < len / 8; i++)
		p[i] = xorshift(s);
}

static void *xalign(size_t len)
{
	void *p;

	if (posix_memalign(&p, BLOCK, len)) {
		perror("posix_memalign");
		exit(2);
	}
	return p;
}

static int open_dev(const char *path, int flags)
{
	int fd = open(path, flags | O_DIRECT);

	if (fd < 0) {
		fprintf(stderr, "fleece-io: cannot open %s: %s\n", path, strerror(errno));
		exit(2);
	}
	return fd;
}

static unsigned long long dev_size(int fd)
{
	unsigned long long size;

	if (ioctl(fd, BLKGETSIZE64, &size)) {
		perror("BLKGETSIZE64");
		exit(2);
	}
	return size;
}

/* Random sector-aligned range inside the device, up to @max bytes. */
static void pick_range(uint64_t *s, unsigned long long max,
		       unsigned long long *off, unsigned long long *len)
{
	unsigned long long sectors = dev_bytes / SECTOR;
	unsigned long long n = 1 + xorshift(s) % (max / SECTOR);

	/* Half the I/Os are 4 KiB aligned, the rest start at any sector. */
	*off = xorshift(s) % sectors;
	if (xorshift(s) & 1) {
		*off &= ~7ULL;
		n = (n + 7) & ~7ULL;
	}
	if (*off + n > sectors)
		n = sectors - *off;
	*off *= SECTOR;
	*len = n * SECTOR;
}

static void *writer(void *arg)
{
	uint64_t s = seed * 7919 + (uintptr_t)arg;
	int fd = open_dev(origin_path, O_WRONLY);
	void *buf = xalign(max_write);
	unsigned long long off, len, range[2];

	while (!stop) {
		unsigned int kind = xorshift(&s) % 16;

		pick_range(&s, max_write, &off, &len);
		if (kind == 1 && no_zeroes)
			kind = 0;
		else if (kind >= 2 && kind < 1 + discard_share)
			kind = 0;
		if (kind == 0 || kind == 1) {
			/* Discard and write-zeroes want whole 4 KiB blocks. */
			range[0] = off & ~(BLOCK - 1);
			range[1] = (len + BLOCK - 1) & ~(BLOCK - 1);
			if (range[0] + range[1] > dev_bytes)
				range[1] = dev_bytes - range[0];
			if (!range[1])
				continue;
			if (ioctl(fd, kind ? BLKZEROOUT : BLKDISCARD, range)) {
				if (errno == EOPNOTSUPP)
					continue;
				atomic_fetch_add(&write_errors, 1);
				fprintf(stderr, "# %s at %llu+%llu: %s\n",
					kind ? "BLKZEROOUT" : "BLKDISCARD",
					range[0], range[1], strerror(errno));
				continue;
			}
			atomic_fetch_add(kind ? &zeroes_done : &discards_done, 1);
			continue;
		}
		fill(buf, len, &s);
		if (pwrite(fd, buf, len, off) != (ssize_t)len) {
			atomic_fetch_add(&write_errors, 1);
			fprintf(stderr, "# write at %llu+%llu: %s\n", off, len,
				strerror(errno));
			continue;
		}
		atomic_fetch_add(&writes_done, 1);
	}
	free(buf);
	close(fd);
	return NULL;
}

static void *reader(void *arg)
{
	uint64_t s = seed * 104729 + (uintptr_t)arg;
	int fd = open_dev(view_path, O_RDONLY);
	void *buf = xalign(max_write), *ref = malloc(max_write);
	unsigned long long off, len, i;

	while (!stop) {
		pick_range(&s, max_write, &off, &len);
		if (pread(fd, buf, len, off) != (ssize_t)len) {
			atomic_fetch_add(&read_errors, 1);
			fprintf(stderr, "# view read at %llu+%llu: %s\n", off, len,
				strerror(errno));
			continue;
		}
		if (pread(ref_fd, ref, len, off) != (ssize_t)len) {
			perror("reference read");
			exit(2);
		}
		for (i = 0; i < len; i += SECTOR) {
			if (memcmp((char *)buf + i, (char *)ref + i, SECTOR)) {
				if (atomic_fetch_add(&mismatches, 1) < 10)
					fprintf(stderr, "# MISMATCH: view sector %llu differs from the snapshot\n",
						(off + i) / SECTOR);
			}
		}
		atomic_fetch_add(&blocks_checked, len / SECTOR);
		atomic_fetch_add(&reads_checked, 1);
	}
	free(buf);
	free(ref);
	close(fd);
	return NULL;
}

/*
 * Opens the view and the reference and starts nr_writers writers on the
 * origin and nr_readers threads running @read_fn on the view, in @t
 * (room for 64).  Returns how many threads run, or -1.
 */
static int start_threads(pthread_t *t, void *(*read_fn)(void *))
{
	unsigned int i, n = 0;
	int fd;

	fd = open_dev(view_path, O_RDONLY);
	dev_bytes = dev_size(fd);
	close(fd);
	ref_fd = open(ref_path, O_RDONLY);
	if (ref_fd < 0) {
		perror(ref_path);
		return -1;
	}
	for (i = 0; i < nr_writers && n < 64; i++)
		pthread_create(&t[n++], NULL, writer, (void *)(uintptr_t)i);
	for (i = 0; i < nr_readers && n < 64; i++)
		pthread_create(&t[n++], NULL, read_fn, (void *)(uintptr_t)i);
	return n;
}

static void stop_threads(pthread_t *t, int n)
{
	int i;

	stop = 1;
	for (i = 0; i < n; i++)
		pthread_join(t[i], NULL);
}

static int run_stress(void)
{
	pthread_t t[64];
	int n;

	if (!origin_path || !view_path || !ref_path) {
		fprintf(stderr, "fleece-io stress: --origin, --view and --ref are required\n");
		return 2;
	}
	n = start_threads(t, reader);
	if (n < 0)
		return 2;
	sleep(seconds);
	stop_threads(t, n);

	printf("reads_checked=%llu sectors_checked=%llu mismatches=%llu read_errors=%llu writes=%llu discards=%llu write_zeroes=%llu write_errors=%llu\n",
	       (unsigned long long)reads_checked, (unsigned long long)blocks_checked,
	       (unsigned long long)mismatches, (unsigned long long)read_errors,
	       (unsigned long long)writes_done, (unsigned long long)discards_done,
	       (unsigned long long)zeroes_done, (unsigned long long)write_errors);
	return (mismatches || read_errors || write_errors || !reads_checked) ? 1 : 0;
}

/*
 * verify-loop: one reader.  A read counts as wrong when it succeeds and any
 * of its sectors differs from the reference; a short read counts as other.
 */
static void *verifier(void *arg)
{
	uint64_t s = seed * 15485863 + (uintptr_t)arg;
	int fd = open_dev(view_path, O_RDONLY);
	void *buf = xalign(max_write), *ref = malloc(max_write);
	unsigned long long off, len;
	ssize_t n;

	while (!stop) {
		pick_range(&s, max_write, &off, &len);
		n = pread(fd, buf, len, off);
		if (n < 0 && errno == EIO) {
			atomic_fetch_add(&reads_eio, 1);
			continue;
		}
		if (n != (ssize_t)len) {
			if (atomic_fetch_add(&reads_other, 1) < 10)
				fprintf(stderr, "# read at %llu+%llu: %s\n", off, len,
					n < 0 ? strerror(errno) : "short read");
			continue;
		}
		if (pread(ref_fd, ref, len, off) != (ssize_t)len) {
			perror("reference read");
			exit(2);
		}
		if (memcmp(buf, ref, len)) {
			if (atomic_fetch_add(&reads_wrong, 1) < 10)
				fprintf(stderr, "# WRONG: read at sector %llu+%llu succeeded with data that is not the snapshot's\n",
					off / SECTOR, len / SECTOR);
			continue;
		}
		atomic_fetch_add(&reads_ok, 1);
	}
	free(buf);
	free(ref);
	close(fd);
	return NULL;
}

static void on_stop_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int run_verify_loop(void)
{
	struct sigaction sa = { .sa_handler = on_stop_signal };
	unsigned int ticks;
	pthread_t t[64];
	int n;

	if (!view_path || !ref_path || (nr_writers && !origin_path)) {
		fprintf(stderr, "fleece-io verify-loop: --view, --ref (and --origin for writers) are required\n");
		return 2;
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	n = start_threads(t, verifier);
	if (n < 0)
		return 2;
	/* Short naps: the signal may go to a thread blocked in I/O. */
	for (ticks = 0; !stop && ticks < seconds * 10; ticks++)
		usleep(100000);
	stop_threads(t, n);
	printf("ok=%llu eio=%llu wrong=%llu other=%llu writes=%llu write_errors=%llu\n",
	       (unsigned long long)reads_ok, (unsigned long long)reads_eio,
	       (unsigned long long)reads_wrong, (unsigned long long)reads_other,
	       (unsigned long long)(writes_done + discards_done + zeroes_done),
	       (unsigned long long)write_errors);
	return (reads_wrong || reads_other || write_errors) ? 1 : 0;
}

/* Content of block @b after stamp write @i (i > 0), or of a never written one. */
static void stamp_block(uint64_t *p, unsigned long long i, unsigned long long b)
{
	uint64_t s = (i * 2654435761ULL) ^ (b + 1) ^ 0x9e3779b97f4a7c15ULL;
	size_t k;

	p[0] = i;
	for (k = 1; k < BLOCK / 8; k++)
		p[k] = i ? xorshift(&s) : 0;
}

static int run_stamp(void)
{
	int fd = open_dev(origin_path, O_WRONLY);
	int pfd = open(progress_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	uint64_t *buf = xalign(BLOCK);
	unsigned long long i;
	char line[32];
	int n;

	if (pfd < 0 || !nr_blocks) {
		fprintf(stderr, "fleece-io stamp: --progress and --blocks are required\n");
		return 2;
	}
	for (i = 1; ; i++) {
		unsigned long long b = i % nr_blocks;

		stamp_block(buf, i, b);
		if (pwrite(fd, buf, BLOCK, b * BLOCK) != (ssize_t)BLOCK) {
			fprintf(stderr, "fleece-io stamp: write %llu failed: %s\n", i,
				strerror(errno));
			return 1;
		}
		n = snprintf(line, sizeof(line), "%-20llu\n", i);
		if (pwrite(pfd, line, n, 0) != n)
			return 2;
	}
}

static int run_check_stamps(void)
{
	int fd = open_dev(origin_path, O_RDONLY);
	uint64_t *buf = xalign(BLOCK), *want = xalign(BLOCK);
	unsigned long long b, k = 0, i, bad = 0;

	/* k = number of writes in the image = the highest stamp found. */
	for (b = 0; b < nr_blocks; b++) {
		if (pread(fd, buf, BLOCK, b * BLOCK) != (ssize_t)BLOCK) {
			perror("read");
			return 2;
		}
		if (buf[0] > k)
			k = buf[0];
	}
	for (b = 0; b < nr_blocks; b++) {
		/* The last write to block b among writes 1..k, if any. */
		i = k >= b ? k - (k - b) % nr_blocks : 0;
		stamp_block(want, i, b);
		if (pread(fd, buf, BLOCK, b * BLOCK) != (ssize_t)BLOCK)
			return 2;
		if (memcmp(buf, want, BLOCK)) {
			if (bad++ < 5)
				fprintf(stderr, "# block %llu holds stamp %llu, expected %llu for a cut after write %llu\n",
					b, (unsigned long long)buf[0], i, k);
		}
	}
	printf("cut_after_write=%llu window=[%llu,%llu] bad_blocks=%llu\n", k,
	       stamp_min, stamp_max, bad);
	if (bad || k < stamp_min || k > stamp_max)
		return 1;
	return 0;
}

static int run_fill(void)
{
	int fd = open_dev(origin_path, O_WRONLY);
	unsigned long long off, size = dev_size(fd), len;
	size_t chunk = 1 << 20;
	void *buf = xalign(chunk);
	uint64_t s = seed;

	for (off = 0; off < size; off += len) {
		len = size - off < chunk ? size - off : chunk;
		fill(buf, len, &s);
		if (pwrite(fd, buf, len, off) != (ssize_t)len) {
			perror("fill");
			return 1;
		}
	}
	return fsync(fd) ? 1 : 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "origin", required_argument, NULL, 'o' },
		{ "dev", required_argument, NULL, 'o' },
		{ "view", required_argument, NULL, 'v' },
		{ "ref", required_argument, NULL, 'r' },
		{ "seconds", required_argument, NULL, 's' },
		{ "writers", required_argument, NULL, 'w' },
		{ "readers", required_argument, NULL, 'R' },
		{ "seed", required_argument, NULL, 'S' },
		{ "max-write", required_argument, NULL, 'm' },
		{ "blocks", required_argument, NULL, 'b' },
		{ "progress", required_argument, NULL, 'p' },
		{ "min", required_argument, NULL, '1' },
		{ "max", required_argument, NULL, '2' },
		{ "discards", required_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 }
	};
	const char *mode = argc > 1 ? argv[1] : "";
	int c, writers_given = 0;

	optind = 2;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'o': origin_path = optarg; break;
		case 'v': view_path = optarg; break;
		case 'r': ref_path = optarg; break;
		case 's': seconds = strtoul(optarg, NULL, 0); break;
		case 'w': nr_writers = strtoul(optarg, NULL, 0); writers_given = 1; break;
		case 'R': nr_readers = strtoul(optarg, NULL, 0); break;
		case 'S': seed = strtoull(optarg, NULL, 0) ?: 1; break;
		case 'm': max_write = strtoull(optarg, NULL, 0) * 1024; break;
		case 'b': nr_blocks = strtoull(optarg, NULL, 0); break;
		case 'p': progress_path = optarg; break;
		case '1': stamp_min = strtoull(optarg, NULL, 0); break;
		case '2': stamp_max = strtoull(optarg, NULL, 0); break;
		case 'd': discard_share = strtoul(optarg, NULL, 0); break;
		default: return 2;
		}
	}
	no_zeroes = getenv("FLEECE_IO_NO_ZEROES") != NULL;
	if (max_write < BLOCK)
		max_write = BLOCK;
	if (!strcmp(mode, "stress"))
		return run_stress();
	if (!strcmp(mode, "fill"))
		return run_fill();
	if (!strcmp(mode, "stamp"))
		return run_stamp();
	if (!strcmp(mode, "check-stamps"))
		return run_check_stamps();
	if (!strcmp(mode, "verify-loop")) {
		if (!writers_given)
			nr_writers = 0;
		return run_verify_loop();
	}
	fprintf(stderr, "usage: fleece-io stress|verify-loop|fill|stamp|check-stamps [options]\n");
	return 2;
}
