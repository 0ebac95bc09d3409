// SPDX-License-Identifier: GPL-2.0-only
/*
 * The point-in-time snapshot of a fleece origin: how it starts and ends,
 * and how origin writes and view reads are routed around the copies.
 *
 * The routing functions run in map() and must not sleep: anything that
 * needs memory or I/O (a new copy, a release) goes to the worker in
 * fleece-copy.c through the bio lists of struct fleece_core.
 */
#include <linux/bitmap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "fleece-core.h"

/* Emergency reserve of copy buffers: enough for two chunks in flight. */
#define FLEECE_COPY_BUFFER_BYTES	(8U << 20)
#define FLEECE_MAX_COPIES_LIMIT		64U

const char *fleece_state_name(enum fleece_state state)
{
	switch (state) {
	case FLEECE_ACTIVE:
		return "active";
	case FLEECE_INVALID:
		return "invalid";
	default:
		return "idle";
	}
}

const char *fleece_error_name(enum fleece_error error)
{
	static const char * const names[] = {
		[FLEECE_ERR_NONE] = "none",
		[FLEECE_ERR_FULL] = "full",
		[FLEECE_ERR_ORIGIN_IO] = "origin_io",
		[FLEECE_ERR_EXCEPTION_IO] = "exception_io",
		[FLEECE_ERR_TIMEOUT] = "timeout",
		[FLEECE_ERR_NOMEM] = "nomem",
		[FLEECE_ERR_DETACHED] = "detached",
	};

	return error < ARRAY_SIZE(names) ? names[error] : "unknown";
}

void fleece_kick(struct fleece_core *core)
{
	queue_work(core->wq, &core->worker);
}

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
	mempool_exit(&s->page_pool);
	mempool_exit(&s->job_pool);
	fleece_emap_destroy(&s->map);
	kvfree(s->slot_quarantine);
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

	bitmap_bytes = BITS_TO_LONGS(s->nr_chunks) * sizeof(unsigned long);
	s->needs_copy = kvzalloc(bitmap_bytes, GFP_KERNEL);
	s->released = kvzalloc(bitmap_bytes, GFP_KERNEL);
	bitmap_bytes = BITS_TO_LONGS(s->nr_slots) * sizeof(unsigned long);
	s->slot_used = kvzalloc(bitmap_bytes, GFP_KERNEL);
	s->slot_quarantine = kvzalloc(bitmap_bytes, GFP_KERNEL);
	if (!s->needs_copy || !s->released || !s->slot_used ||
	    !s->slot_quarantine || fleece_emap_init(&s->map, s->nr_slots))
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
	bitmap_set(s->needs_copy, 0, s->nr_chunks);
	return s;
bad:
	snapshot_free(s);
	return NULL;
}

/*
 * fleece_snapshot_start() - take the point in time for @view.
 *
 * Called from the view's preresume, in process context; may sleep.  Origin
 * writes in flight are drained first, and writes that arrive meanwhile are
 * deferred, so that every write that completed before is in the image and
 * none submitted after it is.  Returns 0 (also when the snapshot is already
 * running because the view was suspended and resumed) or -ENOMEM.
 */
int fleece_snapshot_start(struct fleece_core *core, struct fleece_view *view)
{
	struct fleece_snapshot *s;

	unsigned int noio;

	if (READ_ONCE(core->snap))
		return 0;

	/* The origin may be suspended: reclaim must not write to it. */
	noio = memalloc_noio_save();
	s = snapshot_alloc(core, view);
	memalloc_noio_restore(noio);
	if (!s)
		return -ENOMEM;

	percpu_ref_kill(&core->writes_ref);
	wait_event(core->writes_drained, percpu_ref_is_zero(&core->writes_ref));

	spin_lock_irq(&core->lock);
	core->snap = s;
	core->error = FLEECE_ERR_NONE;
	core->state = FLEECE_ACTIVE;
	core->recheck_deferred = true;
	spin_unlock_irq(&core->lock);

	/* Pairs with smp_rmb() in fleece_origin_map_write(). */
	smp_wmb();
	percpu_ref_resurrect(&core->writes_ref);

	DMINFO("%u:%u: snapshot started: %u chunks of %llu sectors, %u exception slots",
	       MAJOR(core->dev), MINOR(core->dev), s->nr_chunks,
	       (unsigned long long)core->chunk_sectors, s->nr_slots);
	fleece_kick(core);
	schedule_work(&core->event_work);
	return 0;
}

/*
 * fleece_snapshot_end() - drop the snapshot and everything it holds.
 *
 * Called from the view's destructor, in process context, after dm has
 * drained the view's I/O.  Held origin writes go ahead at once; the copies
 * in flight are waited for and their results thrown away.
 */
void fleece_snapshot_end(struct fleece_core *core)
{
	struct bio_list issue = BIO_EMPTY_LIST;
	struct fleece_copy_job *job;
	struct fleece_snapshot *s;
	struct bio *bio;

	spin_lock_irq(&core->lock);
	s = core->snap;
	if (!s) {
		spin_unlock_irq(&core->lock);
		return;
	}
	core->state = FLEECE_IDLE;
	core->recheck_deferred = true;
	list_for_each_entry(job, &s->jobs_by_age, age_entry)
		while ((bio = __fleece_pop_write(core, &job->waiting_writes)))
			bio_list_add(&issue, bio);
	while ((bio = __fleece_pop_write(core, &core->reader_blocked)))
		bio_list_add(&issue, bio);
	spin_unlock_irq(&core->lock);

	/* Deferred writes are now routed as pass-through by the worker. */
	fleece_submit_list(&issue, NULL);
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

	DMINFO("%u:%u: snapshot ended: %llu chunks copied, %llu released",
	       MAJOR(core->dev), MINOR(core->dev),
	       (unsigned long long)s->chunks_copied,
	       (unsigned long long)s->chunks_released);
	snapshot_free(s);
	schedule_work(&core->event_work);
}

void __fleece_hold_write(struct fleece_core *core, struct bio_list *list,
			 struct bio *bio)
{
	struct fleece_origin_io *io = fleece_origin_io(bio);

	bio_list_add(list, bio);
	core->writes_waiting++;
	if (!io->delayed && core->snap) {
		io->delayed = true;
		core->snap->writes_delayed++;
	}
}

struct bio *__fleece_pop_write(struct fleece_core *core, struct bio_list *list)
{
	struct bio *bio = bio_list_pop(list);

	if (bio)
		core->writes_waiting--;
	return bio;
}

void __fleece_free_slot(struct fleece_snapshot *s, u32 slot)
{
	__clear_bit(slot, s->slot_used);
	s->slots_used--;
	if (slot < s->slot_hint)
		s->slot_hint = slot;
}

/* Trims @bio, in map(), so that it ends at or before the end of its chunk. */
static void trim_to_chunk(struct bio *bio, sector_t chunk_sectors)
{
	sector_t offset = bio->bi_iter.bi_sector & (chunk_sectors - 1);

	if (offset + bio_sectors(bio) > chunk_sectors)
		dm_accept_partial_bio(bio, chunk_sectors - offset);
}

/*
 * __fleece_route_write() - decide what an origin write does now.
 *
 * Caller holds core->lock and has trimmed @bio to one chunk.  Returns
 * FLEECE_ROUTE_HELD with @bio on a job or behind view reads;
 * FLEECE_ROUTE_NEED_COPY when the chunk needs a copy job that only the
 * worker can create; FLEECE_ROUTE_FAIL when a break_write copy of the
 * chunk has failed and is still in flight; FLEECE_ROUTE_ISSUE otherwise.
 */
enum fleece_route __fleece_route_write(struct fleece_core *core,
				       struct bio *bio,
				       struct fleece_origin_io *io)
{
	struct fleece_snapshot *s = core->snap;
	struct fleece_copy_job *job;
	u32 chunk;

	if (core->state != FLEECE_ACTIVE || bio->bi_iter.bi_sector >= s->nr_sectors)
		return FLEECE_ROUTE_ISSUE;

	chunk = bio->bi_iter.bi_sector >> s->chunk_shift;
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

/* Writes, discards and write-zeroes all change what the origin holds. */
static bool changes_data(struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_SECURE_ERASE:
	case REQ_OP_WRITE_ZEROES:
		return bio_sectors(bio) != 0;
	default:
		return false;
	}
}

/*
 * fleece_origin_map_write() - map() of an origin bio already remapped to the
 * origin device.  Never sleeps.  Returns a DM_MAPIO_* code.
 */
int fleece_origin_map_write(struct fleece_core *core, struct bio *bio,
			    struct fleece_origin_io *io)
{
	enum fleece_route route;
	unsigned long flags;

	io->holds_ref = false;
	io->delayed = false;
	if (!changes_data(bio))
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
		trim_to_chunk(bio, (sector_t)1 << core->snap->chunk_shift);
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
	default:
		return DM_MAPIO_SUBMITTED;
	}
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

/*
 * __fleece_route_read() - decide where a view read goes.
 *
 * Caller holds core->lock.  In map() (@in_map) the read may be trimmed so
 * that it covers one source; elsewhere it must already cover one chunk.
 * Returns FLEECE_ROUTE_ISSUE with @bio remapped to the origin (and registered
 * as a reader) or to the exception device, FLEECE_ROUTE_HELD when it waits
 * for a BUFFERED chunk's copy to land, or FLEECE_ROUTE_FAIL.
 */
enum fleece_route __fleece_route_read(struct fleece_core *core, struct bio *bio,
				      struct fleece_view_io *io, bool in_map)
{
	struct fleece_snapshot *s = core->snap;
	sector_t sector = bio->bi_iter.bi_sector;
	sector_t chunk_sectors;
	u32 chunk, last, end, slot;

	if (core->state != FLEECE_ACTIVE || sector >= s->nr_sectors)
		return FLEECE_ROUTE_FAIL;
	chunk_sectors = (sector_t)1 << s->chunk_shift;
	chunk = sector >> s->chunk_shift;
	if (test_bit(chunk, s->released))
		return FLEECE_ROUTE_FAIL;

	if (!test_bit(chunk, s->needs_copy)) {
		slot = fleece_emap_lookup(&s->map, chunk);
		if (WARN_ON_ONCE(slot == FLEECE_NO_SLOT))
			return FLEECE_ROUTE_FAIL;
		if (in_map)
			trim_to_chunk(bio, chunk_sectors);
		/* Holds off the reuse of the slot if the chunk is released. */
		s->exception_reads++;
		io->reading_exception = true;
		bio_set_dev(bio, s->exception_bdev);
		bio->bi_iter.bi_sector = ((sector_t)slot << s->chunk_shift) +
					 (sector & (chunk_sectors - 1));
		return FLEECE_ROUTE_ISSUE;
	}

	last = in_map ? (bio_end_sector(bio) - 1) >> s->chunk_shift : chunk;
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
		dm_accept_partial_bio(bio, ((sector_t)(end + 1) << s->chunk_shift) - sector);

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
		if (io->reading_origin) {
			fleece_range_remove(&io->range, &s->readers);
			io->reading_origin = false;
			if (!bio_list_empty(&core->reader_blocked)) {
				core->recheck_readers = true;
				fleece_kick(core);
			}
		} else {
			io->reading_exception = false;
			if (!--s->exception_reads && s->nr_quarantined)
				fleece_kick(core);
		}
		spin_unlock_irqrestore(&core->lock, flags);
	}
	if (READ_ONCE(core->state) != FLEECE_ACTIVE && !*error)
		*error = BLK_STS_IOERR;
}

void fleece_view_queue_discard(struct fleece_core *core, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&core->lock, flags);
	bio_list_add(&core->view_discards, bio);
	spin_unlock_irqrestore(&core->lock, flags);
	fleece_kick(core);
}

/*
 * fleece_release() - release chunks @first..@last for a message.
 *
 * Process context; waits for the worker to do it.  Returns 0, or -EINVAL
 * when no snapshot is active.
 */
int fleece_release(struct fleece_core *core, u32 first, u32 last)
{
	struct fleece_release_request req = { .first = first, .last = last };

	init_completion(&req.done);
	spin_lock_irq(&core->lock);
	if (core->state != FLEECE_ACTIVE) {
		spin_unlock_irq(&core->lock);
		return -EINVAL;
	}
	list_add_tail(&req.entry, &core->release_requests);
	spin_unlock_irq(&core->lock);
	fleece_kick(core);
	wait_for_completion(&req.done);
	return 0;
}

void fleece_get_status(struct fleece_core *core, struct fleece_status *st)
{
	struct fleece_snapshot *s;

	memset(st, 0, sizeof(*st));
	spin_lock_irq(&core->lock);
	st->state = core->state;
	st->error = core->error;
	st->writes_waiting = core->writes_waiting;
	s = core->snap;
	if (s && core->state != FLEECE_IDLE) {
		st->nr_chunks = s->nr_chunks;
		st->chunks_copied = s->chunks_copied;
		st->chunks_released = s->chunks_released;
		st->writes_delayed = s->writes_delayed;
		st->slots_used = s->slots_used;
		st->nr_slots = s->nr_slots;
		st->copies_in_flight = s->copies_in_flight;
	}
	spin_unlock_irq(&core->lock);
}

/*
 * Status INFO, the same for both targets:
 *   <state> <chunk size> <snapshot chunks> <chunks copied> <chunks released>
 *   <slots used>/<slots total> <copies in flight> <writes waiting>
 *   <writes delayed> <error>
 * Returns the new length of @result.
 */
unsigned int fleece_emit_status(struct fleece_core *core, sector_t chunk_sectors,
				status_type_t type, char *result,
				unsigned int maxlen)
{
	struct fleece_status st;
	unsigned int sz = 0;

	fleece_get_status(core, &st);
	if (type == STATUSTYPE_INFO) {
		DMEMIT("%s %llu %u %llu %llu %u/%u %u %u %llu %s",
		       fleece_state_name(st.state),
		       (unsigned long long)chunk_sectors, st.nr_chunks,
		       st.chunks_copied, st.chunks_released,
		       st.slots_used, st.nr_slots, st.copies_in_flight,
		       st.writes_waiting, st.writes_delayed,
		       fleece_error_name(st.error));
	} else if (type == STATUSTYPE_IMA) {
		DMEMIT(",state=%s,chunk_size=%llu,snapshot_chunks=%u",
		       fleece_state_name(st.state),
		       (unsigned long long)chunk_sectors, st.nr_chunks);
		DMEMIT(",chunks_copied=%llu,chunks_released=%llu",
		       st.chunks_copied, st.chunks_released);
		DMEMIT(",slots_used=%u,slots_total=%u,error=%s;",
		       st.slots_used, st.nr_slots, fleece_error_name(st.error));
	}
	return sz;
}
