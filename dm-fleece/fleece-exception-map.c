// SPDX-License-Identifier: GPL-2.0-only
/*
 * Chunk -> exception slot map of a fleece snapshot; see fleece-exception-map.h
 * for the memory layout and the locking rules.
 */
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <asm/barrier.h>

#include "fleece-exception-map.h"

/* Slots, or buckets, per page of any of the three arrays. */
#define U32_PER_PAGE	((u32)(PAGE_SIZE / sizeof(u32)))

/*
 * Pages kept in reserve for the slot pages: one slot page of each array, so
 * that a short spike of memory pressure does not make the worker wait.
 */
#define RESERVE_PAGES	2

/*
 * MurmurHash3's finaliser, a bijection in which every bit of the result
 * depends on every bit of @chunk.  Linear hashing indexes buckets with the
 * low bits of the hash, and those of a multiplicative hash such as
 * hash_32()'s are weak: chunks a power of two apart would share a bucket.
 */
static u32 hash_chunk(u32 chunk)
{
	chunk ^= chunk >> 16;
	chunk *= 0x85ebca6b;
	chunk ^= chunk >> 13;
	chunk *= 0xc2b2ae35;
	chunk ^= chunk >> 16;
	return chunk;
}

static u32 *entry(u32 *const *dir, u32 index)
{
	return &dir[index / U32_PER_PAGE][index % U32_PER_PAGE];
}

/*
 * The bucket of @hash: its low bits modulo low_size, or modulo twice that
 * for the buckets already split in this round.
 */
static u32 bucket_of(const struct fleece_exception_map *map, u32 hash)
{
	u32 bucket = hash & (map->low_size - 1);

	if (bucket < map->nr_buckets - map->low_size)
		bucket = hash & ((map->low_size << 1) - 1);
	return bucket;
}

/**
 * fleece_emap_init() - set up an empty map
 * @map: the map; whatever it holds is overwritten
 * @nr_slots: exception slots, which bounds the entries and the buckets
 *
 * Allocates the three directories (a pointer per PAGE_SIZE / 4 slots each),
 * the first bucket page and the page reserve; nothing proportional to the
 * origin.
 *
 * Context: process context, may sleep.
 * Return: 0, or -ENOMEM with nothing left allocated (fleece_emap_destroy()
 * is then harmless but not needed).
 */
int fleece_emap_init(struct fleece_exception_map *map, u32 nr_slots)
{
	u32 nr_dir = nr_slots / U32_PER_PAGE + !!(nr_slots % U32_PER_PAGE);

	memset(map, 0, sizeof(*map));
	map->nr_slots = nr_slots;
	map->nr_dir = nr_dir;
	map->nr_bucket_dir = max(nr_dir, 1U);
	map->low_size = U32_PER_PAGE;
	map->nr_buckets = U32_PER_PAGE;

	map->chunk_of_slot = kvcalloc(nr_dir, sizeof(u32 *), GFP_KERNEL);
	map->next_of_slot = kvcalloc(nr_dir, sizeof(u32 *), GFP_KERNEL);
	map->buckets = kvcalloc(map->nr_bucket_dir, sizeof(u32 *), GFP_KERNEL);
	if (!map->chunk_of_slot || !map->next_of_slot || !map->buckets ||
	    mempool_init_page_pool(&map->page_pool, RESERVE_PAGES, 0))
		goto fail;
	map->buckets[0] = (u32 *)__get_free_page(GFP_KERNEL);
	if (!map->buckets[0])
		goto fail;
	/* All bytes 0xff: every bucket FLEECE_NO_SLOT, that is empty. */
	memset(map->buckets[0], 0xff, PAGE_SIZE);
	map->nr_bucket_pages = 1;
	return 0;

fail:
	fleece_emap_destroy(map);
	return -ENOMEM;
}

static void free_dir(u32 **dir, u32 nr)
{
	u32 i;

	if (!dir)
		return;
	for (i = 0; i < nr; i++)
		free_page((unsigned long)dir[i]);
	kvfree(dir);
}

/**
 * fleece_emap_destroy() - free everything the map holds
 * @map: the map, initialised, after a failed init, or all zero
 *
 * Context: any context that may free pages and vmalloc memory, with no
 * other user of the map left.  A second call does nothing.
 */
void fleece_emap_destroy(struct fleece_exception_map *map)
{
	free_dir(map->chunk_of_slot, map->nr_dir);
	free_dir(map->next_of_slot, map->nr_dir);
	free_dir(map->buckets, map->nr_bucket_dir);
	map->chunk_of_slot = NULL;
	map->next_of_slot = NULL;
	map->buckets = NULL;
	mempool_exit(&map->page_pool);
}

/* Makes sure *@dir_entry holds a page; waits for one if need be. */
static void add_slot_page(struct fleece_exception_map *map, u32 **dir_entry)
{
	struct page *page;

	if (*dir_entry)
		return;
	/*
	 * With direct reclaim allowed mempool_alloc() does not fail: once
	 * the reserve is empty it retries, with reclaim, until it gets a page.
	 */
	page = mempool_alloc(&map->page_pool, GFP_NOIO);
	/* Its contents are written by the insert: no need to clear it. */
	smp_store_release(dir_entry, (u32 *)page_address(page));
}

/*
 * Allocates bucket pages, best effort, up to one per slot page, which is
 * all that splits can use (see fleece-exception-map.h).  The first one
 * missing holds the next bucket a split creates, or a later one; one that
 * cannot be had now only holds the splits back until a later call.
 */
static void add_bucket_pages(struct fleece_exception_map *map)
{
	u32 want = clamp(map->nr_slot_pages, 1U, map->nr_bucket_dir);
	unsigned long page;

	while (map->nr_bucket_pages < want) {
		page = __get_free_page(GFP_NOWAIT | __GFP_NOWARN);
		if (!page)
			return;
		/* Buckets are written when a split creates them. */
		smp_store_release(&map->buckets[map->nr_bucket_pages],
				  (u32 *)page);
		map->nr_bucket_pages++;
	}
}

/*
 * Gives the reserve back the pages it lent, when that is possible without
 * waiting: the map never frees a page before destroy, so the mempool would
 * not refill itself.
 */
static void refill_reserve(struct fleece_exception_map *map)
{
	struct page *page;

	while (READ_ONCE(map->page_pool.curr_nr) < map->page_pool.min_nr) {
		page = alloc_page(GFP_NOWAIT | __GFP_NOWARN);
		if (!page)
			return;
		mempool_free(page, &map->page_pool);
	}
}

/**
 * fleece_emap_prepare() - allocate what an insert of @slot needs
 * @map: the map
 * @slot: the exception slot about to be inserted
 *
 * Allocates the pages of @slot (chunk and next), waiting for memory if need
 * be, so that fleece_emap_ready(@map, @slot) becomes true; then, best
 * effort, the bucket pages that the splits of the coming inserts use, and
 * the page reserve.
 *
 * Context: process context without the map's lock; may sleep (GFP_NOIO).
 * Only one thread at a time may call it (the snapshot's worker).
 * Return: 0, or -EINVAL when @slot is beyond the map (a bug).
 */
int fleece_emap_prepare(struct fleece_exception_map *map, u32 slot)
{
	u32 page = slot / U32_PER_PAGE;

	if (WARN_ON_ONCE(slot >= map->nr_slots))
		return -EINVAL;
	if (!map->chunk_of_slot[page] || !map->next_of_slot[page]) {
		add_slot_page(map, &map->next_of_slot[page]);
		add_slot_page(map, &map->chunk_of_slot[page]);
		map->nr_slot_pages++;
	}
	add_bucket_pages(map);
	refill_reserve(map);
	return 0;
}

/**
 * fleece_emap_ready() - whether an insert of @slot needs no memory
 * @map: the map
 * @slot: an exception slot
 *
 * Context: under the map's lock, or in the thread that calls
 * fleece_emap_prepare() (only it adds pages).  Never sleeps.
 * Return: true when fleece_emap_insert() may be called for @slot; false
 * when fleece_emap_prepare() must be called first.
 */
bool fleece_emap_ready(const struct fleece_exception_map *map, u32 slot)
{
	u32 page = slot / U32_PER_PAGE;

	if (slot >= map->nr_slots)
		return false;
	/* Acquire: pairs with the release in add_slot_page(). */
	if (!smp_load_acquire(&map->chunk_of_slot[page]))
		return false;
	/* Both pages are published the same way. */
	return smp_load_acquire(&map->next_of_slot[page]);
}

/**
 * fleece_emap_lookup() - the slot holding a chunk
 * @map: the map
 * @chunk: the chunk
 *
 * Context: under the map's lock.
 * Return: the slot @chunk was inserted with, or FLEECE_NO_SLOT.
 */
u32 fleece_emap_lookup(const struct fleece_exception_map *map, u32 chunk)
{
	u32 slot = *entry(map->buckets, bucket_of(map, hash_chunk(chunk)));

	for (; slot != FLEECE_NO_SLOT; slot = *entry(map->next_of_slot, slot))
		if (*entry(map->chunk_of_slot, slot) == chunk)
			return slot;
	return FLEECE_NO_SLOT;
}

/*
 * Splits the next bucket of the round in two: the slots of its chain whose
 * hash has the low_size bit set move to the bucket added at the end.  Does
 * nothing when the new bucket's page is not there yet: a later insert
 * splits the bucket instead.
 */
static void split_bucket(struct fleece_exception_map *map)
{
	u32 new = map->nr_buckets;
	u32 *keep, *move, *head, *next, *page, slot, after;

	if (new / U32_PER_PAGE >= map->nr_bucket_dir)
		return;
	/* Acquire: fleece_emap_prepare() may be publishing this very page. */
	page = smp_load_acquire(&map->buckets[new / U32_PER_PAGE]);
	if (!page)
		return;

	keep = entry(map->buckets, new - map->low_size);
	move = &page[new % U32_PER_PAGE];
	slot = *keep;
	*keep = FLEECE_NO_SLOT;
	*move = FLEECE_NO_SLOT;
	while (slot != FLEECE_NO_SLOT) {
		head = hash_chunk(*entry(map->chunk_of_slot, slot)) &
		       map->low_size ? move : keep;
		next = entry(map->next_of_slot, slot);
		after = *next;
		*next = *head;
		*head = slot;
		slot = after;
	}

	map->nr_buckets++;
	if (map->nr_buckets - map->low_size == map->low_size)
		map->low_size <<= 1;
}

/**
 * fleece_emap_insert() - map a chunk to a slot
 * @map: the map
 * @chunk: a chunk not in the map
 * @slot: a slot not in the map, for which fleece_emap_ready() is true
 *
 * Never fails and allocates nothing.  When there are more entries than
 * buckets it splits one bucket, which touches one chain.
 *
 * Context: under the map's lock.
 */
void fleece_emap_insert(struct fleece_exception_map *map, u32 chunk, u32 slot)
{
	u32 *head = entry(map->buckets, bucket_of(map, hash_chunk(chunk)));

	*entry(map->chunk_of_slot, slot) = chunk;
	*entry(map->next_of_slot, slot) = *head;
	*head = slot;
	map->nr_entries++;
	if (map->nr_entries > map->nr_buckets)
		split_bucket(map);
}

/**
 * fleece_emap_remove() - unmap a chunk
 * @map: the map
 * @chunk: the chunk
 *
 * Buckets and pages stay: the map never shrinks before destroy.
 *
 * Context: under the map's lock.
 * Return: the slot @chunk had, now free of it, or FLEECE_NO_SLOT when
 * @chunk was not in the map.
 */
u32 fleece_emap_remove(struct fleece_exception_map *map, u32 chunk)
{
	u32 *link = entry(map->buckets, bucket_of(map, hash_chunk(chunk)));
	u32 slot;

	for (slot = *link; slot != FLEECE_NO_SLOT; slot = *link) {
		if (*entry(map->chunk_of_slot, slot) == chunk) {
			*link = *entry(map->next_of_slot, slot);
			map->nr_entries--;
			return slot;
		}
		link = entry(map->next_of_slot, slot);
	}
	return FLEECE_NO_SLOT;
}
