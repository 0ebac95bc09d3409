// SPDX-License-Identifier: GPL-2.0-only
/*
 * The change-tracking metadata device, through dm-bufio: its superblock
 * (two copies, written alternately) and the bitmap slots.  The format is in
 * include/dm-fleece-metadata.h.  Every function here is called with the
 * tracker's mutex held, which serializes all I/O to the device.
 */
#include <linux/bitmap.h>
#include <linux/crc32.h>
#include <linux/dm-bufio.h>
#include <linux/slab.h>
#include <linux/uuid.h>

#include "fleece-core.h"
#include "fleece-track.h"

#define BITS_PER_MD_BLOCK	(DM_FLEECE_MD_BLOCK_SIZE * 8U)
#define WORDS_PER_MD_BLOCK	(DM_FLEECE_MD_BLOCK_SIZE / sizeof(u64))

struct fleece_md {
	struct block_device *bdev;
	struct dm_bufio_client *bufio;
	struct dm_fleece_md_superblock *sb;	/* what the device should hold */
	u64 *scratch;				/* one block, in CPU order */
	u64 nr_blocks;				/* tracking blocks */
	unsigned int bitmap_blocks;
	unsigned int nr_slots;
	bool read_only;		/* inconsistent: leave the device as it is */
	bool was_clean;		/* the last stop was clean: checksums hold */
};

static u32 sb_csum(const void *block)
{
	const u8 *p = block;

	return crc32_le(DM_FLEECE_MD_CSUM_SEED, p + sizeof(__le32),
			DM_FLEECE_MD_BLOCK_SIZE - sizeof(__le32));
}

static bool sb_valid(const struct dm_fleece_md_superblock *sb)
{
	return le64_to_cpu(sb->magic) == DM_FLEECE_MD_MAGIC &&
	       le32_to_cpu(sb->csum) == sb_csum(sb);
}

static bool block_is_zero(const void *block)
{
	return !memchr_inv(block, 0, DM_FLEECE_MD_BLOCK_SIZE);
}

static sector_t slot_block(struct fleece_md *md, unsigned int slot,
			   unsigned int i)
{
	return DM_FLEECE_MD_BITMAP_START + (sector_t)slot * md->bitmap_blocks + i;
}

/*
 * Writes the in-memory superblock, with the next generation, to the copy
 * the current one is not in, and flushes: the other copy stays valid if a
 * power cut tears this write.
 */
static int sb_write(struct fleece_md *md)
{
	u64 gen = le64_to_cpu(md->sb->generation) + 1;
	struct dm_buffer *b;
	void *data;
	int r;

	md->sb->generation = cpu_to_le64(gen);
	data = dm_bufio_new(md->bufio, gen % DM_FLEECE_MD_SUPERBLOCKS, &b);
	if (IS_ERR(data))
		return PTR_ERR(data);
	memset(data, 0, DM_FLEECE_MD_BLOCK_SIZE);
	memcpy(data, md->sb, sizeof(*md->sb));
	((struct dm_fleece_md_superblock *)data)->csum = cpu_to_le32(sb_csum(data));
	dm_bufio_mark_buffer_dirty(b);
	dm_bufio_release(b);
	r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	return r;
}

/*
 * Reads both superblock copies into @sb: the valid one with the higher
 * generation.  Returns 1 when both blocks are zero (never formatted), 0 for
 * a valid superblock, -EILSEQ when neither copy is valid, or an I/O error.
 */
static int sb_read(struct fleece_md *md, struct dm_fleece_md_superblock *sb)
{
	bool found = false, zero = true;
	struct dm_buffer *b;
	unsigned int i;
	void *data;

	for (i = 0; i < DM_FLEECE_MD_SUPERBLOCKS; i++) {
		const struct dm_fleece_md_superblock *copy;

		data = dm_bufio_read(md->bufio, i, &b);
		if (IS_ERR(data))
			return PTR_ERR(data);
		copy = data;
		zero &= block_is_zero(data);
		if (sb_valid(copy) &&
		    (!found || le64_to_cpu(copy->generation) > le64_to_cpu(sb->generation))) {
			memcpy(sb, copy, sizeof(*sb));
			found = true;
		}
		dm_bufio_release(b);
	}
	if (found)
		return 0;
	return zero ? 1 : -EILSEQ;
}

/* The bitmap slots that fit the device, at most DM_FLEECE_MD_MAX_BITMAPS. */
static u64 slots_that_fit(struct fleece_md *md)
{
	u64 blocks = bdev_nr_sectors(md->bdev) / DM_FLEECE_MD_BLOCK_SECTORS;

	if (blocks < DM_FLEECE_MD_BITMAP_START)
		return 0;
	return min_t(u64, DM_FLEECE_MD_MAX_BITMAPS,
		     div_u64(blocks - DM_FLEECE_MD_BITMAP_START, md->bitmap_blocks));
}

static void sb_format(struct fleece_md *md, sector_t origin_sectors,
		      unsigned int shift, const char *owner)
{
	struct dm_fleece_md_superblock *sb = md->sb;

	memset(sb, 0, sizeof(*sb));
	sb->magic = cpu_to_le64(DM_FLEECE_MD_MAGIC);
	sb->version = cpu_to_le32(DM_FLEECE_MD_VERSION);
	generate_random_uuid(sb->uuid);
	sb->track_shift = cpu_to_le32(shift);
	sb->origin_sectors = cpu_to_le64(origin_sectors);
	sb->nr_blocks = cpu_to_le64(md->nr_blocks);
	sb->nr_slots = cpu_to_le32(md->nr_slots);
	sb->bitmap_blocks = cpu_to_le32(md->bitmap_blocks);
	strscpy(sb->owner, owner, sizeof(sb->owner));
}

/* Fills @md->scratch from block @i of @bits (CPU order, zero past the end). */
static void bits_to_scratch(struct fleece_md *md, const unsigned long *bits,
			    unsigned int i)
{
	u64 first = (u64)i * BITS_PER_MD_BLOCK;
	unsigned int n = min_t(u64, BITS_PER_MD_BLOCK, md->nr_blocks - first);
	const unsigned long *src = bits + first / BITS_PER_LONG;
	unsigned int w;

	memset(md->scratch, 0, DM_FLEECE_MD_BLOCK_SIZE);
	/* READ_ONCE: map() may set bits meanwhile; they get their own commit. */
	for (w = 0; w < BITS_TO_LONGS(n); w++) {
		unsigned long v = READ_ONCE(src[w]);

		if (n % BITS_PER_LONG && w == BITS_TO_LONGS(n) - 1)
			v &= BITMAP_LAST_WORD_MASK(n);
#if BITS_PER_LONG == 64
		md->scratch[w] = v;
#else
		md->scratch[w / 2] |= (u64)v << (32 * (w % 2));
#endif
	}
}

/* The checksum of a bitmap as its slot holds it. */
static u32 bitmap_csum(struct fleece_md *md, const unsigned long *bits)
{
	u32 csum = DM_FLEECE_MD_CSUM_SEED;
	unsigned int i, w;

	for (i = 0; i < md->bitmap_blocks; i++) {
		if ((u64)i * BITS_PER_MD_BLOCK < md->nr_blocks)
			bits_to_scratch(md, bits, i);
		else
			memset(md->scratch, 0, DM_FLEECE_MD_BLOCK_SIZE);
		for (w = 0; w < WORDS_PER_MD_BLOCK; w++)
			md->scratch[w] = (__force u64)cpu_to_le64(md->scratch[w]);
		csum = crc32_le(csum, (u8 *)md->scratch, DM_FLEECE_MD_BLOCK_SIZE);
	}
	return csum;
}

/**
 * fleece_md_open() - open the metadata device of a new fleece device.
 * @bdev: the metadata device.
 * @origin_sectors: the size of the origin.
 * @shift: log2 of the tracking block size the table asks for, used when
 *	the device is formatted; 0 when the table does not say.
 * @owner: the fleece device's dm uuid, or its name when it has none.
 * @res: what was found.
 * @error: a whole sentence when it fails.
 *
 * Formats a device whose superblock blocks are zero.  A device whose
 * superblock is corrupt or unreadable, or belongs to another fleece device
 * or to an origin of another size, opens read-only and @res says why it is
 * inconsistent.  Otherwise the superblock is marked open (an unclean stop
 * leaves it so) and written.  Returns NULL and sets @error when the device
 * cannot be used at all: too small, a mismatched tracking block size, or a
 * failed write.
 */
struct fleece_md *fleece_md_open(struct block_device *bdev,
				 sector_t origin_sectors, unsigned int shift,
				 const char *owner,
				 struct fleece_md_open_result *res,
				 char **error)
{
	struct fleece_md *md = kzalloc(sizeof(*md), GFP_KERNEL);
	unsigned int want_shift = shift ?: ilog2(DM_FLEECE_DEFAULT_TRACK_SECTORS);
	u64 nr_blocks;
	int r;

	memset(res, 0, sizeof(*res));
	if (!md)
		goto nomem;
	md->bdev = bdev;
	md->sb = kzalloc(DM_FLEECE_MD_BLOCK_SIZE, GFP_KERNEL);
	md->scratch = kmalloc(DM_FLEECE_MD_BLOCK_SIZE, GFP_KERNEL);
	if (!md->sb || !md->scratch)
		goto nomem;
	md->bufio = dm_bufio_client_create(bdev, DM_FLEECE_MD_BLOCK_SIZE, 1, 0,
					   NULL, NULL, 0);
	if (IS_ERR(md->bufio)) {
		md->bufio = NULL;
		goto nomem;
	}

	r = sb_read(md, md->sb);
	if (r < 0) {
		res->inconsistent = true;
		res->why = r == -EILSEQ ? "corrupt superblock" : "unreadable superblock";
		goto read_only;
	}
	if (r == 1) {
		md->nr_blocks = DIV_ROUND_UP_SECTOR_T(origin_sectors, 1U << want_shift);
		md->bitmap_blocks = DIV_ROUND_UP_ULL(md->nr_blocks, BITS_PER_MD_BLOCK);
		md->nr_slots = slots_that_fit(md);
		if (md->nr_slots < DM_FLEECE_MD_MIN_BITMAPS) {
			*error = "The metadata device is too small for 8 bitmaps of this origin.";
			goto bad;
		}
		sb_format(md, origin_sectors, want_shift, owner);
		res->shift = want_shift;
		res->nr_slots = md->nr_slots;
		goto write_open;
	}

	if (le32_to_cpu(md->sb->version) != DM_FLEECE_MD_VERSION) {
		*error = "The metadata device has an unknown format version; use a newer module.";
		goto bad;
	}
	shift = le32_to_cpu(md->sb->track_shift);
	nr_blocks = le64_to_cpu(md->sb->nr_blocks);
	md->bitmap_blocks = le32_to_cpu(md->sb->bitmap_blocks);
	md->nr_slots = le32_to_cpu(md->sb->nr_slots);
	md->nr_blocks = nr_blocks;
	if (shift < ilog2(DM_FLEECE_MIN_TRACK_SECTORS) ||
	    shift > ilog2(DM_FLEECE_MAX_TRACK_SECTORS) ||
	    md->nr_slots > DM_FLEECE_MD_MAX_BITMAPS || !md->bitmap_blocks ||
	    md->bitmap_blocks != DIV_ROUND_UP_ULL(nr_blocks, BITS_PER_MD_BLOCK) ||
	    slots_that_fit(md) < md->nr_slots) {
		res->inconsistent = true;
		res->why = "corrupt superblock";
		goto read_only;
	}
	res->shift = shift;
	res->nr_slots = md->nr_slots;
	if (strncmp(md->sb->owner, owner, sizeof(md->sb->owner))) {
		res->inconsistent = true;
		res->why = "metadata of another fleece device";
		goto read_only;
	}
	if (le64_to_cpu(md->sb->origin_sectors) != origin_sectors) {
		res->inconsistent = true;
		res->why = "the origin was resized";
		goto read_only;
	}

	md->was_clean = le32_to_cpu(md->sb->state) == DM_FLEECE_MD_CLEAN;
write_open:
	md->sb->state = cpu_to_le32(DM_FLEECE_MD_OPEN);
	le64_add_cpu(&md->sb->opens, 1);
	r = sb_write(md);
	if (r) {
		*error = "Cannot write the superblock of the metadata device.";
		goto bad;
	}
	return md;

read_only:
	/* Nothing is written: the device may be another origin's. */
	md->read_only = true;
	return md;

nomem:
	*error = "Cannot allocate the metadata device state.";
bad:
	if (md) {
		if (md->bufio)
			dm_bufio_client_destroy(md->bufio);
		kfree(md->scratch);
		kfree(md->sb);
		kfree(md);
	}
	return NULL;
}

/* Name and flags of @slot (flags 0: free). */
void fleece_md_get_bitmap(struct fleece_md *md, unsigned int slot,
			  char *name, unsigned int *flags)
{
	const struct dm_fleece_md_bitmap *e = &md->sb->bitmaps[slot];

	*flags = le32_to_cpu(e->flags) & DM_FLEECE_BITMAP_FLAGS;
	if (!(*flags & DM_FLEECE_BITMAP_IN_USE))
		*flags = 0;
	strscpy(name, e->name, DM_FLEECE_MD_NAME_LEN);
}

/*
 * Reads bitmap @slot into @bits.  Returns 0, -EILSEQ when the slot does not
 * match the checksum of its last clean close (corrupt: the caller marks the
 * bitmap inconsistent), or an I/O error.
 */
int fleece_md_load_bitmap(struct fleece_md *md, unsigned int slot,
			  unsigned long *bits, u64 nr_blocks)
{
	unsigned int i, w;
	struct dm_buffer *b;
	const __le64 *src;

	for (i = 0; i < md->bitmap_blocks; i++) {
		u64 first = (u64)i * BITS_PER_MD_BLOCK;
		unsigned int n = min_t(u64, BITS_PER_MD_BLOCK, nr_blocks - first);

		src = dm_bufio_read(md->bufio, slot_block(md, slot, i), &b);
		if (IS_ERR(src))
			return PTR_ERR(src);
		for (w = 0; w < WORDS_PER_MD_BLOCK; w++)
			md->scratch[w] = le64_to_cpu(src[w]);
		dm_bufio_release(b);
		bitmap_from_arr64(bits + first / BITS_PER_LONG, md->scratch, n);
	}
	if (md->was_clean &&
	    bitmap_csum(md, bits) != le32_to_cpu(md->sb->bitmaps[slot].csum))
		return -EILSEQ;
	return 0;
}

/*
 * Writes the blocks of @slot that @dirty marks (one bit per metadata block
 * of the slot) from @bits, and clears those bits of @dirty.  The caller
 * commits.  Returns how many blocks were written, or an error.
 */
int fleece_md_write_bitmap_blocks(struct fleece_md *md, unsigned int slot,
				  const unsigned long *bits, u64 nr_blocks,
				  unsigned long *dirty)
{
	unsigned int i, w;
	struct dm_buffer *b;
	int n = 0;
	__le64 *dst;

	if (md->read_only)
		return -EROFS;
	for_each_set_bit(i, dirty, md->bitmap_blocks) {
		/* Atomic: map() sets dirty bits without the tracker's mutex. */
		clear_bit(i, dirty);
		/* Pairs with smp_mb__before_atomic() in __mark(). */
		smp_mb__after_atomic();
		dst = dm_bufio_new(md->bufio, slot_block(md, slot, i), &b);
		if (IS_ERR(dst))
			return PTR_ERR(dst);
		bits_to_scratch(md, bits, i);
		for (w = 0; w < WORDS_PER_MD_BLOCK; w++)
			dst[w] = cpu_to_le64(md->scratch[w]);
		dm_bufio_mark_buffer_dirty(b);
		dm_bufio_release(b);
		n++;
	}
	return n;
}

/* Writes the buffered bitmap blocks and flushes: they are durable then. */
int fleece_md_commit(struct fleece_md *md)
{
	int r;

	if (md->read_only)
		return -EROFS;
	r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	return r;
}

/* Records @slot's name and flags (0: free) in the superblock and writes it. */
int fleece_md_set_bitmap(struct fleece_md *md, unsigned int slot,
			 const char *name, unsigned int flags)
{
	struct dm_fleece_md_bitmap *e = &md->sb->bitmaps[slot], old = *e;
	int r;

	if (md->read_only)
		return -EROFS;
	memset(e, 0, sizeof(*e));
	if (flags) {
		strscpy(e->name, name, sizeof(e->name));
		e->flags = cpu_to_le32(flags | DM_FLEECE_BITMAP_IN_USE);
	}
	r = sb_write(md);
	/* A later superblock write must not carry what this one failed to. */
	if (r)
		*e = old;
	return r;
}

/*
 * Closes the device after a clean stop: the bitmaps of @t are on disk
 * (the caller committed), their checksums go into the superblock and it
 * is marked clean.  Frees @md whatever happens.
 */
int fleece_md_close(struct fleece_md *md, struct fleece_tracker *t)
{
	unsigned int slot;
	int r = 0;

	/* Without @t (a failed tracker) it stays open: trusted as after a crash. */
	if (!md->read_only && t) {
		for (slot = 0; slot < md->nr_slots; slot++) {
			struct fleece_bitmap *bm = &t->bitmaps[slot];

			if (bm->flags && bm->bits)
				md->sb->bitmaps[slot].csum =
					cpu_to_le32(bitmap_csum(md, bm->bits));
		}
		md->sb->state = cpu_to_le32(DM_FLEECE_MD_CLEAN);
		r = sb_write(md);
		if (r)
			DMERR("cannot mark the metadata clean (%d): it opens as after a crash",
			      r);
	}
	dm_bufio_client_destroy(md->bufio);
	kfree(md->scratch);
	kfree(md->sb);
	kfree(md);
	return r;
}

unsigned int fleece_md_blocks_per_bitmap(struct fleece_md *md)
{
	return md->bitmap_blocks;
}

dev_t fleece_md_dev(struct fleece_md *md)
{
	return md->bdev->bd_dev;
}
