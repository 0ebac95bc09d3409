// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl: small wrappers around the libdevmapper dm_task life cycle.
 *
 * Every wrapper creates one task, runs it and destroys it through a single
 * cleanup label.  Operations that make or remove device nodes (create,
 * resume, remove) always carry a udev cookie and wait on it: when udev runs,
 * libdevmapper waits for its rules; when it does not (containers, initramfs,
 * the test guest) or sync support is off (--no-udev, DM_DISABLE_UDEV=1),
 * dm_udev_wait() makes the /dev/mapper nodes itself.  We never set
 * DM_UDEV_DISABLE_LIBRARY_FALLBACK, so the library checks udev's work.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "fleecectl.h"

int dmx_errno;
static char last_dm_error[512];

/* libdevmapper log messages: kept for verbose mode, not shown otherwise. */
static void dm_log_cb(int level, const char *file, int line, int dm_errno_or_class, const char *f, ...)
{
	va_list ap;
	char buf[512];

	(void)file;
	(void)line;
	(void)dm_errno_or_class;
	level &= 7;
	va_start(ap, f);
	vsnprintf(buf, sizeof(buf), f, ap);
	va_end(ap);
	if (level <= 3)
		snprintf(last_dm_error, sizeof(last_dm_error), "%s", buf);
	if ((level <= 4 && g_verbose) || g_verbose > 1)
		fprintf(stderr, "%s: libdevmapper: %s\n", g_prog, buf);
}

int dmx_init(int no_udev)
{
	dm_log_with_errno_init(dm_log_cb);
	if (no_udev)
		dm_udev_set_sync_support(0);
	vmsg("udev sync: %s", dmx_udev_in_use() ? "on" : "off (nodes made by fleecectl)");
	return 0;
}

int dmx_udev_in_use(void)
{
	return dm_udev_get_sync_support();
}

/*
 * Run a task.  with_cookie for ops that change device nodes: the udev
 * cookie is waited on at once, unless shared is given, which collects the
 * cookie for one later dmx_udev_wait() (several tasks may share one).
 */
static int run_shared(struct dm_task *dmt, int with_cookie, uint16_t udev_flags, uint32_t *shared)
{
	uint32_t cookie = 0, *c = shared ? shared : &cookie;
	int ok;

	last_dm_error[0] = 0;
	if (with_cookie && !dm_task_set_cookie(dmt, c, udev_flags)) {
		dmx_errno = ENOMEM;
		return -1;
	}
	ok = dm_task_run(dmt);
	dmx_errno = ok ? 0 : dm_task_get_errno(dmt);
	if (!ok && !dmx_errno)
		dmx_errno = EIO;
	if (with_cookie && !shared)
		(void)dm_udev_wait(cookie);
	return ok ? 0 : -1;
}

static int run(struct dm_task *dmt, int with_cookie, uint16_t udev_flags)
{
	return run_shared(dmt, with_cookie, udev_flags, NULL);
}

void dmx_udev_wait(uint32_t cookie)
{
	(void)dm_udev_wait(cookie);
}

static struct dm_task *task(int type, const char *name)
{
	struct dm_task *dmt = dm_task_create(type);

	if (!dmt) {
		dmx_errno = ENOMEM;
		return NULL;
	}
	if (name && !dm_task_set_name(dmt, name)) {
		dm_task_destroy(dmt);
		dmx_errno = EINVAL;
		return NULL;
	}
	return dmt;
}

static int add_targets(struct dm_task *dmt, const struct dm_table_lines *tbl)
{
	for (int i = 0; i < tbl->n; i++)
		if (!dm_task_add_target(dmt, tbl->t[i].start, tbl->t[i].len, tbl->t[i].type,
					tbl->t[i].params ? tbl->t[i].params : ""))
			return -1;
	return 0;
}

static void fill_info(struct dm_task *dmt, const struct dm_info *di, struct dmx_info *info)
{
	const char *s;

	memset(info, 0, sizeof(*info));
	info->exists = di->exists;
	info->suspended = di->suspended;
	info->live_table = di->live_table;
	info->inactive_table = di->inactive_table;
	info->open_count = di->open_count;
	info->major = di->major;
	info->minor = di->minor;
	s = dm_task_get_name(dmt);
	snprintf(info->name, sizeof(info->name), "%s", s ? s : "");
	s = dm_task_get_uuid(dmt);
	snprintf(info->uuid, sizeof(info->uuid), "%s", s ? s : "");
}

static int info_task(struct dm_task *dmt, struct dmx_info *info)
{
	struct dm_info di;
	int r = -1;

	memset(info, 0, sizeof(*info));
	if (run(dmt, 0, 0)) {
		/* ENXIO: no such device (by name or number) */
		r = dmx_errno == ENXIO ? 0 : -1;
		goto out;
	}
	if (!dm_task_get_info(dmt, &di))
		goto out;
	if (!di.exists) {
		r = 0;
		goto out;
	}
	fill_info(dmt, &di, info);
	r = 1;
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_info(const char *name, struct dmx_info *info)
{
	struct dm_task *dmt = task(DM_DEVICE_INFO, name);

	if (!dmt)
		return -1;
	return info_task(dmt, info);
}

int dmx_info_devno(unsigned major, unsigned minor, struct dmx_info *info)
{
	struct dm_task *dmt;

	memset(info, 0, sizeof(*info));
	if (!dm_is_dm_major(major))
		return 0;
	dmt = task(DM_DEVICE_INFO, NULL);
	if (!dmt)
		return -1;
	if (!dm_task_set_major(dmt, (int)major) || !dm_task_set_minor(dmt, (int)minor)) {
		dm_task_destroy(dmt);
		return -1;
	}
	return info_task(dmt, info);
}

void dm_table_free(struct dm_table_lines *tbl)
{
	for (int i = 0; i < tbl->n; i++)
		free(tbl->t[i].params);
	tbl->n = 0;
}

uint64_t dm_table_size(const struct dm_table_lines *tbl)
{
	uint64_t end = 0;

	for (int i = 0; i < tbl->n; i++)
		if (tbl->t[i].start + tbl->t[i].len > end)
			end = tbl->t[i].start + tbl->t[i].len;
	return end;
}

int dmx_table(const char *name, int info_status, struct dm_table_lines *tbl)
{
	struct dm_task *dmt = task(info_status ? DM_DEVICE_STATUS : DM_DEVICE_TABLE, name);
	void *next = NULL;
	uint64_t start, len;
	char *type, *params;
	int r = -1;

	tbl->n = 0;
	if (!dmt)
		return -1;
	if (run(dmt, 0, 0))
		goto out;
	do {
		next = dm_get_next_target(dmt, next, &start, &len, &type, &params);
		if (!type)
			break;
		if (tbl->n == (int)(sizeof(tbl->t) / sizeof(tbl->t[0]))) {
			dmx_errno = E2BIG;
			dm_table_free(tbl);
			goto out;
		}
		tbl->t[tbl->n].start = start;
		tbl->t[tbl->n].len = len;
		snprintf(tbl->t[tbl->n].type, sizeof(tbl->t[0].type), "%s", type);
		tbl->t[tbl->n].params = strdup(params ? params : "");
		tbl->n++;
	} while (next);
	r = 0;
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_create(const char *name, const char *uuid, const struct dm_table_lines *tbl, uint16_t udev_flags)
{
	struct dm_task *dmt = task(DM_DEVICE_CREATE, name);
	int r = -1;

	if (!dmt)
		return -1;
	if (uuid && !dm_task_set_uuid(dmt, uuid))
		goto out;
	if (tbl && add_targets(dmt, tbl))
		goto out;
	/*
	 * Without a table the kernel sends no uevent, so a cookie would never
	 * complete; the node comes with the first resume (add_node on resume).
	 */
	r = run(dmt, tbl != NULL, udev_flags);
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_load(const char *name, const struct dm_table_lines *tbl)
{
	struct dm_task *dmt = task(DM_DEVICE_RELOAD, name);
	int r = -1;

	if (!dmt)
		return -1;
	if (add_targets(dmt, tbl))
		goto out;
	r = run(dmt, 0, 0);
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_clear(const char *name)
{
	struct dm_task *dmt = task(DM_DEVICE_CLEAR, name);
	int r;

	if (!dmt)
		return -1;
	r = run(dmt, 0, 0);
	dm_task_destroy(dmt);
	return r;
}

int dmx_suspend(const char *name, int lockfs)
{
	struct dm_task *dmt = task(DM_DEVICE_SUSPEND, name);
	int r = -1;

	if (!dmt)
		return -1;
	if (!lockfs && !dm_task_skip_lockfs(dmt))
		goto out;
	r = run(dmt, 0, 0);
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_resume_nowait(const char *name, uint16_t udev_flags, uint32_t *cookie)
{
	struct dm_task *dmt = task(DM_DEVICE_RESUME, name);
	int r;

	if (!dmt)
		return -1;
	r = run_shared(dmt, 1, udev_flags, cookie);
	dm_task_destroy(dmt);
	return r;
}

int dmx_resume(const char *name, uint16_t udev_flags)
{
	return dmx_resume_nowait(name, udev_flags, NULL);
}

int dmx_remove(const char *name, int deferred, uint16_t udev_flags)
{
	struct dm_task *dmt = task(DM_DEVICE_REMOVE, name);
	int r = -1;

	if (!dmt)
		return -1;
	/* udev's blkid may hold the device for a moment: let libdm retry */
	if (!dm_task_retry_remove(dmt))
		goto out;
	if (deferred && !dm_task_deferred_remove(dmt))
		goto out;
	r = run(dmt, 1, udev_flags);
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_message(const char *name, const char *message, char *reply, size_t len)
{
	struct dm_task *dmt = task(DM_DEVICE_TARGET_MSG, name);
	const char *resp;
	int r = -1;

	if (reply && len)
		reply[0] = 0;
	if (!dmt)
		return -1;
	if (!dm_task_set_sector(dmt, 0) || !dm_task_set_message(dmt, message))
		goto out;
	if (run(dmt, 0, 0))
		goto out;
	resp = dm_task_get_message_response(dmt);
	if (reply && len && resp)
		snprintf(reply, len, "%s", resp);
	r = 0;
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_deps(const char *name, unsigned (*devs)[2], int max)
{
	struct dm_task *dmt = task(DM_DEVICE_DEPS, name);
	struct dm_deps *deps;
	int r = -1;

	if (!dmt)
		return -1;
	if (run(dmt, 0, 0))
		goto out;
	deps = dm_task_get_deps(dmt);
	if (!deps)
		goto out;
	r = 0;
	for (uint32_t i = 0; i < deps->count && r < max; i++, r++) {
		devs[r][0] = (unsigned)major(deps->device[i]);
		devs[r][1] = (unsigned)minor(deps->device[i]);
	}
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_list(char ***names)
{
	struct dm_task *dmt = task(DM_DEVICE_LIST, NULL);
	struct dm_names *nm;
	char **v = NULL;
	int n = 0, cap = 0, r = -1;
	unsigned next = 0;

	*names = NULL;
	if (!dmt)
		return -1;
	if (run(dmt, 0, 0))
		goto out;
	nm = dm_task_get_names(dmt);
	if (!nm)
		goto out;
	if (nm->dev) {
		do {
			nm = (struct dm_names *)((char *)nm + next);
			if (n == cap) {
				char **nv;

				cap = cap ? cap * 2 : 16;
				nv = realloc(v, cap * sizeof(*v));
				if (!nv)
					goto out;
				v = nv;
			}
			v[n] = strdup(nm->name);
			if (!v[n])
				goto out;
			n++;
			next = nm->next;
		} while (next);
	}
	*names = v;
	v = NULL;
	r = n;
out:
	if (v)
		dmx_list_free(v, n);
	dm_task_destroy(dmt);
	return r;
}

void dmx_list_free(char **names, int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static int target_listed(const char *target, unsigned version[3])
{
	struct dm_task *dmt = task(DM_DEVICE_LIST_VERSIONS, NULL);
	struct dm_versions *tv, *last;
	int r = -1;

	if (!dmt)
		return -1;
	if (run(dmt, 0, 0))
		goto out;
	r = 0;
	tv = dm_task_get_versions(dmt);
	if (!tv)
		goto out;
	do {
		last = tv;
		if (!strcmp(tv->name, target)) {
			if (version)
				memcpy(version, tv->version, sizeof(tv->version));
			r = 1;
			break;
		}
		tv = (struct dm_versions *)((char *)tv + tv->next);
	} while (last != tv);
out:
	dm_task_destroy(dmt);
	return r;
}

int dmx_have_target(const char *target, unsigned version[3])
{
	int r = target_listed(target, version);
	char modprobe[256];

	if (r != 0)
		return r;
	/* Not loaded yet: ask modprobe, quietly, as the kernel would on a table load. */
	if (find_program("modprobe", modprobe, sizeof(modprobe))) {
		pid_t pid = fork();

		if (pid == 0) {
			int fd = open("/dev/null", O_RDWR);

			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
			execl(modprobe, "modprobe", "-q", "dm-fleece", (char *)NULL);
			_exit(127);
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
	}
	return target_listed(target, version);
}

int need_root(void)
{
	if (geteuid() != 0)
		return err(EXIT_ENV, NULL, "device-mapper needs root; run fleecectl as root");
	return 0;
}

int need_dm(void)
{
	static int checked;
	char drv[64];
	struct dm_task *dmt;
	int r;

	if (checked)
		return 0;
	if ((r = need_root()))
		return r;
	dmt = dm_task_create(DM_DEVICE_VERSION);
	r = dmt ? run(dmt, 0, 0) : -1;
	if (!r && !dm_task_get_driver_version(dmt, drv, sizeof(drv)))
		r = -1;
	if (dmt)
		dm_task_destroy(dmt);
	if (r) {
		err(EXIT_ENV, "/dev/mapper/control", "device-mapper is not available in this kernel");
		hint("load the dm-mod module (modprobe dm-mod); in a container, pass /dev/mapper/control in");
		return EXIT_ENV;
	}
	vmsg("device-mapper driver %s", drv);
	checked = 1;
	return 0;
}

int need_fleece_targets(void)
{
	unsigned v[3];
	int r;

	if ((r = need_dm()))
		return r;
	if (dmx_have_target(TARGET_ORIGIN, v) != 1 || dmx_have_target(TARGET_VIEW, NULL) != 1) {
		err(EXIT_ENV, NULL, "the kernel has no \"%s\" device-mapper target", TARGET_ORIGIN);
		hint("load the dm-fleece module: modprobe dm-fleece (or insmod dm-fleece.ko)");
		return EXIT_ENV;
	}
	vmsg("fleece target v%u.%u.%u", v[0], v[1], v[2]);
	return 0;
}

int dm_node_path(char *buf, size_t len, const char *name)
{
	struct stat st;

	snprintf(buf, len, "%s/%s", dm_dir(), name);
	if (stat(buf, &st) == 0 && S_ISBLK(st.st_mode))
		return 0;
	/* no udev, or udev was slow: make the node ourselves */
	if (!dm_mknodes(name))
		return -1;
	return stat(buf, &st) == 0 && S_ISBLK(st.st_mode) ? 0 : -1;
}

void kernel_reason(unsigned major_, unsigned minor_)
{
	char needle[48], line[512];
	const char *m;

	snprintf(needle, sizeof(needle), "%u:%u: fleece", major_, minor_);
	if (!kmsg_last(needle, line, sizeof(line))) {
		hint("the kernel log may say why: dmesg | grep fleece");
		return;
	}
	/* "device-mapper: table: 253:2: fleece-view: Cannot ... (-EBUSY)" */
	m = strstr(line, needle);
	m = m ? strchr(m + strlen(needle), ':') : NULL;
	hint("the kernel says: %s", m ? m + 2 : line);
}
