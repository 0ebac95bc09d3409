// SPDX-License-Identifier: GPL-2.0-only
/*
 * The "fleece" origin target: sits on the live device's I/O path.  With no
 * snapshot it remaps every bio to the origin device and does nothing else
 * but hold a per-cpu reference for each write.  With a snapshot active it
 * holds back the first write to each chunk until the chunk's old data is
 * safe (see fleece-snapshot.c).
 */
#include <linux/module.h>

#include "fleece-core.h"

static int parse_chunk_size(struct dm_arg_set *as, sector_t *chunk_sectors,
			    char **error)
{
	unsigned int v;

	if (kstrtouint(dm_shift_arg(as), 10, &v) || !is_power_of_2(v) ||
	    v < DM_FLEECE_MIN_CHUNK_SECTORS || v > DM_FLEECE_MAX_CHUNK_SECTORS) {
		*error = "Invalid chunk size: it must be a power of two from 8 to 2048 sectors.";
		return -EINVAL;
	}
	*chunk_sectors = v;
	return 0;
}

static const char * const discard_policy_names[] = {
	[FLEECE_DISCARD_DEFER] = DM_FLEECE_DISCARD_DEFER,
	[FLEECE_DISCARD_COPY] = DM_FLEECE_DISCARD_COPY,
	[FLEECE_DISCARD_IGNORE] = DM_FLEECE_DISCARD_IGNORE,
};

static int parse_discard_policy(const char *name,
				enum fleece_discard_policy *policy)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(discard_policy_names); i++) {
		if (name && !strcmp(name, discard_policy_names[i])) {
			*policy = i;
			return 0;
		}
	}
	return -EINVAL;
}

/*
 * Feature arguments:
 *   discard_policy <defer|copy|ignore>
 */
static int parse_features(struct dm_arg_set *as, struct fleece_origin *fo,
			  char **error)
{
	static const struct dm_arg group = {
		0, 2, "Invalid number of feature arguments: expected 0 or 2."
	};
	unsigned int argc;
	const char *name;
	int r;

	fo->discard_policy = FLEECE_DISCARD_DEFER;
	if (!as->argc)
		return 0;
	r = dm_read_arg_group(&group, as, &argc, error);
	if (r)
		return r;
	while (argc) {
		name = dm_shift_arg(as);
		argc--;
		if (strcasecmp(name, "discard_policy")) {
			*error = "Unknown feature argument: the one feature is discard_policy.";
			return -EINVAL;
		}
		if (!argc || parse_discard_policy(dm_shift_arg(as), &fo->discard_policy)) {
			*error = "Invalid discard_policy: it must be defer, copy or ignore.";
			return -EINVAL;
		}
		argc--;
	}
	return 0;
}

/*
 * Construct a fleece origin:
 *
 *   fleece <origin dev> <chunk size> [<#feature args> [<feature arg>]*]
 *
 * The one feature is "discard_policy defer|copy|ignore" (default defer):
 * see fleece-discard.c.
 * <chunk size> is in 512-byte sectors, a power of two from 8 to 2048.  The
 * target must start at sector 0 and be the only one of its device
 * (DM_TARGET_SINGLETON: dm refuses any other target in the table).
 */
static int fleece_origin_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct fleece_origin *fo;
	const char *path;
	int r;

	if (argc < 2) {
		ti->error = "Not enough arguments: expected <origin dev> <chunk size>.";
		return -EINVAL;
	}
	if (ti->begin) {
		ti->error = "The fleece target must start at sector 0 of its device.";
		return -EINVAL;
	}
	fo = kzalloc(sizeof(*fo), GFP_KERNEL);
	if (!fo) {
		ti->error = "Cannot allocate the fleece target.";
		return -ENOMEM;
	}

	path = dm_shift_arg(&as);
	r = parse_chunk_size(&as, &fo->chunk_sectors, &ti->error);
	if (r)
		goto bad;
	r = parse_features(&as, fo, &ti->error);
	if (r)
		goto bad;
	if (as.argc) {
		ti->error = "Too many arguments.";
		r = -EINVAL;
		goto bad;
	}
	if (DIV_ROUND_UP_SECTOR_T(ti->len, fo->chunk_sectors) > FLEECE_NO_SLOT - 1) {
		ti->error = "The origin has too many chunks for this chunk size; use a larger one.";
		r = -EINVAL;
		goto bad;
	}

	r = dm_get_device(ti, path, dm_table_get_mode(ti->table), &fo->dev);
	if (r) {
		ti->error = "Cannot open the origin device.";
		goto bad;
	}
	if (ti->len > bdev_nr_sectors(fo->dev->bdev)) {
		ti->error = "The origin device is smaller than the target.";
		r = -EINVAL;
		goto bad_dev;
	}
	if (bdev_is_zoned(fo->dev->bdev)) {
		/* Zone resets and appends change data that cannot be copied first. */
		ti->error = "Zoned origin devices are not supported.";
		r = -EINVAL;
		goto bad_dev;
	}
	fo->ti = ti;
	r = fleece_core_get(fo, &ti->error);
	if (r)
		goto bad_dev;

	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->num_secure_erase_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->per_io_data_size = sizeof(struct fleece_origin_io);
	ti->private = fo;
	return 0;

bad_dev:
	dm_put_device(ti, fo->dev);
bad:
	kfree(fo);
	return r;
}

static void fleece_origin_dtr(struct dm_target *ti)
{
	struct fleece_origin *fo = ti->private;

	fleece_core_put_origin(fo);
	dm_put_device(ti, fo->dev);
	kfree(fo);
}

/*
 * Reads pass; every op that changes data goes through copy-before-write.
 * Any other op is refused rather than let through: an op added to the
 * block layer later may change data too, and it would bypass the copy.
 */
static int fleece_origin_map(struct dm_target *ti, struct bio *bio)
{
	struct fleece_origin *fo = ti->private;
	struct fleece_origin_io *io = fleece_origin_io(bio);

	bio_set_dev(bio, fo->dev->bdev);
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		io->holds_ref = false;
		return DM_MAPIO_REMAPPED;
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_SECURE_ERASE:
	case REQ_OP_WRITE_ZEROES:
		return fleece_origin_map_write(fo->core, bio, io);
	default:
		DMERR_LIMIT("%s: refusing operation %u: it is not copied first",
			    fo->dev->name, bio_op(bio));
		io->holds_ref = false;
		return DM_MAPIO_KILL;
	}
}

static int fleece_origin_end_io(struct dm_target *ti, struct bio *bio,
				blk_status_t *error)
{
	struct fleece_origin *fo = ti->private;

	if (fleece_origin_io(bio)->holds_ref)
		percpu_ref_put(&fo->core->writes_ref);
	return DM_ENDIO_DONE;
}

/* The instance is live: every write to the device passes through it. */
static int fleece_origin_preresume(struct dm_target *ti)
{
	fleece_core_adopt(ti->private);
	return 0;
}

/* Another table may be swapped in now: see fleece_core_suspend(). */
static void fleece_origin_postsuspend(struct dm_target *ti)
{
	fleece_core_suspend(ti->private);
}

/*
 * Status INFO: see fleece_emit_status().  TABLE reproduces the table line.
 */
static void fleece_origin_status(struct dm_target *ti, status_type_t type,
				 unsigned int status_flags, char *result,
				 unsigned int maxlen)
{
	struct fleece_origin *fo = ti->private;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		fleece_emit_status(fo->core, fo->chunk_sectors, type, result, maxlen);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %llu", fo->dev->name, (unsigned long long)fo->chunk_sectors);
		if (fo->discard_policy != FLEECE_DISCARD_DEFER)
			DMEMIT(" 2 discard_policy %s",
			       discard_policy_names[fo->discard_policy]);
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",origin_name=%s,discard_policy=%s", fo->dev->name,
		       discard_policy_names[fo->discard_policy]);
		if (sz < maxlen)
			fleece_emit_status(fo->core, fo->chunk_sectors, type,
					   result + sz, maxlen - sz);
		break;
	}
}

static int fleece_origin_iterate_devices(struct dm_target *ti,
					 iterate_devices_callout_fn fn, void *data)
{
	struct fleece_origin *fo = ti->private;

	return fn(ti, fo->dev, 0, ti->len, data);
}

struct target_type fleece_origin_target = {
	.name = DM_FLEECE_ORIGIN_TARGET,
	.version = {1, 2, 0},
	.features = DM_TARGET_SINGLETON,
	.module = THIS_MODULE,
	.ctr = fleece_origin_ctr,
	.dtr = fleece_origin_dtr,
	.map = fleece_origin_map,
	.end_io = fleece_origin_end_io,
	.preresume = fleece_origin_preresume,
	.postsuspend = fleece_origin_postsuspend,
	.status = fleece_origin_status,
	.iterate_devices = fleece_origin_iterate_devices,
};
