// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleece-md-check: checks a dm-fleece change-tracking metadata device (or
 * an image of one), in the spirit of era_check and thin_check.
 *
 *   fleece-md-check [-q] [--extents NAME] DEVICE
 *
 * Reads both superblock copies, takes the valid one with the highest
 * generation (as the kernel does), and checks its fields, the layout
 * against the device's size, the bitmap directory and, when the device was
 * closed cleanly, each bitmap against its checksum.  Prints a summary, or
 * with --extents the set ranges of one bitmap as "<sector>+<sectors>"
 * lines (what the kernel's bitmap_extents gives).
 *
 * Exit status: 0 valid, 1 inconsistent (the kernel would report it so:
 * a full backup is needed), 2 usage or I/O error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <linux/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dm-fleece-metadata.h>

#define BITS_PER_BLOCK (DM_FLEECE_MD_BLOCK_SIZE * 8ULL)

static int quiet;

static uint32_t crc32_le(uint32_t crc, const uint8_t *p, size_t len)
{
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xedb88320U & -(crc & 1));
	}
	return crc;
}

/* The image is read little-endian on a little-endian host only. */
static uint64_t le64(__le64 v) { return (uint64_t)v; }
static uint32_t le32(__le32 v) { return (uint32_t)v; }

static int read_block(int fd, uint64_t nr, void *buf)
{
	ssize_t n = pread(fd, buf, DM_FLEECE_MD_BLOCK_SIZE, (off_t)(nr * DM_FLEECE_MD_BLOCK_SIZE));

	return n == DM_FLEECE_MD_BLOCK_SIZE ? 0 : -1;
}

static int problems;

static void problem(const char *fmt, const char *what)
{
	problems++;
	if (!quiet) {
		fputs("fleece-md-check: ", stderr);
		fprintf(stderr, fmt, what);
		fputc('\n', stderr);
	}
}

static int sb_valid(const unsigned char *block)
{
	const struct dm_fleece_md_superblock *sb = (const void *)block;

	return le64(sb->magic) == DM_FLEECE_MD_MAGIC &&
	       le32(sb->csum) == crc32_le(DM_FLEECE_MD_CSUM_SEED, block + 4,
					  DM_FLEECE_MD_BLOCK_SIZE - 4);
}

static int is_zero(const unsigned char *b)
{
	for (size_t i = 0; i < DM_FLEECE_MD_BLOCK_SIZE; i++)
		if (b[i])
			return 0;
	return 1;
}

static uint64_t device_bytes(int fd)
{
	struct stat st;
	uint64_t size = 0;

	if (fstat(fd, &st))
		return 0;
	if (S_ISBLK(st.st_mode))
		return ioctl(fd, BLKGETSIZE64, &size) ? 0 : size;
	return (uint64_t)st.st_size;
}

/* Reads bitmap @slot; returns its checksum, or sets *err on a read error. */
static uint32_t read_bitmap(int fd, const struct dm_fleece_md_superblock *sb,
			    unsigned int slot, unsigned char *bits, int *err)
{
	uint32_t blocks = le32(sb->bitmap_blocks), csum = DM_FLEECE_MD_CSUM_SEED;
	unsigned char buf[DM_FLEECE_MD_BLOCK_SIZE];

	for (uint32_t i = 0; i < blocks; i++) {
		if (read_block(fd, DM_FLEECE_MD_BITMAP_START + (uint64_t)slot * blocks + i, buf)) {
			*err = 1;
			return 0;
		}
		csum = crc32_le(csum, buf, sizeof(buf));
		memcpy(bits + (size_t)i * sizeof(buf), buf, sizeof(buf));
	}
	return csum;
}

static int bit(const unsigned char *bits, uint64_t n)
{
	return bits[n / 8] >> (n % 8) & 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: fleece-md-check [-q] [--extents NAME] DEVICE\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *dev = NULL, *extents = NULL;
	unsigned char blk[2][DM_FLEECE_MD_BLOCK_SIZE];
	const struct dm_fleece_md_superblock *sb = NULL;
	int fd, found_slot = -1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-q"))
			quiet = 1;
		else if (!strcmp(argv[i], "--extents") && i + 1 < argc)
			extents = argv[++i];
		else if (argv[i][0] == '-' || dev)
			usage();
		else
			dev = argv[i];
	}
	if (!dev)
		usage();
	fd = open(dev, O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "fleece-md-check: cannot open %s: %s\n", dev, strerror(errno));
		return 2;
	}
	for (int i = 0; i < 2; i++) {
		if (read_block(fd, i, blk[i])) {
			fprintf(stderr, "fleece-md-check: %s: cannot read superblock %d\n", dev, i);
			return 2;
		}
		if (sb_valid(blk[i]) &&
		    (!sb || le64(((struct dm_fleece_md_superblock *)blk[i])->generation) >
			    le64(sb->generation)))
			sb = (const void *)blk[i];
	}
	if (!sb) {
		if (is_zero(blk[0]) && is_zero(blk[1])) {
			if (!quiet)
				printf("%s: not formatted (the kernel formats it when the fleece device is created)\n", dev);
			return 0;
		}
		problem("%s: no valid superblock: the metadata is inconsistent", dev);
		return 1;
	}

	uint32_t shift = le32(sb->track_shift), slots = le32(sb->nr_slots);
	uint32_t bblocks = le32(sb->bitmap_blocks);
	uint64_t nr_blocks = le64(sb->nr_blocks), osz = le64(sb->origin_sectors);
	uint64_t dev_blocks = device_bytes(fd) / DM_FLEECE_MD_BLOCK_SIZE;
	int clean = le32(sb->state) == DM_FLEECE_MD_CLEAN;

	if (le32(sb->version) != DM_FLEECE_MD_VERSION)
		problem("%s: unknown format version", dev);
	if (shift < 3 || shift > 17)
		problem("%s: tracking block size out of range", dev);
	else if (nr_blocks != (osz + (1ULL << shift) - 1) >> shift)
		problem("%s: tracking blocks do not match the origin size", dev);
	if (bblocks != (nr_blocks + BITS_PER_BLOCK - 1) / BITS_PER_BLOCK)
		problem("%s: bitmap slot size does not match the tracking blocks", dev);
	if (slots < DM_FLEECE_MD_MIN_BITMAPS || slots > DM_FLEECE_MD_MAX_BITMAPS)
		problem("%s: number of bitmap slots out of range", dev);
	if (DM_FLEECE_MD_BITMAP_START + (uint64_t)slots * bblocks > dev_blocks)
		problem("%s: the bitmap slots do not fit the device", dev);
	if (le32(sb->state) > DM_FLEECE_MD_OPEN)
		problem("%s: unknown state", dev);
	if (problems)
		return 1;

	if (!quiet && !extents)
		printf("%s: version %u, generation %" PRIu64 ", %s, opened %" PRIu64
		       " times, owner %.*s\n  origin %" PRIu64 " sectors, tracking block %u sectors, %"
		       PRIu64 " blocks, %u bitmap slots\n",
		       dev, le32(sb->version), le64(sb->generation),
		       clean ? "clean" : "open (in use, or an unclean stop)",
		       le64(sb->opens), (int)sizeof(sb->owner), sb->owner, osz, 1U << shift,
		       nr_blocks, slots);

	unsigned char *bits = calloc(bblocks, DM_FLEECE_MD_BLOCK_SIZE);

	if (!bits)
		return 2;
	for (unsigned int s = 0; s < slots; s++) {
		const struct dm_fleece_md_bitmap *e = &sb->bitmaps[s];
		uint32_t flags = le32(e->flags), csum;
		char name[DM_FLEECE_MD_NAME_LEN];
		uint64_t dirty = 0;
		int err = 0;

		if (!(flags & DM_FLEECE_BITMAP_IN_USE))
			continue;
		memcpy(name, e->name, sizeof(name));
		name[sizeof(name) - 1] = 0;
		if (!name[0] || strlen(name) != strnlen(e->name, sizeof(e->name)) ||
		    (flags & ~DM_FLEECE_BITMAP_FLAGS)) {
			problem("%s: a bitmap entry is corrupt", dev);
			continue;
		}
		csum = read_bitmap(fd, sb, s, bits, &err);
		if (err) {
			fprintf(stderr, "fleece-md-check: %s: cannot read bitmap %s\n", dev, name);
			return 2;
		}
		for (uint64_t b = nr_blocks; b < (uint64_t)bblocks * BITS_PER_BLOCK; b++)
			if (bit(bits, b)) {
				problem("%s: bits set past the end of a bitmap", dev);
				break;
			}
		for (uint64_t b = 0; b < nr_blocks; b++)
			dirty += bit(bits, b);
		if (clean && csum != le32(e->csum))
			problem("%s: a bitmap does not match its checksum: inconsistent", dev);
		if (flags & DM_FLEECE_BITMAP_INCONSISTENT)
			problem("%s: a bitmap is marked inconsistent", dev);
		if (extents && !strcmp(extents, name)) {
			found_slot = s;
			for (uint64_t b = 0; b < nr_blocks;) {
				uint64_t e2;

				if (!bit(bits, b)) {
					b++;
					continue;
				}
				for (e2 = b; e2 < nr_blocks && bit(bits, e2); e2++)
					;
				uint64_t end = e2 << shift < osz ? e2 << shift : osz;

				printf("%" PRIu64 "+%" PRIu64 "\n", b << shift, end - (b << shift));
				b = e2;
			}
		} else if (!quiet && !extents) {
			printf("  bitmap %s: %s%s, %" PRIu64 " dirty blocks%s\n", name,
			       flags & DM_FLEECE_BITMAP_ENABLED ? "enabled" : "disabled",
			       flags & DM_FLEECE_BITMAP_INCONSISTENT ? ", inconsistent" : "",
			       dirty, clean ? (csum == le32(e->csum) ? ", checksum ok" : ", checksum BAD") : "");
		}
	}
	free(bits);
	if (extents && found_slot < 0) {
		fprintf(stderr, "fleece-md-check: %s: no bitmap is named %s\n", dev, extents);
		return 2;
	}
	return problems ? 1 : 0;
}
