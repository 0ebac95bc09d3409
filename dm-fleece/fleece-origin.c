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
 * Feature arguments, each at most once:
 *   discard_policy <defer|copy|ignore>
 *   metadata <dev>		change tracking kept on <dev> (fleece-track.c)
 *   track_block <sectors>	tracking block size, a power of two
 */
static int parse_features(struct dm_target *ti, struct dm_arg_set *as,
			  struct fleece_origin *fo, char **error)
{
	static const struct dm_arg group = {
		0, 6, "Invalid number of feature arguments: expected 0 to 6."
	};
	unsigned int argc, v;
	const char *name, *value;
	bool policy = false;
	int r;

	fo->discard_policy = FLEECE_DISCARD_DEFER;
	if (!as->argc)
		return 0;
	r = dm_read_arg_group(&group, as, &argc, error);
	if (r)
		return r;
	while (argc) {
		name = dm_shift_arg(as);
		value = argc > 1 ? dm_shift_arg(as) : NULL;
		argc -= value ? 2 : 1;
		if (!strcasecmp(name, "discard_policy") && !policy) {
			if (!value || parse_discard_policy(value, &fo->discard_policy)) {
				*error = "Invalid discard_policy: use defer, copy or ignore.";
				return -EINVAL;
			}
			policy = true;
		} else if (!strcasecmp(name, "metadata") && !fo->md_dev) {
			if (!value) {
				*error = "Invalid metadata: it needs a device.";
				return -EINVAL;
			}
			r = dm_get_device(ti, value, FLEECE_OPEN_RW,
					  &fo->md_dev);
			if (r) {
				*error = "Cannot open the metadata device.";
				return r;
			}
		} else if (!strcasecmp(name, "track_block") && !fo->track_sectors) {
			if (!value || kstrtouint(value, 10, &v) || !is_power_of_2(v) ||
			    v < DM_FLEECE_MIN_TRACK_SECTORS ||
			    v > DM_FLEECE_MAX_TRACK_SECTORS) {
				*error = "Invalid track_block: use a power of two, 8 to 131072.";
				return -EINVAL;
			}
			fo->track_sectors = v;
		} else {
			*error = "Unknown or repeated feature: see the fleece documentation.";
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * Construct a fleece origin:
 *
 *   fleece <origin dev> <chunk size> [<#feature args> [<feature arg>]*]
 *
 * Features: "discard_policy defer|copy|ignore" (default defer, see
 * fleece-discard.c), "metadata <dev>" and "track_block <sectors>" (change
 * tracking, see fleece-track.c).
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
	r = parse_features(ti, &as, fo, &ti->error);
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
	if (fo->md_dev)
		dm_put_device(ti, fo->md_dev);
	kfree(fo);
	return r;
}

static void fleece_origin_dtr(struct dm_target *ti)
{
	struct fleece_origin *fo = ti->private;

	/* First: the core's tracker may still write the metadata device. */
	fleece_core_put_origin(fo);
	dm_put_device(ti, fo->dev);
	if (fo->md_dev)
		dm_put_device(ti, fo->md_dev);
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
	io->holds_ref = false;
	io->tracked = false;
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		return DM_MAPIO_REMAPPED;
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_SECURE_ERASE:
	case REQ_OP_WRITE_ZEROES:
		break;
	default:
		DMERR_LIMIT("%s: refusing operation %u: it is not copied first",
			    fo->dev->name, bio_op(bio));
		return DM_MAPIO_KILL;
	}
	/* Marked whether or not it succeeds; a data-less flush is not. */
	if (bio_sectors(bio)) {
		switch (fleece_track_map(fo->core->tracker, bio)) {
		case FLEECE_TRACK_HELD:
			return DM_MAPIO_SUBMITTED;
		case FLEECE_TRACK_FAIL:
			/* Through bio_endio() so that end_io() drops the reference. */
			bio_io_error(bio);
			return DM_MAPIO_SUBMITTED;
		default:
			break;
		}
	}
	return fleece_origin_map_write(fo->core, bio, io);
}

static int fleece_origin_end_io(struct dm_target *ti, struct bio *bio,
				blk_status_t *error)
{
	struct fleece_origin *fo = ti->private;
	struct fleece_origin_io *io = fleece_origin_io(bio);

	if (io->holds_ref)
		percpu_ref_put(&fo->core->writes_ref);
	if (io->tracked)
		fleece_track_end_io(fo->core->tracker);
	return DM_ENDIO_DONE;
}

/* The instance is live: every write to the device passes through it. */
static int fleece_origin_preresume(struct dm_target *ti)
{
	struct fleece_origin *fo = ti->private;

	/*
	 * Before adopt, without the registry lock (the tracker's mutex comes
	 * first); fleece_core_get() allowed a new size only with no bitmap.
	 */
	fleece_tracker_resize(fo->core->tracker, ti->len);
	fleece_core_adopt(fo);
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
	unsigned int sz = 0, nfeat;

	switch (type) {
	case STATUSTYPE_INFO:
		fleece_emit_status(fo->core, fo->chunk_sectors, type, result, maxlen);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %llu", fo->dev->name, (unsigned long long)fo->chunk_sectors);
		nfeat = (fo->discard_policy != FLEECE_DISCARD_DEFER) * 2 +
			!!fo->md_dev * 2 + !!fo->track_sectors * 2;
		if (nfeat)
			DMEMIT(" %u", nfeat);
		if (fo->discard_policy != FLEECE_DISCARD_DEFER)
			DMEMIT(" discard_policy %s",
			       discard_policy_names[fo->discard_policy]);
		if (fo->md_dev)
			DMEMIT(" metadata %s", fo->md_dev->name);
		if (fo->track_sectors)
			DMEMIT(" track_block %u", fo->track_sectors);
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

/*
 * Messages: the bitmap_* messages of change tracking (fleece-track.c).
 */
static int fleece_origin_message(struct dm_target *ti, unsigned int argc,
				 char **argv, char *result, unsigned int maxlen)
{
	struct fleece_origin *fo = ti->private;

	if (!argc || strncasecmp(argv[0], "bitmap_", 7)) {
		DMERR("Invalid message: the fleece target takes the bitmap_* messages.");
		return -EINVAL;
	}
	return fleece_track_message(fo->core->tracker, argc, argv, result, maxlen,
				    ti->len);
}

static int fleece_origin_iterate_devices(struct dm_target *ti,
					 iterate_devices_callout_fn fn, void *data)
{
	struct fleece_origin *fo = ti->private;

	return fn(ti, fo->dev, 0, ti->len, data);
}

struct target_type fleece_origin_target = {
	.name = DM_FLEECE_ORIGIN_TARGET,
	.version = {1, 3, 0},
	.features = DM_TARGET_SINGLETON,
	.module = THIS_MODULE,
	.ctr = fleece_origin_ctr,
	.dtr = fleece_origin_dtr,
	.map = fleece_origin_map,
	.end_io = fleece_origin_end_io,
	.preresume = fleece_origin_preresume,
	.postsuspend = fleece_origin_postsuspend,
	.status = fleece_origin_status,
	.message = fleece_origin_message,
	.iterate_devices = fleece_origin_iterate_devices,
};
