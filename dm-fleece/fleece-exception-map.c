// SPDX-License-Identifier: GPL-2.0-only
/*
 * Chunk -> exception slot map of a fleece snapshot; see fleece-exception-map.h
 * for the memory layout and the locking rules.
 */
#include <linux/hash.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/slab.h>

#include "fleece-exception-map.h"

#define SLOTS_PER_PAGE		(PAGE_SIZE / sizeof(u32))
#define MIN_BUCKETS		1024U

static u32 *chunk_ptr(const struct fleece_exception_map *map, u32 slot)
{
	return &map->chunk_of_slot[slot / SLOTS_PER_PAGE][slot % SLOTS_PER_PAGE];
}

static u32 bucket_of(u32 chunk, u32 nr_buckets)
{
	return hash_32(chunk, ilog2(nr_buckets));
}

static u32 *alloc_buckets(u32 nr)
{
	return kvcalloc(nr, sizeof(u32), GFP_NOIO | __GFP_NOWARN);
}

int fleece_emap_init(struct fleece_exception_map *map, u32 nr_slots)
{
	map->nr_entries = 0;
	map->nr_buckets = MIN_BUCKETS;
	map->nr_dir = DIV_ROUND_UP(nr_slots, SLOTS_PER_PAGE);
	map->chunk_of_slot = kvcalloc(map->nr_dir, sizeof(u32 *), GFP_KERNEL);
	map->buckets = kvcalloc(map->nr_buckets, sizeof(u32), GFP_KERNEL);
	if (!map->chunk_of_slot || !map->buckets) {
		fleece_emap_destroy(map);
		return -ENOMEM;
	}
	return 0;
}

void fleece_emap_destroy(struct fleece_exception_map *map)
{
	u32 i;

	if (map->chunk_of_slot)
		for (i = 0; i < map->nr_dir; i++)
			free_page((unsigned long)map->chunk_of_slot[i]);
	kvfree(map->chunk_of_slot);
	kvfree(map->buckets);
	map->chunk_of_slot = NULL;
	map->buckets = NULL;
}

/* Inserts into @buckets without checking for duplicates or room. */
static void place(const struct fleece_exception_map *map, u32 *buckets,
		  u32 nr_buckets, u32 chunk, u32 slot)
{
	u32 mask = nr_buckets - 1;
	u32 i = bucket_of(chunk, nr_buckets);

	while (buckets[i])
		i = (i + 1) & mask;
	buckets[i] = slot + 1;
}

int fleece_emap_reserve(struct fleece_exception_map *map, u32 slot,
			u32 **grown)
{
	u32 page = slot / SLOTS_PER_PAGE;
	u32 nr, i, *buckets;

	*grown = NULL;
	if (WARN_ON_ONCE(page >= map->nr_dir))
		return -EINVAL;
	if (!map->chunk_of_slot[page]) {
		/*
		 * Published before any bucket refers to the slot; the lock
		 * taken for the insert orders it for readers.
		 */
		map->chunk_of_slot[page] =
			(u32 *)get_zeroed_page(GFP_NOIO | __GFP_NOWARN);
		if (!map->chunk_of_slot[page])
			return -ENOMEM;
	}

	/* Keep the load factor at or below 3/4 so probes stay short. */
	if (fleece_emap_has_room(map, slot))
		return 0;

	nr = map->nr_buckets * 2;
	buckets = alloc_buckets(nr);
	if (!buckets)
		return -ENOMEM;
	/* Only this caller mutates the map, so the old buckets are stable. */
	for (i = 0; i < map->nr_buckets; i++)
		if (map->buckets[i])
			place(map, buckets, nr, *chunk_ptr(map, map->buckets[i] - 1),
			      map->buckets[i] - 1);
	*grown = buckets;
	return 0;
}

bool fleece_emap_has_room(const struct fleece_exception_map *map, u32 slot)
{
	u32 page = slot / SLOTS_PER_PAGE;

	return page < map->nr_dir && map->chunk_of_slot[page] &&
	       (u64)(map->nr_entries + 1) * 4 <= (u64)map->nr_buckets * 3;
}

u32 *fleece_emap_swap(struct fleece_exception_map *map, u32 *grown)
{
	u32 *old = map->buckets;

	map->buckets = grown;
	map->nr_buckets *= 2;
	return old;
}

static u32 find_bucket(const struct fleece_exception_map *map, u32 chunk)
{
	u32 mask = map->nr_buckets - 1;
	u32 i = bucket_of(chunk, map->nr_buckets);

	for (; map->buckets[i]; i = (i + 1) & mask)
		if (*chunk_ptr(map, map->buckets[i] - 1) == chunk)
			return i;
	return FLEECE_NO_SLOT;
}

u32 fleece_emap_lookup(const struct fleece_exception_map *map, u32 chunk)
{
	u32 i = find_bucket(map, chunk);

	return i == FLEECE_NO_SLOT ? FLEECE_NO_SLOT : map->buckets[i] - 1;
}

void fleece_emap_insert(struct fleece_exception_map *map, u32 chunk, u32 slot)
{
	*chunk_ptr(map, slot) = chunk;
	place(map, map->buckets, map->nr_buckets, chunk, slot);
	map->nr_entries++;
}

/* True when bucket @k, the home of an entry found at @j, lies outside (@i, @j]. */
static bool may_move(u32 i, u32 j, u32 k)
{
	if (i <= j)
		return k <= i || k > j;
	return k <= i && k > j;
}

u32 fleece_emap_remove(struct fleece_exception_map *map, u32 chunk)
{
	u32 mask = map->nr_buckets - 1;
	u32 i = find_bucket(map, chunk);
	u32 j, slot;

	if (i == FLEECE_NO_SLOT)
		return FLEECE_NO_SLOT;
	slot = map->buckets[i] - 1;

	/* Backward-shift deletion keeps every probe chain unbroken. */
	for (j = (i + 1) & mask; map->buckets[j]; j = (j + 1) & mask) {
		u32 k = bucket_of(*chunk_ptr(map, map->buckets[j] - 1),
				  map->nr_buckets);

		if (may_move(i, j, k)) {
			map->buckets[i] = map->buckets[j];
			i = j;
		}
	}
	map->buckets[i] = 0;
	map->nr_entries--;
	return slot;
}
