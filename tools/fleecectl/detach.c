// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl detach: take the fleece origin off the I/O path again.
 *
 * In place: load N-real's table back into the device, suspend + resume it,
 * remove N-real.  On top: remove /dev/mapper/N (refused while it is open).
 * Refused while a snapshot exists, unless --force, which ends it first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <libdevmapper.h>

#include "fleecectl.h"

int parse_detach_opts(int argc, char **argv, struct detach_opts *o)
{
	static const struct option lo[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((c = getopt_long(argc, argv, "fh", lo, NULL)) != -1) {
		if (c == 'f')
			o->force = 1;
		else
			return EXIT_USAGE;
	}
	if (optind != argc - 1)
		return err(EXIT_USAGE, NULL, "detach needs exactly one NAME (see %s detach --help)", g_prog);
	o->name = argv[optind];
	return 0;
}

/* Refused while a snapshot exists, unless --force, which ends it first. */
static int end_snapshot_first(const struct detach_opts *o, struct fleece_set *s)
{
	if (!s->have_view)
		return 0;
	if (!o->force) {
		err(EXIT_BUSY, s->name, "a snapshot is active (%s/%s)", dm_dir(), s->view);
		hint("end it first ('%s end %s'), or detach --force to end it and detach", g_prog, s->name);
		return EXIT_BUSY;
	}
	return snapshot_end(s, 1);
}

/* On top: remove /dev/mapper/N (refused while it is open). */
static int detach_on_top(const struct fleece_set *s)
{
	if (dmx_remove(s->origin, 0, 0)) {
		if (dmx_errno == EBUSY) {
			err(EXIT_BUSY, s->origin, "is in use");
			hint("unmount or close %s/%s first, then detach again", dm_dir(), s->origin);
			return EXIT_BUSY;
		}
		return err(EXIT_FAIL, s->origin, "cannot remove: %s", strerror(dmx_errno));
	}
	remove_set_dir(s->name);
	msg("detached fleece \"%s\": removed %s/%s; its users may go back to the device underneath",
	    s->name, dm_dir(), s->origin);
	return EXIT_OK;
}

/* In place, 1: load N-real's table into the device (inactive until resumed). */
static int load_saved_table(const struct fleece_set *s)
{
	struct dm_table_lines old = { 0 };
	int r = 0;

	if (dmx_table(s->real, 0, &old) || old.n == 0)
		return err(EXIT_FAIL, s->real, "cannot read the saved table: %s", strerror(dmx_errno));
	if (dm_table_size(&old) != s->size_sectors)
		r = err(EXIT_FAIL, s->origin, "size differs from %s (%llu vs %llu sectors); not touching it",
			s->real, (unsigned long long)s->size_sectors,
			(unsigned long long)dm_table_size(&old));
	else if (dmx_load(s->origin, &old))
		r = err(EXIT_FAIL, s->origin, "cannot load the saved table back: %s", strerror(dmx_errno));
	dm_table_free(&old);
	return r;
}

/* In place, 2: suspend + resume the device, which swaps the saved table in. */
static int switch_to_saved_table(const struct fleece_set *s)
{
	int r;

	critical_begin();
	if (dmx_suspend(s->origin, 1) && (dmx_errno != EBUSY || dmx_suspend(s->origin, 0))) {
		r = err(EXIT_FAIL, s->origin, "cannot suspend: %s", strerror(dmx_errno));
		critical_end();
		dmx_clear(s->origin);
		return r;
	}
	if (dmx_resume(s->origin, 0)) {
		critical_end();
		r = err(EXIT_FAIL, s->origin, "cannot resume with the saved table: %s", strerror(dmx_errno));
		hint("it may be left suspended: 'dmsetup resume %s'", s->origin);
		return r;
	}
	critical_end();
	return 0;
}

/* In place, 3: remove N-real. */
static int remove_real(const struct fleece_set *s)
{
	if (dmx_remove(s->real, 0, UDEV_FLAGS_PRIVATE)) {
		err(EXIT_FAIL, s->real, "cannot remove: %s", strerror(dmx_errno));
		hint("remove it by hand: dmsetup remove %s", s->real);
		return EXIT_FAIL;
	}
	return 0;
}

static int detach_in_place(const struct fleece_set *s)
{
	int r;

	if (s->have_origin) {
		if ((r = load_saved_table(s)))
			return r;
		if ((r = switch_to_saved_table(s)))
			return r;
	} else {
		warn_msg(s->real, "no device uses it any more (an interrupted attach?); removing it");
	}
	if ((r = remove_real(s)))
		return r;
	remove_set_dir(s->name);
	if (s->have_origin)
		msg("detached fleece \"%s\": %s has its own table again; removed %s", s->name, s->origin, s->real);
	else
		msg("removed the leftover %s", s->real);
	return EXIT_OK;
}

int cmd_detach(int argc, char **argv)
{
	struct detach_opts o;
	struct fleece_set s;
	int r;

	if ((r = parse_detach_opts(argc, argv, &o)))
		return r;
	if ((r = need_fleece_targets()))
		return r;
	if ((r = set_resolve(o.name, &s)))
		return r;
	if ((r = end_snapshot_first(&o, &s)))
		return r;
	if (!s.in_place)
		return detach_on_top(&s);
	return detach_in_place(&s);
}
