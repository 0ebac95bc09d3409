/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Just enough of the kernel API, on libc, to build
 * dm-fleece/fleece-exception-map.c in user space.  The page allocator can
 * be made to fail (shim_fail_page) and counts what is live, so that the
 * test sees leaks and what the map costs.
 */
#ifndef EMAP_KSHIM_H
#define EMAP_KSHIM_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint32_t u32;
typedef uint64_t u64;
typedef unsigned int gfp_t;

#define U32_MAX		UINT32_MAX
#ifndef PAGE_SIZE
#define PAGE_SIZE	4096UL
#endif

#define __GFP_DIRECT_RECLAIM	0x01u
#define __GFP_KSWAPD_RECLAIM	0x02u
#define __GFP_IO		0x04u
#define __GFP_FS		0x08u
#define __GFP_NOWARN		0x10u
#define GFP_NOWAIT	__GFP_KSWAPD_RECLAIM
#define GFP_NOIO	(__GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM)
#define GFP_KERNEL	(GFP_NOIO | __GFP_IO | __GFP_FS)

#define min(a, b)	((a) < (b) ? (a) : (b))
#define max(a, b)	((a) > (b) ? (a) : (b))
#define clamp(v, lo, hi)	min(max(v, lo), hi)

#define READ_ONCE(x)	(*(const volatile __typeof__(x) *)&(x))
#define smp_load_acquire(p)	__atomic_load_n(p, __ATOMIC_ACQUIRE)
#define smp_store_release(p, v)	__atomic_store_n(p, v, __ATOMIC_RELEASE)

/* Set by the test. */
extern long shim_pages;			/* pages allocated and not freed */
extern long shim_vmem;			/* kvcalloc() blocks not freed */
extern long shim_warnings;		/* WARN_ON_ONCE() that fired */
extern long shim_mempool_waits;		/* mempool_alloc() would have slept */
extern bool (*shim_fail_page)(gfp_t gfp);	/* true: fail this page */
extern bool shim_fail_kvcalloc;

#define WARN_ON_ONCE(cond) ({						\
	bool __c = !!(cond);						\
	if (__c) {							\
		shim_warnings++;					\
		printf("# WARN_ON_ONCE(%s) at %s:%d\n", #cond,		\
		       __FILE__, __LINE__);				\
	}								\
	__c;								\
})

/* A struct page * is the page's address itself. */
struct page;

static inline void *shim_page_alloc(gfp_t gfp)
{
	void *p;

	if (shim_fail_page && shim_fail_page(gfp))
		return NULL;
	p = aligned_alloc(PAGE_SIZE, PAGE_SIZE);
	if (!p)
		abort();
	/* Garbage, as from the kernel: the map must not expect zeroes. */
	memset(p, 0x5a, PAGE_SIZE);
	shim_pages++;
	return p;
}

static inline struct page *alloc_page(gfp_t gfp)
{
	return shim_page_alloc(gfp);
}

static inline unsigned long __get_free_page(gfp_t gfp)
{
	return (unsigned long)shim_page_alloc(gfp);
}

static inline void *page_address(const struct page *page)
{
	return (void *)page;
}

static inline void free_page(unsigned long addr)
{
	if (!addr)
		return;
	shim_pages--;
	free((void *)addr);
}

static inline void *kvcalloc(size_t n, size_t size, gfp_t gfp)
{
	void *p;

	(void)gfp;
	if (shim_fail_kvcalloc)
		return NULL;
	/* Like the kernel's ZERO_SIZE_PTR, a 0-sized block is not NULL. */
	p = calloc(n ? n : 1, size);
	if (p)
		shim_vmem++;
	return p;
}

static inline void kvfree(const void *p)
{
	if (!p)
		return;
	shim_vmem--;
	free((void *)p);
}

/* A page mempool that behaves as mm/mempool.c does for the map. */
typedef struct {
	int min_nr;
	int curr_nr;
	void **elements;
} mempool_t;

static inline void mempool_exit(mempool_t *pool)
{
	while (pool->curr_nr)
		free_page((unsigned long)pool->elements[--pool->curr_nr]);
	free(pool->elements);
	pool->elements = NULL;
}

static inline int mempool_init_page_pool(mempool_t *pool, int min_nr,
					 int order)
{
	if (order)
		abort();
	pool->min_nr = min_nr;
	pool->curr_nr = 0;
	pool->elements = calloc(min_nr, sizeof(void *));
	if (!pool->elements)
		return -ENOMEM;
	while (pool->curr_nr < min_nr) {
		void *p = shim_page_alloc(GFP_KERNEL);

		if (!p) {
			mempool_exit(pool);
			return -ENOMEM;
		}
		pool->elements[pool->curr_nr++] = p;
	}
	return 0;
}

/*
 * First without reclaim, then the reserve, then with reclaim; when all
 * that fails and the caller may sleep, the kernel waits up to 5 s for an
 * element to come back and starts over: here it starts over at once.
 */
static inline void *mempool_alloc(mempool_t *pool, gfp_t gfp)
{
	gfp_t gfp_temp = gfp & ~(__GFP_DIRECT_RECLAIM | __GFP_IO);
	void *p;

	for (;;) {
		p = shim_page_alloc(gfp_temp);
		if (p)
			return p;
		if (pool->curr_nr)
			return pool->elements[--pool->curr_nr];
		if (gfp_temp != gfp) {
			gfp_temp = gfp;
			continue;
		}
		if (!(gfp & __GFP_DIRECT_RECLAIM))
			return NULL;
		shim_mempool_waits++;
	}
}

static inline void mempool_free(void *element, mempool_t *pool)
{
	if (!element)
		return;
	if (pool->curr_nr < pool->min_nr)
		pool->elements[pool->curr_nr++] = element;
	else
		free_page((unsigned long)element);
}

#endif /* EMAP_KSHIM_H */
