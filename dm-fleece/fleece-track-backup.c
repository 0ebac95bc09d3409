// SPDX-License-Identifier: GPL-2.0-only
/*
 * A backup bound to a bitmap: the snapshot of a view with the "bitmap"
 * feature.  At the snapshot point the bitmap's contents are frozen as the
 * backup set, and a side set starts collecting the blocks written from then
 * on.  The bitmap itself keeps collecting everything, so that on disk it is
 * a superset of what any outcome needs.  When the view ends, the bitmap
 * mode decides what the bitmap becomes (as QEMU's backup job does):
 *
 *   never:       backup set + side set (nothing to do);
 *   on-success:  the side set if the backup said it succeeded and the
 *                snapshot stayed valid, else backup set + side set;
 *   always:      the side set on success, else backup set - the chunks
 *                the backup released + side set.
 * Blocks that reach past the end of the image (a view shorter than the
 * origin) were never backed up: they stay in the bitmap whatever happens.
 *
 * An incremental backup (the default with a bitmap) protects and serves
 * only the chunks of the backup set; fleece-snapshot.c marks the others
 * released before the snapshot starts.  A full backup with a bitmap starts
 * a chain: its backup set is the whole device.
 */
#include <linux/bitmap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "fleece-core.h"
#include "fleece-track.h"

/**
 * fleece_track_bind() - bind bitmap @name to the snapshot that starts.
 * @t: the tracker.
 * @name: the bitmap.
 * @full: a full backup: the backup set is every block.
 * @slot: set to the bitmap's slot.
 * @error: a whole sentence when it fails.
 *
 * Called by fleece_snapshot_start() before the snapshot point.  Drains the
 * tracked writes and freezes the backup set.  On success it returns with
 * the tracker's mutex held and writes held: they are let go, and marked in
 * the side set, by fleece_track_bound_started() once the snapshot is in
 * place.  Returns 0, -ENOENT, -EBUSY, -EIO or -ENOMEM.
 */
int fleece_track_bind(struct fleece_tracker *t, const char *name, bool full,
		      int *slot, char **error)
{
	unsigned long *frozen, *side;
	struct fleece_bitmap *bm;
	unsigned int noio;

	mutex_lock(&t->lock);
	if (t->health != FLEECE_TRACK_OK) {
		*error = "Change tracking is inconsistent or failed: back up without a bitmap.";
		goto bad;
	}
	*slot = fleece_track_find(t, name);
	if (*slot < 0) {
		*error = "The fleece device has no bitmap of that name.";
		goto bad;
	}
	bm = &t->bitmaps[*slot];
	if (bm->bound || !fleece_bitmap_enabled(bm)) {
		*error = "The bitmap is disabled or bound to another backup.";
		goto bad;
	}
	/* The origin may be suspended: reclaim must not write to it. */
	noio = memalloc_noio_save();
	frozen = fleece_track_alloc_bits(t->nr_blocks);
	side = fleece_track_alloc_bits(t->nr_blocks);
	memalloc_noio_restore(noio);
	if (!frozen || !side) {
		kvfree(frozen);
		kvfree(side);
		mutex_unlock(&t->lock);
		*error = "Cannot allocate the backup set.";
		return -ENOMEM;
	}

	fleece_track_drain(t);
	spin_lock_irq(&t->bits_lock);
	if (full)
		bitmap_fill(frozen, t->nr_blocks);
	else
		bitmap_copy(frozen, bm->bits, t->nr_blocks);
	bm->frozen = frozen;
	bm->side = side;
	bm->bound = true;
	__fleece_track_recompute(t);
	spin_unlock_irq(&t->bits_lock);
	return 0;

bad:
	mutex_unlock(&t->lock);
	return -EINVAL;
}

/* The snapshot of a bound backup is in place: writes go on, into the side set. */
void fleece_track_bound_started(struct fleece_tracker *t)
{
	fleece_track_undrain(t);
	mutex_unlock(&t->lock);
}

/*
 * True when every chunk that tracking block @b of the image overlaps was
 * released.  Blocks past the image's end are never released.
 */
static bool block_released(struct fleece_tracker *t, u64 b,
			   const unsigned long *released,
			   unsigned int chunk_shift, u32 nr_chunks)
{
	u64 first = (b << t->shift) >> chunk_shift;
	u64 last = (((b + 1) << t->shift) - 1) >> chunk_shift;

	/* Partly past the image: its tail was never backed up. */
	if (last >= nr_chunks)
		return false;
	return find_next_zero_bit(released, last + 1, first) > last;
}

/**
 * fleece_track_unbind() - the backup of a bound bitmap ended.
 * @t: the tracker.
 * @slot: the bitmap's slot.
 * @mode: the bitmap mode of the view.
 * @success: the backup said it succeeded, and the snapshot stayed valid.
 * @released: per chunk of the image: released by the backup (or outside the
 *	backup set).
 * @chunk_shift: log2 of the chunk size, in sectors.
 * @nr_chunks: chunks in the image.
 * @image_sectors: the image's size.
 *
 * Called by fleece_snapshot_end(), process context.  Applies @mode with
 * the tracked writes drained, writes the whole bitmap to the metadata
 * device and frees the backup and side sets.
 */
void fleece_track_unbind(struct fleece_tracker *t, int slot,
			 enum fleece_bitmap_mode mode, bool success,
			 const unsigned long *released, unsigned int chunk_shift,
			 u32 nr_chunks, sector_t image_sectors)
{
	struct fleece_bitmap *bm = &t->bitmaps[slot];
	/* The first block that is not wholly inside the image. */
	u64 outside = image_sectors >> t->shift;
	unsigned long *frozen, *side;
	int r = 0;
	u64 b;

	mutex_lock(&t->lock);
	if (!bm->bound) {
		mutex_unlock(&t->lock);
		return;
	}
	fleece_track_drain(t);
	/* Only this function changes them while bound: no lock to read. */
	frozen = bm->frozen;
	side = bm->side;
	if (mode != FLEECE_SYNC_NEVER && success) {
		/* All of the backup set was read, but what lies past the image. */
		if (outside < t->nr_blocks)
			bitmap_clear(frozen, 0, outside);
		else
			bitmap_zero(frozen, t->nr_blocks);
	} else if (mode == FLEECE_SYNC_ALWAYS) {
		for_each_set_bit(b, frozen, t->nr_blocks) {
			if (block_released(t, b, released, chunk_shift, nr_chunks))
				__clear_bit(b, frozen);
			if (!(b % 4096))
				cond_resched();
		}
	}
	spin_lock_irq(&t->bits_lock);
	if (mode != FLEECE_SYNC_NEVER && (success || mode == FLEECE_SYNC_ALWAYS))
		bitmap_or(bm->bits, frozen, side, t->nr_blocks);
	bm->frozen = NULL;
	bm->side = NULL;
	bm->bound = false;
	if (t->md)
		bitmap_fill(bm->dirty, fleece_track_md_blocks(t));
	__fleece_track_recompute(t);
	spin_unlock_irq(&t->bits_lock);
	kvfree(frozen);
	kvfree(side);

	if (t->md && t->health == FLEECE_TRACK_OK) {
		r = fleece_md_write_bitmap_blocks(t->md, slot, bm->bits, t->nr_blocks,
						  bm->dirty);
		if (r >= 0)
			r = fleece_md_commit(t->md);
		if (r < 0) {
			DMERR("%u:%u: cannot write bitmap %s after a backup (%d): tracking failed",
			      MAJOR(t->core->dev), MINOR(t->core->dev), bm->name, r);
			spin_lock_irq(&t->bits_lock);
			t->health = FLEECE_TRACK_FAILED;
			spin_unlock_irq(&t->bits_lock);
		}
	}
	DMINFO("%u:%u: backup of bitmap %s ended (%s, %s)", MAJOR(t->core->dev),
	       MINOR(t->core->dev), bm->name, success ? "success" : "failure",
	       mode == FLEECE_SYNC_NEVER ? "never" :
	       mode == FLEECE_SYNC_ALWAYS ? "always" : "on-success");
	fleece_track_undrain(t);
	mutex_unlock(&t->lock);
}
