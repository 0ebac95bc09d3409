// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-fleece: module entry points.  Registers the "fleece" origin target and
 * the "fleece-view" snapshot target.  (Skeleton: the targets follow.)
 */
#include <linux/module.h>
#include <linux/device-mapper.h>

#define DM_MSG_PREFIX "fleece"

static int stub_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	ti->error = "This target is not implemented yet.";
	return -EINVAL;
}

static void stub_dtr(struct dm_target *ti)
{
}

static int stub_map(struct dm_target *ti, struct bio *bio)
{
	return DM_MAPIO_KILL;
}

static struct target_type origin_target = {
	.name = "fleece", .version = {0, 1, 0}, .module = THIS_MODULE,
	.ctr = stub_ctr, .dtr = stub_dtr, .map = stub_map,
};

static struct target_type view_target = {
	.name = "fleece-view", .version = {0, 1, 0}, .module = THIS_MODULE,
	.ctr = stub_ctr, .dtr = stub_dtr, .map = stub_map,
};

static int __init dm_fleece_init(void)
{
	int r = dm_register_target(&origin_target);

	if (r)
		return r;
	r = dm_register_target(&view_target);
	if (r)
		dm_unregister_target(&origin_target);
	return r;
}

static void __exit dm_fleece_exit(void)
{
	dm_unregister_target(&view_target);
	dm_unregister_target(&origin_target);
}

module_init(dm_fleece_init);
module_exit(dm_fleece_exit);
MODULE_DESCRIPTION(DM_NAME " image fleecing (copy-before-write snapshot) targets");
MODULE_LICENSE("GPL");
