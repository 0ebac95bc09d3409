// SPDX-License-Identifier: GPL-2.0-only
/*
 * The copy-before-write engine of a fleece snapshot, run by the core's
 * worker: it creates copy jobs for held origin writes, reads each chunk's
 * old data into memory, writes it to a free exception slot, and releases the
 * writes (and view reads) that waited for it.  It also performs releases
 * and enforces the copy timeout.
 *
 * map() only queues the first write to a chunk: it must not sleep, and the
 * worker batches better.  The worker creates the job and submits the origin
 * read; the read's completion queues the job back; the worker submits the
 * exception write and, under break_snapshot, releases the writes.  The
 * completion of the exception write finishes the copy itself when nothing
 * waits on it and the exception map needs no page for the slot (__finish_write_now()); the
 * worker does it otherwise.
 *
 * Under break_snapshot no guest write waits for an exception write, so the
 * worker may hold exception writes back for a few runs (hold_copy_writes())
 * while guest writes keep it busy: a writer that a copy let go then gets the
 * CPU before them, and the held writes go out together.  At most a quarter
 * of max_copies or 128 KiB are held, and none while a view read waits for
 * one.
 *
 * The worker runs at normal priority and submits under a plug: completions
 * that arrive while the submitter still runs then pile up and are handled
 * in one pass, and exception writes to adjacent slots merge.  (A high
 * priority worker, or copies submitted from map() under the submitter's own
 * plug, took a pass and a context switch per write, and cost half the
 * first-write throughput in the bench.)
 * Copies in flight are bounded by snap->max_copies; writes beyond the bound
 * stay on core->deferred_writes until a copy finishes.
 */
#include <linux/bitmap.h>
#include <linux/blkdev.h>
#include <linux/mm.h>
#include <linux/slab.h>

#include "fleece-core.h"

/* Chunks released, and bits of a bitmap scanned, under one hold of the lock. */
#define FLEECE_RELEASE_BATCH	4096U
#define FLEECE_SCAN_BITS	32768UL
/* Chunks released per worker run; the rest waits for the next run. */
#define FLEECE_RELEASE_PER_RUN	65536U

/*
 * The worker holds back the exception writes of 1/N of max_copies, and of
 * this many bytes, at most: the write that waits behind their flush pays
 * for all of them.
 */
#define FLEECE_HELD_WRITES_DIVISOR	4U
#define FLEECE_HELD_WRITES_BYTES	(128U << 10)

void fleece_submit_list(struct bio_list *issue, struct bio_list *fail)
{
	struct bio *bio;

	while (issue && (bio = bio_list_pop(issue)))
		submit_bio_noacct(bio);
	while (fail && (bio = bio_list_pop(fail)))
		bio_io_error(bio);
}

/* Counts @job as failed, once.  Caller holds core->lock. */
static void __mark_failed(struct fleece_snapshot *s, struct fleece_copy_job *job)
{
	lockdep_assert_held(&s->core->lock);
	if (!job->failed) {
		job->failed = true;
		s->copies_failed++;
	}
}

/**
 * __fleece_invalidate() - break the snapshot.
 * @core: the core; caller holds core->lock.
 * @error: why, for the status.
 * @issue: gets every held origin write, to submit after the unlock.
 * @fail: gets every held view read (on a job, or held while the origin is
 *	suspended), to fail after the unlock.
 *
 * The jobs in flight finish on their own and their results are dropped.
 * Does nothing unless the snapshot is active.
 */
void __fleece_invalidate(struct fleece_core *core, enum fleece_error error,
			 struct bio_list *issue, struct bio_list *fail)
{
	struct fleece_snapshot *s = core->snap;
	struct fleece_copy_job *job;
	struct bio *bio;

	lockdep_assert_held(&core->lock);
	if (core->state != FLEECE_ACTIVE)
		return;
	WRITE_ONCE(core->state, FLEECE_INVALID);
	core->error = error;
	list_for_each_entry(job, &s->jobs_by_age, age_entry) {
		__mark_failed(s, job);
		while ((bio = __fleece_pop_write(core, &job->waiting_writes)))
			bio_list_add(issue, bio);
		bio_list_merge(fail, &job->waiting_reads);
		bio_list_init(&job->waiting_reads);
	}
	while ((bio = __fleece_pop_write(core, &core->reader_blocked)))
		bio_list_add(issue, bio);
	bio_list_merge(fail, &core->reads_on_hold);
	bio_list_init(&core->reads_on_hold);
	/* From now on writes pass without taking their range out of them. */
	__fleece_drop_discards(s, "the snapshot broke");
	DMERR_LIMIT("%u:%u: snapshot invalidated: %s", MAJOR(core->dev),
		    MINOR(core->dev), fleece_error_name(error));
	/* The deferred writes go through as they are now. */
	core->recheck_deferred = true;
	fleece_kick(core);
	schedule_work(&core->event_work);
}

/**
 * __fleece_fail_copy() - apply the copy-error policy to @job.
 * @core: the core; caller holds core->lock.
 * @job: the copy that failed or timed out.
 * @error: why, for the status.
 * @issue: gets origin writes to submit after the unlock.
 * @fail: gets bios to fail after the unlock.
 *
 * break_snapshot invalidates the snapshot and lets the writes go;
 * break_write fails the writes waiting on @job (to @fail) and keeps the
 * snapshot.  Later writes to the chunk fail while the job's I/O is
 * still in flight and start a new copy once it has finished.
 */
static void __fleece_fail_copy(struct fleece_core *core,
			       struct fleece_copy_job *job,
			       enum fleece_error error, struct bio_list *issue,
			       struct bio_list *fail)
{
	struct bio *bio;

	lockdep_assert_held(&core->lock);
	if (job->chunk_released) {
		/* The backup no longer needs the chunk: nothing is lost. */
		__mark_failed(job->snap, job);
		return;
	}
	core->error = error;
	if (job->snap->policy == FLEECE_BREAK_SNAPSHOT) {
		__fleece_invalidate(core, error, issue, fail);
		return;
	}
	__mark_failed(job->snap, job);
	while ((bio = __fleece_pop_write(core, &job->waiting_writes)))
		bio_list_add(fail, bio);
	DMERR_LIMIT("%u:%u: copy of chunk %u failed (%s); the write fails",
		    MAJOR(core->dev), MINOR(core->dev), job->chunk,
		    fleece_error_name(error));
	/* Hung copies no longer count against max_copies. */
	core->recheck_deferred = true;
	fleece_kick(core);
	schedule_work(&core->event_work);
}

/*
 * A write needs a copy that cannot be made in time: every copy slot is
 * taken by copies that failed and still hang on their I/O.  Applies the
 * policy; under break_write the caller fails the write.
 */
static void __fleece_fail_copy_nojob(struct fleece_core *core,
				     enum fleece_error error,
				     struct bio_list *issue, struct bio_list *fail)
{
	lockdep_assert_held(&core->lock);
	core->error = error;
	if (core->snap->policy == FLEECE_BREAK_SNAPSHOT)
		__fleece_invalidate(core, error, issue, fail);
	else
		schedule_work(&core->event_work);
}

/* Frees exception slot @slot.  Caller holds core->lock. */
static void __free_slot(struct fleece_snapshot *s, u32 slot)
{
	lockdep_assert_held(&s->core->lock);
	__clear_bit(slot, s->slot_used);
	__clear_bit(slot / BITS_PER_LONG, s->slot_words_full);
	s->slots_used--;
	if (slot < s->slot_hint)
		s->slot_hint = slot;
}

/*
 * The lowest free exception slot, taken, or FLEECE_NO_SLOT.  The summary
 * bitmap of full words bounds the scan, done with interrupts off, to one
 * bit per 64 slots past the hint.
 */
static u32 __alloc_slot(struct fleece_snapshot *s)
{
	unsigned long nr_words = BITS_TO_LONGS((u64)s->nr_slots);
	unsigned long word, slot;

	lockdep_assert_held(&s->core->lock);
	word = find_next_zero_bit(s->slot_words_full, nr_words,
				  s->slot_hint / BITS_PER_LONG);
	if (word >= nr_words)
		return FLEECE_NO_SLOT;
	/* The bits past nr_slots are set: see snapshot_alloc(). */
	slot = word * BITS_PER_LONG + ffz(s->slot_used[word]);
	__set_bit(slot, s->slot_used);
	if (s->slot_used[word] == ~0UL)
		__set_bit(word, s->slot_words_full);
	s->slots_used++;
	s->slot_hint = slot + 1;
	return slot;
}

/*
 * Sends @bio the way its route says: to @issue, to @fail, or nowhere (held
 * again).  A write that needs a new copy goes back to the deferred list.
 */
static void __sort_write(struct fleece_core *core, struct bio *bio,
			 struct bio_list *issue, struct bio_list *fail)
{
	lockdep_assert_held(&core->lock);
	switch (__fleece_route_write(core, bio, fleece_origin_io(bio))) {
	case FLEECE_ROUTE_ISSUE:
		bio_list_add(issue, bio);
		break;
	case FLEECE_ROUTE_FAIL:
		bio_list_add(fail, bio);
		break;
	case FLEECE_ROUTE_DONE:
		bio_list_add(&core->discards_done, bio);
		fleece_kick(core);
		break;
	case FLEECE_ROUTE_NEED_COPY:
		__fleece_hold_write(core, &core->deferred_writes, bio);
		core->recheck_deferred = true;
		fleece_kick(core);
		break;
	case FLEECE_ROUTE_HELD:
		break;
	}
}

static void __sort_read(struct fleece_core *core, struct bio *bio,
			struct bio_list *issue, struct bio_list *fail)
{
	enum fleece_route route = FLEECE_ROUTE_FAIL;

	lockdep_assert_held(&core->lock);
	if (core->snap)
		route = __fleece_route_read(core, bio, fleece_view_io(bio), false);
	if (route == FLEECE_ROUTE_ISSUE)
		bio_list_add(issue, bio);
	else if (route == FLEECE_ROUTE_FAIL)
		bio_list_add(fail, bio);
}

/* Takes @job out of the snapshot (core->lock held). */
static void __unlink_job(struct fleece_core *core, struct fleece_copy_job *job)
{
	struct fleece_snapshot *s = job->snap;

	lockdep_assert_held(&core->lock);
	fleece_range_remove(&job->range, &s->copies);
	list_del(&job->age_entry);
	if (job->slot != FLEECE_NO_SLOT)
		__free_slot(s, job->slot);
	s->copies_in_flight--;
	if (job->failed)
		s->copies_failed--;
	core->recheck_deferred = true;
}

/*
 * Takes @job out of the snapshot (core->lock held) and routes what waited on
 * it.  The caller frees the job after dropping the lock.
 */
static void __retire_job(struct fleece_core *core, struct fleece_copy_job *job,
			 struct bio_list *issue, struct bio_list *fail)
{
	struct bio_list reads = job->waiting_reads;
	struct bio *bio;

	lockdep_assert_held(&core->lock);
	__unlink_job(core, job);
	while ((bio = __fleece_pop_write(core, &job->waiting_writes)))
		__sort_write(core, bio, issue, fail);
	bio_list_init(&job->waiting_reads);
	while ((bio = bio_list_pop(&reads)))
		__sort_read(core, bio, issue, fail);
}

static void free_job_pages(struct fleece_copy_job *job)
{
	unsigned int i;

	for (i = 0; i < job->nr_pages; i++)
		mempool_free(job->pages[i], &job->snap->page_pool);
	job->nr_pages = 0;
}

static void put_job_resources(struct fleece_copy_job *job)
{
	free_job_pages(job);
	if (job->bio) {
		bio_put(job->bio);
		job->bio = NULL;
		/* Last: the reserves are whole again before the count says so. */
		atomic_dec(&job->snap->copies_in_io);
	}
}

/*
 * Completes a copy whose exception write landed, from the write's completion
 * (core->lock held), when that needs neither memory nor a submission: the
 * chunk is still wanted, no bio waits on the job, and the exception map has
 * the slot's pages (fleece_emap_ready()).  Returns false, and the worker
 * does it, otherwise.  The job is freed under the lock: snapshot_end()
 * takes the lock before it frees the pools.
 * No wake_up(&core->copies_done): the snapshot is active, so
 * fleece_snapshot_end() is not waiting.
 */
static bool __finish_write_now(struct fleece_core *core,
			       struct fleece_copy_job *job)
{
	struct fleece_snapshot *s = job->snap;

	lockdep_assert_held(&core->lock);
	if (job->status || job->failed || job->chunk_released ||
	    core->state != FLEECE_ACTIVE ||
	    !bio_list_empty(&job->waiting_writes) ||
	    !bio_list_empty(&job->waiting_reads) ||
	    !fleece_emap_ready(&s->map, job->slot))
		return false;

	fleece_emap_insert(&s->map, job->chunk, job->slot);
	__clear_bit(job->chunk, s->needs_copy);
	s->chunks_copied++;
	job->slot = FLEECE_NO_SLOT;
	__unlink_job(core, job);
	/* A copy is free now: writes or parked jobs may wait for one. */
	if (!bio_list_empty(&core->deferred_writes) || !list_empty(&s->jobs_to_start))
		fleece_kick(core);
	mempool_free(job, &s->job_pool);
	return true;
}

static void copy_endio(struct bio *bio)
{
	struct fleece_copy_job *job = bio->bi_private;
	struct fleece_core *core = job->core;
	unsigned long flags;

	job->status = bio->bi_status;
	if (job->writing) {
		/* Give buffers back at once: parked jobs are waiting for them. */
		put_job_resources(job);
	}
	spin_lock_irqsave(&core->lock, flags);
	if (job->writing && __finish_write_now(core, job)) {
		spin_unlock_irqrestore(&core->lock, flags);
		return;
	}
	list_add_tail(&job->work_entry, &core->finished_jobs);
	/* Under the lock: once it is dropped the core may go away. */
	fleece_kick(core);
	spin_unlock_irqrestore(&core->lock, flags);
}

/* Length in sectors of @job's chunk inside the image (the last may be short). */
static unsigned int job_sectors(struct fleece_copy_job *job)
{
	struct fleece_snapshot *s = job->snap;
	sector_t start = fleece_chunk_to_sector(s, job->chunk);

	return min_t(sector_t, (sector_t)1 << s->chunk_shift, s->nr_sectors - start);
}

static void add_job_pages(struct fleece_copy_job *job, struct bio *bio)
{
	unsigned int bytes = job_sectors(job) << SECTOR_SHIFT;
	unsigned int i, len;

	for (i = 0; i < job->nr_pages; i++, bytes -= len) {
		len = min_t(unsigned int, bytes, PAGE_SIZE);
		__bio_add_page(bio, job->pages[i], len, 0);
	}
}

/*
 * Gets @job's buffers and bio from the snapshot's reserves (the page pool and
 * core->bs), all or nothing.  While other copies hold reserve buffers the
 * worker does not wait: they are only given back by copies that this worker
 * has to drive on, so it parks the job instead.  With no copy holding any,
 * the reserves are whole and it may wait (@may_wait).
 */
static bool get_job_resources(struct fleece_core *core,
			      struct fleece_copy_job *job, bool may_wait)
{
	struct fleece_snapshot *s = job->snap;
	gfp_t gfp = may_wait ? GFP_NOIO : GFP_NOWAIT | __GFP_NOWARN;
	unsigned int i, nr = DIV_ROUND_UP(job_sectors(job) << SECTOR_SHIFT, PAGE_SIZE);

	job->bio = bio_alloc_bioset(s->origin_bdev, nr, REQ_OP_READ, gfp, &core->bs);
	if (!job->bio)
		return false;
	atomic_inc(&s->copies_in_io);
	for (i = 0; i < nr; i++) {
		job->pages[i] = mempool_alloc(&s->page_pool, gfp);
		if (!job->pages[i]) {
			put_job_resources(job);
			return false;
		}
		job->nr_pages = i + 1;
	}
	return true;
}

/* No lock held: reads the chunk's old data into memory. */
static void submit_copy_read(struct fleece_copy_job *job)
{
	struct bio *bio = job->bio;

	bio->bi_iter.bi_sector = fleece_chunk_to_sector(job->snap, job->chunk);
	bio->bi_end_io = copy_endio;
	bio->bi_private = job;
	add_job_pages(job, bio);
	submit_bio_noacct(bio);
}

/* Worker, no lock held: writes the buffered data to the job's slot. */
static void submit_copy_write(struct fleece_copy_job *job)
{
	struct fleece_snapshot *s = job->snap;
	struct bio *bio = job->bio;

	bio_reset(bio, s->exception_bdev, REQ_OP_WRITE);
	/* A slot is a chunk of the exception device. */
	bio->bi_iter.bi_sector = fleece_chunk_to_sector(s, job->slot);
	bio->bi_end_io = copy_endio;
	bio->bi_private = job;
	add_job_pages(job, bio);
	submit_bio_noacct(bio);
}

static void free_job(struct fleece_core *core, struct fleece_copy_job *job)
{
	struct fleece_snapshot *s = job->snap;

	put_job_resources(job);
	mempool_free(job, &s->job_pool);
	wake_up(&core->copies_done);
}

/* Retires @job (no lock held) and sends on what waited for it. */
static void end_job(struct fleece_core *core, struct fleece_copy_job *job)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;

	spin_lock_irq(&core->lock);
	__retire_job(core, job, &issue, &fail);
	spin_unlock_irq(&core->lock);
	fleece_submit_list(&issue, &fail);
	free_job(core, job);
}

/*
 * The origin read of @job finished.  Returns true when the job goes on to
 * its exception write, which the caller submits.
 */
static bool finish_read(struct fleece_core *core, struct fleece_copy_job *job)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;
	struct bio_list writes;
	struct bio *bio;
	bool write_it = false;

	spin_lock_irq(&core->lock);
	if (job->status && !job->failed && core->state == FLEECE_ACTIVE)
		__fleece_fail_copy(core, job, FLEECE_ERR_ORIGIN_IO, &issue, &fail);

	if (job->failed || job->chunk_released || core->state != FLEECE_ACTIVE) {
		__retire_job(core, job, &issue, &fail);
	} else {
		write_it = true;
		job->writing = true;
		if (job->snap->policy == FLEECE_BREAK_SNAPSHOT) {
			/* The old data is safe in memory: let the writes go. */
			job->origin_released = true;
			writes = job->waiting_writes;
			bio_list_init(&job->waiting_writes);
			while ((bio = bio_list_pop(&writes))) {
				core->writes_waiting--;
				__sort_write(core, bio, &issue, &fail);
			}
		}
	}
	spin_unlock_irq(&core->lock);

	fleece_submit_list(&issue, &fail);
	if (!write_it)
		free_job(core, job);
	return write_it;
}

/* The exception write of @job finished. */
static void finish_write(struct fleece_core *core, struct fleece_copy_job *job)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;
	struct fleece_snapshot *s = job->snap;
	int r = 0;

	/* The worker is the only one to add pages to the map: no lock. */
	if (!job->status && !fleece_emap_ready(&s->map, job->slot))
		r = fleece_emap_prepare(&s->map, job->slot);

	spin_lock_irq(&core->lock);
	if (job->status) {
		/* Never reuse a slot the exception device failed to write. */
		job->slot = FLEECE_NO_SLOT;
	}
	if (!job->failed && !job->chunk_released && core->state == FLEECE_ACTIVE) {
		if (job->status || r) {
			__fleece_fail_copy(core, job, job->status ?
					   FLEECE_ERR_EXCEPTION_IO : FLEECE_ERR_NOMEM,
					   &issue, &fail);
		} else {
			fleece_emap_insert(&s->map, job->chunk, job->slot);
			job->slot = FLEECE_NO_SLOT;
			__clear_bit(job->chunk, s->needs_copy);
			s->chunks_copied++;
		}
	}
	__retire_job(core, job, &issue, &fail);
	spin_unlock_irq(&core->lock);

	fleece_submit_list(&issue, &fail);
	free_job(core, job);
}

/*
 * Submits the exception writes of core->buffered_jobs, under one plug, so
 * that writes to adjacent slots merge.  A copy that failed or was released
 * while held is written all the same: finish_write() drops its result, as
 * for one that failed or was released while its write was in flight.
 */
static void submit_buffered_jobs(struct fleece_core *core)
{
	struct fleece_copy_job *job, *tmp;
	struct blk_plug plug;

	blk_start_plug(&plug);
	/* Off the list before the write: it may complete at once. */
	list_for_each_entry_safe(job, tmp, &core->buffered_jobs, work_entry) {
		list_del_init(&job->work_entry);
		submit_copy_write(job);
	}
	blk_finish_plug(&plug);
	core->nr_buffered = 0;
}

/*
 * Finishes the copies whose I/O completed.  The guest writes that they let
 * go are dispatched at once, since a writer waits for them; the copies that
 * go on to their exception write join core->buffered_jobs.  Under
 * break_write the guest writes wait for those exception writes, so they are
 * submitted at once too.  Returns how many copies joined the list to wait.
 */
static unsigned int process_finished_jobs(struct fleece_core *core,
					  struct blk_plug *plug)
{
	struct fleece_copy_job *job, *tmp;
	unsigned int buffered = 0;
	bool urgent = false;
	LIST_HEAD(jobs);

	spin_lock_irq(&core->lock);
	list_splice_init(&core->finished_jobs, &jobs);
	spin_unlock_irq(&core->lock);
	if (list_empty(&jobs))
		return 0;

	list_for_each_entry_safe(job, tmp, &jobs, work_entry) {
		list_del_init(&job->work_entry);
		if (job->writing) {
			finish_write(core, job);
		} else if (finish_read(core, job)) {
			list_add_tail(&job->work_entry, &core->buffered_jobs);
			core->nr_buffered++;
			buffered++;
			urgent |= job->snap->policy == FLEECE_BREAK_WRITE;
		}
	}
	blk_finish_plug(plug);
	blk_start_plug(plug);
	if (urgent) {
		submit_buffered_jobs(core);
		return 0;
	}
	return buffered;
}

/*
 * Routes again the view reads held while the origin was suspended, once a
 * fleece instance is live and running again (fleece_core_adopt()).  Each
 * covers one chunk.
 */
static void process_held_reads(struct fleece_core *core)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;
	struct bio_list reads;
	struct bio *bio;

	/*
	 * Unlocked peek: reads are held before fleece_core_adopt() kicks the
	 * worker, and queue_work() orders that for the run it queues.
	 */
	if (!READ_ONCE(core->reads_on_hold.head))
		return;
	spin_lock_irq(&core->lock);
	if (!core->origin_running) {
		spin_unlock_irq(&core->lock);
		return;
	}
	reads = core->reads_on_hold;
	bio_list_init(&core->reads_on_hold);
	while ((bio = bio_list_pop(&reads)))
		__sort_read(core, bio, &issue, &fail);
	spin_unlock_irq(&core->lock);
	fleece_submit_list(&issue, &fail);
}

/*
 * Closes the open quarantine batch, if no batch is closed: see the comment
 * on quarantine_open in struct fleece_snapshot.  Caller holds core->lock.
 */
static void __close_quarantine(struct fleece_snapshot *s)
{
	lockdep_assert_held(&s->core->lock);
	if (s->nr_closed || !s->nr_open)
		return;
	swap(s->quarantine_open, s->quarantine_closed);
	s->nr_closed = s->nr_open;
	s->nr_open = 0;
	s->closed_cursor = 0;
	s->closed_epoch = s->read_epoch;
	s->read_epoch ^= 1;
}

/*
 * Frees @slot of a released chunk, or quarantines it while view reads of
 * the exception device are in flight: one of them may be reading it.
 * Caller holds core->lock.
 */
static void __release_slot(struct fleece_snapshot *s, u32 slot)
{
	lockdep_assert_held(&s->core->lock);
	if (!s->exception_reads[0] && !s->exception_reads[1]) {
		__free_slot(s, slot);
		return;
	}
	__set_bit(slot, s->quarantine_open);
	s->nr_open++;
	__close_quarantine(s);
}

/*
 * Frees the closed quarantine batch once the reads it waits for are done,
 * then closes the open one.  Scans a bounded part of the bitmap per hold of
 * the lock, interrupts being off meanwhile.  Only the worker changes the
 * closed batch, so the scan may go on after the lock was dropped.
 */
static void process_quarantine(struct fleece_core *core)
{
	struct fleece_snapshot *s;
	unsigned long slot, end;

	for (;;) {
		spin_lock_irq(&core->lock);
		s = core->snap;
		if (!s || !s->nr_closed || s->exception_reads[s->closed_epoch]) {
			spin_unlock_irq(&core->lock);
			return;
		}
		end = min_t(unsigned long, s->nr_slots,
			    (unsigned long)s->closed_cursor + FLEECE_SCAN_BITS);
		slot = s->closed_cursor;
		for_each_set_bit_from(slot, s->quarantine_closed, end) {
			__clear_bit(slot, s->quarantine_closed);
			__free_slot(s, slot);
			/* A write may wait for a slot: see __slots_in_quarantine(). */
			core->recheck_deferred = true;
			if (!--s->nr_closed)
				break;
		}
		s->closed_cursor = end;
		/* nr_closed counts the bits set: a scan to the end finds them all. */
		if (WARN_ON_ONCE(end == s->nr_slots && s->nr_closed))
			s->nr_closed = 0;
		if (!s->nr_closed)
			__close_quarantine(s);
		spin_unlock_irq(&core->lock);
		cond_resched();
	}
}

/*
 * Releases chunks @rel->next..@rel->last, at most *@budget of them, a batch
 * per hold of the lock; advances @rel->next and takes from *@budget.
 * Returns 0 when the range is done, -EAGAIN when the budget ran out first,
 * or -EIO when no active snapshot can honour the release.
 */
static int release_chunks(struct fleece_core *core, struct fleece_release *rel,
			  unsigned int *budget)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;
	u64 chunk = rel->next, stop;
	struct fleece_snapshot *s;
	struct fleece_copy_job *job;
	struct bio *bio;
	int r = 0;
	u32 slot;

	/* u64: the last chunk may be the largest u32 a chunk can have. */
	while (chunk <= rel->last) {
		if (!*budget) {
			r = -EAGAIN;
			break;
		}
		spin_lock_irq(&core->lock);
		s = core->snap;
		if (core->state != FLEECE_ACTIVE) {
			spin_unlock_irq(&core->lock);
			r = -EIO;
			break;
		}
		/* fleece_sectors_to_chunks() kept rel->last inside the image. */
		stop = min_t(u64, rel->last,
			     chunk + min(*budget, FLEECE_RELEASE_BATCH) - 1);
		*budget -= stop - chunk + 1;
		for (; chunk <= stop; chunk++) {
			if (__test_and_set_bit(chunk, s->released))
				continue;
			s->chunks_released++;
			if (__test_and_clear_bit(chunk, s->needs_copy)) {
				job = __fleece_job_of(s, chunk);
				if (!job)
					continue;
				/* Its writes need not wait for the copy any more. */
				job->chunk_released = true;
				while ((bio = __fleece_pop_write(core, &job->waiting_writes)))
					__sort_write(core, bio, &issue, &fail);
				continue;
			}
			slot = fleece_emap_remove(&s->map, chunk);
			if (slot != FLEECE_NO_SLOT)
				__release_slot(s, slot);
		}
		spin_unlock_irq(&core->lock);
		fleece_submit_list(&issue, &fail);
		cond_resched();
	}
	rel->next = min_t(u64, chunk, rel->last);
	return r;
}

/*
 * Works off the queued releases, FLEECE_RELEASE_PER_RUN chunks per worker
 * run at most: the rest waits for the next run, so that the first writes
 * that queued meanwhile are not held back behind a release of the whole
 * device.
 */
static void process_releases(struct fleece_core *core)
{
	unsigned int budget = FLEECE_RELEASE_PER_RUN;
	struct fleece_release *rel;
	int r;

	for (;;) {
		spin_lock_irq(&core->lock);
		rel = list_first_entry_or_null(&core->releases,
					       struct fleece_release, entry);
		spin_unlock_irq(&core->lock);
		if (!rel)
			return;
		r = release_chunks(core, rel, &budget);
		if (r == -EAGAIN) {
			fleece_kick(core);
			return;
		}
		spin_lock_irq(&core->lock);
		list_del(&rel->entry);
		spin_unlock_irq(&core->lock);
		if (rel->bio) {
			rel->bio->bi_status = errno_to_blk_status(r);
			bio_endio(rel->bio);
		} else {
			rel->result = r;
			complete(rel->done);
		}
	}
}

/*
 * Creates a copy job for @bio's chunk (core->lock held) from @job, or applies
 * the policy when the exception store is full.  Returns how @bio goes on.
 */
static enum fleece_route __start_copy(struct fleece_core *core,
				      struct fleece_copy_job *job, struct bio *bio,
				      struct bio_list *issue, struct bio_list *fail)
{
	struct fleece_snapshot *s = core->snap;
	u32 slot = __alloc_slot(s);

	lockdep_assert_held(&core->lock);
	if (slot == FLEECE_NO_SLOT) {
		core->error = FLEECE_ERR_FULL;
		if (s->policy == FLEECE_BREAK_SNAPSHOT) {
			__fleece_invalidate(core, FLEECE_ERR_FULL, issue, fail);
			return FLEECE_ROUTE_ISSUE;
		}
		DMERR_LIMIT("%u:%u: exception store full; the write fails",
			    MAJOR(core->dev), MINOR(core->dev));
		schedule_work(&core->event_work);
		return FLEECE_ROUTE_FAIL;
	}

	memset(job, 0, sizeof(*job));
	job->core = core;
	job->snap = s;
	job->chunk = fleece_sector_to_chunk(s, bio->bi_iter.bi_sector);
	job->slot = slot;
	job->started = jiffies;
	job->range.start = job->chunk;
	job->range.last = job->chunk;
	bio_list_init(&job->waiting_writes);
	bio_list_init(&job->waiting_reads);
	fleece_range_insert(&job->range, &s->copies);
	list_add_tail(&job->age_entry, &s->jobs_by_age);
	list_add_tail(&job->work_entry, &s->jobs_to_start);
	s->copies_in_flight++;
	__fleece_hold_write(core, &job->waiting_writes, bio);
	if (s->timeout)
		queue_delayed_work(core->wq, &core->timeout_work, s->timeout);
	return FLEECE_ROUTE_HELD;
}

/*
 * True when every free exception slot is in quarantine: they come free
 * once the view reads in flight drain (process_quarantine()), so a write
 * that needs a slot waits for them rather than fill the store.
 */
static bool __slots_in_quarantine(struct fleece_snapshot *s)
{
	lockdep_assert_held(&s->core->lock);
	return s->slots_used >= s->nr_slots && (s->nr_open || s->nr_closed);
}

/*
 * True when no new copy may start now: max_copies healthy copies are
 * running, or failed copies that hang on their I/O have piled up.
 */
static bool __copies_full(struct fleece_snapshot *s)
{
	lockdep_assert_held(&s->core->lock);
	return s->copies_in_flight - s->copies_failed >= s->max_copies ||
	       s->copies_in_flight >= 2 * s->max_copies;
}

/*
 * Routes the writes that wait for the worker: writes deferred while a
 * snapshot started or that need a new copy (in order, until the copies are
 * full), and writes that waited for view reads.
 */
static void process_writes(struct fleece_core *core)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;
	struct fleece_snapshot *spare_snap = NULL, *s;
	struct bio_list pending = BIO_EMPTY_LIST, stay = BIO_EMPTY_LIST, done;
	struct fleece_copy_job *spare = NULL;
	struct fleece_origin_io *io;
	enum fleece_route route;
	struct bio *bio;

	spin_lock_irq(&core->lock);
	if (core->recheck_readers) {
		/*
		 * Out of the list first: a write that another view read still
		 * blocks goes back on it and must not be seen again here.
		 */
		core->recheck_readers = false;
		while ((bio = __fleece_pop_write(core, &core->reader_blocked)))
			bio_list_add(&pending, bio);
		while ((bio = bio_list_pop(&pending)))
			__sort_write(core, bio, &issue, &fail);
	}
	if (core->recheck_deferred) {
		core->recheck_deferred = false;
		while ((bio = __fleece_pop_write(core, &core->deferred_writes)))
			bio_list_add(&pending, bio);
	}

	while ((bio = bio_list_pop(&pending))) {
		io = fleece_origin_io(bio);
		if (!io->holds_ref) {
			if (!percpu_ref_tryget_live(&core->writes_ref)) {
				/*
				 * A snapshot starts or ends: its kick comes once
				 * the reference lives again.  The writes behind
				 * that hold one still go, so that a drain never
				 * waits for a write stuck behind this one.
				 */
				bio_list_add(&stay, bio);
				continue;
			}
			io->holds_ref = true;
		}
		route = __fleece_route_write(core, bio, io);
		if (route == FLEECE_ROUTE_NEED_COPY) {
			s = core->snap;
			if (__copies_full(s)) {
				if (s->copies_in_flight > s->copies_failed) {
					/* A copy will end and recheck: keep the order. */
					bio_list_add_head(&pending, bio);
					break;
				}
				/* Only hung copies: this one could not end in time. */
				__fleece_fail_copy_nojob(core, FLEECE_ERR_TIMEOUT, &issue, &fail);
				route = core->state == FLEECE_ACTIVE ? FLEECE_ROUTE_FAIL :
								       FLEECE_ROUTE_ISSUE;
			} else if (__slots_in_quarantine(s)) {
				/* process_quarantine() rechecks: keep the order. */
				bio_list_add_head(&pending, bio);
				break;
			} else if (!spare || spare_snap != s) {
				if (spare)
					mempool_free(spare, &spare_snap->job_pool);
				spare_snap = s;
				/* Without dropping the lock, as a rule. */
				spare = mempool_alloc(&s->job_pool, GFP_NOWAIT | __GFP_NOWARN);
				if (!spare) {
					spin_unlock_irq(&core->lock);
					spare = mempool_alloc(&s->job_pool, GFP_NOIO);
					spin_lock_irq(&core->lock);
				}
				bio_list_add_head(&pending, bio);
				continue;
			} else {
				route = __start_copy(core, spare, bio, &issue, &fail);
				if (route == FLEECE_ROUTE_HELD)
					spare = NULL;
			}
		}
		if (route == FLEECE_ROUTE_ISSUE)
			bio_list_add(&issue, bio);
		else if (route == FLEECE_ROUTE_FAIL)
			bio_list_add(&fail, bio);
		else if (route == FLEECE_ROUTE_DONE)
			bio_list_add(&core->discards_done, bio);
	}
	/* What was not looked at goes back, in front and in order. */
	bio_list_merge_head(&pending, &stay);
	if (!bio_list_empty(&pending)) {
		while ((bio = __fleece_pop_write(core, &core->deferred_writes)))
			bio_list_add(&pending, bio);
		while ((bio = bio_list_pop(&pending)))
			__fleece_hold_write(core, &core->deferred_writes, bio);
	}
	done = core->discards_done;
	bio_list_init(&core->discards_done);
	spin_unlock_irq(&core->lock);

	if (spare)
		mempool_free(spare, &spare_snap->job_pool);
	fleece_submit_list(&issue, &fail);
	/* Discards held back or dropped: nothing to do but complete them. */
	while ((bio = bio_list_pop(&done)))
		bio_endio(bio);
}

/*
 * Starts the copies that wait for buffers, oldest first.  A job that was
 * failed or released meanwhile, or whose snapshot ended, ends unstarted.
 * Returns how many origin reads it submitted.
 */
static unsigned int start_jobs(struct fleece_core *core)
{
	struct fleece_copy_job *job;
	struct fleece_snapshot *s;
	unsigned int started = 0;
	bool skip;

	for (;;) {
		spin_lock_irq(&core->lock);
		s = core->snap;
		job = s ? list_first_entry_or_null(&s->jobs_to_start,
						   struct fleece_copy_job, work_entry) : NULL;
		skip = job && (job->failed || job->chunk_released ||
			       core->state != FLEECE_ACTIVE);
		if (skip)
			list_del_init(&job->work_entry);
		spin_unlock_irq(&core->lock);
		if (!job)
			return started;
		if (skip) {
			end_job(core, job);
			continue;
		}
		/*
		 * The job stays on the list until it has its buffers: a copy
		 * that gives buffers back meanwhile sees it there and kicks us.
		 * Only we take jobs off.
		 */
		if (!get_job_resources(core, job, !atomic_read(&s->copies_in_io)))
			return started;
		spin_lock_irq(&core->lock);
		list_del_init(&job->work_entry);
		spin_unlock_irq(&core->lock);
		submit_copy_read(job);
		started++;
	}
}

/* How many exception writes the worker may hold back at most. */
static unsigned int held_writes_limit(struct fleece_snapshot *s)
{
	unsigned int by_bytes = FLEECE_HELD_WRITES_BYTES >> (s->chunk_shift + SECTOR_SHIFT);

	return min(DIV_ROUND_UP(s->max_copies, FLEECE_HELD_WRITES_DIVISOR), by_bytes);
}

/*
 * True when the exception writes of the buffered copies wait for a later
 * run.  Only under break_snapshot, where no guest write waits for them, and
 * while no view read does (it consumes core->reads_wait_copy).  A run that
 * let guest writes go holds them, so that a writer it woke, if the scheduler
 * gives it the CPU first, submits its next write before the worker spends
 * the CPU on writes nobody waits for; so does a run that started copies when
 * the completion of one of them queued the worker again already (a device
 * that completes at once).  A run that did neither submits them, together
 * and merged.  So does a run that holds held_writes_limit() copies: held
 * copies must not stall new first writes, and the write that waits behind
 * a flush pays for all of it.
 */
static bool hold_copy_writes(struct fleece_core *core, unsigned int buffered,
			     unsigned int started)
{
	struct fleece_snapshot *s;
	bool hold;

	spin_lock_irq(&core->lock);
	s = core->snap;
	hold = s && core->state == FLEECE_ACTIVE && !core->reads_wait_copy &&
	       s->policy == FLEECE_BREAK_SNAPSHOT &&
	       core->nr_buffered < held_writes_limit(s) &&
	       (buffered || (started && work_pending(&core->worker)));
	core->reads_wait_copy = false;
	spin_unlock_irq(&core->lock);
	return hold;
}

void fleece_worker(struct work_struct *work)
{
	struct fleece_core *core = container_of(work, struct fleece_core, worker);
	unsigned int buffered, started;
	struct blk_plug plug;

	/* Requests are dispatched together; see the top of the file. */
	blk_start_plug(&plug);
	buffered = process_finished_jobs(core, &plug);
	process_releases(core);
	process_held_reads(core);
	process_quarantine(core);
	process_writes(core);
	started = start_jobs(core);
	blk_finish_plug(&plug);

	if (list_empty(&core->buffered_jobs))
		return;
	if (!hold_copy_writes(core, buffered, started))
		submit_buffered_jobs(core);
	else if (buffered)
		fleece_kick(core);	/* a run that holds nothing submits them */
}

/* Fails the copies that took longer than the cbw_timeout_ms feature allows. */
void fleece_timeout_worker(struct work_struct *work)
{
	struct fleece_core *core = container_of(to_delayed_work(work),
						struct fleece_core, timeout_work);
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;
	struct fleece_copy_job *job;
	struct fleece_snapshot *s;
	unsigned long now = jiffies, next = 0;

	spin_lock_irq(&core->lock);
	s = core->snap;
	if (!s || !s->timeout) {
		spin_unlock_irq(&core->lock);
		return;
	}
	list_for_each_entry(job, &s->jobs_by_age, age_entry) {
		if (job->failed || job->chunk_released)
			continue;
		if (time_before(now, job->started + s->timeout)) {
			next = job->started + s->timeout - now;
			break;
		}
		if (core->state == FLEECE_ACTIVE)
			__fleece_fail_copy(core, job, FLEECE_ERR_TIMEOUT, &issue, &fail);
	}
	if (next)
		queue_delayed_work(core->wq, &core->timeout_work, next);
	spin_unlock_irq(&core->lock);

	fleece_submit_list(&issue, &fail);
}

/*
 * Raises a dm event on the origin and the view, from process context, on
 * the system workqueue: it takes the registry mutex, which must never hold
 * up the copy worker.
 */
void fleece_event_worker(struct work_struct *work)
{
	struct fleece_core *core = container_of(work, struct fleece_core, event_work);

	mutex_lock(&fleece_registry_lock);
	if (core->origin_ti)
		dm_table_event(core->origin_ti->table);
	if (core->view)
		dm_table_event(core->view->ti->table);
	mutex_unlock(&fleece_registry_lock);
}
