// SPDX-License-Identifier: GPL-2.0-only
/*
 * Origin discards held back while a snapshot runs (discard_policy defer).
 *
 * A discard promises nothing about what later reads return, so a discard
 * of a chunk that the snapshot still needs does not have to destroy the
 * chunk's old data, and it does not have to be copied first either: it is
 * completed at once and its range is kept here.  When the snapshot ends,
 * the ranges are passed down, so that thin pools and SSDs still get their
 * space back (fleece_snapshot_end()).
 *
 * The one rule: a held-back discard must never destroy data written after
 * it.  Every origin write routed while the snapshot is active removes its
 * range from here first (__fleece_cancel_discards()), before it is
 * submitted, so no write that reaches the origin overlaps a range here.
 * At the end, the ranges go down only once no write is in flight and new
 * writes wait (fleece_snapshot_end()).
 *
 * Memory is bounded: at most FLEECE_MAX_DISCARDS ranges, from a mempool,
 * never allocated with a sleep.  When a range cannot be kept, its discard
 * is dropped: that is always safe, since a discard is only a hint, and it
 * is counted in the status and logged.  A broken snapshot drops all of
 * them, because from then on writes pass without being checked here.
 *
 * Functions whose name starts with __ run with core->lock held.
 */
#include <linux/blkdev.h>
#include <linux/rbtree.h>

#include "fleece-core.h"

/* 16384 ranges of 48 bytes: well under 1 MiB. */
#define FLEECE_MAX_DISCARDS	16384U
#define FLEECE_DISCARD_RESERVE	16

/* A held-back discard of the origin sectors [start, end). */
struct fleece_discard {
	struct rb_node node;	/* in snap->discards, by start */
	sector_t start;
	sector_t end;
};

static struct fleece_discard *to_discard(struct rb_node *node)
{
	return node ? rb_entry(node, struct fleece_discard, node) : NULL;
}

int fleece_discards_init(struct fleece_snapshot *s)
{
	s->discards = RB_ROOT;
	return mempool_init_kmalloc_pool(&s->discard_pool, FLEECE_DISCARD_RESERVE,
					 sizeof(struct fleece_discard));
}

void fleece_discards_exit(struct fleece_snapshot *s)
{
	/* Every range was taken, dropped or issued before the snapshot ends. */
	WARN_ON_ONCE(!RB_EMPTY_ROOT(&s->discards));
	mempool_exit(&s->discard_pool);
}

/*
 * The first range, in order, that ends after @start (or at it, with
 * @touching): the ranges are disjoint, so their ends are sorted too.
 */
static struct fleece_discard *__first_from(struct fleece_snapshot *s,
					   sector_t start, bool touching)
{
	struct rb_node *n = s->discards.rb_node;
	struct fleece_discard *d, *found = NULL;

	lockdep_assert_held(&s->core->lock);
	while (n) {
		d = to_discard(n);
		if (d->end > start || (touching && d->end == start)) {
			found = d;
			n = n->rb_left;
		} else {
			n = n->rb_right;
		}
	}
	return found;
}

static void __insert(struct fleece_snapshot *s, struct fleece_discard *new)
{
	struct rb_node **link = &s->discards.rb_node, *parent = NULL;

	lockdep_assert_held(&s->core->lock);
	while (*link) {
		parent = *link;
		if (new->start < to_discard(parent)->start)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(&new->node, parent, link);
	rb_insert_color(&new->node, &s->discards);
	s->nr_discards++;
}

static void __erase(struct fleece_snapshot *s, struct fleece_discard *d)
{
	lockdep_assert_held(&s->core->lock);
	rb_erase(&d->node, &s->discards);
	s->nr_discards--;
	s->discard_sectors -= d->end - d->start;
	mempool_free(d, &s->discard_pool);
}

static struct fleece_discard *__new_range(struct fleece_snapshot *s)
{
	lockdep_assert_held(&s->core->lock);
	if (s->nr_discards >= FLEECE_MAX_DISCARDS)
		return NULL;
	/* Never sleeps: from map() and with the lock held. */
	return mempool_alloc(&s->discard_pool, GFP_NOWAIT | __GFP_NOWARN);
}

static void __count_dropped(struct fleece_snapshot *s, sector_t sectors,
			    const char *why)
{
	lockdep_assert_held(&s->core->lock);
	if (!sectors)
		return;
	s->discards_dropped += sectors;
	DMWARN_LIMIT("%u:%u: %llu sectors of origin discards dropped: %s",
		     MAJOR(s->core->dev), MINOR(s->core->dev),
		     (unsigned long long)sectors, why);
}

/**
 * __fleece_defer_discard() - hold back a discard of [@start, @end).
 * @s: the active snapshot; caller holds core->lock.
 * @start: first sector.
 * @end: the sector after the last one.
 *
 * Merges with the ranges it overlaps or touches.  Only the part inside the
 * image is kept: writes past its end are not checked against the ranges.
 */
void __fleece_defer_discard(struct fleece_snapshot *s, sector_t start,
			    sector_t end)
{
	struct fleece_discard *d, *next;

	lockdep_assert_held(&s->core->lock);
	if (end > s->nr_sectors) {
		__count_dropped(s, end - max(start, s->nr_sectors),
				"past the end of the snapshot");
		end = s->nr_sectors;
	}
	if (start >= end)
		return;

	d = __first_from(s, start, true);
	if (!d || d->start > end) {
		d = __new_range(s);
		if (!d) {
			__count_dropped(s, end - start, "too many ranges held back");
			return;
		}
		d->start = start;
		d->end = end;
		s->discard_sectors += end - start;
		__insert(s, d);
		return;
	}
	/* Grow @d over [start, end) and swallow the ranges it now reaches. */
	s->discard_sectors -= d->end - d->start;
	d->start = min(d->start, start);
	d->end = max(d->end, end);
	while ((next = to_discard(rb_next(&d->node))) && next->start <= d->end) {
		d->end = max(d->end, next->end);
		__erase(s, next);
	}
	s->discard_sectors += d->end - d->start;
}

/**
 * __fleece_cancel_discards() - a write to [@start, @end) is on its way.
 * @s: the active snapshot; caller holds core->lock.
 * @start: first sector of the write.
 * @end: the sector after its last one.
 *
 * Takes the range out of the held-back discards, so that they can never
 * destroy what the write puts there.  A range split in two needs a new
 * one; without it, the part after the write is dropped.
 */
void __fleece_cancel_discards(struct fleece_snapshot *s, sector_t start,
			      sector_t end)
{
	struct fleece_discard *d, *next, *tail;

	lockdep_assert_held(&s->core->lock);
	for (d = __first_from(s, start, false); d && d->start < end; d = next) {
		next = to_discard(rb_next(&d->node));
		if (d->start >= start && d->end <= end) {
			__erase(s, d);
			continue;
		}
		if (d->start < start && d->end > end) {
			tail = __new_range(s);
			if (tail) {
				tail->start = end;
				tail->end = d->end;
				__insert(s, tail);
			} else {
				s->discard_sectors -= d->end - end;
				__count_dropped(s, d->end - end,
						"no memory to split a range");
			}
			s->discard_sectors -= end - start;
			d->end = start;
			return;
		}
		if (d->start < start) {
			s->discard_sectors -= d->end - start;
			d->end = start;
		} else {
			s->discard_sectors -= end - d->start;
			d->start = end;
		}
	}
}

/**
 * __fleece_drop_discards() - forget every held-back discard.
 * @s: the snapshot; caller holds core->lock.
 * @why: for the log.
 */
void __fleece_drop_discards(struct fleece_snapshot *s, const char *why)
{
	struct fleece_discard *d;

	lockdep_assert_held(&s->core->lock);
	__count_dropped(s, s->discard_sectors, why);
	while ((d = to_discard(rb_first(&s->discards))))
		__erase(s, d);
}

/**
 * __fleece_take_discards() - take every held-back discard out of @s.
 * @s: the snapshot; caller holds core->lock.
 * @taken: gets the ranges, for fleece_issue_discards().
 *
 * Only when the snapshot ends: the status of an idle origin counts none.
 */
void __fleece_take_discards(struct fleece_snapshot *s, struct rb_root *taken)
{
	lockdep_assert_held(&s->core->lock);
	*taken = s->discards;
	s->discards = RB_ROOT;
	s->nr_discards = 0;
	s->discard_sectors = 0;
}

/* The discards of one fleece_issue_discards() call in flight. */
struct issue_batch {
	atomic_t pending;		/* bios, plus one for the submitter */
	atomic64_t failed;		/* sectors */
	struct completion done;
};

static void issue_endio(struct bio *bio)
{
	struct issue_batch *b = bio->bi_private;

	if (bio->bi_status)
		atomic64_add(bio_sectors(bio), &b->failed);
	bio_put(bio);
	if (atomic_dec_and_test(&b->pending))
		complete(&b->done);
}

/**
 * fleece_issue_discards() - pass the ranges in @taken down to the origin.
 * @s: the snapshot they were taken from.
 * @taken: from __fleece_take_discards().
 *
 * Process context.  Every range is submitted at once, under one plug, and
 * waited for together: guest writes wait meanwhile.  The caller makes sure
 * that no write to the origin is in flight or can start.  A discard that
 * fails is only logged: the data stays, which is always allowed.
 */
void fleece_issue_discards(struct fleece_snapshot *s, struct rb_root *taken)
{
	/* A bio holds less than 4 GiB; keep the pieces 4 KiB aligned. */
	const sector_t max_sectors = round_down(UINT_MAX >> SECTOR_SHIFT, 8);
	struct fleece_core *core = s->core;
	struct issue_batch b;
	struct fleece_discard *d;
	struct blk_plug plug;
	struct bio *bio;
	sector_t len;
	u64 failed;

	atomic_set(&b.pending, 1);
	atomic64_set(&b.failed, 0);
	init_completion(&b.done);
	blk_start_plug(&plug);
	while ((d = to_discard(rb_first(taken)))) {
		rb_erase(&d->node, taken);
		while (d->start < d->end) {
			len = min(d->end - d->start, max_sectors);
			bio = bio_alloc(s->origin_bdev, 0, REQ_OP_DISCARD, GFP_NOIO);
			bio->bi_iter.bi_sector = d->start;
			bio->bi_iter.bi_size = len << SECTOR_SHIFT;
			bio->bi_private = &b;
			bio->bi_end_io = issue_endio;
			atomic_inc(&b.pending);
			submit_bio_noacct(bio);
			d->start += len;
		}
		mempool_free(d, &s->discard_pool);
		cond_resched();
	}
	blk_finish_plug(&plug);
	if (!atomic_dec_and_test(&b.pending))
		wait_for_completion(&b.done);
	failed = atomic64_read(&b.failed);
	if (failed)
		DMWARN("%u:%u: %llu sectors of held-back origin discards failed; the data stays",
		       MAJOR(core->dev), MINOR(core->dev), (unsigned long long)failed);
}
