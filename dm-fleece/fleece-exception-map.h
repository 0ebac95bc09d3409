/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Chunk -> exception slot map for a fleece snapshot.
 *
 * It is an open-addressing hash table of 32-bit slot numbers plus a
 * slot -> chunk reverse array that is allocated a page at a time, so its
 * size follows the number of chunks copied, not the size of the origin:
 * 4 bytes of reverse map and 4 bytes / load factor (3/8..3/4) of buckets,
 * that is 9.3 to 14.7 bytes per copied chunk.
 *
 * Concurrency: everything but fleece_emap_reserve() runs under the
 * snapshot's spinlock.  The reserve (the worker's, which may allocate and
 * sleep) runs without it and rebuilds the buckets outside the lock; it is
 * safe because while it runs nobody else mutates the map: the worker is the
 * only one that removes entries, and an insert from bio completion is only
 * made when fleece_emap_has_room() says it needs no reserve and the worker
 * is not growing the map (snap->map_growing).  The new buckets are published
 * with fleece_emap_swap() under the lock.
 */
#ifndef DM_FLEECE_EXCEPTION_MAP_H
#define DM_FLEECE_EXCEPTION_MAP_H

#include <linux/types.h>

#define FLEECE_NO_SLOT U32_MAX

struct fleece_exception_map {
	u32 *buckets;		/* slot + 1; 0 marks an empty bucket */
	u32 nr_buckets;		/* a power of two */
	u32 nr_entries;
	u32 **chunk_of_slot;	/* directory of pages of slot -> chunk */
	u32 nr_dir;
};

/* Process context; sizes the directory for @nr_slots.  Returns 0 or -ENOMEM. */
int fleece_emap_init(struct fleece_exception_map *map, u32 nr_slots);
void fleece_emap_destroy(struct fleece_exception_map *map);

/*
 * Worker, without the lock, may sleep.  Makes sure that one more insert of
 * @slot needs no memory.  May return new buckets in *@grown, to be published
 * with fleece_emap_swap() under the lock and then freed with kvfree().
 * Returns 0 or -ENOMEM.
 */
int fleece_emap_reserve(struct fleece_exception_map *map, u32 slot,
			u32 **grown);
/*
 * True when inserting @slot needs no fleece_emap_reserve().  Under the lock,
 * or from the reserve itself, while nobody else may mutate the map.
 */
bool fleece_emap_has_room(const struct fleece_exception_map *map, u32 slot);
/* Under the lock: publishes @grown and returns the old buckets. */
u32 *fleece_emap_swap(struct fleece_exception_map *map, u32 *grown);

/* Under the lock.  Returns the slot holding @chunk or FLEECE_NO_SLOT. */
u32 fleece_emap_lookup(const struct fleece_exception_map *map, u32 chunk);
/* Under the lock, after a successful reserve. */
void fleece_emap_insert(struct fleece_exception_map *map, u32 chunk, u32 slot);
/* Under the lock.  Returns the slot @chunk had or FLEECE_NO_SLOT. */
u32 fleece_emap_remove(struct fleece_exception_map *map, u32 chunk);

#endif /* DM_FLEECE_EXCEPTION_MAP_H */
