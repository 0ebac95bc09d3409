// SPDX-License-Identifier: GPL-2.0-only
/*
 * Harness self-check for the C selftest harness, the kernel's
 * kselftest_harness.h (vendored in selftests/lib/): a mix of passing,
 * failing, skipped and crashing tests.  Expected TAP points: 6 passed
 * (global.plain, global.expect_ok, dev.{small,big}.setup_ran,
 * dev.small.skip_big, dev.small.fail_after_setup), 4 failed
 * (global.assert_fails, global.expect_fails, global.crashes,
 * dev.big.fail_after_setup), 1 skipped (dev.big.skip_big, which the
 * harness prints as "ok N # SKIP reason", without the test's name).
 * tools/check-harness.sh checks exactly these counts.
 */
#include <fcntl.h>
#include "kselftest_harness.h"

TEST(plain)
{
	ASSERT_EQ(4, 2 + 2);
	ASSERT_STREQ("abc", "abc");
	ASSERT_LE(0, open("/dev/null", O_RDONLY));
}

TEST(expect_ok)
{
	size_t n = 3;

	EXPECT_EQ(3, n);
	EXPECT_NE(NULL, &n);
	EXPECT_TRUE(n > 2);
}

TEST(assert_fails)
{
	ASSERT_EQ(1, 2);
	TH_LOG("not reached");
	_exit(0);	/* never reached: a pass here would break the count */
}

TEST(expect_fails)
{
	EXPECT_EQ(1, 2);
	EXPECT_STREQ("a", "b");
	TH_LOG("reached after failed EXPECTs");
}

TEST(crashes)
{
	volatile int *p = NULL;

	*p = 1;
}

FIXTURE(dev) {
	int fd;
};

FIXTURE_VARIANT(dev) {
	unsigned int size_kb;
};

FIXTURE_VARIANT_ADD(dev, small) { .size_kb = 4 };
FIXTURE_VARIANT_ADD(dev, big) { .size_kb = 4096 };

FIXTURE_SETUP(dev)
{
	self->fd = open("/dev/null", O_RDWR);
	ASSERT_LE(0, self->fd);
}

FIXTURE_TEARDOWN(dev)
{
	TH_LOG("teardown of %u KiB variant", variant->size_kb);
	close(self->fd);
}

TEST_F(dev, setup_ran)
{
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(1, write(self->fd, "x", 1));
}

TEST_F(dev, skip_big)
{
	if (variant->size_kb > 64)
		SKIP(return, "%u KiB is too big", variant->size_kb);
}

TEST_F(dev, fail_after_setup)
{
	if (variant->size_kb > 64)
		ASSERT_EQ(0, variant->size_kb);
}

TEST_HARNESS_MAIN
