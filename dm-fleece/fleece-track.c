// SPDX-License-Identifier: GPL-2.0-only
/*
 * Change tracking of the fleece origin: named bitmaps of changed tracking
 * blocks, marked by every write before it reaches the origin.  See
 * fleece-track.h for the crash-safety rule and the locks, and
 * fleece-track-md.c for the metadata device.
 *
 * The write path: map() asks fleece_track_map().  A write whose blocks are
 * all in tracker->committed passes at once (the common case: a block is
 * marked once per clear).  Otherwise its bits are set in memory; without a
 * metadata device it passes too, with one it waits on tracker->pending for
 * the commit worker, which writes the dirty bitmap blocks, flushes, and
 * then sends the writes on (fleece_origin_resume_write()).
 */
#include <linux/bitmap.h>
#include <linux/dm-bufio.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "fleece-core.h"
#include "fleece-track.h"

static void fleece_track_commit_worker(struct work_struct *work);
static void tracker_free(struct fleece_tracker *t, bool clean);

static void tracker_writes_release(struct percpu_ref *ref)
{
	struct fleece_tracker *t = container_of(ref, struct fleece_tracker, writes);

	wake_up_all(&t->writes_drained);
}

unsigned long *fleece_track_alloc_bits(u64 nbits)
{
	return kvcalloc(BITS_TO_LONGS(nbits), sizeof(unsigned long), GFP_KERNEL);
}

unsigned int fleece_track_sectors(struct fleece_tracker *t)
{
	return 1U << t->shift;
}

bool fleece_tracker_persistent(struct fleece_tracker *t)
{
	return t->md;
}

dev_t fleece_tracker_md_dev(struct fleece_tracker *t)
{
	return t->md ? fleece_md_dev(t->md) : 0;
}

/* True when @t holds a bitmap; tracker mutex or registry lock. */
bool fleece_tracker_has_bitmaps(struct fleece_tracker *t)
{
	unsigned int i;

	for (i = 0; i < t->nr_slots; i++)
		if (READ_ONCE(t->bitmaps[i].flags))
			return true;
	return false;
}

/**
 * fleece_tracker_resize() - the origin of a volatile tracker may have
 * changed size.
 * @t: the tracker, with no bitmap (fleece_core_get() refused the reload
 *	otherwise).
 * @origin_sectors: the new size.
 *
 * Origin preresume, process context, before the registry lock (the
 * tracker's mutex comes first).  A bitmap added between the load and
 * the resume of the table has the old size: it becomes inconsistent, and
 * blocks past its end are not tracked (map() keeps inside it).
 */
void fleece_tracker_resize(struct fleece_tracker *t, sector_t origin_sectors)
{
	unsigned int i;

	u64 nr_blocks = DIV_ROUND_UP_SECTOR_T(origin_sectors, 1U << t->shift);

	if (fleece_tracker_persistent(t) || nr_blocks == READ_ONCE(t->nr_blocks))
		return;
	mutex_lock(&t->lock);
	if (!fleece_tracker_has_bitmaps(t)) {
		kvfree(t->committed);
		t->committed = NULL;
		WRITE_ONCE(t->nr_blocks, nr_blocks);
	} else {
		spin_lock_irq(&t->bits_lock);
		for (i = 0; i < t->nr_slots; i++)
			if (t->bitmaps[i].flags)
				t->bitmaps[i].flags |= DM_FLEECE_BITMAP_INCONSISTENT;
		spin_unlock_irq(&t->bits_lock);
		DMWARN("%u:%u: origin resized while bitmaps were added: inconsistent",
		       MAJOR(t->core->dev), MINOR(t->core->dev));
	}
	mutex_unlock(&t->lock);
}

/* The slot of bitmap @name, or -1.  Caller holds the tracker's mutex. */
int fleece_track_find(struct fleece_tracker *t, const char *name)
{
	unsigned int i;

	lockdep_assert_held(&t->lock);
	for (i = 0; i < t->nr_slots; i++)
		if (t->bitmaps[i].flags && !strcmp(t->bitmaps[i].name, name))
			return i;
	return -1;
}

/* True when @t has bitmap @name (for the view's constructor). */
bool fleece_track_has_bitmap(struct fleece_tracker *t, const char *name)
{
	bool found;

	mutex_lock(&t->lock);
	found = fleece_track_find(t, name) >= 0;
	mutex_unlock(&t->lock);
	return found;
}

/* Metadata blocks per bitmap: what the dirty bitmaps have a bit for. */
unsigned int fleece_track_md_blocks(struct fleece_tracker *t)
{
	return t->md ? fleece_md_blocks_per_bitmap(t->md) : 0;
}

bool fleece_bitmap_enabled(const struct fleece_bitmap *bm)
{
	return bm->flags & DM_FLEECE_BITMAP_ENABLED;
}

void fleece_bitmap_free(struct fleece_bitmap *bm)
{
	kvfree(bm->frozen);
	kvfree(bm->side);
	kvfree(bm->bits);
	bitmap_free(bm->dirty);
	memset(bm, 0, sizeof(*bm));
}

/*
 * Recomputes committed: the blocks set in every enabled bitmap (all of
 * them on disk, since the caller committed or drained).  Caller holds
 * bits_lock.
 */
void __fleece_track_recompute(struct fleece_tracker *t)
{
	bool first = true;
	unsigned int i;

	lockdep_assert_held(&t->bits_lock);
	t->nr_enabled = 0;
	if (!t->committed)
		return;
	/*
	 * After a failed commit, bits in memory may not be on disk: blocks may
	 * only leave committed, never join it.
	 */
	if (t->health != FLEECE_TRACK_OK)
		first = false;
	for (i = 0; i < t->nr_slots; i++) {
		struct fleece_bitmap *bm = &t->bitmaps[i];

		if (!bm->flags || !fleece_bitmap_enabled(bm))
			continue;
		t->nr_enabled++;
		if (first)
			bitmap_copy(t->committed, bm->bits, t->nr_blocks);
		else
			bitmap_and(t->committed, t->committed, bm->bits, t->nr_blocks);
		/* A bound bitmap's side set must see each block's first write. */
		if (bm->side)
			bitmap_and(t->committed, t->committed, bm->side, t->nr_blocks);
		first = false;
	}
	if (first)
		bitmap_zero(t->committed, t->nr_blocks);
}

/* Loads the bitmaps the metadata device holds. */
static int load_bitmaps(struct fleece_tracker *t)
{
	unsigned int slot, flags;
	int r;

	for (slot = 0; slot < t->nr_slots; slot++) {
		struct fleece_bitmap *bm = &t->bitmaps[slot];

		fleece_md_get_bitmap(t->md, slot, bm->name, &flags);
		if (!flags)
			continue;
		bm->bits = fleece_track_alloc_bits(t->nr_blocks);
		bm->dirty = bitmap_zalloc(fleece_track_md_blocks(t), GFP_KERNEL);
		if (!bm->bits || !bm->dirty)
			return -ENOMEM;
		bm->flags = flags;
		r = fleece_md_load_bitmap(t->md, slot, bm->bits, t->nr_blocks);
		if (r == -EILSEQ) {
			DMWARN("bitmap %s does not match its checksum: inconsistent", bm->name);
			bm->flags |= DM_FLEECE_BITMAP_INCONSISTENT;
		} else if (r) {
			return r;
		}
		/* Never an empty bitmap: a full backup is needed. */
		if (bm->flags & DM_FLEECE_BITMAP_INCONSISTENT)
			bitmap_fill(bm->bits, t->nr_blocks);
	}
	return 0;
}

/**
 * fleece_track_persist_bitmap() - write all of bitmap @slot and its entry.
 * @t: the tracker, whose mutex the caller holds (with writes drained when
 *	bits went away).
 * @slot: the bitmap.
 *
 * After an add, a clear, or a bitmap found inconsistent.  Returns 0 or an
 * error; 0 without a metadata device.
 */
int fleece_track_persist_bitmap(struct fleece_tracker *t, unsigned int slot)
{
	struct fleece_bitmap *bm = &t->bitmaps[slot];
	int r;

	if (!t->md)
		return 0;
	bitmap_fill(bm->dirty, fleece_track_md_blocks(t));
	r = fleece_md_write_bitmap_blocks(t->md, slot, bm->bits, t->nr_blocks,
					  bm->dirty);
	if (r >= 0)
		r = fleece_md_commit(t->md);
	if (!r)
		r = fleece_md_set_bitmap(t->md, slot, bm->name, bm->flags);
	return r;
}

/*
 * Writes the bitmaps found inconsistent when the device was opened, full,
 * with their flag: a later unclean stop must not find them as they were.
 */
static int persist_inconsistent(struct fleece_tracker *t)
{
	unsigned int slot;
	int r;

	for (slot = 0; slot < t->nr_slots; slot++) {
		if (!(t->bitmaps[slot].flags & DM_FLEECE_BITMAP_INCONSISTENT))
			continue;
		r = fleece_track_persist_bitmap(t, slot);
		if (r)
			return r;
	}
	return 0;
}

/**
 * fleece_tracker_create() - the change tracking of a new fleece device.
 * @core: the device's core.
 * @origin_sectors: the origin's size.
 * @track_sectors: the tracking block size the table gives, or 0.
 * @md_bdev: the metadata device, or NULL to keep the bitmaps in memory.
 * @owner: the device's dm uuid, or its name.
 * @error: a whole sentence when it fails.
 *
 * Process context, with I/O allowed only to @md_bdev (the caller set
 * memalloc_noio).  Returns the tracker or NULL.
 */
struct fleece_tracker *fleece_tracker_create(struct fleece_core *core,
					     sector_t origin_sectors,
					     unsigned int track_sectors,
					     struct block_device *md_bdev,
					     const char *owner, char **error)
{
	struct fleece_md_open_result res = { 0 };
	struct fleece_tracker *t;
	unsigned long flags;
	int r;

	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t)
		goto nomem;
	t->core = core;
	mutex_init(&t->lock);
	spin_lock_init(&t->bits_lock);
	bio_list_init(&t->unmarked);
	bio_list_init(&t->pending);
	init_waitqueue_head(&t->writes_drained);
	INIT_WORK(&t->commit_work, fleece_track_commit_worker);
	if (percpu_ref_init(&t->writes, tracker_writes_release,
			    PERCPU_REF_ALLOW_REINIT, GFP_KERNEL)) {
		kfree(t);
		goto nomem;
	}
	t->shift = ilog2(track_sectors ?: DM_FLEECE_DEFAULT_TRACK_SECTORS);
	t->nr_slots = DM_FLEECE_MD_MAX_BITMAPS;

	if (md_bdev) {
		t->md = fleece_md_open(md_bdev, origin_sectors,
				       track_sectors ? t->shift : 0, owner, &res, error);
		if (!t->md)
			goto bad;
		if (res.inconsistent) {
			DMERR("metadata device %pg is inconsistent (%s): a full backup is needed",
			      md_bdev, res.why);
			t->health = FLEECE_TRACK_INCONSISTENT;
			t->nr_slots = 0;
		} else {
			if (track_sectors && res.shift != t->shift) {
				*error = "The metadata device has another track_block size.";
				goto bad;
			}
			t->shift = res.shift;
			t->nr_slots = res.nr_slots;
		}
	}
	t->nr_blocks = DIV_ROUND_UP_SECTOR_T(origin_sectors, 1U << t->shift);
	/* The kernel's bitmap helpers count bits in an int. */
	if (t->nr_blocks > INT_MAX) {
		*error = "The origin has too many tracking blocks: use a larger track_block.";
		goto bad;
	}
	/* Its own: a drain must not wait behind the copy worker's queue. */
	t->wq = alloc_workqueue("kfleece-track/%u:%u", WQ_MEM_RECLAIM, 1,
				MAJOR(core->dev), MINOR(core->dev));
	if (!t->wq)
		goto nomem_bad;

	if (t->md && t->health == FLEECE_TRACK_OK) {
		r = load_bitmaps(t);
		if (r) {
			*error = r == -ENOMEM ? "Cannot allocate the bitmaps." :
				 "Cannot read the bitmaps of the metadata device.";
			goto bad;
		}
		t->committed = fleece_track_alloc_bits(t->nr_blocks);
		if (!t->committed)
			goto nomem_bad;
		spin_lock_irqsave(&t->bits_lock, flags);
		__fleece_track_recompute(t);
		spin_unlock_irqrestore(&t->bits_lock, flags);
		r = persist_inconsistent(t);
		if (r) {
			*error = "Cannot write the metadata device.";
			goto bad;
		}
	}
	t->loaded = true;
	return t;

nomem_bad:
	*error = "Cannot allocate the bitmaps.";
bad:
	/* Not closed clean: the checksums were never computed from it. */
	tracker_free(t, false);
	return NULL;
nomem:
	*error = "Cannot allocate the change tracking state.";
	return NULL;
}

/*
 * Frees @t; closes its metadata device clean (with the bitmaps' checksums)
 * when @clean, or leaves it open, which the next open trusts as after a
 * crash.  Takes no lock: nothing else can use @t any more.
 */
static void tracker_free(struct fleece_tracker *t, bool clean)
{
	unsigned int i;

	if (t->md)
		fleece_md_close(t->md, clean ? t : NULL);
	if (t->wq)
		destroy_workqueue(t->wq);
	for (i = 0; i < DM_FLEECE_MD_MAX_BITMAPS; i++)
		fleece_bitmap_free(&t->bitmaps[i]);
	kvfree(t->committed);
	percpu_ref_exit(&t->writes);
	kfree(t);
}

/*
 * The device is gone: no write can come any more.  Commits what is left,
 * marks the metadata clean and frees everything.  Called without the
 * registry lock (the tracker's mutex comes first).
 */
void fleece_tracker_destroy(struct fleece_tracker *t)
{
	if (!t)
		return;
	flush_work(&t->commit_work);
	mutex_lock(&t->lock);
	if (t->md && t->health == FLEECE_TRACK_OK)
		fleece_track_commit(t);
	mutex_unlock(&t->lock);
	tracker_free(t, t->loaded && t->health == FLEECE_TRACK_OK);
}

/**
 * fleece_tracker_detach() - the last fleece table left a device whose view
 * still holds it.
 * @t: the tracker.
 *
 * Writes now reach the origin through another table, untracked, and the
 * metadata device is about to be closed by its last table.  Every bitmap
 * is marked inconsistent on disk (it will read as full, never as empty),
 * the device is closed, and tracking stays inconsistent in memory.  Called
 * without the registry lock.
 */
void fleece_tracker_detach(struct fleece_tracker *t)
{
	unsigned int slot;

	flush_work(&t->commit_work);
	mutex_lock(&t->lock);
	/* Bitmaps in memory that do not exist miss nothing. */
	if (!t->md && !fleece_tracker_has_bitmaps(t)) {
		mutex_unlock(&t->lock);
		return;
	}
	spin_lock_irq(&t->bits_lock);
	for (slot = 0; slot < t->nr_slots; slot++)
		if (t->bitmaps[slot].flags)
			t->bitmaps[slot].flags |= DM_FLEECE_BITMAP_INCONSISTENT;
	spin_unlock_irq(&t->bits_lock);
	if (t->md) {
		if (t->health == FLEECE_TRACK_OK) {
			fleece_track_commit(t);
			for (slot = 0; slot < t->nr_slots; slot++)
				if (t->bitmaps[slot].flags)
					fleece_md_set_bitmap(t->md, slot, t->bitmaps[slot].name,
							     t->bitmaps[slot].flags);
		}
		fleece_md_close(t->md, NULL);
		spin_lock_irq(&t->bits_lock);
		t->md = NULL;
		spin_unlock_irq(&t->bits_lock);
	}
	spin_lock_irq(&t->bits_lock);
	t->health = FLEECE_TRACK_INCONSISTENT;
	spin_unlock_irq(&t->bits_lock);
	DMWARN("%u:%u: the fleece table left the device: change tracking is inconsistent",
	       MAJOR(t->core->dev), MINOR(t->core->dev));
	mutex_unlock(&t->lock);
}

/*
 * The tracking blocks of @bio.  False when it has none: it lies past the
 * end of the bitmaps (fleece_tracker_resize()).
 */
static bool bio_blocks(struct fleece_tracker *t, struct bio *bio, u64 *first,
		       u64 *last)
{
	*first = bio->bi_iter.bi_sector >> t->shift;
	*last = min_t(u64, (bio_end_sector(bio) - 1) >> t->shift, t->nr_blocks - 1);
	return *first <= *last;
}

static bool blocks_committed(struct fleece_tracker *t, u64 first, u64 last)
{
	return find_next_zero_bit(t->committed, last + 1, first) > last;
}

/*
 * Sets blocks @first..@last in every enabled bitmap, and the dirty bits of
 * their metadata blocks.  Caller holds bits_lock.  The dirty bits are set
 * atomically: the commit worker clears them without the lock.
 */
static void __mark(struct fleece_tracker *t, u64 first, u64 last)
{
	u64 b0 = first / (DM_FLEECE_MD_BLOCK_SIZE * 8);
	u64 b1 = last / (DM_FLEECE_MD_BLOCK_SIZE * 8);
	unsigned int i;
	u64 b;

	lockdep_assert_held(&t->bits_lock);
	for (i = 0; i < t->nr_slots; i++) {
		struct fleece_bitmap *bm = &t->bitmaps[i];

		if (!bm->flags || !fleece_bitmap_enabled(bm))
			continue;
		bitmap_set(bm->bits, first, last - first + 1);
		if (bm->side)
			bitmap_set(bm->side, first, last - first + 1);
		if (!t->md)
			continue;
		/* The bits before the dirty mark: see fleece_md_write_bitmap_blocks(). */
		smp_mb__before_atomic();
		for (b = b0; b <= b1; b++)
			set_bit(b, bm->dirty);
	}
	if (!t->md)
		bitmap_set(t->committed, first, last - first + 1);
}

/*
 * Trims @bio, in map(), to its chunk before it may be held: the routing
 * that resumes it later runs outside map(), where dm_accept_partial_bio()
 * must not be called, and then finds nothing to trim.
 */
static void trim_for_hold(struct fleece_tracker *t, struct bio *bio)
{
	sector_t chunk = READ_ONCE(t->core->chunk_sectors);
	sector_t offset = bio->bi_iter.bi_sector & (chunk - 1);

	if (offset + bio_sectors(bio) > chunk)
		dm_accept_partial_bio(bio, chunk - offset);
}

/**
 * fleece_track_map() - track a bio that changes data, from map().
 * @t: the tracker of the device.
 * @bio: a write, discard, write-zeroes or secure erase with data sectors.
 *
 * Never sleeps.  Marks io->tracked when the bio holds a reference to
 * @t->writes, which fleece_track_end_io() drops.
 */
enum fleece_track_route fleece_track_map(struct fleece_tracker *t,
					 struct bio *bio)
{
	struct fleece_origin_io *io = fleece_origin_io(bio);
	enum fleece_track_route route = FLEECE_TRACK_PASS;
	unsigned long flags;
	u64 first, last;

	if (unlikely(!percpu_ref_tryget_live(&t->writes))) {
		trim_for_hold(t, bio);
		/* Bits are being cleared: mark it when they are. */
		spin_lock_irqsave(&t->bits_lock, flags);
		bio_list_add(&t->unmarked, bio);
		spin_unlock_irqrestore(&t->bits_lock, flags);
		queue_work(t->wq, &t->commit_work);
		return FLEECE_TRACK_HELD;
	}
	io->tracked = true;
	if (likely(!READ_ONCE(t->nr_enabled)))
		return FLEECE_TRACK_PASS;
	if (!bio_blocks(t, bio, &first, &last) ||
	    likely(blocks_committed(t, first, last)))
		return FLEECE_TRACK_PASS;

	/* It may be held: trimmed now, with the blocks of what is left. */
	trim_for_hold(t, bio);
	if (!bio_blocks(t, bio, &first, &last))
		return FLEECE_TRACK_PASS;
	spin_lock_irqsave(&t->bits_lock, flags);
	if (unlikely(t->draining)) {
		/*
		 * The drain took the pending writes already and cannot commit
		 * this one: it waits without its reference, to be marked after.
		 */
		bio_list_add(&t->unmarked, bio);
		io->tracked = false;
		percpu_ref_put(&t->writes);
		route = FLEECE_TRACK_HELD;
	} else if (t->health == FLEECE_TRACK_FAILED) {
		route = FLEECE_TRACK_FAIL;
	} else if (t->nr_enabled) {
		__mark(t, first, last);
		if (t->md) {
			bio_list_add(&t->pending, bio);
			route = FLEECE_TRACK_HELD;
		}
	}
	spin_unlock_irqrestore(&t->bits_lock, flags);
	if (route == FLEECE_TRACK_HELD && t->md)
		queue_work(t->wq, &t->commit_work);
	return route;
}

/* end_io() of a bio that fleece_track_map() marked tracked. */
void fleece_track_end_io(struct fleece_tracker *t)
{
	percpu_ref_put(&t->writes);
}

/*
 * Marks the writes held while bits were being cleared, now that they are
 * not: the ones whose blocks are committed go on at once (@go), the others
 * join the pending ones.  Caller holds bits_lock.
 */
static void __mark_unmarked(struct fleece_tracker *t, struct bio_list *go)
{
	struct bio *bio;
	u64 first, last;

	lockdep_assert_held(&t->bits_lock);
	while ((bio = bio_list_pop(&t->unmarked))) {
		percpu_ref_get(&t->writes);
		fleece_origin_io(bio)->tracked = true;
		if (!t->nr_enabled) {
			bio_list_add(go, bio);
			continue;
		}
		if (!bio_blocks(t, bio, &first, &last) ||
		    blocks_committed(t, first, last)) {
			bio_list_add(go, bio);
			continue;
		}
		__mark(t, first, last);
		bio_list_add(t->md ? &t->pending : go, bio);
	}
}

/* Sends writes on that tracking no longer holds. */
static void resume_writes(struct fleece_tracker *t, struct bio_list *go,
			  struct bio_list *fail)
{
	struct bio *bio;

	while ((bio = bio_list_pop(go)))
		fleece_origin_resume_write(t->core, bio);
	while ((bio = bio_list_pop(fail)))
		bio_io_error(bio);
}

/**
 * fleece_track_commit() - make the marked bits durable, then let their
 * writes go.
 * @t: the tracker, whose mutex the caller holds.
 *
 * Writes every dirty bitmap block, then flushes the metadata device; only
 * then are the writes that waited for the commit sent on.  A failure puts
 * the tracker in the failed state and fails those writes: their bits could
 * not be made durable.
 */
void fleece_track_commit(struct fleece_tracker *t)
{
	struct bio_list batch = BIO_EMPTY_LIST, go = BIO_EMPTY_LIST;
	struct bio_list fail = BIO_EMPTY_LIST;
	unsigned int slot;
	struct bio *bio;
	u64 first, last;
	int r = 0, wrote = 0;

	lockdep_assert_held(&t->lock);
	spin_lock_irq(&t->bits_lock);
	if (!t->draining)
		__mark_unmarked(t, &go);
	bio_list_merge(&batch, &t->pending);
	bio_list_init(&t->pending);
	spin_unlock_irq(&t->bits_lock);

	if (t->md && t->health == FLEECE_TRACK_OK) {
		for (slot = 0; slot < t->nr_slots && r >= 0; slot++) {
			struct fleece_bitmap *bm = &t->bitmaps[slot];

			if (!bm->flags)
				continue;
			r = fleece_md_write_bitmap_blocks(t->md, slot, bm->bits,
							  t->nr_blocks, bm->dirty);
			wrote += max(r, 0);
		}
		if (r >= 0 && (wrote || !bio_list_empty(&batch)))
			r = fleece_md_commit(t->md);
		r = min(r, 0);
	}

	spin_lock_irq(&t->bits_lock);
	if (r && t->health == FLEECE_TRACK_OK) {
		DMERR("%u:%u: tracking metadata write failed (%d): new bits fail their writes",
		      MAJOR(t->core->dev), MINOR(t->core->dev), r);
		t->health = FLEECE_TRACK_FAILED;
	}
	if (t->health == FLEECE_TRACK_FAILED) {
		bio_list_merge(&fail, &batch);
	} else {
		/* Every enabled bitmap has their bits, and they are on disk. */
		bio_list_for_each(bio, &batch)
			if (t->nr_enabled && bio_blocks(t, bio, &first, &last))
				bitmap_set(t->committed, first, last - first + 1);
		bio_list_merge(&go, &batch);
	}
	if (!t->draining && !bio_list_empty(&t->unmarked))
		queue_work(t->wq, &t->commit_work);
	t->commits++;
	spin_unlock_irq(&t->bits_lock);
	resume_writes(t, &go, &fail);
}

static void fleece_track_commit_worker(struct work_struct *work)
{
	struct fleece_tracker *t = container_of(work, struct fleece_tracker,
						commit_work);

	mutex_lock(&t->lock);
	fleece_track_commit(t);
	mutex_unlock(&t->lock);
}

/*
 * Waits until no write that passed the bits as they are is in flight, and
 * holds new ones: bits may then be cleared without losing a write that
 * completes afterwards.  Caller holds the mutex; fleece_track_undrain()
 * ends it.
 */
void fleece_track_drain(struct fleece_tracker *t)
{
	lockdep_assert_held(&t->lock);
	spin_lock_irq(&t->bits_lock);
	t->draining = true;
	spin_unlock_irq(&t->bits_lock);
	percpu_ref_kill(&t->writes);
	/* The marked writes wait for a commit, which only we can run now. */
	fleece_track_commit(t);
	wait_event(t->writes_drained, percpu_ref_is_zero(&t->writes));
}

void fleece_track_undrain(struct fleece_tracker *t)
{
	bool held;

	lockdep_assert_held(&t->lock);
	percpu_ref_resurrect(&t->writes);
	spin_lock_irq(&t->bits_lock);
	t->draining = false;
	held = !bio_list_empty(&t->unmarked);
	spin_unlock_irq(&t->bits_lock);
	if (held)
		queue_work(t->wq, &t->commit_work);
}

