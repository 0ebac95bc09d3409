// SPDX-License-Identifier: GPL-2.0-only
/*
 * The point-in-time snapshot of a fleece origin: its state, how it starts
 * and ends, and the release message.  How bios are routed while it is
 * active is in fleece-route.c, the copies it makes in fleece-copy.c.
 */
#include <linux/bitmap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "fleece-core.h"

/* Emergency reserve of copy buffers: enough for two chunks in flight. */
#define FLEECE_COPY_BUFFER_BYTES	(8U << 20)
#define FLEECE_MAX_COPIES_LIMIT		64U

/*
 * Copies in flight at most, unless the table says otherwise: 8 MiB of copy
 * buffers, but no more than FLEECE_MAX_COPIES_LIMIT and no fewer than 2.
 */
static unsigned int default_max_copies(sector_t chunk_sectors)
{
	unsigned int n = FLEECE_COPY_BUFFER_BYTES / (chunk_sectors << SECTOR_SHIFT);

	return clamp(n, 2U, FLEECE_MAX_COPIES_LIMIT);
}

static void snapshot_free(struct fleece_snapshot *s)
{
	fleece_discards_exit(s);
	mempool_exit(&s->page_pool);
	mempool_exit(&s->job_pool);
	fleece_emap_destroy(&s->map);
	kvfree(s->quarantine_closed);
	kvfree(s->quarantine_open);
	kvfree(s->slot_words_full);
	kvfree(s->slot_used);
	kvfree(s->released);
	kvfree(s->needs_copy);
	kfree(s);
}

static struct fleece_snapshot *snapshot_alloc(struct fleece_core *core,
					      struct fleece_view *view)
{
	sector_t chunk_sectors = core->chunk_sectors;
	sector_t exception_sectors = bdev_nr_sectors(view->exception_dev->bdev);
	struct fleece_snapshot *s;
	size_t bitmap_bytes;

	s = kzalloc(sizeof(*s), GFP_KERNEL);
	if (!s)
		return NULL;
	s->core = core;
	s->chunk_shift = __ffs(chunk_sectors);
	s->nr_sectors = view->ti->len;
	s->nr_chunks = DIV_ROUND_UP_SECTOR_T(s->nr_sectors, chunk_sectors);
	s->nr_slots = min_t(sector_t, exception_sectors >> s->chunk_shift,
			    FLEECE_NO_SLOT - 1);
	s->origin_bdev = view->origin_dev->bdev;
	s->exception_bdev = view->exception_dev->bdev;
	s->policy = view->policy;
	s->timeout = msecs_to_jiffies(view->timeout_ms);
	s->max_copies = view->max_copies ?: default_max_copies(chunk_sectors);
	s->chunk_pages = DIV_ROUND_UP(chunk_sectors << SECTOR_SHIFT, PAGE_SIZE);
	s->copies = RB_ROOT_CACHED;
	s->readers = RB_ROOT_CACHED;
	INIT_LIST_HEAD(&s->jobs_by_age);
	INIT_LIST_HEAD(&s->jobs_to_start);

	/* u64: near 2^32 bits, + BITS_PER_LONG - 1 wraps a 32-bit size_t. */
	bitmap_bytes = BITS_TO_LONGS((u64)s->nr_chunks) * sizeof(unsigned long);
	s->needs_copy = kvzalloc(bitmap_bytes, GFP_KERNEL);
	s->released = kvzalloc(bitmap_bytes, GFP_KERNEL);
	bitmap_bytes = BITS_TO_LONGS((u64)s->nr_slots) * sizeof(unsigned long);
	s->slot_used = kvzalloc(bitmap_bytes, GFP_KERNEL);
	s->slot_words_full = kvcalloc(BITS_TO_LONGS(BITS_TO_LONGS(s->nr_slots)),
				      sizeof(unsigned long), GFP_KERNEL);
	s->quarantine_open = kvzalloc(bitmap_bytes, GFP_KERNEL);
	s->quarantine_closed = kvzalloc(bitmap_bytes, GFP_KERNEL);
	if (!s->needs_copy || !s->released || !s->slot_used || !s->slot_words_full ||
	    !s->quarantine_open || !s->quarantine_closed ||
	    fleece_emap_init(&s->map, s->nr_slots))
		goto bad;
	/*
	 * Jobs in flight: max_copies healthy ones, as many failed ones that
	 * still hang on their I/O, and one spare for the worker.
	 */
	if (mempool_init_kmalloc_pool(&s->job_pool, 2 * s->max_copies + 1,
				      sizeof(struct fleece_copy_job) +
				      s->chunk_pages * sizeof(struct page *)))
		goto bad;
	if (mempool_init_page_pool(&s->page_pool, 2 * s->chunk_pages, 0))
		goto bad;
	if (fleece_discards_init(s))
		goto bad;
	/*
	 * Not bitmap_set(): its length is an int, and an image may have up to
	 * 2^32 - 2 chunks.  The padding bits past nr_chunks are never looked
	 * at: every search stops at nr_chunks.
	 */
	bitmap_fill(s->needs_copy, s->nr_chunks);
	/* No slot past the end: the last word fills up like the others. */
	bitmap_set(s->slot_used, s->nr_slots,
		   BITS_TO_LONGS(s->nr_slots) * BITS_PER_LONG - s->nr_slots);
	return s;
bad:
	snapshot_free(s);
	return NULL;
}

/*
 * An incremental backup protects and serves only the chunks of its backup
 * set: the others start released (never copied, reads fail), without
 * counting as released by the backup.
 */
static void restrict_to_backup_set(struct fleece_snapshot *s,
				   struct fleece_tracker *t, int slot)
{
	const unsigned long *frozen = t->bitmaps[slot].frozen;
	u64 b, first, last;

	bitmap_zero(s->needs_copy, s->nr_chunks);
	bitmap_fill(s->released, s->nr_chunks);
	for_each_set_bit(b, frozen, t->nr_blocks) {
		first = (b << t->shift) >> s->chunk_shift;
		if (first >= s->nr_chunks)
			break;
		last = min_t(u64, (((b + 1) << t->shift) - 1) >> s->chunk_shift,
			     s->nr_chunks - 1);
		/* bitmap_set() takes an int: a run is at most 2^14 chunks here. */
		bitmap_set(s->needs_copy, first, last - first + 1);
		bitmap_clear(s->released, first, last - first + 1);
	}
}

/**
 * fleece_snapshot_start() - take the point in time for @view.
 * @core: the core of the fleece device.
 * @view: the view that resumes.
 *
 * Called from the view's preresume, in process context; may sleep.  Origin
 * writes in flight are drained first, and writes that arrive meanwhile are
 * deferred, so that every write that completed before is in the image and
 * none submitted after it is.  When the fleece device's live table is not a
 * fleece table any more, the snapshot starts invalid (detached), so that the
 * view resumes and says why.  Returns 0 (also when the snapshot is already
 * running because the view was suspended and resumed) or -ENOMEM.
 */
int fleece_snapshot_start(struct fleece_core *core, struct fleece_view *view)
{
	struct fleece_snapshot *s;
	char *error = NULL;
	unsigned int noio;
	int r;

	if (READ_ONCE(core->snap))
		return 0;

	/* The origin may be suspended: reclaim must not write to it. */
	noio = memalloc_noio_save();
	s = snapshot_alloc(core, view);
	memalloc_noio_restore(noio);
	if (!s)
		return -ENOMEM;

	s->bound_slot = -1;
	if (view->bitmap[0]) {
		/* Returns with tracked writes held until bound_started(). */
		r = fleece_track_bind(core->tracker, view->bitmap, view->full_backup,
				      &s->bound_slot, &error);
		if (r) {
			DMERR("%u:%u: snapshot not started: %s", MAJOR(core->dev),
			      MINOR(core->dev), error);
			snapshot_free(s);
			return r;
		}
		s->bitmap_mode = view->bitmap_mode;
		if (!view->full_backup)
			restrict_to_backup_set(s, core->tracker, s->bound_slot);
	}

	percpu_ref_kill(&core->writes_ref);
	wait_event(core->writes_drained, percpu_ref_is_zero(&core->writes_ref));

	/*
	 * The point in time only holds while a fleece instance is the live
	 * table of the origin device; origin_ti only changes under the
	 * registry lock, and a later change detaches the snapshot.
	 */
	mutex_lock(&fleece_registry_lock);
	spin_lock_irq(&core->lock);
	core->snap = s;
	core->recheck_deferred = true;
	if (core->origin_ti) {
		core->error = FLEECE_ERR_NONE;
		WRITE_ONCE(core->state, FLEECE_ACTIVE);
	} else {
		core->error = FLEECE_ERR_DETACHED;
		WRITE_ONCE(core->state, FLEECE_INVALID);
	}
	spin_unlock_irq(&core->lock);
	mutex_unlock(&fleece_registry_lock);

	/* Pairs with smp_rmb() in fleece_origin_map_write(). */
	smp_wmb();
	percpu_ref_resurrect(&core->writes_ref);
	if (s->bound_slot >= 0)
		fleece_track_bound_started(core->tracker);

	if (core->state == FLEECE_ACTIVE)
		DMINFO("%u:%u: snapshot started: %u chunks of %llu sectors, %u exception slots",
		       MAJOR(core->dev), MINOR(core->dev), s->nr_chunks,
		       (unsigned long long)core->chunk_sectors, s->nr_slots);
	else
		DMERR("%u:%u: snapshot not started: the device's live table is not a fleece table",
		      MAJOR(core->dev), MINOR(core->dev));
	fleece_kick(core);
	schedule_work(&core->event_work);
	return 0;
}

/*
 * Passes the discards held back during the snapshot down to the origin,
 * once no write can overlap them: every write in flight was routed while
 * the snapshot was active and took its range out of them, and writes
 * submitted from now on wait on the dead writes_ref (they go to
 * deferred_writes, which the worker leaves alone until the resurrection).
 */
static void issue_held_discards(struct fleece_core *core,
				struct fleece_snapshot *s, struct rb_root *taken)
{
	wait_event(core->writes_drained, percpu_ref_is_zero(&core->writes_ref));
	fleece_issue_discards(s, taken);
	spin_lock_irq(&core->lock);
	/* A worker run may have seen them while the reference was dead. */
	core->recheck_deferred = true;
	core->discards_issuing = false;
	wake_up(&core->origin_reads_done);
	spin_unlock_irq(&core->lock);
	percpu_ref_resurrect(&core->writes_ref);
	fleece_kick(core);
}

/*
 * Deferred writes are not in flight: let go of the references they hold,
 * so that the drain before the held discards go down does not wait for a
 * write queued behind one that cannot get a reference while it is dead.
 * They take one again when the worker routes them.  Caller holds
 * core->lock.
 */
static void __unref_deferred_writes(struct fleece_core *core)
{
	struct fleece_origin_io *io;
	struct bio *bio;

	lockdep_assert_held(&core->lock);
	bio_list_for_each(bio, &core->deferred_writes) {
		io = fleece_origin_io(bio);
		if (io->holds_ref) {
			io->holds_ref = false;
			percpu_ref_put(&core->writes_ref);
		}
	}
}

/**
 * fleece_snapshot_end() - drop the snapshot and everything it holds.
 * @core: the core of the fleece device.
 *
 * Called from the view's destructor, in process context, after dm has
 * drained the view's I/O.  Held origin writes go ahead at once; the copies
 * in flight are waited for and their results thrown away.  The origin
 * discards held back go down last, while new writes wait.  The snapshot's
 * error moves to last_error: an idle origin has no current error.
 */
void fleece_snapshot_end(struct fleece_core *core)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail;
	struct rb_root discards = RB_ROOT;
	struct fleece_copy_job *job;
	struct fleece_snapshot *s;
	bool held_discards, success;
	struct bio *bio;

	spin_lock_irq(&core->lock);
	s = core->snap;
	if (!s) {
		spin_unlock_irq(&core->lock);
		return;
	}
	/* A backup that said it succeeded, of a snapshot that stayed valid. */
	success = s->declared_success && core->state == FLEECE_ACTIVE;
	/*
	 * Killed before the state changes, under the lock: a write that got
	 * the reference earlier was routed as active, or sees idle and is in
	 * flight until the drain in issue_held_discards().
	 */
	held_discards = core->state == FLEECE_ACTIVE && !RB_EMPTY_ROOT(&s->discards);
	if (held_discards && !core->origin_running) {
		/* Another table may take writes the moment it resumes. */
		__fleece_drop_discards(s, "the origin is suspended");
		held_discards = false;
	}
	if (held_discards) {
		percpu_ref_kill(&core->writes_ref);
		__unref_deferred_writes(core);
		__fleece_take_discards(s, &discards);
		core->discards_issuing = true;
	}
	WRITE_ONCE(core->state, FLEECE_IDLE);
	core->last_error = core->error;
	core->error = FLEECE_ERR_NONE;
	core->recheck_deferred = true;
	list_for_each_entry(job, &s->jobs_by_age, age_entry)
		while ((bio = __fleece_pop_write(core, &job->waiting_writes)))
			bio_list_add(&issue, bio);
	while ((bio = __fleece_pop_write(core, &core->reader_blocked)))
		bio_list_add(&issue, bio);
	/*
	 * Normally dm drained the view's I/O, but a removal (__dm_destroy())
	 * does not wait for it: never leave a held read behind.
	 */
	fail = core->reads_on_hold;
	bio_list_init(&core->reads_on_hold);
	spin_unlock_irq(&core->lock);

	/* Deferred writes are now routed as pass-through by the worker. */
	fleece_submit_list(&issue, &fail);
	fleece_kick(core);
	wait_event(core->copies_done, !READ_ONCE(s->copies_in_flight));

	spin_lock_irq(&core->lock);
	core->snap = NULL;
	spin_unlock_irq(&core->lock);
	/* A worker run that still uses @s ends before these return. */
	flush_work(&core->worker);
	cancel_delayed_work_sync(&core->timeout_work);
	/* Held exception writes belong to copies in flight: there are none. */
	WARN_ON_ONCE(!list_empty(&core->buffered_jobs));
	if (held_discards)
		issue_held_discards(core, s, &discards);
	if (s->bound_slot >= 0)
		fleece_track_unbind(core->tracker, s->bound_slot, s->bitmap_mode,
				    success, s->released, s->chunk_shift,
				    s->nr_chunks, s->nr_sectors);

	DMINFO("%u:%u: snapshot ended: %llu copied, %llu released, %llu discard sectors dropped",
	       MAJOR(core->dev), MINOR(core->dev),
	       (unsigned long long)s->chunks_copied,
	       (unsigned long long)s->chunks_released,
	       (unsigned long long)s->discards_dropped);
	snapshot_free(s);
	schedule_work(&core->event_work);
}

/**
 * fleece_release() - release the chunks a sector range covers, for the
 * release message.
 * @core: the core of the view.
 * @start: first sector, inside the image.
 * @len: number of sectors; the range ends inside the image.
 *
 * Process context; waits for the worker.  Returns 0, or -EIO when no active
 * snapshot can honour the release, before or while it runs.
 */
int fleece_release(struct fleece_core *core, sector_t start, sector_t len)
{
	DECLARE_COMPLETION_ONSTACK(done);
	struct fleece_release rel = { .done = &done };
	bool covers;

	spin_lock_irq(&core->lock);
	if (core->state != FLEECE_ACTIVE) {
		spin_unlock_irq(&core->lock);
		return -EIO;
	}
	covers = fleece_sectors_to_chunks(core->snap, start, len, &rel.next,
					  &rel.last);
	if (covers) {
		list_add_tail(&rel.entry, &core->releases);
		fleece_kick(core);
	}
	spin_unlock_irq(&core->lock);
	if (covers)
		wait_for_completion(&done);
	return rel.result;
}

/**
 * fleece_snapshot_outcome() - the backup says how it went: the view's
 * outcome message.
 * @core: the core of the view.
 * @success: it read everything it needed.
 *
 * Returns 0, or -EIO when no snapshot runs.  The last word counts; no word
 * counts as failure.
 */
int fleece_snapshot_outcome(struct fleece_core *core, bool success)
{
	int r = -EIO;

	spin_lock_irq(&core->lock);
	if (core->snap) {
		core->snap->declared_success = success;
		r = 0;
	}
	spin_unlock_irq(&core->lock);
	return r;
}

/**
 * fleece_backup_extents() - the backup set of the view's bound bitmap, as
 * ranges: the view's backup_extents message.
 * @core: the core of the view.
 * @start: the sector to start from.
 * @max: how many ranges at most.
 * @sectors: the view's length.
 * @result: where they go (fleece_track_emit_extents()).
 * @maxlen: the room in @result.
 *
 * Process context (the view's message: dm keeps the view, and so the
 * snapshot, alive meanwhile).  Returns 1 (data in @result), or -ENOENT
 * when the snapshot has no bitmap.
 */
int fleece_backup_extents(struct fleece_core *core, sector_t start,
			  unsigned int max, sector_t sectors, char *result,
			  unsigned int maxlen)
{
	struct fleece_snapshot *s = READ_ONCE(core->snap);
	struct fleece_tracker *t = core->tracker;

	if (!s || s->bound_slot < 0)
		return -ENOENT;
	fleece_track_emit_extents(t, t->bitmaps[s->bound_slot].frozen, start, max,
				  sectors, result, maxlen);
	return 1;
}
