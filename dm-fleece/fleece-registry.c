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

	list_for_each_entry(core, &fleece_cores, registry_entry)
		if (core->dev == dev)
			return core;
	return NULL;
}

static void core_free(struct fleece_core *core)
{
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
	bio_list_init(&core->view_discards);
	INIT_LIST_HEAD(&core->release_requests);
	INIT_LIST_HEAD(&core->finished_jobs);
	INIT_LIST_HEAD(&core->buffered_jobs);
	init_waitqueue_head(&core->writes_drained);
	init_waitqueue_head(&core->copies_done);
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

/* True when @bdev and @chunk_sectors would change what the view relies on. */
static bool __config_conflicts(struct fleece_core *core, struct dm_target *ti,
			       struct block_device *bdev, sector_t chunk_sectors)
{
	return core->view && (core->origin_bdev != bdev ||
			      core->chunk_sectors != chunk_sectors ||
			      ti->len < core->view->ti->len);
}

/*
 * fleece_core_get() - the core of the device @origin_ti belongs to.
 *
 * Origin constructor, process context.  Creates the core for a new device,
 * or takes a reference to the existing one on a table reload.  Returns the
 * core or an ERR_PTR, with *@error set.
 */
struct fleece_core *fleece_core_get(struct dm_target *origin_ti,
				    struct block_device *bdev,
				    sector_t chunk_sectors, char **error)
{
	dev_t dev = md_dev(origin_ti);
	struct fleece_core *core, *new;
	unsigned int noio;

	/*
	 * Allocated before the registry lock is taken, so that reclaim never
	 * waits with it held; and without I/O, as the device may be suspended.
	 */
	noio = memalloc_noio_save();
	new = core_alloc(dev);
	memalloc_noio_restore(noio);

	mutex_lock(&fleece_registry_lock);
	core = __core_find(dev);
	if (core) {
		if (__config_conflicts(core, origin_ti, bdev, chunk_sectors)) {
			*error = "A view is attached: the origin, chunk size and size must stay.";
			core = ERR_PTR(-EBUSY);
			goto out;
		}
		core->refs++;
		goto out;
	}
	list_for_each_entry(core, &fleece_cores, registry_entry) {
		if (core->origin_bdev == bdev) {
			/* Writes through one would bypass the other's snapshot. */
			*error = "The origin device is already under another fleece device.";
			core = ERR_PTR(-EBUSY);
			goto out;
		}
	}
	core = new;
	new = NULL;
	if (!core) {
		*error = "Cannot allocate the fleece device state.";
		core = ERR_PTR(-ENOMEM);
		goto out;
	}
	core->refs = 1;
	core->origin_ti = origin_ti;
	core->origin_bdev = bdev;
	core->origin_sectors = origin_ti->len;
	core->chunk_sectors = chunk_sectors;
	list_add(&core->registry_entry, &fleece_cores);
out:
	mutex_unlock(&fleece_registry_lock);
	if (new)
		core_free(new);
	return core;
}

/*
 * fleece_core_adopt() - make @origin_ti the instance the core follows.
 *
 * Origin preresume, process context.  Returns 0, or -EBUSY when the new
 * table would change what an attached view relies on.
 */
int fleece_core_adopt(struct fleece_core *core, struct dm_target *origin_ti,
		      struct block_device *bdev, sector_t chunk_sectors)
{
	int r = 0;

	mutex_lock(&fleece_registry_lock);
	if (__config_conflicts(core, origin_ti, bdev, chunk_sectors)) {
		DMERR("%u:%u: cannot resume: the new table changes what the view relies on",
		      MAJOR(core->dev), MINOR(core->dev));
		r = -EBUSY;
	} else {
		core->origin_ti = origin_ti;
		core->origin_bdev = bdev;
		core->origin_sectors = origin_ti->len;
		WRITE_ONCE(core->chunk_sectors, chunk_sectors);
	}
	mutex_unlock(&fleece_registry_lock);
	return r;
}

static void __core_put(struct fleece_core *core)
{
	if (--core->refs)
		return;
	list_del(&core->registry_entry);
	/* Nothing can queue work now: no target refers to the core. */
	mutex_unlock(&fleece_registry_lock);
	flush_work(&core->event_work);
	core_free(core);
	mutex_lock(&fleece_registry_lock);
}

/*
 * The origin instance that writes went through is gone and no fleece
 * instance took over (the device's table became another target, or the
 * device was wiped): writes no longer pass copy-before-write, so the
 * snapshot cannot be trusted.
 */
static void detach_snapshot(struct fleece_core *core)
{
	struct bio_list issue = BIO_EMPTY_LIST, fail = BIO_EMPTY_LIST;

	spin_lock_irq(&core->lock);
	if (core->state == FLEECE_ACTIVE)
		__fleece_invalidate(core, FLEECE_ERR_DETACHED, &issue, &fail);
	spin_unlock_irq(&core->lock);
	fleece_submit_list(&issue, &fail);
}

/* Origin destructor: drops @origin_ti's reference. */
void fleece_core_put_origin(struct fleece_core *core, struct dm_target *origin_ti)
{
	mutex_lock(&fleece_registry_lock);
	if (core->origin_ti == origin_ti) {
		core->origin_ti = NULL;
		detach_snapshot(core);
	}
	__core_put(core);
	mutex_unlock(&fleece_registry_lock);
}

/*
 * fleece_core_attach_view() - attach @view to the core of device @dev.
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
		*error = "The first argument is not a device with a fleece origin target.";
		core = ERR_PTR(-ENODEV);
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
