/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The one place where dm-fleece deals with kernel API drift between the
 * kernels it supports (Debian's 6.1 and 6.12).  The HAVE_* macros come from
 * probe-features.sh, run by Kbuild against the headers being built with.
 */
#ifndef DM_FLEECE_COMPAT_H
#define DM_FLEECE_COMPAT_H

#include <linux/blkdev.h>
#include "fleece-features.h"

/* 6.5 replaced fmode_t by blk_mode_t for opening block devices. */
#ifdef HAVE_BLK_OPEN_MODE
#define FLEECE_OPEN_READ	BLK_OPEN_READ
#define FLEECE_OPEN_RW		(BLK_OPEN_READ | BLK_OPEN_WRITE)
#else
#define FLEECE_OPEN_READ	FMODE_READ
#define FLEECE_OPEN_RW		(FMODE_READ | FMODE_WRITE)
#endif

/*
 * Since 6.9 a stacking driver states what it can do in max_hw_discard_sectors
 * and the block layer derives max_discard_sectors from it.
 */
static inline void fleece_set_max_discard_sectors(struct queue_limits *limits,
						  unsigned int sectors)
{
#ifdef HAVE_QUEUE_LIMITS_ATOMIC_UPDATE
	limits->max_hw_discard_sectors = sectors;
#else
	limits->max_discard_sectors = sectors;
#endif
}

#endif /* DM_FLEECE_COMPAT_H */
