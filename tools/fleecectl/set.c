// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl: finding a fleece set.
 *
 * A set named N is one of:
 *
 *   on top   N        UUID FLEECE-ORIGIN-N   "fleece <user's device>"
 *   in place <dm dev> (user's, e.g. LVM)     "fleece <N-real>"
 *            N-real   UUID FLEECE-REAL-N     the device's old table
 *
 * plus, while a snapshot exists, N-view (UUID FLEECE-VIEW-N).  Ownership is
 * proven by those UUIDs: an in-place origin keeps its own UUID (LVM's), so
 * it counts as ours only when its one target is "fleece" on top of a
 * FLEECE-REAL- device.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <libdevmapper.h>

#include "fleecectl.h"

static int has_prefix(const char *s, const char *p)
{
	return !strncmp(s, p, strlen(p));
}

/* If dm device `dm` is a single-target fleece origin, return its table. */
static int origin_table_of(const char *dm, struct origin_table *ot, uint64_t *size)
{
	struct dm_table_lines tbl;
	int r = 0;

	if (dmx_table(dm, 0, &tbl))
		return 0;
	if (tbl.n == 1 && !strcmp(tbl.t[0].type, TARGET_ORIGIN) &&
	    !parse_origin_table(tbl.t[0].params, ot)) {
		*size = tbl.t[0].len;
		r = 1;
	}
	dm_table_free(&tbl);
	return r;
}

/* Find the in-place origin stacked on the -real device major:minor. */
static int find_inplace_origin(unsigned major, unsigned minor, char *out, size_t len)
{
	char **names;
	int n = dmx_list(&names), found = 0;

	if (n < 0)
		return -1;
	for (int i = 0; i < n && !found; i++) {
		struct origin_table ot;
		uint64_t size;

		if (origin_table_of(names[i], &ot, &size) && ot.major == major && ot.minor == minor) {
			snprintf(out, len, "%s", names[i]);
			found = 1;
		}
	}
	dmx_list_free(names, n);
	return found;
}

/* Set name N: N with FLEECE-ORIGIN-N, or N-real with FLEECE-REAL-N. */
static int resolve_by_set_name(const char *name, struct fleece_set *s)
{
	struct dmx_info info;
	char dm[DMNAME_LEN + 16], uuid[DMNAME_LEN + 32];

	if (!valid_name(name))
		return 0;
	snprintf(uuid, sizeof(uuid), "%s%s", UUID_ORIGIN, name);
	if (dmx_info(name, &info) == 1 && !strcmp(info.uuid, uuid)) {
		snprintf(s->name, sizeof(s->name), "%s", name);
		snprintf(s->origin, sizeof(s->origin), "%s", name);
		s->origin_major = info.major;
		s->origin_minor = info.minor;
		s->have_origin = 1;
		return 1;
	}
	snprintf(dm, sizeof(dm), "%s%s", name, SUFFIX_REAL);
	snprintf(uuid, sizeof(uuid), "%s%s", UUID_REAL, name);
	if (dmx_info(dm, &info) == 1 && !strcmp(info.uuid, uuid)) {
		snprintf(s->name, sizeof(s->name), "%s", name);
		snprintf(s->real, sizeof(s->real), "%s", dm);
		s->real_major = info.major;
		s->real_minor = info.minor;
		s->have_real = 1;
		s->in_place = 1;
		if (find_inplace_origin(info.major, info.minor, s->origin, sizeof(s->origin)) == 1) {
			struct dmx_info oi;

			if (dmx_info(s->origin, &oi) == 1) {
				s->origin_major = oi.major;
				s->origin_minor = oi.minor;
				s->have_origin = 1;
			}
		}
		return 1;
	}
	return 0;
}

int set_refresh(struct fleece_set *s)
{
	struct dm_table_lines tbl;
	struct dmx_info vi;
	char uuid[DMNAME_LEN + 32];

	s->have_status = 0;
	s->have_view = 0;
	if (s->have_origin) {
		struct origin_table ot;
		uint64_t size;

		if (origin_table_of(s->origin, &ot, &size)) {
			s->backing_major = ot.major;
			s->backing_minor = ot.minor;
			s->chunk_sectors = ot.chunk_sectors;
			strcpy(s->discard_policy, ot.discard_policy);
			s->size_sectors = size;
		}
		if (!dmx_table(s->origin, 1, &tbl)) {
			if (tbl.n == 1 && !strcmp(tbl.t[0].type, TARGET_ORIGIN) &&
			    !parse_status_info(tbl.t[0].params, &s->st))
				s->have_status = 1;
			dm_table_free(&tbl);
		}
	}
	snprintf(s->view, sizeof(s->view), "%s%s", s->name, SUFFIX_VIEW);
	snprintf(uuid, sizeof(uuid), "%s%s", UUID_VIEW, s->name);
	if (dmx_info(s->view, &vi) == 1 && !strcmp(vi.uuid, uuid)) {
		s->have_view = 1;
		s->view_major = vi.major;
		s->view_minor = vi.minor;
		s->view_open_count = vi.open_count;
		memset(&s->vt, 0, sizeof(s->vt));
		if (!dmx_table(s->view, 0, &tbl)) {
			if (tbl.n == 1 && !strcmp(tbl.t[0].type, TARGET_VIEW))
				(void)parse_view_table(tbl.t[0].params, &s->vt);
			dm_table_free(&tbl);
		}
		/* the view's own status is the snapshot's */
		if (vi.live_table && !dmx_table(s->view, 1, &tbl)) {
			struct fleece_status st;

			if (tbl.n == 1 && !strcmp(tbl.t[0].type, TARGET_VIEW) &&
			    !parse_status_info(tbl.t[0].params, &st)) {
				s->st = st;
				s->have_status = 1;
			}
			dm_table_free(&tbl);
		}
	}
	return 0;
}

int set_resolve(const char *arg, struct fleece_set *s)
{
	struct dmx_info info;
	const char *dm = arg;
	char devname[DMNAME_LEN];
	int r;

	memset(s, 0, sizeof(*s));
	if (strchr(arg, '/')) {
		struct stat st;

		if (stat(arg, &st))
			return err(EXIT_NOTFOUND, arg, "no such device (%s)", strerror(errno));
		if (!S_ISBLK(st.st_mode))
			return err(EXIT_NOTFOUND, arg, "not a block device");
		r = dmx_info_devno(major(st.st_rdev), minor(st.st_rdev), &info);
		if (r < 0)
			return err(EXIT_FAIL, arg, "cannot query device-mapper: %s", strerror(dmx_errno));
		if (r == 0) {
			err(EXIT_NOTOURS, arg, "not a fleece device (not even device-mapper)");
			hint("attach it first: %s attach %s", g_prog, arg);
			return EXIT_NOTOURS;
		}
		snprintf(devname, sizeof(devname), "%s", info.name);
		dm = devname;
	}

	if (resolve_by_set_name(dm, s) == 1)
		goto found;

	r = dmx_info(dm, &info);
	if (r < 0)
		return err(EXIT_FAIL, dm, "cannot query device-mapper: %s", strerror(dmx_errno));
	if (r == 0) {
		err(EXIT_NOTFOUND, arg, "no such fleece device");
		hint("list fleece devices with '%s status'; set one up with '%s attach DEVICE'", g_prog, g_prog);
		return EXIT_NOTFOUND;
	}
	if (has_prefix(info.uuid, UUID_REAL) || has_prefix(info.uuid, UUID_VIEW) ||
	    has_prefix(info.uuid, UUID_ORIGIN)) {
		const char *setname = strchr(info.uuid + strlen(UUID_PREFIX), '-') + 1;

		if (resolve_by_set_name(setname, s) == 1)
			goto found;
	} else {
		struct origin_table ot;
		uint64_t size;
		struct dmx_info ri;

		/* an in-place origin under another name */
		if (origin_table_of(dm, &ot, &size) && dmx_info_devno(ot.major, ot.minor, &ri) == 1 &&
		    has_prefix(ri.uuid, UUID_REAL) && resolve_by_set_name(ri.uuid + strlen(UUID_REAL), s) == 1)
			goto found;
	}
	err(EXIT_NOTOURS, arg, "not managed by fleecectl (device-mapper UUID \"%s\")", info.uuid);
	hint("fleecectl only touches devices it set up; attach it first: %s attach %s%s", g_prog,
	     strchr(arg, '/') ? "" : "/dev/mapper/", arg);
	return EXIT_NOTOURS;

found:
	set_refresh(s);
	return EXIT_OK;
}

int set_list(char ***out)
{
	char **names, **sets = NULL;
	int n = dmx_list(&names), ns = 0;

	*out = NULL;
	if (n < 0)
		return -1;
	sets = calloc(n ? n : 1, sizeof(*sets));
	if (!sets) {
		dmx_list_free(names, n);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		struct dmx_info info;
		const char *set = NULL;
		int dup = 0;

		if (dmx_info(names[i], &info) != 1)
			continue;
		if (has_prefix(info.uuid, UUID_ORIGIN))
			set = info.uuid + strlen(UUID_ORIGIN);
		else if (has_prefix(info.uuid, UUID_REAL))
			set = info.uuid + strlen(UUID_REAL);
		if (!set)
			continue;
		for (int k = 0; k < ns; k++)
			dup |= !strcmp(sets[k], set);
		if (!dup)
			sets[ns++] = strdup(set);
	}
	dmx_list_free(names, n);
	*out = sets;
	return ns;
}

int set_origin_path(const struct fleece_set *s, char *buf, size_t len)
{
	return dm_node_path(buf, len, s->origin);
}
