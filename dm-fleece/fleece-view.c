// SPDX-License-Identifier: GPL-2.0-only
/*
 * The "fleece-view" target: the read-only point-in-time image of a fleece
 * origin.  Loading and resuming it starts the snapshot; removing it ends the
 * snapshot.  Preserved chunks are read from the exception device, the others
 * from the origin device.  A discard releases the chunks it covers whole.
 */
#include <linux/module.h>

#include "fleece-core.h"

static int parse_feature(struct dm_arg_set *as, struct fleece_view *view,
			 char **error)
{
	static const struct dm_arg timeout_arg = {
		0, DM_FLEECE_MAX_CBW_TIMEOUT_MS,
		"Invalid cbw_timeout_ms: it must be from 0 to 3600000 milliseconds."
	};
	static const struct dm_arg copies_arg = {
		1, DM_FLEECE_MAX_COPIES,
		"Invalid max_copies: it must be from 1 to 1024."
	};
	const char *name = dm_shift_arg(as);
	const char *value;

	if (!as->argc) {
		*error = "A feature argument is missing its value.";
		return -EINVAL;
	}
	if (!strcasecmp(name, "cbw_error")) {
		value = dm_shift_arg(as);
		if (!strcasecmp(value, "break_snapshot")) {
			view->policy = FLEECE_BREAK_SNAPSHOT;
		} else if (!strcasecmp(value, "break_write")) {
			view->policy = FLEECE_BREAK_WRITE;
		} else {
			*error = "Invalid cbw_error: it must be break_snapshot or break_write.";
			return -EINVAL;
		}
		return 0;
	}
	if (!strcasecmp(name, "cbw_timeout_ms"))
		return dm_read_arg(&timeout_arg, as, &view->timeout_ms, error);
	if (!strcasecmp(name, "max_copies"))
		return dm_read_arg(&copies_arg, as, &view->max_copies, error);
	if (!strcasecmp(name, "bitmap")) {
		value = dm_shift_arg(as);
		if (strscpy(view->bitmap, value, sizeof(view->bitmap)) <= 0) {
			*error = "Invalid bitmap: a name of 1 to 47 characters.";
			return -EINVAL;
		}
		return 0;
	}
	if (!strcasecmp(name, "bitmap_mode")) {
		value = dm_shift_arg(as);
		if (!strcasecmp(value, "on-success")) {
			view->bitmap_mode = FLEECE_SYNC_ON_SUCCESS;
		} else if (!strcasecmp(value, "never")) {
			view->bitmap_mode = FLEECE_SYNC_NEVER;
		} else if (!strcasecmp(value, "always")) {
			view->bitmap_mode = FLEECE_SYNC_ALWAYS;
		} else {
			*error = "Invalid bitmap_mode: use on-success, never or always.";
			return -EINVAL;
		}
		return 0;
	}
	if (!strcasecmp(name, "backup")) {
		value = dm_shift_arg(as);
		if (!strcasecmp(value, "full")) {
			view->full_backup = true;
		} else if (!strcasecmp(value, "incremental")) {
			view->full_backup = false;
		} else {
			*error = "Invalid backup: use full or incremental.";
			return -EINVAL;
		}
		return 0;
	}

	*error = "Unrecognised feature argument: see the fleece-view documentation.";
	return -EINVAL;
}

static int parse_features(struct dm_arg_set *as, struct fleece_view *view,
			  char **error)
{
	static const struct dm_arg count = {
		0, 12, "Invalid number of feature arguments: expected 0 to 12."
	};
	struct dm_arg_set features;
	unsigned int argc;
	int r;

	if (!as->argc)
		return 0;
	r = dm_read_arg(&count, as, &argc, error);
	if (r)
		return r;
	if (argc > as->argc) {
		*error = "There are fewer feature arguments than their count says.";
		return -EINVAL;
	}
	features.argc = argc;
	features.argv = as->argv;
	as->argc -= argc;
	as->argv += argc;
	while (features.argc) {
		r = parse_feature(&features, view, error);
		if (r)
			return r;
	}
	return 0;
}

static int fleece_parse_devt(const char *path, dev_t *dev)
{
	unsigned int major, minor;
	char dummy;

	if (sscanf(path, "%u:%u%c", &major, &minor, &dummy) == 2) {
		*dev = MKDEV(major, minor);
		return MAJOR(*dev) == major && MINOR(*dev) == minor ? 0 : -EOVERFLOW;
	}
	return lookup_bdev(path, dev);
}

/*
 * Construct a view of a fleece origin:
 *
 *   fleece-view <fleece dev> <exception dev> [<#feature args> [<feature arg>]*]
 *
 * <fleece dev> is the device-mapper device that carries the fleece target.
 * Features: cbw_error break_snapshot|break_write, cbw_timeout_ms <ms>,
 * max_copies <n>.
 */
static int fleece_view_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	const char *fleece_path, *exception_path;
	char origin_name[24];
	struct fleece_view *view;
	int r;

	if (argc < 2) {
		ti->error = "Not enough arguments: expected <fleece dev> <exception dev>.";
		return -EINVAL;
	}
	if (ti->begin) {
		ti->error = "The fleece-view target must start at sector 0 of its device.";
		return -EINVAL;
	}
	view = kzalloc(sizeof(*view), GFP_KERNEL);
	if (!view) {
		ti->error = "Cannot allocate the fleece-view target.";
		return -ENOMEM;
	}
	view->ti = ti;
	fleece_path = dm_shift_arg(&as);
	exception_path = dm_shift_arg(&as);
	r = parse_features(&as, view, &ti->error);
	if (r)
		goto bad;
	if (!view->bitmap[0] && (view->full_backup ||
				 view->bitmap_mode != FLEECE_SYNC_ON_SUCCESS)) {
		ti->error = "The backup and bitmap_mode features need the bitmap feature.";
		r = -EINVAL;
		goto bad;
	}
	if (as.argc) {
		ti->error = "Too many arguments.";
		r = -EINVAL;
		goto bad;
	}

	/*
	 * Only the number of the fleece device is needed, to find its core.
	 * It is not opened: a file system mounted on it holds it exclusively.
	 */
	r = fleece_parse_devt(fleece_path, &view->fleece_devt);
	if (r) {
		ti->error = "The fleece device must be given as major:minor or a device path.";
		goto bad;
	}
	snprintf(view->fleece_name, sizeof(view->fleece_name), "%u:%u",
		 MAJOR(view->fleece_devt), MINOR(view->fleece_devt));
	r = dm_get_device(ti, exception_path, FLEECE_OPEN_RW, &view->exception_dev);
	if (r) {
		ti->error = "Cannot open the exception device for writing.";
		goto bad;
	}
	view->core = fleece_core_attach_view(view, view->fleece_devt,
					     &ti->error);
	if (IS_ERR(view->core)) {
		r = PTR_ERR(view->core);
		goto bad_exception;
	}
	/* Checked again when the snapshot starts; this is for a clear error. */
	if (view->bitmap[0] && !fleece_track_has_bitmap(view->core->tracker,
							view->bitmap)) {
		ti->error = "The fleece device has no bitmap of that name.";
		r = -ENOENT;
		goto bad_core;
	}
	/*
	 * Untouched chunks are read from the origin device directly; hold it
	 * open so that it outlives any reload of the fleece device.
	 */
	snprintf(origin_name, sizeof(origin_name), "%u:%u",
		 MAJOR(view->core->origin_bdev->bd_dev),
		 MINOR(view->core->origin_bdev->bd_dev));
	r = dm_get_device(ti, origin_name, FLEECE_OPEN_READ, &view->origin_dev);
	if (r) {
		ti->error = "Cannot open the origin device under the fleece device.";
		goto bad_core;
	}

	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->discards_supported = true;
	ti->per_io_data_size = sizeof(struct fleece_view_io);
	ti->private = view;
	return 0;

bad_core:
	fleece_core_detach_view(view->core);
bad_exception:
	dm_put_device(ti, view->exception_dev);
bad:
	kfree(view);
	return r;
}

static void fleece_view_dtr(struct dm_target *ti)
{
	struct fleece_view *view = ti->private;

	fleece_snapshot_end(view->core);
	fleece_core_detach_view(view->core);
	dm_put_device(ti, view->origin_dev);
	dm_put_device(ti, view->exception_dev);
	kfree(view);
}

static int fleece_view_map(struct dm_target *ti, struct bio *bio)
{
	struct fleece_view *view = ti->private;
	struct fleece_view_io *io = fleece_view_io(bio);

	io->reading_origin = false;
	io->reading_exception = false;
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		if (!bio_sectors(bio))
			break;
		return fleece_view_map_read(view->core, bio, io);
	case REQ_OP_DISCARD:
		return fleece_view_map_discard(view->core, bio, io);
	case REQ_OP_WRITE:
		if (!bio_sectors(bio))	/* a flush: the image is never dirty */
			break;
		fallthrough;
	default:
		return DM_MAPIO_KILL;
	}
	bio_endio(bio);
	return DM_MAPIO_SUBMITTED;
}

static int fleece_view_end_io(struct dm_target *ti, struct bio *bio,
			      blk_status_t *error)
{
	struct fleece_view *view = ti->private;

	if (bio_op(bio) == REQ_OP_READ)
		fleece_view_end_read(view->core, fleece_view_io(bio), error);
	return DM_ENDIO_DONE;
}

static int fleece_view_preresume(struct dm_target *ti)
{
	struct fleece_view *view = ti->private;
	int r = fleece_snapshot_start(view->core, view);

	if (r == -ENOMEM)
		DMERR("cannot start the snapshot: out of memory");
	return r;
}

/*
 * Status INFO: see fleece_emit_status().  TABLE reproduces the table line
 * with the features that differ from their defaults.
 */
static void fleece_view_status(struct dm_target *ti, status_type_t type,
			       unsigned int status_flags, char *result,
			       unsigned int maxlen)
{
	struct fleece_view *view = ti->private;
	sector_t chunk_sectors = READ_ONCE(view->core->chunk_sectors);
	unsigned int sz = 0, nr_features;

	switch (type) {
	case STATUSTYPE_INFO:
		fleece_emit_status(view->core, chunk_sectors, type, result, maxlen);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s", view->fleece_name, view->exception_dev->name);
		nr_features = 2 * ((view->policy != FLEECE_BREAK_SNAPSHOT) +
				   !!view->timeout_ms + !!view->max_copies +
				   !!view->bitmap[0] + view->full_backup +
				   (view->bitmap_mode != FLEECE_SYNC_ON_SUCCESS));
		if (!nr_features)
			break;
		DMEMIT(" %u", nr_features);
		if (view->policy != FLEECE_BREAK_SNAPSHOT)
			DMEMIT(" cbw_error break_write");
		if (view->timeout_ms)
			DMEMIT(" cbw_timeout_ms %u", view->timeout_ms);
		if (view->max_copies)
			DMEMIT(" max_copies %u", view->max_copies);
		if (view->bitmap[0])
			DMEMIT(" bitmap %s", view->bitmap);
		if (view->full_backup)
			DMEMIT(" backup full");
		if (view->bitmap_mode != FLEECE_SYNC_ON_SUCCESS)
			DMEMIT(" bitmap_mode %s", view->bitmap_mode == FLEECE_SYNC_NEVER ?
			       "never" : "always");
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",fleece_name=%s,exception_name=%s,cbw_error=%s,cbw_timeout_ms=%u",
		       view->fleece_name, view->exception_dev->name,
		       view->policy == FLEECE_BREAK_WRITE ? "break_write" :
		       "break_snapshot", view->timeout_ms);
		if (sz < maxlen)
			fleece_emit_status(view->core, chunk_sectors, type,
					   result + sz, maxlen - sz);
		break;
	}
}

/*
 * Messages:
 *   release <start sector> <nr sectors>
 * releases the chunks the range covers, like a discard (see
 * fleece_sectors_to_chunks()).  Fails with -EIO when the snapshot is not
 * active, or stops being active before the release is done.
 *   outcome success|failure
 * says how the backup went, for the bitmap mode (fleece-track-backup.c).
 *   backup_extents <start sector> [<max extents>]
 * prints the backup set of the bound bitmap (fleece_track_emit_extents()).
 */
static int fleece_view_message(struct dm_target *ti, unsigned int argc,
			       char **argv, char *result, unsigned int maxlen)
{
	struct fleece_view *view = ti->private;
	unsigned long long start, len;
	unsigned int max = UINT_MAX;
	int r;

	if (argc == 2 && !strcasecmp(argv[0], "outcome")) {
		if (strcasecmp(argv[1], "success") && strcasecmp(argv[1], "failure")) {
			DMERR("Invalid outcome: use success or failure.");
			return -EINVAL;
		}
		r = fleece_snapshot_outcome(view->core, !strcasecmp(argv[1], "success"));
		if (r)
			DMERR("Cannot take the outcome: no snapshot runs.");
		return r;
	}
	if (argc >= 2 && argc <= 3 && !strcasecmp(argv[0], "backup_extents")) {
		if (kstrtoull(argv[1], 10, &start) || start >= ti->len ||
		    (argc == 3 && (kstrtouint(argv[2], 10, &max) || !max))) {
			DMERR("Invalid message: expected backup_extents <sector> [<max>].");
			return -EINVAL;
		}
		r = fleece_backup_extents(view->core, start, max, ti->len, result, maxlen);
		if (r < 0)
			DMERR("The view's backup has no bitmap.");
		return r;
	}
	if (argc != 3 || strcasecmp(argv[0], DM_FLEECE_MSG_RELEASE)) {
		DMERR("Invalid message: expected release, outcome or backup_extents.");
		return -EINVAL;
	}
	if (kstrtoull(argv[1], 10, &start) || kstrtoull(argv[2], 10, &len) ||
	    !len || start >= ti->len || len > ti->len - start) {
		DMERR("Invalid release range: it must be non-empty and inside the view.");
		return -EINVAL;
	}
	r = fleece_release(view->core, start, len);
	if (r)
		DMERR("Cannot release: the snapshot is not active.");
	return r;
}

static void fleece_view_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct fleece_view *view = ti->private;
	sector_t chunk_sectors = READ_ONCE(view->core->chunk_sectors);

	limits->discard_granularity = chunk_sectors << SECTOR_SHIFT;
	fleece_set_max_discard_sectors(limits,
				       round_down(UINT_MAX >> SECTOR_SHIFT, chunk_sectors));
}

static int fleece_view_iterate_devices(struct dm_target *ti,
				       iterate_devices_callout_fn fn, void *data)
{
	struct fleece_view *view = ti->private;
	int r = fn(ti, view->origin_dev, 0, ti->len, data);

	if (!r)
		r = fn(ti, view->exception_dev, 0,
		       bdev_nr_sectors(view->exception_dev->bdev), data);
	return r;
}

struct target_type fleece_view_target = {
	.name = DM_FLEECE_VIEW_TARGET,
	.version = {1, 3, 0},
	.features = DM_TARGET_SINGLETON,
	.module = THIS_MODULE,
	.ctr = fleece_view_ctr,
	.dtr = fleece_view_dtr,
	.map = fleece_view_map,
	.end_io = fleece_view_end_io,
	.preresume = fleece_view_preresume,
	.status = fleece_view_status,
	.message = fleece_view_message,
	.io_hints = fleece_view_io_hints,
	.iterate_devices = fleece_view_iterate_devices,
};
