/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-fleece: the on-disk format of the change-tracking metadata device
 * (the fleece target's "metadata" feature).  The module
 * (dm-fleece/fleece-track-md.c) and the user-space checker
 * (tools/fleece-md-check) both include this file.
 * Documentation/device-mapper/fleece.rst, "Change tracking", describes the
 * format and its upgrade rule.
 *
 * Layout, in 4 KiB metadata blocks:
 *
 *   block 0, 1   two copies of the superblock.  Each write of it goes to the
 *                copy the last one did not use, with a higher generation;
 *                a reader takes the valid copy with the highest generation.
 *                So a write torn by a power cut leaves the other copy.
 *   block 2 ...  DM_FLEECE_MD_MAX_BITMAPS bitmap slots of bitmap_blocks
 *                blocks each (fewer when the device is smaller, never fewer
 *                than DM_FLEECE_MD_MIN_BITMAPS): bit N of a slot is tracking
 *                block N of the origin, little-endian bit order within
 *                64-bit words.
 *
 * Every integer is little-endian.  A checksum is the kernel's crc32_le()
 * (reflected polynomial 0xedb88320, no final inversion) seeded with
 * DM_FLEECE_MD_CSUM_SEED: of the superblock from the byte after its csum
 * field to the end of its 4 KiB block, of a bitmap over its slot's blocks.
 *
 * Bitmap blocks are only ever written with more bits set than the block on
 * disk has, except by a clear that the user asked for: so a write torn by
 * a power cut leaves a superset of what was acknowledged.  That is why they
 * carry no checksum of their own.  A clean close records the checksum of each
 * bitmap in its directory entry; an open after an unclean stop cannot check
 * it, and does not need to.
 *
 * Plain C: the kernel includes it with __le types, user space with
 * <linux/types.h>.
 */
#ifndef DM_FLEECE_METADATA_H
#define DM_FLEECE_METADATA_H

#define DM_FLEECE_MD_MAGIC		0x444d454345454c46ULL	/* "FLEECEMD" */
#define DM_FLEECE_MD_VERSION		1U
#define DM_FLEECE_MD_BLOCK_SIZE		4096U
#define DM_FLEECE_MD_BLOCK_SECTORS	8U
#define DM_FLEECE_MD_CSUM_SEED		0x666c6565U		/* "flee" */
#define DM_FLEECE_MD_SUPERBLOCKS	2U
#define DM_FLEECE_MD_BITMAP_START	2U	/* the first bitmap block */

/* Named bitmaps per metadata device, and per origin without one. */
#define DM_FLEECE_MD_MAX_BITMAPS	32U
#define DM_FLEECE_MD_MIN_BITMAPS	8U
#define DM_FLEECE_MD_NAME_LEN		48U	/* with the NUL */
#define DM_FLEECE_MD_OWNER_LEN		136U	/* dm uuid or name, with NUL */

/*
 * Tracking block size, in 512-byte sectors: a power of two from 4 KiB to
 * 64 MiB, independent of the chunk size.
 */
#define DM_FLEECE_MIN_TRACK_SECTORS	8U
#define DM_FLEECE_MAX_TRACK_SECTORS	131072U
#define DM_FLEECE_DEFAULT_TRACK_SECTORS	128U

/* superblock.state */
#define DM_FLEECE_MD_CLEAN		0U	/* closed by a clean removal */
#define DM_FLEECE_MD_OPEN		1U	/* in use, or an unclean stop */

/* bitmap entry flags */
#define DM_FLEECE_BITMAP_IN_USE		0x1U
#define DM_FLEECE_BITMAP_ENABLED	0x2U
/* The bitmap missed writes: only a full backup and a clear mend it. */
#define DM_FLEECE_BITMAP_INCONSISTENT	0x4U
#define DM_FLEECE_BITMAP_FLAGS		0x7U

struct dm_fleece_md_bitmap {
	char name[DM_FLEECE_MD_NAME_LEN];
	__le32 flags;
	__le32 csum;		/* of the slot's blocks, when state is clean */
	__le64 reserved;
};

struct dm_fleece_md_superblock {
	__le32 csum;
	__le32 version;
	__le64 magic;
	__le64 generation;	/* of this copy: the higher valid one wins */
	__u8 uuid[16];		/* of the metadata, made when formatted */
	__le32 state;
	__le32 track_shift;	/* log2 of the tracking block, in sectors */
	__le64 origin_sectors;
	__le64 nr_blocks;	/* tracking blocks: bits per bitmap */
	__le32 nr_slots;	/* bitmap slots in the layout */
	__le32 bitmap_blocks;	/* 4 KiB blocks per slot */
	__le64 opens;		/* how often the device was opened */
	char owner[DM_FLEECE_MD_OWNER_LEN];	/* the fleece device's uuid/name */
	struct dm_fleece_md_bitmap bitmaps[DM_FLEECE_MD_MAX_BITMAPS];
};

#endif /* DM_FLEECE_METADATA_H */
