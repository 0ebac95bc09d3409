/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * fleece_test.h - a small TAP test harness for dm-fleece's C selftests,
 * in the spirit of the kernel's kselftest_harness.h (but not a copy).
 *
 *	#include "fleece_test.h"
 *
 *	TEST(arithmetic)
 *	{
 *		ASSERT_EQ(4, 2 + 2);
 *	}
 *
 *	FIXTURE(dev) {			// per-test state, reached as self->
 *		int fd;
 *	};
 *	FIXTURE_VARIANT(dev) {		// optional: one run per variant
 *		unsigned int chunk_kb;
 *	};
 *	FIXTURE_VARIANT_ADD(dev, c4k) { .chunk_kb = 4 };
 *	FIXTURE_VARIANT_ADD(dev, c64k) { .chunk_kb = 64 };
 *	FIXTURE_SETUP(dev)		// both SETUP and TEARDOWN are required
 *	{
 *		self->fd = open("/dev/null", O_RDWR);
 *		ASSERT_LE(0, self->fd);
 *	}
 *	FIXTURE_TEARDOWN(dev)
 *	{
 *		close(self->fd);
 *	}
 *	TEST_F(dev, write)		// reported as "dev.c4k.write", ...
 *	{
 *		if (variant->chunk_kb > 64)
 *			SKIP(return, "chunk too big");
 *		EXPECT_EQ(1, write(self->fd, "x", 1));
 *	}
 *
 *	TEST_HARNESS_MAIN
 *
 * Every test runs in its own forked child, so a crash ends only that test.
 * The program prints TAP 13 and exits 0 (all passed), 1 (any failed) or
 * 4 (all skipped), the kselftest convention.  Arguments: -t SUBSTRING runs
 * only the matching tests, -l lists them.  FLEECE_TEST_CASE_TIMEOUT=SECONDS
 * (environment) kills any single test that runs longer.
 *
 * ASSERT_*() ends the test at once on failure (the fixture's teardown still
 * runs when the setup had completed); EXPECT_*() records the failure and
 * goes on.  Both compare with the operator named (EQ ==, NE !=, LT <, LE <=,
 * GT >, GE >=), expected value first; TRUE/FALSE test a condition,
 * STREQ/STRNE compare strings, and SYS(expr) expects a system call's
 * result >= 0 and prints errno otherwise.  TH_LOG(fmt, ...) prints a
 * diagnostic line.  They only work inside a TEST, TEST_F or FIXTURE_* body
 * (they use its hidden _meta argument).
 */
#ifndef FLEECE_TEST_H
#define FLEECE_TEST_H

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct __ft_meta {
	jmp_buf env;
	int failed;
	int skipped;
	char skip_reason[256];
};

struct __ft_fixture;

struct __ft_variant {
	const char *name;
	const void *data;
	struct __ft_variant *next;
};

struct __ft_test {
	const char *name;
	struct __ft_fixture *fixture;		/* NULL for TEST() */
	void (*fn)(struct __ft_meta *m);	/* TEST() */
	void (*fn_f)(struct __ft_meta *m, const void *variant);	/* TEST_F() */
	struct __ft_test *next;
};

struct __ft_fixture {
	const char *name;
	struct __ft_variant *variants;
};

static struct __ft_test *__ft_tests;

static inline void __ft_add_test(struct __ft_test *t)
{
	struct __ft_test **p = &__ft_tests;

	while (*p)
		p = &(*p)->next;
	*p = t;
}

static inline void __ft_add_variant(struct __ft_fixture *f,
				    struct __ft_variant *v)
{
	struct __ft_variant **p = &f->variants;

	while (*p)
		p = &(*p)->next;
	*p = v;
}

#define TEST(test_name)							\
	static void __ft_fn_##test_name(struct __ft_meta *_meta);		\
	static struct __ft_test __ft_test_##test_name = {			\
		.name = #test_name, .fn = __ft_fn_##test_name,			\
	};								\
	__attribute__((constructor)) static void __ft_reg_##test_name(void)	\
	{								\
		__ft_add_test(&__ft_test_##test_name);			\
	}								\
	static void __ft_fn_##test_name(struct __ft_meta *_meta __attribute__((unused)))

#define FIXTURE_DATA(f)		struct __ft_data_##f
#define FIXTURE_VARIANT(f)	struct __ft_variant_##f

#define FIXTURE(f)							\
	FIXTURE_VARIANT(f);						\
	FIXTURE_DATA(f);						\
	static struct __ft_fixture __ft_fixture_##f = { .name = #f };	\
	static void __ft_setup_##f(struct __ft_meta *_meta,		\
				   FIXTURE_DATA(f) *self,		\
				   const FIXTURE_VARIANT(f) *variant);	\
	static void __ft_teardown_##f(struct __ft_meta *_meta,		\
				      FIXTURE_DATA(f) *self,		\
				      const FIXTURE_VARIANT(f) *variant); \
	FIXTURE_DATA(f)

#define FIXTURE_SETUP(f)						\
	static void __ft_setup_##f(					\
		struct __ft_meta *_meta __attribute__((unused)),	\
		FIXTURE_DATA(f) *self __attribute__((unused)),		\
		const FIXTURE_VARIANT(f) *variant __attribute__((unused)))

#define FIXTURE_TEARDOWN(f)						\
	static void __ft_teardown_##f(					\
		struct __ft_meta *_meta __attribute__((unused)),	\
		FIXTURE_DATA(f) *self __attribute__((unused)),		\
		const FIXTURE_VARIANT(f) *variant __attribute__((unused)))

#define FIXTURE_VARIANT_ADD(f, v)					\
	static FIXTURE_VARIANT(f) __ft_var_##f##_##v;			\
	static struct __ft_variant __ft_varmeta_##f##_##v = {		\
		.name = #v, .data = &__ft_var_##f##_##v,		\
	};								\
	__attribute__((constructor)) static void __ft_varreg_##f##_##v(void) \
	{								\
		__ft_add_variant(&__ft_fixture_##f, &__ft_varmeta_##f##_##v); \
	}								\
	static FIXTURE_VARIANT(f) __ft_var_##f##_##v =

#define TEST_F(f, test_name)							\
	static void __ft_body_##f##_##test_name(struct __ft_meta *_meta,	\
		FIXTURE_DATA(f) *self, const FIXTURE_VARIANT(f) *variant); \
	static void __ft_wrap_##f##_##test_name(struct __ft_meta *_meta,	\
					   const void *v)		\
	{								\
		static FIXTURE_DATA(f) self;	/* one test per child */ \
		static volatile int setup_done;				\
		if (setjmp(_meta->env) == 0) {				\
			__ft_setup_##f(_meta, &self, v);		\
			setup_done = 1;					\
			__ft_body_##f##_##test_name(_meta, &self, v);	\
		}							\
		if (setup_done && setjmp(_meta->env) == 0) {		\
			setup_done = 0;					\
			__ft_teardown_##f(_meta, &self, v);		\
		}							\
	}								\
	static struct __ft_test __ft_test_##f##_##test_name = {		\
		.name = #test_name, .fixture = &__ft_fixture_##f,		\
		.fn_f = __ft_wrap_##f##_##test_name,				\
	};								\
	__attribute__((constructor)) static void __ft_reg_##f##_##test_name(void) \
	{								\
		__ft_add_test(&__ft_test_##f##_##test_name);			\
	}								\
	static void __ft_body_##f##_##test_name(				\
		struct __ft_meta *_meta __attribute__((unused)),	\
		FIXTURE_DATA(f) *self __attribute__((unused)),		\
		const FIXTURE_VARIANT(f) *variant __attribute__((unused)))

/* ---- reporting --------------------------------------------------------- */

__attribute__((format(printf, 3, 4)))
static inline void __ft_log(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	printf("# %s:%d: ", file, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

#define TH_LOG(fmt, ...) __ft_log(__FILE__, __LINE__, fmt, ##__VA_ARGS__)

static inline void __ft_failed(struct __ft_meta *m, int is_assert)
{
	m->failed = 1;
	if (is_assert)
		longjmp(m->env, 1);
}

#define SKIP(statement, fmt, ...) do {					\
		_meta->skipped = 1;					\
		snprintf(_meta->skip_reason, sizeof(_meta->skip_reason), \
			 fmt, ##__VA_ARGS__);				\
		statement;						\
	} while (0)

#define __FT_CMP(is_assert, exp, op, seen) do {				\
		__typeof__(exp) __e = (exp);				\
		__typeof__(seen) __s = (seen);				\
		_Pragma("GCC diagnostic push")				\
		_Pragma("GCC diagnostic ignored \"-Wsign-compare\"")	\
		int __ok = (__e op __s);				\
		_Pragma("GCC diagnostic pop")				\
		if (!__ok) {						\
			__ft_log(__FILE__, __LINE__,			\
				 "expected %s (%lld) %s %s (%lld)",	\
				 #exp, (long long)(intptr_t)__e, #op,	\
				 #seen, (long long)(intptr_t)__s);	\
			__ft_failed(_meta, is_assert);			\
		}							\
	} while (0)

#define __FT_BOOL(is_assert, cond, want) do {				\
		if (!(cond) != !(want)) {				\
			__ft_log(__FILE__, __LINE__, "expected %s to be %s", \
				 #cond, (want) ? "true" : "false");	\
			__ft_failed(_meta, is_assert);			\
		}							\
	} while (0)

#define __FT_STR(is_assert, exp, seen, want_equal) do {			\
		const char *__e = (exp), *__s = (seen);			\
		if ((strcmp(__e, __s) == 0) != (want_equal)) {		\
			__ft_log(__FILE__, __LINE__,			\
				 "expected %s %s %s: \"%s\" vs \"%s\"", \
				 #exp, (want_equal) ? "==" : "!=", #seen, \
				 __e, __s);				\
			__ft_failed(_meta, is_assert);			\
		}							\
	} while (0)

#define __FT_SYS(is_assert, expr) do {					\
		long __r = (long)(expr);				\
		if (__r < 0) {						\
			__ft_log(__FILE__, __LINE__, "%s failed: %s",	\
				 #expr, strerror(errno));		\
			__ft_failed(_meta, is_assert);			\
		}							\
	} while (0)

#define ASSERT_EQ(e, s)		__FT_CMP(1, e, ==, s)
#define ASSERT_NE(e, s)		__FT_CMP(1, e, !=, s)
#define ASSERT_LT(e, s)		__FT_CMP(1, e, <, s)
#define ASSERT_LE(e, s)		__FT_CMP(1, e, <=, s)
#define ASSERT_GT(e, s)		__FT_CMP(1, e, >, s)
#define ASSERT_GE(e, s)		__FT_CMP(1, e, >=, s)
#define ASSERT_TRUE(c)		__FT_BOOL(1, c, 1)
#define ASSERT_FALSE(c)		__FT_BOOL(1, c, 0)
#define ASSERT_STREQ(e, s)	__FT_STR(1, e, s, 1)
#define ASSERT_STRNE(e, s)	__FT_STR(1, e, s, 0)
#define ASSERT_SYS(expr)	__FT_SYS(1, expr)
#define EXPECT_EQ(e, s)		__FT_CMP(0, e, ==, s)
#define EXPECT_NE(e, s)		__FT_CMP(0, e, !=, s)
#define EXPECT_LT(e, s)		__FT_CMP(0, e, <, s)
#define EXPECT_LE(e, s)		__FT_CMP(0, e, <=, s)
#define EXPECT_GT(e, s)		__FT_CMP(0, e, >, s)
#define EXPECT_GE(e, s)		__FT_CMP(0, e, >=, s)
#define EXPECT_TRUE(c)		__FT_BOOL(0, c, 1)
#define EXPECT_FALSE(c)		__FT_BOOL(0, c, 0)
#define EXPECT_STREQ(e, s)	__FT_STR(0, e, s, 1)
#define EXPECT_STRNE(e, s)	__FT_STR(0, e, s, 0)
#define EXPECT_SYS(expr)	__FT_SYS(0, expr)

/* ---- running ----------------------------------------------------------- */

/* Run one test (one variant) in a child; print its TAP line.  Returns
 * 0 pass, 1 fail, 4 skip. */
static inline int __ft_run(struct __ft_test *t, struct __ft_variant *v,
			   int num, const char *full_name)
{
	struct __ft_meta *m;
	unsigned int timeout = 0;
	const char *s = getenv("FLEECE_TEST_CASE_TIMEOUT");
	int status, result;
	pid_t pid;

	if (s)
		timeout = (unsigned int)strtoul(s, NULL, 0);
	/* Shared with the child, so a SKIP reason comes back. */
	m = mmap(NULL, sizeof(*m), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		printf("# mmap: %s\nnot ok %d - %s\n", strerror(errno), num,
		       full_name);
		return 1;
	}
	memset(m, 0, sizeof(*m));
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		printf("# fork: %s\nnot ok %d - %s\n", strerror(errno), num,
		       full_name);
		munmap(m, sizeof(*m));
		return 1;
	}
	if (pid == 0) {
		if (timeout)
			alarm(timeout);
		if (t->fixture) {
			t->fn_f(m, v ? v->data : NULL);
		} else if (setjmp(m->env) == 0) {
			t->fn(m);
		}
		fflush(stdout);
		_exit(m->failed ? 1 : m->skipped ? 4 : 0);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFSIGNALED(status)) {
		if (WTERMSIG(status) == SIGALRM && timeout)
			printf("# %s: timed out after %us\n", full_name, timeout);
		else
			printf("# %s: killed by signal %d (%s)\n", full_name,
			       WTERMSIG(status), strsignal(WTERMSIG(status)));
		result = 1;
	} else {
		result = WEXITSTATUS(status);
		if (result != 0 && result != 4)
			result = 1;
	}
	if (result == 4)
		printf("ok %d - %s # SKIP %s\n", num, full_name, m->skip_reason);
	else
		printf("%s %d - %s\n", result ? "not ok" : "ok", num, full_name);
	fflush(stdout);
	munmap(m, sizeof(*m));
	return result;
}

/* Calls fn(test, variant, name) for every test and variant, in order. */
static inline int __ft_each(int (*fn)(struct __ft_test *, struct __ft_variant *,
				      const char *, void *), void *arg)
{
	struct __ft_test *t;
	struct __ft_variant *v;
	char name[512];
	int r = 0;

	for (t = __ft_tests; t; t = t->next) {
		v = t->fixture ? t->fixture->variants : NULL;
		do {
			if (!t->fixture)
				snprintf(name, sizeof(name), "%s", t->name);
			else if (v)
				snprintf(name, sizeof(name), "%s.%s.%s",
					 t->fixture->name, v->name, t->name);
			else
				snprintf(name, sizeof(name), "%s.%s",
					 t->fixture->name, t->name);
			r |= fn(t, v, name, arg);
			v = v ? v->next : NULL;
		} while (v);
	}
	return r;
}

struct __ft_state {
	const char *filter;
	int list, count, num, pass, fail, skip;
};

static inline int __ft_visit(struct __ft_test *t, struct __ft_variant *v,
			     const char *name, void *arg)
{
	struct __ft_state *st = arg;
	int r;

	if (st->filter && !strstr(name, st->filter))
		return 0;
	if (st->list) {
		printf("%s\n", name);
		return 0;
	}
	if (!t) {		/* counting pass */
		st->count++;
		return 0;
	}
	r = __ft_run(t, v, ++st->num, name);
	if (r == 0)
		st->pass++;
	else if (r == 4)
		st->skip++;
	else
		st->fail++;
	return 0;
}

static inline int __ft_count(struct __ft_test *t, struct __ft_variant *v,
			     const char *name, void *arg)
{
	(void)t;
	return __ft_visit(NULL, v, name, arg);
}

static inline int __ft_main(int argc, char **argv)
{
	struct __ft_state st = { 0 };
	int opt;

	while ((opt = getopt(argc, argv, "t:l")) != -1) {
		switch (opt) {
		case 't':
			st.filter = optarg;
			break;
		case 'l':
			st.list = 1;
			break;
		default:
			fprintf(stderr, "usage: %s [-l] [-t SUBSTRING]\n", argv[0]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (st.list)
		return __ft_each(__ft_visit, &st);
	__ft_each(__ft_count, &st);
	printf("TAP version 13\n1..%d\n", st.count);
	__ft_each(__ft_visit, &st);
	printf("# %d passed, %d failed, %d skipped\n", st.pass, st.fail, st.skip);
	if (st.fail)
		return 1;
	return st.pass == 0 && st.skip > 0 ? 4 : 0;
}

#define TEST_HARNESS_MAIN						\
	int main(int argc, char **argv)					\
	{								\
		return __ft_main(argc, argv);				\
	}

#endif /* FLEECE_TEST_H */
