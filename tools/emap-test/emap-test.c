// SPDX-License-Identifier: GPL-2.0-only
/*
 * emap-test: dm-fleece/fleece-exception-map.c, built in user space on
 * shim/kshim.h, against a reference model.  Random chunk numbers, slots
 * taken lowest-free-first as the snapshot does, inserts and removes
 * interleaved, every answer checked; then growth, memory per entry, and
 * page allocations that fail.  TAP on stdout; exit 1 on a failure.
 *
 * EMAP_SEED=N in the environment picks another random sequence.
 */
#include <inttypes.h>

#include "fleece-exception-map.h"

long shim_pages, shim_vmem, shim_warnings, shim_mempool_waits;
bool (*shim_fail_page)(gfp_t gfp);
bool shim_fail_kvcalloc;

#define PER_PAGE	((u32)(PAGE_SIZE / sizeof(u32)))

/* ---- TAP ---------------------------------------------------------------- */

static int test_nr, test_failed, any_failed;

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		if (test_failed++ < 10) {				\
			printf("# %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			printf(__VA_ARGS__);				\
			printf("\n");					\
		}							\
	}								\
} while (0)

static void result(const char *desc)
{
	printf("%sok %d - %s\n", test_failed ? "not " : "", ++test_nr, desc);
	any_failed |= test_failed != 0;
	test_failed = 0;
	fflush(stdout);
}

/* ---- random numbers and chunk numbers ----------------------------------- */

static u64 rng_state;
static u32 chunk_salt;

static u64 rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static u32 rnd_below(u32 n)
{
	return (u32)((rnd() >> 32) * n >> 32);
}

/* A bijection on 32 bits unlike the map's hash: distinct random chunks. */
static u32 scatter(u32 x)
{
	x ^= x >> 17;
	x *= 0xed5ad4bbU;
	x ^= x >> 11;
	x *= 0xac4c1b51U;
	x ^= x >> 15;
	x *= 0x31848babU;
	x ^= x >> 14;
	return x;
}

/* ---- the model ---------------------------------------------------------- */

/*
 * Index i of a domain of chunks stands for chunk_of(i); ref[i] is its slot
 * or FLEECE_NO_SLOT.  present[] lists the indices in the map (pos[] is
 * where), for removing a random one.
 */
struct model {
	struct fleece_exception_map map;
	u32 nr_slots, domain, entries, high_water;
	u32 (*chunk_of)(u32 i);
	u32 *ref, *present, *pos;
	u32 *free_heap, nr_free;	/* freed slots, a min-heap */
	u32 fresh;			/* slots from here up never used */
	long prepare_errors, not_ready;
};

static u32 chunk_random(u32 i)
{
	return scatter(i ^ chunk_salt);
}

static u32 chunk_random_fixed(u32 i)
{
	return scatter(i);
}

static u32 chunk_sequential(u32 i)
{
	return 0x10000000U + i;
}

static u32 chunk_stride_1024(u32 i)
{
	return i << 10;
}

static u32 chunk_stride_65536(u32 i)
{
	return i << 16;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (!p) {
		printf("Bail out! out of memory\n");
		exit(1);
	}
	return p;
}

static int model_init(struct model *m, u32 nr_slots, u32 domain,
		      u32 (*chunk_of)(u32))
{
	u32 i;

	memset(m, 0, sizeof(*m));
	m->nr_slots = nr_slots;
	m->domain = domain;
	m->chunk_of = chunk_of;
	m->ref = xcalloc(domain, sizeof(u32));
	m->pos = xcalloc(domain, sizeof(u32));
	m->present = xcalloc(nr_slots, sizeof(u32));
	m->free_heap = xcalloc(nr_slots, sizeof(u32));
	for (i = 0; i < domain; i++)
		m->ref[i] = FLEECE_NO_SLOT;
	return fleece_emap_init(&m->map, nr_slots);
}

static void model_exit(struct model *m)
{
	fleece_emap_destroy(&m->map);
	free(m->ref);
	free(m->pos);
	free(m->present);
	free(m->free_heap);
}

/* Lowest free slot first, as __alloc_slot() in fleece-copy.c. */
static u32 alloc_slot(struct model *m)
{
	u32 *h = m->free_heap, slot, last, k, c;

	if (!m->nr_free)
		return m->fresh < m->nr_slots ? m->fresh++ : FLEECE_NO_SLOT;
	slot = h[0];
	last = h[--m->nr_free];
	for (k = 0; (c = 2 * k + 1) < m->nr_free; k = c) {
		if (c + 1 < m->nr_free && h[c + 1] < h[c])
			c++;
		if (last <= h[c])
			break;
		h[k] = h[c];
	}
	h[k] = last;
	return slot;
}

static void free_slot(struct model *m, u32 slot)
{
	u32 *h = m->free_heap, k;

	for (k = m->nr_free++; k && h[(k - 1) / 2] > slot; k = (k - 1) / 2)
		h[k] = h[(k - 1) / 2];
	h[k] = slot;
}

/* What finish_write() does: prepare without the lock when not ready. */
static bool model_insert(struct model *m, u32 i)
{
	u32 slot = alloc_slot(m), chunk = m->chunk_of(i);

	if (slot == FLEECE_NO_SLOT)
		return false;
	if (!fleece_emap_ready(&m->map, slot)) {
		if (fleece_emap_prepare(&m->map, slot))
			m->prepare_errors++;
		if (!fleece_emap_ready(&m->map, slot)) {
			m->not_ready++;
			free_slot(m, slot);
			return false;
		}
	}
	fleece_emap_insert(&m->map, chunk, slot);
	m->ref[i] = slot;
	m->pos[i] = m->entries;
	m->present[m->entries++] = i;
	if (m->entries > m->high_water)
		m->high_water = m->entries;
	return true;
}

static void model_remove(struct model *m, u32 i)
{
	u32 slot = fleece_emap_remove(&m->map, m->chunk_of(i));

	CHECK(slot == m->ref[i], "remove chunk %#x: slot %u, expected %u",
	      m->chunk_of(i), slot, m->ref[i]);
	if (m->ref[i] == FLEECE_NO_SLOT)
		return;
	free_slot(m, m->ref[i]);
	m->ref[i] = FLEECE_NO_SLOT;
	m->present[m->pos[i]] = m->present[--m->entries];
	m->pos[m->present[m->pos[i]]] = m->pos[i];
}

static void model_lookup(struct model *m, u32 i)
{
	u32 slot = fleece_emap_lookup(&m->map, m->chunk_of(i));

	CHECK(slot == m->ref[i], "lookup chunk %#x: slot %u, expected %u",
	      m->chunk_of(i), slot, m->ref[i]);
}

static u32 absent_index(struct model *m)
{
	u32 i;

	do
		i = rnd_below(m->domain);
	while (m->ref[i] != FLEECE_NO_SLOT);
	return i;
}

/* Every index of the domain looked up, and the entry count. */
static void model_verify(struct model *m)
{
	u32 i;

	for (i = 0; i < m->domain; i++)
		model_lookup(m, i);
	CHECK(m->map.nr_entries == m->entries, "nr_entries %u, model %u",
	      m->map.nr_entries, m->entries);
}

/* ---- looking inside the map --------------------------------------------- */

static u32 peek(u32 *const *dir, u32 index)
{
	return dir[index / PER_PAGE][index % PER_PAGE];
}

struct chains {
	u64 entries, nonempty, probes;
	u32 longest;
};

/*
 * Walks every chain: counts entries (all there, none twice), the average
 * length of the non-empty chains and the probes of a successful lookup.
 * Also checks the reverse direction against the model.
 */
static struct chains walk_chains(struct model *m)
{
	struct fleece_exception_map *map = &m->map;
	struct chains c = { 0 };
	u32 b, slot, len;

	for (b = 0; b < map->nr_buckets; b++) {
		len = 0;
		for (slot = peek(map->buckets, b); slot != FLEECE_NO_SLOT;
		     slot = peek(map->next_of_slot, slot)) {
			if (slot >= map->nr_slots || ++len > map->nr_entries) {
				CHECK(0, "bucket %u: chain broken at slot %u", b, slot);
				break;
			}
			c.probes += len;
		}
		c.entries += len;
		c.nonempty += len != 0;
		if (len > c.longest)
			c.longest = len;
	}
	CHECK(c.entries == map->nr_entries, "chains hold %" PRIu64 " entries, nr_entries %u",
	      c.entries, map->nr_entries);
	return c;
}

static void check_reverse(struct model *m)
{
	u32 k, i;

	for (k = 0; k < m->entries; k++) {
		i = m->present[k];
		CHECK(peek(m->map.chunk_of_slot, m->ref[i]) == m->chunk_of(i),
		      "chunk_of_slot[%u] = %#x, expected %#x", m->ref[i],
		      peek(m->map.chunk_of_slot, m->ref[i]), m->chunk_of(i));
	}
}

static double avg_chain(struct chains c)
{
	return c.nonempty ? (double)c.entries / c.nonempty : 0;
}

static double avg_probes(struct chains c)
{
	return c.entries ? (double)c.probes / c.entries : 0;
}

/* ---- failures of the page allocator ------------------------------------- */

static bool fail_nowait(gfp_t gfp)
{
	return !(gfp & __GFP_DIRECT_RECLAIM);
}

static bool fail_half(gfp_t gfp)
{
	(void)gfp;
	return rnd() & 1;
}

/* ---- the tests ------------------------------------------------------------ */

static void test_edges(void)
{
	static const u32 sizes[] = { 0, 1, PER_PAGE - 1, PER_PAGE, PER_PAGE + 1,
				     0xfffffffeU };
	struct fleece_exception_map map;
	unsigned int k;
	u32 n, last;

	for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		n = sizes[k];
		CHECK(!fleece_emap_init(&map, n), "init %u slots", n);
		CHECK(!fleece_emap_ready(&map, n), "slot %u ready of %u", n, n);
		CHECK(fleece_emap_lookup(&map, 7) == FLEECE_NO_SLOT, "lookup in empty");
		CHECK(fleece_emap_remove(&map, 7) == FLEECE_NO_SLOT, "remove in empty");
		if (n) {
			last = n - 1;
			CHECK(!fleece_emap_ready(&map, last), "ready before prepare");
			CHECK(!fleece_emap_prepare(&map, last), "prepare %u", last);
			CHECK(fleece_emap_ready(&map, last), "ready after prepare");
			fleece_emap_insert(&map, U32_MAX, last);
			CHECK(fleece_emap_lookup(&map, U32_MAX) == last, "lookup U32_MAX");
		}
		if (n > 1) {
			CHECK(!fleece_emap_prepare(&map, 0), "prepare 0");
			fleece_emap_insert(&map, 0, 0);
			CHECK(fleece_emap_lookup(&map, 0) == 0, "lookup 0");
			CHECK(fleece_emap_lookup(&map, U32_MAX) == last, "lookup U32_MAX");
			CHECK(fleece_emap_remove(&map, 0) == 0, "remove 0");
			CHECK(fleece_emap_lookup(&map, 0) == FLEECE_NO_SLOT, "0 gone");
		}
		if (n) {
			CHECK(fleece_emap_remove(&map, U32_MAX) == last, "remove U32_MAX");
			CHECK(fleece_emap_lookup(&map, U32_MAX) == FLEECE_NO_SLOT, "gone");
			CHECK(map.nr_entries == 0, "%u entries left", map.nr_entries);
		}
		fleece_emap_destroy(&map);
		fleece_emap_destroy(&map);
		CHECK(!shim_pages && !shim_vmem, "%u slots: %ld pages and %ld blocks left",
		      n, shim_pages, shim_vmem);
	}
	result("init, insert, lookup, remove and destroy at 0, 1, 1023-1025 and 2^32-2 slots");

	shim_warnings = 0;
	CHECK(!fleece_emap_init(&map, 100), "init");
	CHECK(fleece_emap_prepare(&map, 100) == -EINVAL, "prepare beyond the end");
	CHECK(shim_warnings == 1, "%ld warnings", shim_warnings);
	CHECK(!fleece_emap_ready(&map, 100) && !fleece_emap_ready(&map, FLEECE_NO_SLOT),
	      "ready beyond the end");
	fleece_emap_destroy(&map);
	shim_warnings = 0;
	result("a slot beyond the map: prepare warns and returns -EINVAL, not ready");

	shim_fail_kvcalloc = true;
	CHECK(fleece_emap_init(&map, 5000) == -ENOMEM, "init without vmalloc");
	shim_fail_kvcalloc = false;
	CHECK(!shim_pages && !shim_vmem, "%ld pages and %ld blocks left",
	      shim_pages, shim_vmem);
	fleece_emap_destroy(&map);
	shim_fail_page = fail_half;
	for (k = 0; k < 20; k++) {
		if (!fleece_emap_init(&map, 5000))
			fleece_emap_destroy(&map);
		CHECK(!shim_pages && !shim_vmem, "%ld pages and %ld blocks left",
		      shim_pages, shim_vmem);
	}
	shim_fail_page = NULL;
	memset(&map, 0, sizeof(map));
	fleece_emap_destroy(&map);
	result("init fails with -ENOMEM and leaks nothing; destroy of a zeroed map");
}

/* Inserts, removes and looks up at random; checks growth as it goes. */
static void test_random(void)
{
	const u32 nr_slots = 3u << 19, domain = 2u << 20, target = 1u << 20;
	struct model m;
	double worst_chain = 0, worst_probes = 0;
	bool grew = true;
	struct chains c;
	u64 op;
	u32 i, r, next_walk = 1 << 16;
	bool growing;
	long pages;

	CHECK(!model_init(&m, nr_slots, domain, chunk_random), "init");

	/* Grow to 1M entries with some removes, then churn around there. */
	for (op = 0; op < 3000000 && !test_failed; op++) {
		r = rnd_below(100);
		growing = op < 2000000 && m.entries < target;
		if (growing ? r < 70 : r < 45) {
			if (!model_insert(&m, absent_index(&m)))
				CHECK(0, "insert failed at %u entries", m.entries);
		} else if (growing ? r < 85 : r < 90) {
			if (m.entries)
				model_remove(&m, m.present[rnd_below(m.entries)]);
			else
				model_remove(&m, absent_index(&m));
		} else if (r < 95) {
			model_lookup(&m, rnd_below(domain));
		} else {
			/* An absent chunk: lookup and remove find nothing. */
			i = absent_index(&m);
			model_lookup(&m, i);
			model_remove(&m, i);
		}
		if (m.high_water >= next_walk) {
			next_walk += 1 << 18;
			c = walk_chains(&m);
			if (avg_chain(c) > worst_chain)
				worst_chain = avg_chain(c);
			if (avg_probes(c) > worst_probes)
				worst_probes = avg_probes(c);
			/* One split per insert past one entry per bucket. */
			grew = m.map.nr_buckets == max(m.high_water, PER_PAGE);
			if (!grew)
				break;
		}
	}
	CHECK(!m.prepare_errors && !m.not_ready, "%ld prepare errors, %ld not ready",
	      m.prepare_errors, m.not_ready);
	printf("# %" PRIu64 " operations, %u entries (at most %u), %u buckets\n",
	       op, m.entries, m.high_water, m.map.nr_buckets);
	result("random inserts, removes and lookups against the model (3M operations)");

	model_verify(&m);
	check_reverse(&m);
	c = walk_chains(&m);
	result("every chunk found at its slot, slot -> chunk right, chains whole");

	printf("# average chain %.2f (worst %.2f), lookup probes %.2f (worst %.2f), longest %u\n",
	       avg_chain(c), worst_chain, avg_probes(c), worst_probes, c.longest);
	CHECK(grew, "nr_buckets %u did not follow the entries (at most %u)",
	      m.map.nr_buckets, m.high_water);
	CHECK(worst_chain < 2 && worst_probes < 2, "chains too long");
	result("the map grows with the entries: average chain below 2");

	/* Slot pages in use, the bucket pages, not the reserve. */
	pages = shim_pages - m.map.page_pool.curr_nr;
	printf("# %ld pages for at most %u entries: %.2f bytes per entry\n",
	       pages, m.high_water, (double)pages * PAGE_SIZE / m.high_water);
	CHECK((double)pages * PAGE_SIZE / m.high_water <= 16, "too much memory");
	result("memory: at most 16 bytes per entry");

	while (m.entries)
		model_remove(&m, m.present[rnd_below(m.entries)]);
	for (i = 0; i < 100000; i++)
		model_insert(&m, absent_index(&m));
	model_verify(&m);
	c = walk_chains(&m);
	CHECK(c.longest < 16, "longest chain %u", c.longest);
	result("emptied and filled again");

	model_exit(&m);
	CHECK(!shim_pages && !shim_vmem, "%ld pages and %ld blocks left",
	      shim_pages, shim_vmem);
	result("destroy frees every page");
}

/* Chunk numbers with a pattern spread over the buckets all the same. */
static void test_patterns(void)
{
	static const struct {
		u32 (*chunk_of)(u32 i);
		u32 nr;
		const char *name;
	} p[] = {
		{ chunk_sequential, 1u << 19, "sequential" },
		{ chunk_stride_1024, 1u << 19, "1024 apart" },
		{ chunk_stride_65536, 1u << 16, "65536 apart" },
		{ chunk_random_fixed, 1u << 19, "random" },
	};
	struct model m;
	struct chains c;
	unsigned int k;
	u32 i;

	for (k = 0; k < sizeof(p) / sizeof(p[0]); k++) {
		CHECK(!model_init(&m, p[k].nr, p[k].nr, p[k].chunk_of), "init");
		for (i = 0; i < p[k].nr; i++)
			model_insert(&m, i);
		model_verify(&m);
		c = walk_chains(&m);
		printf("# %s: %u entries, average chain %.2f, probes %.2f, longest %u\n",
		       p[k].name, m.entries, avg_chain(c), avg_probes(c), c.longest);
		CHECK(avg_chain(c) < 2 && c.longest < 16, "%s: chains too long", p[k].name);
		model_exit(&m);
	}
	result("sequential and power-of-two strided chunks hash evenly");
}

/* Bucket pages cannot be had, then can again. */
static void test_no_bucket_pages(void)
{
	struct model m;
	struct chains c;
	u32 k;

	CHECK(!model_init(&m, 1u << 18, 1u << 19, chunk_random), "init");
	shim_fail_page = fail_nowait;
	for (k = 0; k < 160000; k++) {
		if (rnd_below(4) || !m.entries)
			model_insert(&m, absent_index(&m));
		else
			model_remove(&m, m.present[rnd_below(m.entries)]);
		if (!(k & 1023))
			model_lookup(&m, rnd_below(m.domain));
	}
	model_verify(&m);
	c = walk_chains(&m);
	printf("# %u entries in %u buckets, average chain %.2f, pool %d/%d\n",
	       m.entries, m.map.nr_buckets, avg_chain(c),
	       m.map.page_pool.curr_nr, m.map.page_pool.min_nr);
	CHECK(m.map.nr_buckets == PER_PAGE, "%u buckets without bucket pages",
	      m.map.nr_buckets);
	CHECK(!m.prepare_errors && !m.not_ready, "%ld prepare errors, %ld not ready",
	      m.prepare_errors, m.not_ready);
	CHECK(m.map.page_pool.curr_nr == 0, "the reserve was not used");
	result("no bucket page to be had: no split, inserts work, map correct");

	shim_fail_page = NULL;
	for (k = 0; k < 100000; k++)
		model_insert(&m, absent_index(&m));
	model_verify(&m);
	c = walk_chains(&m);
	printf("# then %u entries in %u buckets, average chain %.2f, pool %d/%d\n",
	       m.entries, m.map.nr_buckets, avg_chain(c),
	       m.map.page_pool.curr_nr, m.map.page_pool.min_nr);
	CHECK(m.map.nr_buckets > PER_PAGE + 80000, "splits did not resume");
	CHECK(m.map.page_pool.curr_nr == m.map.page_pool.min_nr, "reserve not refilled");
	result("bucket pages again: splits resume, reserve refilled, map correct");
	model_exit(&m);
}

/* Every other page allocation fails, reclaim or not. */
static void test_flaky_pages(void)
{
	struct model m;
	u32 k;

	CHECK(!model_init(&m, 1u << 20, 2u << 20, chunk_random), "init");
	shim_mempool_waits = 0;
	shim_fail_page = fail_half;
	for (k = 0; k < 600000; k++) {
		if (rnd_below(3) || !m.entries)
			model_insert(&m, absent_index(&m));
		else
			model_remove(&m, m.present[rnd_below(m.entries)]);
	}
	shim_fail_page = NULL;
	model_verify(&m);
	check_reverse(&m);
	walk_chains(&m);
	printf("# %u entries, %u buckets; mempool_alloc() would have waited %ld times\n",
	       m.entries, m.map.nr_buckets, shim_mempool_waits);
	CHECK(!m.prepare_errors && !m.not_ready, "%ld prepare errors, %ld not ready",
	      m.prepare_errors, m.not_ready);
	CHECK(shim_mempool_waits > 0, "the retry path was not taken");
	result("half the page allocations fail: prepare never does, map correct");
	model_exit(&m);
	CHECK(!shim_pages && !shim_vmem, "%ld pages and %ld blocks left",
	      shim_pages, shim_vmem);
	result("no leak after failed allocations");
}

int main(void)
{
	const char *seed = getenv("EMAP_SEED");

	rng_state = seed ? strtoull(seed, NULL, 0) : 0x5eed1e55f1eeceULL;
	if (!rng_state)
		rng_state = 1;
	chunk_salt = (u32)rnd();
	printf("TAP version 13\n1..14\n# seed %#" PRIx64 ", PAGE_SIZE %lu\n",
	       rng_state, (unsigned long)PAGE_SIZE);
	test_edges();
	test_random();
	test_patterns();
	test_no_bucket_pages();
	test_flaky_pages();
	return any_failed;
}
