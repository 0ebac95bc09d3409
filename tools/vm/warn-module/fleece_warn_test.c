// SPDX-License-Identifier: GPL-2.0-only
/*
 * Harness self-check only: a module whose init triggers one WARN_ON(1), to
 * prove that the guest runner fails a test that causes a kernel WARNING.
 */
#include <linux/module.h>
#include <linux/bug.h>

static int __init fleece_warn_test_init(void)
{
	WARN_ON(1);
	return 0;
}

static void __exit fleece_warn_test_exit(void)
{
}

module_init(fleece_warn_test_init);
module_exit(fleece_warn_test_exit);
MODULE_DESCRIPTION("dm-fleece harness self-check: WARN_ON(1) at load");
MODULE_LICENSE("GPL");
