// SPDX-License-Identifier: GPL-2.0-only
/*
 * How origin writes and view reads are routed around the copies of a
 * fleece snapshot: from map() (origin writes, view reads and discards) and
 * again from the worker (fleece-copy.c) when what held them is gone.
 *
 * Nothing here sleeps or allocates: anything that needs memory or I/O (a
 * new copy, a release) goes to the worker through the bio lists of struct
 * fleece_core.  Functions whose name starts with __ run with core->lock
 * held.
 */
#include <linux/bitmap.h>

#include "fleece-core.h"

/*
 * Puts origin write @bio on @list, to wait, and counts it in the status.
 * Caller holds core->lock.
 */
void __fleece_hold_write(struct fleece_core *core, struct bio_list *list,
			 struct bio *bio)
{
	struct fleece_origin_io *io = fleece_origin_io(bio);

	lockdep_assert_held(&core->lock);
	bio_list_add(list, bio);
	core->writes_waiting++;
	if (!io->delayed && core->snap) {
		io->delayed = true;
		core->snap->writes_delayed++;
	}
}

/* Takes the first write off @list, or NULL.  Caller holds core->lock. */
struct bio *__fleece_pop_write(struct fleece_core *core, struct bio_list *list)
{
	struct bio *bio = bio_list_pop(list);

	lockdep_assert_held(&core->lock);
	if (bio)
		core->writes_waiting--;
	return bio;
}

/* Trims @bio, in map(), so that it ends at or before the end of its chunk. */
static void trim_to_chunk(struct bio *bio, sector_t chunk_sectors)
{
	sector_t offset = bio->bi_iter.bi_sector & (chunk_sectors - 1);

	if (offset + bio_sectors(bio) > chunk_sectors)
		dm_accept_partial_bio(bio, chunk_sectors - offset);
}

/*
 * Trims @bio, in map() with core->lock held, to what one routing decision
 * covers: one chunk, or for a discard that the discard_policy may hold
 * back, a run of chunks inside the image that all need a copy or all do
 * not.  So an fstrim costs one decision per run, not one per chunk.
 */
static void __trim_for_route(struct fleece_core *core, struct bio *bio)
{
	struct fleece_snapshot *s = core->snap;
	sector_t start = bio->bi_iter.bi_sector, end;
	unsigned long first, last, stop;

	lockdep_assert_held(&core->lock);
	if (bio_op(bio) != REQ_OP_DISCARD ||
	    core->discard_policy == FLEECE_DISCARD_COPY) {
		trim_to_chunk(bio, (sector_t)1 << s->chunk_shift);
		return;
	}
	if (start >= s->nr_sectors)
		return;		/* past the image: nothing to decide */
	end = min_t(sector_t, bio_end_sector(bio), s->nr_sectors);
	first = fleece_sector_to_chunk(s, start);
	last = fleece_sector_to_chunk(s, end - 1);
	if (test_bit(first, s->needs_copy))
		stop = find_next_zero_bit(s->needs_copy, last + 1, first);
	else
		stop = find_next_bit(s->needs_copy, last + 1, first);
	end = min_t(sector_t, end, fleece_chunk_to_sector(s, stop));
	if (end < bio_end_sector(bio))
		dm_accept_partial_bio(bio, end - start);
}

/*
 * Routes a discard that the discard_policy may hold back (core->lock held):
 * if any chunk it covers still needs a copy, it is held back or dropped,
 * which is always safe; otherwise it goes down once no view read of its
 * chunks is reading the origin.
 */
static enum fleece_route __route_discard(struct fleece_core *core,
					 struct bio *bio, u32 chunk)
{
	struct fleece_snapshot *s = core->snap;
	unsigned long last;

	lockdep_assert_held(&core->lock);
	last = min_t(u64, fleece_sector_to_chunk(s, bio_end_sector(bio) - 1),
		     s->nr_chunks - 1);
	if (find_next_bit(s->needs_copy, last + 1, chunk) <= last) {
		if (core->discard_policy == FLEECE_DISCARD_DEFER)
			__fleece_defer_discard(s, bio->bi_iter.bi_sector,
					       bio_end_sector(bio));
		else
			s->discards_dropped += bio_sectors(bio);
		return FLEECE_ROUTE_DONE;
	}
	if (fleece_range_iter_first(&s->readers, chunk, last)) {
		__fleece_hold_write(core, &core->reader_blocked, bio);
		return FLEECE_ROUTE_HELD;
	}
	return FLEECE_ROUTE_ISSUE;
}

/**
 * __fleece_route_write() - decide what an origin write does now.
 * @core: the core; caller holds core->lock.
 * @bio: the write, trimmed to one chunk (a discard: see __trim_for_route()).
 * @io: its per-bio data.
 *
 * A discard of a chunk that the snapshot still needs is held back or
 * dropped, as the discard_policy says, rather than copied first; any other
 * write first takes its range out of the held-back discards (see
 * fleece-discard.c).
 *
 * Returns FLEECE_ROUTE_HELD with @bio on a job or behind view reads;
 * FLEECE_ROUTE_NEED_COPY when the chunk needs a copy job that only the
 * worker can create; FLEECE_ROUTE_FAIL when a break_write copy of the
 * chunk has failed and is still in flight; FLEECE_ROUTE_DONE for a discard
 * held back or dropped; FLEECE_ROUTE_ISSUE otherwise.
 */
enum fleece_route __fleece_route_write(struct fleece_core *core,
				       struct bio *bio,
				       struct fleece_origin_io *io)
{
	struct fleece_snapshot *s = core->snap;
	struct fleece_copy_job *job;
	u32 chunk;

	lockdep_assert_held(&core->lock);
	if (core->state != FLEECE_ACTIVE || bio->bi_iter.bi_sector >= s->nr_sectors)
		return FLEECE_ROUTE_ISSUE;

	chunk = fleece_sector_to_chunk(s, bio->bi_iter.bi_sector);
	if (bio_op(bio) == REQ_OP_DISCARD) {
		if (core->discard_policy != FLEECE_DISCARD_COPY)
			return __route_discard(core, bio, chunk);
	} else if (!RB_EMPTY_ROOT(&s->discards)) {
		__fleece_cancel_discards(s, bio->bi_iter.bi_sector,
					 bio_end_sector(bio));
	}
	if (test_bit(chunk, s->needs_copy)) {
		job = __fleece_job_of(s, chunk);
		if (!job)
			return FLEECE_ROUTE_NEED_COPY;
		if (job->failed)
			return FLEECE_ROUTE_FAIL;
		if (!job->origin_released) {
			__fleece_hold_write(core, &job->waiting_writes, bio);
			return FLEECE_ROUTE_HELD;
		}
	}
	/* A view read may still be reading the old data from the origin. */
	if (fleece_range_iter_first(&s->readers, chunk, chunk)) {
		__fleece_hold_write(core, &core->reader_blocked, bio);
		return FLEECE_ROUTE_HELD;
	}
	return FLEECE_ROUTE_ISSUE;
}

/**
 * fleece_origin_map_write() - map() of an origin bio that changes data.
 * @core: the core of the origin.
 * @bio: a write, discard, secure erase or write-zeroes, already remapped to
 *	the origin device.
 * @io: its per-bio data.
 *
 * Never sleeps.  Returns a DM_MAPIO_* code.
 */
int fleece_origin_map_write(struct fleece_core *core, struct bio *bio,
			    struct fleece_origin_io *io)
{
	enum fleece_route route;
	unsigned long flags;

	io->holds_ref = false;
	io->delayed = false;
	if (!bio_sectors(bio))	/* a flush: changes no data */
		return DM_MAPIO_REMAPPED;

	if (unlikely(!percpu_ref_tryget_live(&core->writes_ref))) {
		/* A snapshot is starting; the worker routes it once it has. */
		trim_to_chunk(bio, READ_ONCE(core->chunk_sectors));
		spin_lock_irqsave(&core->lock, flags);
		__fleece_hold_write(core, &core->deferred_writes, bio);
		spin_unlock_irqrestore(&core->lock, flags);
		/* fleece_snapshot_start() kicks the worker when it is done. */
		return DM_MAPIO_SUBMITTED;
	}
	io->holds_ref = true;
	/* Pairs with smp_wmb() in fleece_snapshot_start(). */
	smp_rmb();
	if (likely(READ_ONCE(core->state) != FLEECE_ACTIVE))
		return DM_MAPIO_REMAPPED;

	spin_lock_irqsave(&core->lock, flags);
	if (core->state == FLEECE_ACTIVE)
		__trim_for_route(core, bio);
	route = __fleece_route_write(core, bio, io);
	if (route == FLEECE_ROUTE_NEED_COPY) {
		__fleece_hold_write(core, &core->deferred_writes, bio);
		core->recheck_deferred = true;
	}
	spin_unlock_irqrestore(&core->lock, flags);

	switch (route) {
	case FLEECE_ROUTE_ISSUE:
		return DM_MAPIO_REMAPPED;
	case FLEECE_ROUTE_NEED_COPY:
		fleece_kick(core);
		return DM_MAPIO_SUBMITTED;
	case FLEECE_ROUTE_FAIL:
		/* Through bio_endio() so that end_io() drops the reference. */
		bio_io_error(bio);
		return DM_MAPIO_SUBMITTED;
	case FLEECE_ROUTE_DONE:
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	default:
		return DM_MAPIO_SUBMITTED;
	}
}

/**
 * fleece_origin_resume_write() - go on with a write that tracking held.
 * @core: the core of the origin.
 * @bio: the write, remapped to the origin device by map() already.
 *
 * Process context (the tracking commit worker).  Does what map() would
 * have done after tracking, and submits the bio if it may go down.
 */
void fleece_origin_resume_write(struct fleece_core *core, struct bio *bio)
{
	if (fleece_origin_map_write(core, bio, fleece_origin_io(bio)) ==
	    DM_MAPIO_REMAPPED)
		submit_bio_noacct(bio);
}

/*
 * Finds the chunks, from @chunk up to @last, that a view read can take from
 * the origin: chunks that still need a copy and whose copy, if any, has not
 * let guest writes through yet.  Returns false when @chunk itself cannot be
 * read from the origin; otherwise true, with the last such chunk in @end.
 */
static bool __origin_run(struct fleece_snapshot *s, u32 chunk, u32 last,
			 u32 *end)
{
	struct fleece_range *r;

	lockdep_assert_held(&s->core->lock);
	*end = find_next_zero_bit(s->needs_copy, (unsigned long)last + 1, chunk) - 1;
	for (r = fleece_range_iter_first(&s->copies, chunk, *end); r;
	     r = fleece_range_iter_next(r, chunk, *end)) {
		struct fleece_copy_job *job =
			container_of(r, struct fleece_copy_job, range);

		if (!job->origin_released || job->chunk > *end)
			continue;
		if (job->chunk == chunk)
			return false;
		*end = job->chunk - 1;
	}
	return true;
}

/**
 * __fleece_route_read() - decide where a view read goes.
 * @core: the core; caller holds core->lock.
 * @bio: the read.
 * @io: its per-bio data.
 * @in_map: called from map().
 *
 * In map() (@in_map) the read may be trimmed so that it covers one source;
 * elsewhere it must already cover one chunk.
 * Returns FLEECE_ROUTE_ISSUE with @bio remapped to the origin (and registered
 * as a reader) or to the exception device, FLEECE_ROUTE_HELD when it waits
 * for a BUFFERED chunk's copy to land or for the origin to resume, or
 * FLEECE_ROUTE_FAIL.
 */
enum fleece_route __fleece_route_read(struct fleece_core *core, struct bio *bio,
				      struct fleece_view_io *io, bool in_map)
{
	struct fleece_snapshot *s = core->snap;
	sector_t sector = bio->bi_iter.bi_sector;
	sector_t chunk_sectors;
	u32 chunk, last, end, slot;

	lockdep_assert_held(&core->lock);
	if (core->state != FLEECE_ACTIVE || sector >= s->nr_sectors)
		return FLEECE_ROUTE_FAIL;
	chunk_sectors = (sector_t)1 << s->chunk_shift;
	chunk = fleece_sector_to_chunk(s, sector);
	if (test_bit(chunk, s->released))
		return FLEECE_ROUTE_FAIL;

	if (!test_bit(chunk, s->needs_copy)) {
		slot = fleece_emap_lookup(&s->map, chunk);
		if (WARN_ON_ONCE(slot == FLEECE_NO_SLOT))
			return FLEECE_ROUTE_FAIL;
		if (in_map)
			trim_to_chunk(bio, chunk_sectors);
		/* Holds off the reuse of the slot if the chunk is released. */
		io->exception_epoch = s->read_epoch;
		s->exception_reads[io->exception_epoch]++;
		io->reading_exception = true;
		bio_set_dev(bio, s->exception_bdev);
		bio->bi_iter.bi_sector = fleece_chunk_to_sector(s, slot) +
					 (sector & (chunk_sectors - 1));
		return FLEECE_ROUTE_ISSUE;
	}

	last = in_map ? fleece_sector_to_chunk(s, bio_end_sector(bio) - 1) : chunk;
	last = min(last, s->nr_chunks - 1);
	if (!__origin_run(s, chunk, last, &end)) {
		/* BUFFERED: the origin has moved on; wait for the copy. */
		if (in_map)
			trim_to_chunk(bio, chunk_sectors);
		bio_list_add(&__fleece_job_of(s, chunk)->waiting_reads, bio);
		/* Its exception write may be held back: have it submitted. */
		core->reads_wait_copy = true;
		fleece_kick(core);
		return FLEECE_ROUTE_HELD;
	}
	if (in_map && end < last)
		dm_accept_partial_bio(bio, fleece_chunk_to_sector(s, end + 1) - sector);
	if (!core->origin_running) {
		/*
		 * Another table may take writes now: see fleece_core_suspend().
		 * One chunk only: the worker routes it again as one.
		 */
		if (in_map)
			trim_to_chunk(bio, chunk_sectors);
		bio_list_add(&core->reads_on_hold, bio);
		return FLEECE_ROUTE_HELD;
	}

	io->range.start = chunk;
	io->range.last = end;
	fleece_range_insert(&io->range, &s->readers);
	io->reading_origin = true;
	bio_set_dev(bio, s->origin_bdev);
	return FLEECE_ROUTE_ISSUE;
}

/* map() of a view read.  Never sleeps.  Returns a DM_MAPIO_* code. */
int fleece_view_map_read(struct fleece_core *core, struct bio *bio,
			 struct fleece_view_io *io)
{
	enum fleece_route route;
	unsigned long flags;

	spin_lock_irqsave(&core->lock, flags);
	route = core->snap ? __fleece_route_read(core, bio, io, true) :
			     FLEECE_ROUTE_FAIL;
	spin_unlock_irqrestore(&core->lock, flags);

	switch (route) {
	case FLEECE_ROUTE_ISSUE:
		return DM_MAPIO_REMAPPED;
	case FLEECE_ROUTE_HELD:
		return DM_MAPIO_SUBMITTED;
	default:
		return DM_MAPIO_KILL;
	}
}

/*
 * end_io() of a view read.  A read that completes after the snapshot broke
 * may hold data written after the point in time, so it fails too.
 */
void fleece_view_end_read(struct fleece_core *core, struct fleece_view_io *io,
			  blk_status_t *error)
{
	struct fleece_snapshot *s;
	unsigned long flags;

	if (io->reading_origin || io->reading_exception) {
		spin_lock_irqsave(&core->lock, flags);
		s = core->snap;
		if (!s) {
			/* The snapshot ended under a removal that did not drain. */
			io->reading_origin = false;
			io->reading_exception = false;
		} else if (io->reading_origin) {
			fleece_range_remove(&io->range, &s->readers);
			io->reading_origin = false;
			/* Pairs with wait_event() in fleece_core_suspend(). */
			if (!core->origin_running &&
			    RB_EMPTY_ROOT(&s->readers.rb_root))
				wake_up(&core->origin_reads_done);
			if (!bio_list_empty(&core->reader_blocked)) {
				core->recheck_readers = true;
				fleece_kick(core);
			}
		} else {
			io->reading_exception = false;
			if (!--s->exception_reads[io->exception_epoch] &&
			    s->nr_closed && io->exception_epoch == s->closed_epoch)
				fleece_kick(core);
		}
		spin_unlock_irqrestore(&core->lock, flags);
	}
	if (READ_ONCE(core->state) != FLEECE_ACTIVE && !*error)
		*error = BLK_STS_IOERR;
}

/**
 * fleece_view_map_discard() - map() of a view discard: release the chunks
 * it covers.
 * @core: the core of the view.
 * @bio: the discard.
 * @io: its per-bio data, which carries the release to the worker.
 *
 * Never sleeps.  Returns DM_MAPIO_SUBMITTED (the worker ends the bio once
 * the chunks are released, with an error if the snapshot broke meanwhile),
 * or DM_MAPIO_KILL when no active snapshot can honour the release.
 */
int fleece_view_map_discard(struct fleece_core *core, struct bio *bio,
			    struct fleece_view_io *io)
{
	struct fleece_release *rel = &io->release;
	struct fleece_snapshot *s;
	unsigned long flags;
	bool covers;

	spin_lock_irqsave(&core->lock, flags);
	s = core->snap;
	if (core->state != FLEECE_ACTIVE) {
		spin_unlock_irqrestore(&core->lock, flags);
		return DM_MAPIO_KILL;
	}
	covers = bio->bi_iter.bi_sector < s->nr_sectors &&
		 fleece_sectors_to_chunks(s, bio->bi_iter.bi_sector,
					  bio_sectors(bio), &rel->next, &rel->last);
	if (covers) {
		rel->bio = bio;
		rel->done = NULL;
		rel->result = 0;
		list_add_tail(&rel->entry, &core->releases);
		fleece_kick(core);
	}
	spin_unlock_irqrestore(&core->lock, flags);
	if (!covers)
		bio_endio(bio);
	return DM_MAPIO_SUBMITTED;
}
