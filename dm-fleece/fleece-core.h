/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-fleece internals shared by the origin target, the view target and the
 * snapshot engine.
 *
 * One struct fleece_core exists per device-mapper device that carries a
 * "fleece" origin target.  It outlives table reloads of that device: every
 * origin target instance and the view hold a reference to it.  While a view
 * is attached and resumed, the core holds a struct fleece_snapshot: the
 * point-in-time image, its per-chunk bitmaps, its exception store and the
 * copy-before-write machinery.
 *
 * Lock order (outer first):
 *   tracker->lock (mutex) -> fleece_registry_lock (mutex)
 *     -> core->lock (spinlock, irq-safe)
 *   tracker->lock -> tracker->bits_lock (spinlock, irq-safe): change
 *   tracking, fleece-track.h
 * core->lock and tracker->bits_lock are never held together.
 * core->lock is innermost.  With it held, code only calls into leaf locks
 * of other subsystems: mempool allocations that do not wait (GFP_NOWAIT)
 * and frees, queue_work(), queue_delayed_work(), wake_up() and
 * percpu_ref_kill().  The
 * origin's postsuspend waits, with neither lock held, for the view reads
 * of the origin device that are already submitted.
 */
#ifndef DM_FLEECE_CORE_H
#define DM_FLEECE_CORE_H

#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/interval_tree_generic.h>
#include <linux/list.h>
#include <linux/lockdep.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/percpu-refcount.h>
#include <linux/rbtree.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include <dm-fleece.h>

#include "fleece-compat.h"
#include "fleece-exception-map.h"
#include "fleece-track.h"

#define DM_MSG_PREFIX "fleece"

/**
 * enum fleece_state - state of the snapshot of an origin
 * @FLEECE_IDLE: no snapshot; the origin is a pass-through.
 * @FLEECE_ACTIVE: the snapshot is valid; first writes to chunks are held
 *	until the chunk's old data is safe.
 * @FLEECE_INVALID: a copy failed under the break_snapshot policy; guest
 *	writes pass through and every view read fails.
 *
 * Transitions: IDLE -> ACTIVE when the view resumes the first time,
 * ACTIVE -> INVALID on a copy error, ACTIVE|INVALID -> IDLE when the view
 * is destroyed.  Each one raises a dm event on the origin and the view.
 */
enum fleece_state {
	FLEECE_IDLE,
	FLEECE_ACTIVE,
	FLEECE_INVALID,
};

/* Why the snapshot broke, or the last copy error: a status field. */
enum fleece_error {
	FLEECE_ERR_NONE,
	FLEECE_ERR_FULL,
	FLEECE_ERR_ORIGIN_IO,
	FLEECE_ERR_EXCEPTION_IO,
	FLEECE_ERR_TIMEOUT,
	FLEECE_ERR_NOMEM,
	FLEECE_ERR_DETACHED,	/* the origin table was replaced or removed */
};

/*
 * What an origin discard does to a chunk the snapshot still needs (the
 * discard_policy feature of the fleece target): hold it back until the
 * snapshot ends (default), copy the chunk first like a write, or drop it.
 */
enum fleece_discard_policy {
	FLEECE_DISCARD_DEFER,
	FLEECE_DISCARD_COPY,
	FLEECE_DISCARD_IGNORE,
};

/* What a failed copy breaks: the view (default) or the guest write. */
enum fleece_cbw_policy {
	FLEECE_BREAK_SNAPSHOT,
	FLEECE_BREAK_WRITE,
};

/*
 * A closed range of chunks, in an interval tree: the copies in flight (one
 * chunk each) and the view reads that are reading chunks from the origin.
 */
struct fleece_range {
	struct rb_node rb;
	u32 start;
	u32 last;
	u32 __subtree_last;
};

/**
 * DOC: life cycle of a chunk while a snapshot is active
 *
 * The state of a chunk is derived from two bits and the copy tree:
 *
 * UNTOUCHED: needs_copy set, no copy job.  The snapshot's data is only on
 *	the origin.  View reads go to the origin and register as readers; the
 *	first write creates a copy job (-> COPYING) and waits for it.
 * COPYING: needs_copy set, a copy job exists and has not released the
 *	origin.  Old data is being read (and, under break_write, written to
 *	the exception store).  Writes wait on the job; view reads still read
 *	the origin, which has not changed.
 * BUFFERED (break_snapshot only): needs_copy set, the job holds the old data
 *	in memory and has released the origin, so guest writes go ahead.  View
 *	reads wait on the job until its exception write lands.
 * COPIED: needs_copy clear, released clear, the exception map has the
 *	chunk's slot.  Reads go to the exception device; writes pass through.
 * RELEASED: released set (needs_copy clear).  The backup no longer needs
 *	the chunk: it is never copied, its slot is free, view reads fail.
 *
 * A failed copy leaves the chunk UNTOUCHED (break_write) or invalidates the
 * whole snapshot (break_snapshot).  Chunks past the end of the snapshot
 * (the origin grew) have no state: writes pass through.
 */
struct fleece_snapshot {
	/* Fixed when the snapshot starts. */
	struct fleece_core *core;	/* whose lock protects the rest */
	unsigned int chunk_shift;	/* log2 of the chunk size in sectors */
	u32 nr_chunks;			/* chunks in the point-in-time image */
	sector_t nr_sectors;		/* sectors in the point-in-time image */
	u32 nr_slots;			/* chunks the exception device holds */
	struct block_device *origin_bdev;
	struct block_device *exception_bdev;
	enum fleece_cbw_policy policy;
	unsigned long timeout;		/* jiffies; 0 means no limit */
	unsigned int max_copies;	/* copies in flight at most */
	unsigned int chunk_pages;

	/* The rest is protected by core->lock. */
	unsigned long *needs_copy;	/* per chunk: data still only on origin */
	unsigned long *released;	/* per chunk: released by the backup */
	unsigned long *slot_used;	/* per exception slot */
	unsigned long *slot_words_full;	/* per word of slot_used: all set */
	/*
	 * Released slots that a view read may still be reading, in two
	 * batches.  View reads of the exception device count in
	 * exception_reads[read_epoch].  A slot released while any is in
	 * flight joins the open batch.  The open batch closes when no batch
	 * is closed: it becomes the closed batch, tagged with read_epoch, and
	 * read_epoch flips, so that no later read counts against it.  The
	 * closed batch is freed once exception_reads[closed_epoch] drains,
	 * which it does under any reader queue depth.  Why this is complete:
	 * when a batch closes, the previous closed batch was freed, so the
	 * other epoch had drained and every read in flight is of read_epoch.
	 */
	unsigned long *quarantine_open;
	unsigned long *quarantine_closed;
	u32 nr_open;
	u32 nr_closed;
	u32 closed_cursor;		/* the worker frees from here */
	unsigned int read_epoch;	/* 0 or 1 */
	unsigned int closed_epoch;
	unsigned int exception_reads[2];
	u32 slots_used;			/* holding a chunk, quarantined or bad */
	u32 slot_hint;			/* no free slot below this one */
	struct fleece_exception_map map;
	struct rb_root_cached copies;	/* struct fleece_copy_job.range */
	struct rb_root_cached readers;	/* struct fleece_view_io.range */
	struct list_head jobs_by_age;	/* oldest first, for the timeout */
	struct list_head jobs_to_start;	/* created, waiting for buffers */
	unsigned int copies_in_flight;	/* jobs that exist */
	unsigned int copies_failed;	/* of those, failed but not finished */
	atomic_t copies_in_io;		/* of those, holding buffers */
	u64 chunks_copied;
	u64 chunks_released;
	u64 writes_delayed;
	/*
	 * Origin discards held back because the snapshot needs the data they
	 * would destroy (fleece-discard.c): disjoint sector ranges, passed
	 * down when the snapshot ends.
	 */
	struct rb_root discards;	/* struct fleece_discard, by start */
	unsigned int nr_discards;
	u64 discard_sectors;		/* in the ranges */
	u64 discards_dropped;		/* sectors never passed down */

	mempool_t job_pool;
	mempool_t page_pool;
	mempool_t discard_pool;

	/*
	 * A backup bound to a bitmap (fleece-track-backup.c): its slot, or
	 * -1; its mode; and whether the backup said it succeeded (the
	 * view's outcome message, core->lock).
	 */
	int bound_slot;
	enum fleece_bitmap_mode bitmap_mode;
	bool declared_success;
};

/*
 * One copy-before-write of one chunk: origin -> memory -> exception slot.
 * Allocated by the worker from snap->job_pool; all fields but the pages and
 * the bio are protected by core->lock, and so is work_entry, except while
 * the job is on the worker's own core->buffered_jobs.
 */
struct fleece_copy_job {
	struct fleece_range range;	/* in snap->copies */
	struct list_head age_entry;	/* in snap->jobs_by_age */
	/* In snap->jobs_to_start, core->finished_jobs or core->buffered_jobs. */
	struct list_head work_entry;
	struct fleece_core *core;
	struct fleece_snapshot *snap;
	u32 chunk;
	u32 slot;			/* FLEECE_NO_SLOT once the map owns it */
	unsigned long started;		/* jiffies */
	bool writing;			/* the exception write is due or submitted */
	bool origin_released;		/* guest writes to the chunk may go */
	bool chunk_released;		/* the backup released the chunk */
	bool failed;			/* error or timeout; result discarded */
	blk_status_t status;		/* of the last I/O */
	struct bio_list waiting_writes;	/* origin writes held by the copy */
	struct bio_list waiting_reads;	/* view reads held by a BUFFERED job */
	struct bio *bio;
	unsigned int nr_pages;
	struct page *pages[];
};

/*
 * One instance of the origin target: a table line, loaded or live.  The
 * registry keeps every instance of every core on a list, so that a table
 * load can be checked against all of them (fleece-registry.c).
 */
struct fleece_origin {
	struct dm_target *ti;
	struct fleece_core *core;
	struct dm_dev *dev;
	sector_t chunk_sectors;
	enum fleece_discard_policy discard_policy;
	struct dm_dev *md_dev;		/* change tracking metadata, or NULL */
	unsigned int track_sectors;	/* the track_block feature, or 0 */
	struct list_head core_entry;	/* core->instances, registry lock */
};

/* Per-bio data of the origin target. */
struct fleece_origin_io {
	bool holds_ref;		/* holds core->writes_ref until end_io */
	bool delayed;		/* counted in writes_delayed */
	bool tracked;		/* holds tracker->writes until end_io */
};

/*
 * A release of chunks @next..@last, asked for by a view discard (@bio, ended
 * when done) or by a message (@done, completed when done).  On
 * core->releases; the worker releases a bounded number of chunks per run,
 * so that a large release does not hold back first writes.  Only the
 * worker takes entries off the list.
 */
struct fleece_release {
	struct list_head entry;
	u32 next;
	u32 last;
	int result;			/* 0, or -EIO: no active snapshot */
	struct bio *bio;
	struct completion *done;
};

/* Per-bio data of the view target. */
struct fleece_view_io {
	struct fleece_range range;	/* in snap->readers while reading origin */
	bool reading_origin;
	bool reading_exception;		/* counted in snap->exception_reads */
	u8 exception_epoch;		/* ... in exception_reads[this] */
	struct fleece_release release;	/* a discard: the chunks it releases */
};

struct fleece_view;

struct fleece_core {
	/* Protected by fleece_registry_lock. */
	struct list_head registry_entry;
	dev_t dev;			/* the dm device carrying the origin */
	unsigned int refs;		/* origin instances + view */
	struct list_head instances;	/* struct fleece_origin, loaded or live */
	/*
	 * The live instance: set by its preresume, cleared by its destructor.
	 * NULL when the device's live table is not a fleece table, so that
	 * writes may reach the origin without copy-before-write.
	 */
	struct dm_target *origin_ti;
	struct fleece_view *view;
	/*
	 * Change tracking (fleece-track.c): made with the core, freed with
	 * it, so map() uses it without a lock.
	 */
	struct fleece_tracker *tracker;
	/* Configuration adopted from origin_ti (registry lock). */
	struct block_device *origin_bdev;
	sector_t origin_sectors;
	sector_t chunk_sectors;

	/*
	 * The worker re-routes the deferred writes only when a copy may have
	 * room or the state changed, and the reader-blocked writes only when
	 * a view read of the origin ended (core->lock).
	 */
	bool recheck_deferred;
	bool recheck_readers;
	/*
	 * A view read waits for a BUFFERED copy, so the worker must not hold
	 * exception writes back (core->lock).
	 */
	bool reads_wait_copy;
	/*
	 * True from the live instance's preresume to its postsuspend
	 * (core->lock).  While it is false another table may be swapped in
	 * and take writes before any fleece code runs again, so view reads
	 * that would read the origin wait on reads_on_hold instead.
	 */
	bool origin_running;
	/*
	 * Held-back discards are going down at the end of a snapshot
	 * (core->lock): the origin's postsuspend waits for them.
	 */
	bool discards_issuing;

	/*
	 * Protects state, error, snap and everything in it marked so, and the
	 * bio lists and job list below.  Taken from map(), end_io() and bio
	 * completion, so always with interrupts disabled.
	 */
	spinlock_t lock;
	/* Written with WRITE_ONCE(): map() and end_io() peek without the lock. */
	enum fleece_state state;
	enum fleece_error error;	/* of this snapshot; none when idle */
	enum fleece_error last_error;	/* of the snapshot that ended last */
	enum fleece_discard_policy discard_policy;	/* the live instance's */
	struct fleece_snapshot *snap;
	struct bio_list deferred_writes;	/* need the worker */
	struct bio_list reader_blocked;		/* wait for view reads of origin */
	struct list_head releases;		/* struct fleece_release */
	struct list_head finished_jobs;		/* copy I/O completed */
	struct bio_list reads_on_hold;		/* view reads; !origin_running */
	struct bio_list discards_done;		/* deferred: the worker ends them */
	unsigned int writes_waiting;		/* origin writes on any list */

	/*
	 * Copies whose exception write is due and held back, and their count.
	 * Only the worker uses them, and a work item never runs twice at once,
	 * so they need no lock.  Empty whenever no copy is in flight.
	 */
	struct list_head buffered_jobs;
	unsigned int nr_buffered;

	/*
	 * Held by every origin write from map() to end_io().  Killed and
	 * drained when a snapshot starts, so that no write is in flight at the
	 * point in time.
	 */
	struct percpu_ref writes_ref;
	wait_queue_head_t writes_drained;
	wait_queue_head_t copies_done;		/* snapshot end waits for copies */
	wait_queue_head_t origin_reads_done;	/* postsuspend waits for readers */

	struct workqueue_struct *wq;
	struct work_struct worker;
	struct delayed_work timeout_work;
	struct work_struct event_work;
	struct bio_set bs;			/* copy bios */
};

struct fleece_view {
	struct dm_target *ti;
	struct fleece_core *core;
	dev_t fleece_devt;		/* not opened: it may be mounted */
	char fleece_name[16];
	struct dm_dev *origin_dev;	/* the fleece device's origin, held open */
	struct dm_dev *exception_dev;
	enum fleece_cbw_policy policy;
	unsigned int timeout_ms;
	unsigned int max_copies;	/* 0: derived from the chunk size */
	/* The bitmap feature: the backup's bitmap, or "" for none. */
	char bitmap[DM_FLEECE_MD_NAME_LEN];
	enum fleece_bitmap_mode bitmap_mode;
	bool full_backup;		/* the backup feature says full */
};

#define FLEECE_RANGE_START(r) ((r)->start)
#define FLEECE_RANGE_LAST(r) ((r)->last)
INTERVAL_TREE_DEFINE(struct fleece_range, rb, u32, __subtree_last,
		     FLEECE_RANGE_START, FLEECE_RANGE_LAST, static inline,
		     fleece_range);

/* The copy job of @chunk, if any.  Caller holds core->lock. */
static inline struct fleece_copy_job *__fleece_job_of(struct fleece_snapshot *s,
						      u32 chunk)
{
	struct fleece_range *r = fleece_range_iter_first(&s->copies, chunk, chunk);

	lockdep_assert_held(&s->core->lock);
	return r ? container_of(r, struct fleece_copy_job, range) : NULL;
}

/* The first sector of @chunk (u64: the chunk past the last one too). */
static inline sector_t fleece_chunk_to_sector(const struct fleece_snapshot *s,
					      u64 chunk)
{
	return (sector_t)chunk << s->chunk_shift;
}

/* The chunk that holds @sector, which lies inside the image. */
static inline u32 fleece_sector_to_chunk(const struct fleece_snapshot *s,
					 sector_t sector)
{
	return sector >> s->chunk_shift;
}

/**
 * fleece_sectors_to_chunks() - the chunks a release of a sector range covers.
 * @s: the snapshot.
 * @start: first sector of the range.
 * @len: its length in sectors; the range ends inside the image.
 * @first: set to the first chunk covered.
 * @last: set to the last chunk covered.
 *
 * A chunk counts when the range covers all of it that lies inside the
 * image, so the image's last chunk, when it is partial, counts when the
 * range reaches the end of the image.  Both the view's discards and its
 * release message use this, so that they always agree.  Returns false when
 * the range covers no chunk.
 */
static inline bool fleece_sectors_to_chunks(const struct fleece_snapshot *s,
					    sector_t start, sector_t len,
					    u32 *first, u32 *last)
{
	u64 end = min_t(u64, (u64)start + len, s->nr_sectors);
	u64 from = DIV_ROUND_UP_ULL(start, 1ULL << s->chunk_shift);
	u64 to = end == s->nr_sectors ? s->nr_chunks : end >> s->chunk_shift;

	if (from >= to)
		return false;
	*first = from;
	*last = to - 1;
	return true;
}

/* How a bio goes on, decided under core->lock. */
enum fleece_route {
	FLEECE_ROUTE_ISSUE,	/* remapped: submit it */
	FLEECE_ROUTE_HELD,	/* on a wait list now: hands off */
	FLEECE_ROUTE_NEED_COPY,	/* first write to an UNTOUCHED chunk */
	FLEECE_ROUTE_FAIL,	/* complete it with an I/O error */
	FLEECE_ROUTE_DONE,	/* a discard held back: complete it, no I/O */
};

/* fleece-registry.c: finding cores, their lifetime and configuration. */
extern struct mutex fleece_registry_lock;
int fleece_core_get(struct fleece_origin *fo, char **error);
void fleece_core_adopt(struct fleece_origin *fo);
void fleece_core_suspend(struct fleece_origin *fo);
void fleece_core_put_origin(struct fleece_origin *fo);
struct fleece_core *fleece_core_attach_view(struct fleece_view *view,
					    dev_t dev, char **error);
void fleece_core_detach_view(struct fleece_core *core);

/* Queues the core's worker; safe in any context. */
static inline void fleece_kick(struct fleece_core *core)
{
	queue_work(core->wq, &core->worker);
}

/* fleece-snapshot.c: start and end of the snapshot, the release message. */
int fleece_snapshot_start(struct fleece_core *core, struct fleece_view *view);
void fleece_snapshot_end(struct fleece_core *core);
int fleece_release(struct fleece_core *core, sector_t start, sector_t len);
int fleece_snapshot_outcome(struct fleece_core *core, bool success);
int fleece_backup_extents(struct fleece_core *core, sector_t start,
			  unsigned int max, sector_t sectors, char *result,
			  unsigned int maxlen);

/* fleece-route.c: where bios go, from map() and from the worker. */
int fleece_origin_map_write(struct fleece_core *core, struct bio *bio,
			    struct fleece_origin_io *io);
void fleece_origin_resume_write(struct fleece_core *core, struct bio *bio);
int fleece_view_map_read(struct fleece_core *core, struct bio *bio,
			 struct fleece_view_io *io);
void fleece_view_end_read(struct fleece_core *core, struct fleece_view_io *io,
			  blk_status_t *error);
enum fleece_route __fleece_route_write(struct fleece_core *core,
				       struct bio *bio,
				       struct fleece_origin_io *io);
enum fleece_route __fleece_route_read(struct fleece_core *core, struct bio *bio,
				      struct fleece_view_io *io, bool in_map);
void __fleece_hold_write(struct fleece_core *core, struct bio_list *list,
			 struct bio *bio);
struct bio *__fleece_pop_write(struct fleece_core *core, struct bio_list *list);
int fleece_view_map_discard(struct fleece_core *core, struct bio *bio,
			    struct fleece_view_io *io);

/* fleece-discard.c: origin discards held back while a snapshot runs. */
int fleece_discards_init(struct fleece_snapshot *s);
void fleece_discards_exit(struct fleece_snapshot *s);
void __fleece_defer_discard(struct fleece_snapshot *s, sector_t start,
			    sector_t end);
void __fleece_cancel_discards(struct fleece_snapshot *s, sector_t start,
			      sector_t end);
void __fleece_drop_discards(struct fleece_snapshot *s, const char *why);
void __fleece_take_discards(struct fleece_snapshot *s, struct rb_root *taken);
void fleece_issue_discards(struct fleece_snapshot *s, struct rb_root *taken);

/* fleece-status.c */
const char *fleece_error_name(enum fleece_error error);
unsigned int fleece_emit_status(struct fleece_core *core, sector_t chunk_sectors,
				status_type_t type, char *result,
				unsigned int maxlen);

/* fleece-copy.c: the copy engine, run by the worker and I/O completion. */
void fleece_worker(struct work_struct *work);
void fleece_timeout_worker(struct work_struct *work);
void fleece_event_worker(struct work_struct *work);
void __fleece_invalidate(struct fleece_core *core, enum fleece_error error,
			 struct bio_list *issue, struct bio_list *fail);
void fleece_submit_list(struct bio_list *issue, struct bio_list *fail);

static inline struct fleece_origin_io *fleece_origin_io(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct fleece_origin_io));
}

static inline struct fleece_view_io *fleece_view_io(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct fleece_view_io));
}

/* fleece-origin.c and fleece-view.c */
extern struct target_type fleece_origin_target;
extern struct target_type fleece_view_target;

#endif /* DM_FLEECE_CORE_H */
