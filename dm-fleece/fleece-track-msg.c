// SPDX-License-Identifier: GPL-2.0-only
/*
 * The bitmap_* messages of the fleece target and the change-tracking
 * status fields (Documentation/device-mapper/fleece.rst, "Messages").
 * Every message runs under the tracker's mutex; the ones that take bits
 * away (clear, remove) or add a bitmap first drain the tracked writes in
 * flight (fleece_track_drain()).
 */
#include <linux/bitmap.h>
#include <linux/ctype.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "fleece-core.h"
#include "fleece-track.h"

/* Bitmap names: 1 to 47 of [A-Za-z0-9_.:-]. */
static bool valid_name(const char *name)
{
	size_t len = strlen(name), i;

	if (!len || len >= DM_FLEECE_MD_NAME_LEN)
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum(name[i]) && !strchr("_.:-", name[i]))
			return false;
	return true;
}

static int msg_add(struct fleece_tracker *t, const char *name, bool enabled)
{
	struct fleece_bitmap *bm = NULL;
	unsigned long *bits, *dirty = NULL, *committed = NULL;
	unsigned int i, noio;
	int r;

	if (!valid_name(name)) {
		DMERR("Invalid bitmap name: use 1 to 47 letters, digits, '_', '.', ':' or '-'.");
		return -EINVAL;
	}
	if (fleece_track_find(t, name) >= 0) {
		DMERR("Bitmap %s exists already.", name);
		return -EEXIST;
	}
	for (i = 0; i < t->nr_slots && !bm; i++)
		if (!t->bitmaps[i].flags)
			bm = &t->bitmaps[i];
	if (!bm) {
		DMERR("No room for another bitmap: the limit is %u; remove one first.",
		      t->nr_slots);
		return -ENOSPC;
	}
	/* No reclaim I/O: the fleece device itself may be what it would wait on. */
	noio = memalloc_noio_save();
	bits = fleece_track_alloc_bits(t->nr_blocks);
	if (t->md)
		dirty = bitmap_zalloc(fleece_track_md_blocks(t), GFP_KERNEL);
	if (!t->committed)
		committed = fleece_track_alloc_bits(t->nr_blocks);
	memalloc_noio_restore(noio);
	if (!bits || (t->md && !dirty) || (!t->committed && !committed)) {
		kvfree(bits);
		bitmap_free(dirty);
		kvfree(committed);
		DMERR("Cannot allocate the bitmap.");
		return -ENOMEM;
	}

	fleece_track_drain(t);
	spin_lock_irq(&t->bits_lock);
	if (committed)
		t->committed = committed;
	strscpy(bm->name, name, sizeof(bm->name));
	bm->bits = bits;
	bm->dirty = dirty;
	bm->flags = DM_FLEECE_BITMAP_IN_USE | (enabled ? DM_FLEECE_BITMAP_ENABLED : 0);
	__fleece_track_recompute(t);
	spin_unlock_irq(&t->bits_lock);
	r = fleece_track_persist_bitmap(t, bm - t->bitmaps);
	if (r) {
		spin_lock_irq(&t->bits_lock);
		bm->flags = 0;
		__fleece_track_recompute(t);
		spin_unlock_irq(&t->bits_lock);
		fleece_bitmap_free(bm);
		DMERR("Cannot write the new bitmap to the metadata device.");
	}
	fleece_track_undrain(t);
	return r;
}

static int msg_remove(struct fleece_tracker *t, int slot)
{
	struct fleece_bitmap *bm = &t->bitmaps[slot];
	int r = 0;

	if (t->md)
		r = fleece_md_set_bitmap(t->md, slot, NULL, 0);
	if (r) {
		DMERR("Cannot remove the bitmap from the metadata device.");
		return r;
	}
	/*
	 * Drained: committed may only grow from bits that are on disk, and
	 * a write marked but not committed yet has its bits in memory only.
	 */
	fleece_track_drain(t);
	spin_lock_irq(&t->bits_lock);
	bm->flags = 0;
	__fleece_track_recompute(t);
	spin_unlock_irq(&t->bits_lock);
	fleece_bitmap_free(bm);
	fleece_track_undrain(t);
	return 0;
}

/* Sets bitmap @slot's flags to @flags and clears its bits if @clear. */
static int msg_change(struct fleece_tracker *t, int slot, unsigned int flags,
		      bool clear)
{
	struct fleece_bitmap *bm = &t->bitmaps[slot];
	unsigned int old = bm->flags;
	int r;

	fleece_track_drain(t);
	spin_lock_irq(&t->bits_lock);
	bm->flags = flags;
	if (clear)
		bitmap_zero(bm->bits, t->nr_blocks);
	__fleece_track_recompute(t);
	spin_unlock_irq(&t->bits_lock);
	if (clear)
		r = fleece_track_persist_bitmap(t, slot);
	else
		r = t->md ? fleece_md_set_bitmap(t->md, slot, bm->name, flags) : 0;
	if (r) {
		/* Bits that were cleared in memory only stay as they are on disk. */
		DMERR("Cannot write bitmap %s to the metadata device.", bm->name);
		spin_lock_irq(&t->bits_lock);
		bm->flags = old;
		if (clear)
			t->health = FLEECE_TRACK_FAILED;
		__fleece_track_recompute(t);
		spin_unlock_irq(&t->bits_lock);
	}
	fleece_track_undrain(t);
	return r;
}

static int msg_merge(struct fleece_tracker *t, int dst, int src)
{
	struct fleece_bitmap *d = &t->bitmaps[dst], *s = &t->bitmaps[src];
	int r = 0;

	/* Adding bits needs no drain: no write can lose its bit by it. */
	spin_lock_irq(&t->bits_lock);
	bitmap_or(d->bits, d->bits, s->bits, t->nr_blocks);
	d->flags |= s->flags & DM_FLEECE_BITMAP_INCONSISTENT;
	if (t->md)
		bitmap_fill(d->dirty, fleece_track_md_blocks(t));
	spin_unlock_irq(&t->bits_lock);
	if (t->md) {
		fleece_track_commit(t);
		r = t->health == FLEECE_TRACK_OK ?
		    fleece_md_set_bitmap(t->md, dst, d->name, d->flags) : -EIO;
	}
	if (r)
		DMERR("Cannot write bitmap %s to the metadata device.", d->name);
	return r;
}

static void emit_info(struct fleece_tracker *t, char *result, unsigned int maxlen)
{
	unsigned int sz = 0, i;

	for (i = 0; i < t->nr_slots; i++) {
		struct fleece_bitmap *bm = &t->bitmaps[i];
		unsigned long dirty, frozen = 0, side = 0;

		if (!bm->flags)
			continue;
		spin_lock_irq(&t->bits_lock);
		dirty = bitmap_weight(bm->bits, t->nr_blocks);
		if (bm->bound) {
			frozen = bitmap_weight(bm->frozen, t->nr_blocks);
			side = bitmap_weight(bm->side, t->nr_blocks);
		}
		spin_unlock_irq(&t->bits_lock);
		DMEMIT("%s%s %s %s %lu", sz ? "\n" : "", bm->name,
		       fleece_bitmap_enabled(bm) ? "enabled" : "disabled",
		       bm->flags & DM_FLEECE_BITMAP_INCONSISTENT ? "inconsistent" : "consistent",
		       dirty);
		/* A backup runs: its backup set and the blocks written since. */
		if (bm->bound)
			DMEMIT(" backup %lu %lu", frozen, side);
	}
}

/**
 * fleece_track_emit_extents() - print the set ranges of a bitmap.
 * @t: the tracker.
 * @bits: a bitmap of @t's tracking blocks.
 * @start: the sector to start from.
 * @max: how many ranges at most.
 * @sectors: where the device ends: the last range stops there.
 * @result: where they go, as "<start sector>+<nr sectors>" words, as many
 *	as fit, then "next <sector>" to continue from, or "end".
 * @maxlen: the room in @result.
 */
void fleece_track_emit_extents(struct fleece_tracker *t,
			       const unsigned long *bits, u64 start,
			       unsigned int max, sector_t sectors,
			       char *result, unsigned int maxlen)
{
	u64 b = start >> t->shift, e, nr = DIV_ROUND_UP_SECTOR_T(sectors, 1U << t->shift);
	unsigned int sz = 0, n = 0;
	char word[48];

	nr = min(nr, t->nr_blocks);
	while (b < nr) {
		spin_lock_irq(&t->bits_lock);
		b = find_next_bit(bits, nr, b);
		e = b < nr ? find_next_zero_bit(bits, nr, b) : b;
		spin_unlock_irq(&t->bits_lock);
		if (b >= nr)
			break;
		snprintf(word, sizeof(word), "%llu+%llu ",
			 (unsigned long long)(b << t->shift),
			 (unsigned long long)(min_t(u64, e << t->shift, sectors) -
					      (b << t->shift)));
		/* Room for this word and for "next <sector>". */
		if (n == max || sz + strlen(word) + 32 >= maxlen) {
			DMEMIT("next %llu", (unsigned long long)(b << t->shift));
			return;
		}
		DMEMIT("%s", word);
		n++;
		b = e;
		cond_resched();
	}
	DMEMIT("end");
}

/**
 * fleece_track_message() - the bitmap messages of the fleece target.
 * @t: the tracker.
 * @argc: the number of words of the message.
 * @argv: the message, argv[0] starting with "bitmap_".
 * @result: where info and extents print.
 * @maxlen: the room in @result.
 * @origin_sectors: the size of the origin.
 *
 * Process context.  Returns 1 when it printed into @result (dm-ioctl
 * then passes it to user space), 0, or a negative errno after logging a
 * whole sentence.
 */
int fleece_track_message(struct fleece_tracker *t, unsigned int argc,
			 char **argv, char *result, unsigned int maxlen,
			 sector_t origin_sectors)
{
	const char *cmd = argv[0];
	unsigned long long start = 0;
	unsigned int max = UINT_MAX;
	int slot = -1, src = -1, r = 0;

	mutex_lock(&t->lock);
	if (t->health == FLEECE_TRACK_INCONSISTENT) {
		DMERR("Tracking metadata is inconsistent: take a full backup, then zero it.");
		r = -EIO;
		goto out;
	}
	if (!strcasecmp(cmd, "bitmap_info")) {
		if (argc != 1)
			goto usage;
		emit_info(t, result, maxlen);
		r = 1;	/* dm-ioctl: the message returns data */
		goto out;
	}
	if (argc < 2)
		goto usage;
	if (strcasecmp(cmd, "bitmap_add")) {
		slot = fleece_track_find(t, argv[1]);
		if (slot < 0) {
			DMERR("No bitmap is named %s.", argv[1]);
			r = -ENOENT;
			goto out;
		}
	}
	if (slot >= 0 && t->bitmaps[slot].bound &&
	    strcasecmp(cmd, "bitmap_extents") && strcasecmp(cmd, "bitmap_enable")) {
		DMERR("Bitmap %s belongs to a running backup: remove its view first.", argv[1]);
		r = -EBUSY;
		goto out;
	}
	if (t->health == FLEECE_TRACK_FAILED && strcasecmp(cmd, "bitmap_extents")) {
		DMERR("Tracking metadata failed: only bitmap_info and bitmap_extents work.");
		r = -EIO;
		goto out;
	}

	if (!strcasecmp(cmd, "bitmap_add")) {
		if (argc > 3 || (argc == 3 && strcasecmp(argv[2], "disabled")))
			goto usage;
		r = msg_add(t, argv[1], argc == 2);
	} else if (!strcasecmp(cmd, "bitmap_remove")) {
		if (argc != 2)
			goto usage;
		r = msg_remove(t, slot);
	} else if (!strcasecmp(cmd, "bitmap_clear")) {
		if (argc != 2)
			goto usage;
		r = msg_change(t, slot, t->bitmaps[slot].flags &
			       ~DM_FLEECE_BITMAP_INCONSISTENT, true);
	} else if (!strcasecmp(cmd, "bitmap_enable")) {
		if (argc != 2)
			goto usage;
		r = msg_change(t, slot, t->bitmaps[slot].flags | DM_FLEECE_BITMAP_ENABLED,
			       false);
	} else if (!strcasecmp(cmd, "bitmap_disable")) {
		if (argc != 2)
			goto usage;
		r = msg_change(t, slot, t->bitmaps[slot].flags & ~DM_FLEECE_BITMAP_ENABLED,
			       false);
	} else if (!strcasecmp(cmd, "bitmap_merge")) {
		if (argc != 3)
			goto usage;
		src = fleece_track_find(t, argv[2]);
		if (src < 0) {
			DMERR("No bitmap is named %s.", argv[2]);
			r = -ENOENT;
			goto out;
		}
		r = msg_merge(t, slot, src);
	} else if (!strcasecmp(cmd, "bitmap_extents")) {
		if (argc < 3 || argc > 4 || kstrtoull(argv[2], 10, &start) ||
		    start >= origin_sectors ||
		    (argc == 4 && (kstrtouint(argv[3], 10, &max) || !max))) {
			DMERR("Invalid message: expected bitmap_extents <name> <sector> [<max>].");
			r = -EINVAL;
			goto out;
		}
		fleece_track_emit_extents(t, t->bitmaps[slot].bits, start, max,
					  origin_sectors, result, maxlen);
		r = 1;
	} else {
		goto usage;
	}
	goto out;

usage:
	DMERR("Invalid message: see the fleece documentation for the bitmap_* messages.");
	r = -EINVAL;
out:
	mutex_unlock(&t->lock);
	return r;
}

static const char *tracking_name(struct fleece_tracker *t)
{
	switch (t->health) {
	case FLEECE_TRACK_INCONSISTENT:
		return "inconsistent";
	case FLEECE_TRACK_FAILED:
		return "failed";
	default:
		return t->md ? "persistent" : "volatile";
	}
}

/*
 * Status fields: <tracking> <tracking block sectors> <bitmaps>
 * <inconsistent bitmaps> <commits>.
 */
unsigned int fleece_track_emit_status(struct fleece_tracker *t, char *result,
				      unsigned int maxlen)
{
	unsigned int sz = 0, n = 0, bad = 0, i;
	unsigned long flags;
	u64 commits;

	spin_lock_irqsave(&t->bits_lock, flags);
	for (i = 0; i < t->nr_slots; i++) {
		n += !!t->bitmaps[i].flags;
		bad += !!(t->bitmaps[i].flags & DM_FLEECE_BITMAP_INCONSISTENT);
	}
	commits = t->commits;
	spin_unlock_irqrestore(&t->bits_lock, flags);
	DMEMIT(" %s %u %u %u %llu", tracking_name(t), 1U << t->shift, n, bad,
	       (unsigned long long)commits);
	return sz;
}
