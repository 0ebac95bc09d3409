// SPDX-License-Identifier: GPL-2.0-only
/*
 * The registry of fleece cores, keyed by the dev_t of the device-mapper
 * device that carries the origin target.  It is how a view finds its origin
 * (the view's table names that device), and how an origin keeps its
 * snapshot across a table reload: the new instance finds the core of the
 * old one.  A plain list: there is one entry per fleeced device.
 */
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "fleece-core.h"

/* Protects the list of cores and the fields of each core marked so. */
DEFINE_MUTEX(fleece_registry_lock);
static LIST_HEAD(fleece_cores);

static void writes_ref_release(struct percpu_ref *ref)
{
	struct fleece_core *core = container_of(ref, struct fleece_core, writes_ref);

	wake_up_all(&core->writes_drained);
}

static struct fleece_core *__core_find(dev_t dev)
{
	struct fleece_core *core;

	lockdep_assert_held(&fleece_registry_lock);
	list_for_each_entry(core, &fleece_cores, registry_entry)
		if (core->dev == dev)
			return core;
	return NULL;
}

static void core_free(struct fleece_core *core)
{
	/* Before the workqueue goes: its commits run there. */
	fleece_tracker_destroy(core->tracker);
	if (core->wq)
		destroy_workqueue(core->wq);
	bioset_exit(&core->bs);
	percpu_ref_exit(&core->writes_ref);
	kfree(core);
}

static struct fleece_core *core_alloc(dev_t dev)
{
	struct fleece_core *core = kzalloc(sizeof(*core), GFP_KERNEL);

	if (!core)
		return NULL;
	core->dev = dev;
	spin_lock_init(&core->lock);
	bio_list_init(&core->deferred_writes);
	bio_list_init(&core->reader_blocked);
	bio_list_init(&core->reads_on_hold);
	bio_list_init(&core->discards_done);
	INIT_LIST_HEAD(&core->instances);
	INIT_LIST_HEAD(&core->releases);
	INIT_LIST_HEAD(&core->finished_jobs);
	INIT_LIST_HEAD(&core->buffered_jobs);
	init_waitqueue_head(&core->writes_drained);
	init_waitqueue_head(&core->copies_done);
	init_waitqueue_head(&core->origin_reads_done);
	INIT_WORK(&core->worker, fleece_worker);
	INIT_DELAYED_WORK(&core->timeout_work, fleece_timeout_worker);
	INIT_WORK(&core->event_work, fleece_event_worker);

	/* Re-armed after each drain, so it must be allowed to resurrect. */
	if (percpu_ref_init(&core->writes_ref, writes_ref_release,
			    PERCPU_REF_ALLOW_REINIT, GFP_KERNEL))
		goto bad_ref;
	if (bioset_init(&core->bs, BIO_POOL_SIZE, 0, BIOSET_NEED_BVECS))
		goto bad;
	/*
	 * The worker releases held writes: it must run under memory pressure.
	 * Not WQ_HIGHPRI: fleece-copy.c says why.
	 */
	core->wq = alloc_workqueue("kfleeced/%u:%u", WQ_MEM_RECLAIM,
				   0, MAJOR(dev), MINOR(dev));
	if (!core->wq)
		goto bad;
	return core;
bad:
	core_free(core);
	return NULL;
bad_ref:
	kfree(core);
	return NULL;
}

static dev_t md_dev(struct dm_target *ti)
{
	return disk_devt(dm_disk(dm_table_get_md(ti->table)));
}

/* True when @fo would change what the view of @core relies on. */
static bool __config_conflicts(struct fleece_core *core,
			       struct fleece_origin *fo)
{
	lockdep_assert_held(&fleece_registry_lock);
	return core->view && (core->origin_bdev != fo->dev->bdev ||
			      core->chunk_sectors != fo->chunk_sectors ||
			      fo->ti->len < core->view->ti->len);
}

/*
 * True when an origin instance of a core other than @core uses @bdev, as
 * its origin device or with @metadata as its metadata device: writes
 * through one would bypass the other's snapshot, or two trackers would
 * share one metadata device.  Inactive tables count too, or a reload and a
 * resume would get around the check.
 */
static bool __bdev_taken(struct fleece_core *core, struct block_device *bdev,
			 bool metadata)
{
	struct fleece_core *other;
	struct fleece_origin *fo;

	lockdep_assert_held(&fleece_registry_lock);
	list_for_each_entry(other, &fleece_cores, registry_entry) {
		if (other == core)
			continue;
		list_for_each_entry(fo, &other->instances, core_entry) {
			struct dm_dev *d = metadata ? fo->md_dev : fo->dev;

			if (d && d->bdev == bdev)
				return true;
		}
	}
	return false;
}

/*
 * The change tracking of a new core, from @fo's table line: in memory, or
 * on its metadata device.  Registry lock held, with I/O allowed to the
 * metadata device only.
 */
static int __create_tracker(struct fleece_core *core, struct fleece_origin *fo,
			    char **error)
{
	char name[DM_NAME_LEN], uuid[DM_UUID_LEN];
	const char *owner = "";

	lockdep_assert_held(&fleece_registry_lock);
	if (fo->md_dev && !dm_copy_name_and_uuid(dm_table_get_md(fo->ti->table),
						 name, uuid))
		owner = uuid[0] ? uuid : name;
	if (fo->md_dev && (fo->md_dev->bdev == fo->dev->bdev ||
			   fo->md_dev->bdev->bd_dev == core->dev)) {
		*error = "The metadata device cannot be the origin device.";
		return -EINVAL;
	}
	if (fo->md_dev && __bdev_taken(core, fo->md_dev->bdev, true)) {
		*error = "The metadata device is already used by another fleece device.";
		return -EBUSY;
	}
	core->tracker = fleece_tracker_create(core, fo->ti->len, fo->track_sectors,
					      fo->md_dev ? fo->md_dev->bdev : NULL,
					      owner, error);
	return core->tracker ? 0 : -EINVAL;
}

/* The reason @fo cannot join @core's change tracking, or NULL. */
static const char *__tracking_conflict(struct fleece_core *core,
				       struct fleece_origin *fo)
{
	struct fleece_tracker *t = core->tracker;

	lockdep_assert_held(&fleece_registry_lock);
	if (fleece_tracker_persistent(t)) {
		if (!fo->md_dev || fo->md_dev->bdev->bd_dev != fleece_tracker_md_dev(t))
			return "A reload must keep the same metadata device.";
	} else if (fo->md_dev) {
		return "A metadata device is only taken when the fleece device is created.";
	}
	if (fo->track_sectors && fo->track_sectors != fleece_track_sectors(t))
		return "A reload must keep the tracking block size.";
	if (fo->ti->len != core->origin_sectors &&
	    (fleece_tracker_persistent(t) || fleece_tracker_has_bitmaps(t)))
		return "The size cannot change with bitmaps or a metadata device.";
	return NULL;
}

/**
 * fleece_core_get() - register @fo with the core of its device.
 * @fo: a new origin instance, with ti, dev and chunk_sectors set.
 * @error: set to a whole sentence on failure.
 *
 * Origin constructor, process context.  Creates the core for a new device,
 * or takes a reference to the existing one on a table reload, and sets
 * @fo->core.  Every rule that a later resume would otherwise have to
 * enforce is checked here, so that the resume cannot fail and leave the
 * device suspended.  Returns 0, -EBUSY or -ENOMEM.
 */
int fleece_core_get(struct fleece_origin *fo, char **error)
{
	dev_t dev = md_dev(fo->ti);
	struct fleece_core *core, *new;
	unsigned int noio;
	int r = 0;

	/*
	 * Allocated before the registry lock is taken, so that reclaim never
	 * waits with it held; and without I/O, as the device may be suspended.
	 */
	noio = memalloc_noio_save();
	new = core_alloc(dev);
	memalloc_noio_restore(noio);

	mutex_lock(&fleece_registry_lock);
	core = __core_find(dev);
	if (__bdev_taken(core, fo->dev->bdev, false)) {
		*error = "The origin device is already under another fleece device.";
		r = -EBUSY;
		goto out;
	}
	if (core) {
		if (__config_conflicts(core, fo)) {
			*error = "A view is attached: the origin, chunk size and size must stay.";
			r = -EBUSY;
			goto out;
		}
		*error = (char *)__tracking_conflict(core, fo);
		if (*error) {
			r = -EBUSY;
			goto out;
		}
	} else {
		if (!new) {
			*error = "Cannot allocate the fleece device state.";
			r = -ENOMEM;
			goto out;
		}
		noio = memalloc_noio_save();
		r = __create_tracker(new, fo, error);
		memalloc_noio_restore(noio);
		if (r)
			goto out;
		core = new;
		new = NULL;
		/* No live instance until one resumes: see fleece_core_adopt(). */
		core->origin_bdev = fo->dev->bdev;
		core->origin_sectors = fo->ti->len;
		core->chunk_sectors = fo->chunk_sectors;
		list_add(&core->registry_entry, &fleece_cores);
	}
	core->refs++;
	list_add_tail(&fo->core_entry, &core->instances);
	fo->core = core;
out:
	mutex_unlock(&fleece_registry_lock);
	if (new)
		core_free(new);
	return r;
}

/*
 * The live origin instance is gone or has changed what the view relies on:
 * writes may no longer pass copy-before-write, so the snapshot cannot be
 * trusted.  Reads held while the origin was suspended fail with it
 * (__fleece_invalidate()).
 */
static void __detach_snapshot(struct fleece_core *core)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;

	lockdep_assert_held(&fleece_registry_lock);
	spin_lock_irq(&core->lock);
	core->origin_running = false;
	if (core->state == FLEECE_ACTIVE)
		__fleece_invalidate(core, FLEECE_ERR_DETACHED, &issue, &fail);
	spin_unlock_irq(&core->lock);
	fleece_submit_list(&issue, &fail);
}

/**
 * fleece_core_adopt() - @fo has become the live table of its device.
 * @fo: the origin instance that is about to resume.
 *
 * Origin preresume, process context.  From here on every write to the
 * device passes through @fo, so view reads held while the origin was
 * suspended may read the origin again.  Cannot fail: fleece_core_get() and
 * fleece_core_attach_view() refused every conflicting table at load time.
 */
void fleece_core_adopt(struct fleece_origin *fo)
{
	struct fleece_core *core = fo->core;

	mutex_lock(&fleece_registry_lock);
	if (WARN_ON_ONCE(__config_conflicts(core, fo)))
		__detach_snapshot(core);
	core->origin_ti = fo->ti;
	core->origin_bdev = fo->dev->bdev;
	core->origin_sectors = fo->ti->len;
	WRITE_ONCE(core->chunk_sectors, fo->chunk_sectors);
	spin_lock_irq(&core->lock);
	core->origin_running = true;
	core->discard_policy = fo->discard_policy;
	if (!bio_list_empty(&core->reads_on_hold))
		fleece_kick(core);
	spin_unlock_irq(&core->lock);
	mutex_unlock(&fleece_registry_lock);
}

static bool origin_reads_drained(struct fleece_core *core)
{
	bool drained;

	spin_lock_irq(&core->lock);
	drained = (!core->snap || RB_EMPTY_ROOT(&core->snap->readers.rb_root)) &&
		  !core->discards_issuing;
	spin_unlock_irq(&core->lock);
	return drained;
}

/**
 * fleece_core_suspend() - the device of @fo is suspended.
 * @fo: the origin instance whose postsuspend runs.
 *
 * Origin postsuspend, process context.  Until an instance resumes, the
 * device may get another table that takes writes with no fleece code on
 * their path, and nothing tells the core before that table's first write.
 * So from now on view reads of the origin are held, and the ones already
 * submitted are waited for: none can return data written after the swap.
 */
void fleece_core_suspend(struct fleece_origin *fo)
{
	struct fleece_core *core = fo->core;

	mutex_lock(&fleece_registry_lock);
	if (core->origin_ti != fo->ti) {
		mutex_unlock(&fleece_registry_lock);
		return;
	}
	spin_lock_irq(&core->lock);
	core->origin_running = false;
	spin_unlock_irq(&core->lock);
	mutex_unlock(&fleece_registry_lock);
	/*
	 * Pairs with the wake_up() in fleece_view_end_read() and in
	 * issue_held_discards(): no other table may take writes while held
	 * discards still go down.
	 */
	wait_event(core->origin_reads_done, origin_reads_drained(core));
}

static void __core_put(struct fleece_core *core)
{
	lockdep_assert_held(&fleece_registry_lock);
	if (--core->refs)
		return;
	list_del(&core->registry_entry);
	/* Nothing can queue work now: no target refers to the core. */
	mutex_unlock(&fleece_registry_lock);
	flush_work(&core->event_work);
	core_free(core);
	mutex_lock(&fleece_registry_lock);
}

/**
 * fleece_core_put_origin() - the origin instance @fo is destroyed.
 * @fo: the instance, still registered.
 *
 * Origin destructor, process context.  When @fo was the live instance and
 * no fleece instance took over (the device got another table or was
 * removed), the snapshot is invalidated (detached).
 */
void fleece_core_put_origin(struct fleece_origin *fo)
{
	struct fleece_core *core = fo->core;
	bool detach;

	mutex_lock(&fleece_registry_lock);
	list_del(&fo->core_entry);
	if (core->origin_ti == fo->ti) {
		core->origin_ti = NULL;
		__detach_snapshot(core);
	}
	/*
	 * The last fleece table leaves a device that the view keeps: another
	 * table takes its writes untracked, and the metadata device closes.
	 */
	detach = list_empty(&core->instances) && core->refs > 1;
	if (detach) {
		mutex_unlock(&fleece_registry_lock);
		fleece_tracker_detach(core->tracker);	/* its mutex comes first */
		mutex_lock(&fleece_registry_lock);
	}
	__core_put(core);
	mutex_unlock(&fleece_registry_lock);
}

/*
 * True when a loaded, not yet live, instance of @core would change what a
 * view relies on: its resume could only detach the snapshot.
 */
static bool __inactive_conflicts(struct fleece_core *core,
				 struct fleece_view *view)
{
	struct fleece_origin *fo;

	lockdep_assert_held(&fleece_registry_lock);
	list_for_each_entry(fo, &core->instances, core_entry)
		if (fo->dev->bdev != core->origin_bdev ||
		    fo->chunk_sectors != core->chunk_sectors ||
		    fo->ti->len < view->ti->len)
			return true;
	return false;
}

/**
 * fleece_core_attach_view() - attach @view to the core of device @dev.
 * @view: the new view, with ti and exception_dev set.
 * @dev: the device number of the fleece device the view's table names.
 * @error: set to a whole sentence on failure.
 *
 * View constructor, process context.  Returns the core with a reference
 * taken, or an ERR_PTR with *@error set: -ENODEV when @dev carries no
 * fleece origin, -EBUSY when it already has a view.
 */
struct fleece_core *fleece_core_attach_view(struct fleece_view *view,
					    dev_t dev, char **error)
{
	struct fleece_core *core;

	mutex_lock(&fleece_registry_lock);
	core = __core_find(dev);
	if (!core || !core->origin_ti) {
		*error = "The fleece device's live table is not a fleece target.";
		core = ERR_PTR(-ENODEV);
	} else if (__inactive_conflicts(core, view)) {
		/* Its resume could only detach the snapshot. */
		*error = "The fleece device has a conflicting loaded table; resume or clear it.";
		core = ERR_PTR(-EBUSY);
	} else if (core->view) {
		*error = "This fleece device already has a view; remove it first.";
		core = ERR_PTR(-EBUSY);
	} else if (view->ti->len > core->origin_sectors) {
		*error = "The view is longer than its origin.";
		core = ERR_PTR(-EINVAL);
	} else if (view->exception_dev->bdev == core->origin_bdev ||
		   view->exception_dev->bdev->bd_dev == dev) {
		*error = "The exception device cannot be the origin device.";
		core = ERR_PTR(-EINVAL);
	} else if (bdev_nr_sectors(view->exception_dev->bdev) < core->chunk_sectors) {
		*error = "The exception device is smaller than one chunk.";
		core = ERR_PTR(-EINVAL);
	} else {
		core->refs++;
		core->view = view;
	}
	mutex_unlock(&fleece_registry_lock);
	return core;
}

/* View destructor, after fleece_snapshot_end(): detaches and unreferences. */
void fleece_core_detach_view(struct fleece_core *core)
{
	flush_work(&core->event_work);
	mutex_lock(&fleece_registry_lock);
	core->view = NULL;
	__core_put(core);
	mutex_unlock(&fleece_registry_lock);
}
