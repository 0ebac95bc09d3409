// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-fleece: image fleecing for device-mapper.  Registers the "fleece"
 * origin target and the "fleece-view" point-in-time target.
 */
#include <linux/module.h>

#include "fleece-core.h"

static int __init dm_fleece_init(void)
{
	int r = dm_register_target(&fleece_origin_target);

	if (r) {
		DMERR("cannot register the fleece target: %d", r);
		return r;
	}
	r = dm_register_target(&fleece_view_target);
	if (r) {
		DMERR("cannot register the fleece-view target: %d", r);
		dm_unregister_target(&fleece_origin_target);
	}
	return r;
}

static void __exit dm_fleece_exit(void)
{
	dm_unregister_target(&fleece_view_target);
	dm_unregister_target(&fleece_origin_target);
}

module_init(dm_fleece_init);
module_exit(dm_fleece_exit);

MODULE_DESCRIPTION(DM_NAME " image fleecing: copy-before-write point-in-time views");
MODULE_AUTHOR("dm-fleece developers");
MODULE_LICENSE("GPL");
