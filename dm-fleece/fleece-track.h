/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Change tracking: named bitmaps of the tracking blocks that writes to the
 * origin changed, kept in memory and, with a metadata device, on disk.
 *
 * The rule that makes it crash-safe (dm-era's): a write to a block whose
 * bit is not on disk yet is held until a commit has written and flushed the
 * bit.  Commits are batched: every write that arrives while one runs waits
 * for the next.  Bits on disk are only ever added, except by a clear that
 * the user asked for, so a power cut leaves a superset of what was
 * acknowledged (include/dm-fleece-metadata.h).
 *
 * Lock order (outer first):
 *   tracker->lock (mutex) -> fleece_registry_lock -> core->lock
 *   tracker->lock -> tracker->bits_lock
 * The start of a snapshot bound to a bitmap holds tracker->lock around the
 * whole start.  bits_lock is a leaf, taken from map() and end_io() with
 * interrupts off; it is never held together with core->lock.
 */
#ifndef DM_FLEECE_TRACK_H
#define DM_FLEECE_TRACK_H

#include <linux/bio.h>
#include <linux/mutex.h>
#include <linux/percpu-refcount.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include <dm-fleece-metadata.h>

struct fleece_core;
struct fleece_md;

/**
 * enum fleece_track_health - whether the bitmaps can be trusted
 * @FLEECE_TRACK_OK: they cover every write since they were cleared.
 * @FLEECE_TRACK_INCONSISTENT: the metadata could not be trusted when it was
 *	opened (corrupt, unreadable, another origin's, or the origin was
 *	resized): every bitmap is inconsistent, a full backup is needed.
 * @FLEECE_TRACK_FAILED: a metadata write failed.  Writes that need a new
 *	bit on disk fail from then on (the bit cannot be made durable);
 *	writes to blocks already on disk still pass.
 */
enum fleece_track_health {
	FLEECE_TRACK_OK,
	FLEECE_TRACK_INCONSISTENT,
	FLEECE_TRACK_FAILED,
};

/*
 * One named bitmap.  Slot i of the tracker is slot i on disk.  While a
 * backup is bound to it (fleece-track-backup.c), @frozen holds the backup
 * set taken at the snapshot point and @side the blocks written since; the
 * bitmap itself keeps collecting both, so that on disk it is always a
 * superset of what a backup may need.
 */
struct fleece_bitmap {
	char name[DM_FLEECE_MD_NAME_LEN];	/* tracker->lock */
	unsigned int flags;	/* DM_FLEECE_BITMAP_*; bits_lock to change */
	unsigned long *bits;	/* per tracking block; bits_lock */
	unsigned long *dirty;	/* per metadata block to write; bits_lock */
	unsigned long *frozen;	/* the backup set; fixed while bound */
	unsigned long *side;	/* written since the snapshot; bits_lock */
	bool bound;		/* a backup runs on it; tracker->lock */
};

/* What happens to a bound bitmap when its backup ends (QEMU's modes). */
enum fleece_bitmap_mode {
	FLEECE_SYNC_ON_SUCCESS,	/* the side set on success, else all */
	FLEECE_SYNC_NEVER,	/* backup set and side set, always */
	FLEECE_SYNC_ALWAYS,	/* minus what the backup released, always */
};

struct fleece_tracker {
	/* Fixed when the fleece device is created. */
	struct fleece_core *core;
	unsigned int shift;		/* log2 of the tracking block, sectors */
	u64 nr_blocks;			/* tracking blocks of the origin */
	unsigned int nr_slots;		/* bitmaps it can hold */
	struct fleece_md *md;		/* NULL: the bitmaps are volatile */
	struct workqueue_struct *wq;	/* runs commit_work */
	bool loaded;			/* create finished: may close clean */

	/*
	 * Serializes commits and every change of the bitmap directory (add,
	 * remove, clear, merge, enable, disable), and protects the names.
	 */
	struct mutex lock;

	/*
	 * Protects the bits and flags of the bitmaps, committed, nr_enabled,
	 * health, draining and the bio lists.
	 */
	spinlock_t bits_lock;
	/*
	 * Per tracking block: set in every enabled bitmap, and on disk.  A
	 * write whose blocks are all set here passes at once.  Read without
	 * the lock by map(); only cleared while tracked writes are drained.
	 */
	unsigned long *committed;
	unsigned int nr_enabled;
	enum fleece_track_health health;
	bool draining;			/* a drain is under way: hold writes */
	struct bio_list unmarked;	/* held writes not marked yet */
	struct bio_list pending;	/* marked writes, for the next commit */
	struct fleece_bitmap bitmaps[DM_FLEECE_MD_MAX_BITMAPS];
	u64 commits;			/* for the status */

	/*
	 * Held by every write from its tracking in map() to its end_io().
	 * Killed and drained before bits are cleared, so that no write that
	 * passed the old bits completes after the clear.
	 */
	struct percpu_ref writes;
	wait_queue_head_t writes_drained;
	struct work_struct commit_work;
};

/* Per-bio outcome of fleece_track_map(). */
enum fleece_track_route {
	FLEECE_TRACK_PASS,	/* marked and durable: go on */
	FLEECE_TRACK_HELD,	/* held until a commit; resubmitted then */
	FLEECE_TRACK_FAIL,	/* its bit cannot be made durable */
};

/* fleece-track.c */
struct fleece_tracker *fleece_tracker_create(struct fleece_core *core,
					     sector_t origin_sectors,
					     unsigned int track_sectors,
					     struct block_device *md_bdev,
					     const char *owner, char **error);
void fleece_tracker_destroy(struct fleece_tracker *t);
void fleece_tracker_detach(struct fleece_tracker *t);
enum fleece_track_route fleece_track_map(struct fleece_tracker *t,
					 struct bio *bio);
void fleece_track_end_io(struct fleece_tracker *t);
int fleece_track_message(struct fleece_tracker *t, unsigned int argc,
			 char **argv, char *result, unsigned int maxlen,
			 sector_t origin_sectors);
unsigned int fleece_track_emit_status(struct fleece_tracker *t, char *result,
				      unsigned int maxlen);
unsigned int fleece_track_sectors(struct fleece_tracker *t);
bool fleece_tracker_persistent(struct fleece_tracker *t);
bool fleece_tracker_has_bitmaps(struct fleece_tracker *t);
bool fleece_track_has_bitmap(struct fleece_tracker *t, const char *name);
void fleece_tracker_resize(struct fleece_tracker *t, sector_t origin_sectors);
dev_t fleece_tracker_md_dev(struct fleece_tracker *t);

/* fleece-track.c, for fleece-track-msg.c */
unsigned long *fleece_track_alloc_bits(u64 nbits);
int fleece_track_find(struct fleece_tracker *t, const char *name);
unsigned int fleece_track_md_blocks(struct fleece_tracker *t);
bool fleece_bitmap_enabled(const struct fleece_bitmap *bm);
void fleece_bitmap_free(struct fleece_bitmap *bm);
void __fleece_track_recompute(struct fleece_tracker *t);
void fleece_track_commit(struct fleece_tracker *t);
int fleece_track_persist_bitmap(struct fleece_tracker *t, unsigned int slot);
void fleece_track_drain(struct fleece_tracker *t);
void fleece_track_undrain(struct fleece_tracker *t);

/* fleece-track-backup.c: a backup bound to a bitmap. */
int fleece_track_bind(struct fleece_tracker *t, const char *name, bool full,
		      int *slot, char **error);
void fleece_track_bound_started(struct fleece_tracker *t);
void fleece_track_unbind(struct fleece_tracker *t, int slot,
			 enum fleece_bitmap_mode mode, bool success,
			 const unsigned long *released, unsigned int chunk_shift,
			 u32 nr_chunks, sector_t image_sectors);
void fleece_track_emit_extents(struct fleece_tracker *t,
			       const unsigned long *bits, u64 start,
			       unsigned int max, sector_t sectors,
			       char *result, unsigned int maxlen);

/* fleece-track-md.c: the metadata device (include/dm-fleece-metadata.h). */
struct fleece_md_open_result {
	unsigned int shift;		/* of the metadata, when it had one */
	unsigned int nr_slots;
	bool inconsistent;
	const char *why;		/* when inconsistent */
};

struct fleece_md *fleece_md_open(struct block_device *bdev,
				 sector_t origin_sectors, unsigned int shift,
				 const char *owner,
				 struct fleece_md_open_result *res,
				 char **error);
int fleece_md_load_bitmap(struct fleece_md *md, unsigned int slot,
			  unsigned long *bits, u64 nr_blocks);
void fleece_md_get_bitmap(struct fleece_md *md, unsigned int slot,
			  char *name, unsigned int *flags);
int fleece_md_write_bitmap_blocks(struct fleece_md *md, unsigned int slot,
				  const unsigned long *bits, u64 nr_blocks,
				  unsigned long *dirty);
int fleece_md_set_bitmap(struct fleece_md *md, unsigned int slot,
			 const char *name, unsigned int flags);
int fleece_md_commit(struct fleece_md *md);
int fleece_md_close(struct fleece_md *md, struct fleece_tracker *t);
unsigned int fleece_md_blocks_per_bitmap(struct fleece_md *md);
dev_t fleece_md_dev(struct fleece_md *md);

#endif /* DM_FLEECE_TRACK_H */
