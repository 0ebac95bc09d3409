/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Chunk -> exception slot map for a fleece snapshot.
 *
 * A chained hash table that grows by linear hashing, with every array kept
 * in pages under a directory sized at init, so that no allocation after
 * init is larger than a page and growing never rehashes the whole table:
 *
 *  - chunk_of_slot[slot]: the chunk a slot holds (the reverse direction);
 *  - next_of_slot[slot]: the next slot of the same chain, FLEECE_NO_SLOT
 *    at its end;
 *  - buckets[bucket]: the first slot of each chain, FLEECE_NO_SLOT when
 *    empty.
 *
 * A slot's two pages are allocated, before its first insert, by
 * fleece_emap_prepare() (a page covers PAGE_SIZE / 4 slots), so inserts
 * never need memory.  Once there are more entries than buckets, each insert
 * splits one bucket: the split only relinks the slots of one chain, and is
 * skipped when the page of the new bucket is missing, which makes chains
 * longer but fails nothing.  A split only happens while there are more
 * entries than buckets, so one bucket page per pair of slot pages is all
 * the splits can ever use; fleece_emap_prepare() allocates it with them.
 * That makes 12 bytes (4 + 4 + 4) per slot of the pages in use, so about
 * 12 bytes per copied chunk as slots are taken lowest first, plus three
 * directory pointers per PAGE_SIZE / 4 slots, allocated at init.
 *
 * Concurrency: every function but init, destroy and prepare runs under the
 * caller's lock (a spinlock, taken with interrupts disabled); the thread
 * that calls prepare may also call fleece_emap_ready() without it.
 * fleece_emap_prepare() runs without the lock, in one thread at a time (the
 * worker), and only ever sets directory entries that are NULL; it publishes
 * each page with a release, and no page is freed before destroy, so no other
 * synchronisation is needed.  Under the lock, the entry of a page being
 * published may only be looked at by fleece_emap_ready() and by a split
 * (new bucket), both with an acquire.  Every other reader reaches a page
 * through a bucket or slot that an insert linked under the lock after the
 * page was published, so the lock orders them.
 */
#ifndef DM_FLEECE_EXCEPTION_MAP_H
#define DM_FLEECE_EXCEPTION_MAP_H

#include <linux/mempool.h>
#include <linux/types.h>

#define FLEECE_NO_SLOT U32_MAX

struct fleece_exception_map {
	/* Directories of pages; entries only go from NULL to a page. */
	u32 **chunk_of_slot;
	u32 **next_of_slot;
	u32 **buckets;
	u32 nr_slots;
	u32 nr_dir;		/* entries in chunk_of_slot and next_of_slot */
	u32 nr_bucket_dir;	/* entries in buckets */

	/* Under the lock. */
	u32 nr_entries;
	u32 nr_buckets;		/* low_size .. 2 * low_size - 1 */
	u32 low_size;		/* a power of two: buckets at the round's start */

	/* Only fleece_emap_prepare() uses these. */
	u32 nr_slot_pages;	/* pairs of slot pages allocated */
	u32 nr_bucket_pages;	/* buckets[0 .. nr_bucket_pages - 1] exist */
	mempool_t page_pool;	/* reserve for the slot pages */
};

int fleece_emap_init(struct fleece_exception_map *map, u32 nr_slots);
void fleece_emap_destroy(struct fleece_exception_map *map);
int fleece_emap_prepare(struct fleece_exception_map *map, u32 slot);
bool fleece_emap_ready(const struct fleece_exception_map *map, u32 slot);
u32 fleece_emap_lookup(const struct fleece_exception_map *map, u32 chunk);
void fleece_emap_insert(struct fleece_exception_map *map, u32 chunk, u32 slot);
u32 fleece_emap_remove(struct fleece_exception_map *map, u32 chunk);

#endif /* DM_FLEECE_EXCEPTION_MAP_H */
