// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl end: stop the export, remove the view (which ends the snapshot
 * and frees its memory), and release the exception store: the loop device
 * goes with the view (autoclear), and a file that fleecectl created is
 * deleted.  A file or device the user supplied is left as it is.
 *
 * --force: if the view is still open (a client, a backup), its table is
 * replaced by "error" first so every reader fails and the snapshot ends at
 * once; the device itself then goes away on its last close (deferred
 * remove).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "fleecectl.h"

int exception_cleanup(const char *name)
{
	char p[PATH_MAX];
	struct kv kv;
	const char *dev, *file, *loop, *created;

	set_path(p, sizeof(p), name, "exception");
	if (kv_load(&kv, p))
		return 0;
	dev = kv_get(&kv, "device");
	file = kv_get(&kv, "file");
	loop = kv_get(&kv, "loop");
	created = kv_get(&kv, "created");
	if (loop && !strcmp(loop, "1") && dev && file)
		loop_detach(dev, file);	/* normally autoclear did it already */
	if (created && !strcmp(created, "1") && file && *file) {
		if (unlink(file) && errno != ENOENT)
			warn_msg(file, "cannot delete the exception file: %s", strerror(errno));
		else
			vmsg("deleted %s", file);
	}
	unlink(p);
	return 1;
}

int snapshot_end(struct fleece_set *s, int force)
{
	struct fleece_status st = s->st;
	int had_status = s->have_status;
	char sz[32];

	export_stop(s, g_quiet);
	if (dmx_remove(s->view, 0, UDEV_FLAGS_VIEW)) {
		if (dmx_errno != EBUSY)
			return err(EXIT_FAIL, s->view, "cannot remove: %s", strerror(dmx_errno));
		if (!force) {
			err(EXIT_BUSY, s->view, "is still open (an NBD client, a backup, a mount?)");
			hint("close it first (nbd-client -d, umount), or end --force");
			return EXIT_BUSY;
		} else {
			struct dm_table_lines t = { .n = 1 };

			t.t[0].start = 0;
			t.t[0].len = s->size_sectors;
			snprintf(t.t[0].type, sizeof(t.t[0].type), "error");
			t.t[0].params = "";
			if (dmx_load(s->view, &t) || dmx_suspend(s->view, 0) || dmx_resume(s->view, UDEV_FLAGS_VIEW))
				return err(EXIT_FAIL, s->view, "cannot replace its table by error: %s",
					   strerror(dmx_errno));
			if (dmx_remove(s->view, 1, UDEV_FLAGS_VIEW))
				return err(EXIT_FAIL, s->view, "cannot remove: %s", strerror(dmx_errno));
			warn_msg(s->view, "was open: its readers now get errors; it disappears on its last close");
		}
	}
	exception_cleanup(s->name);
	s->have_view = 0;
	if (had_status)
		msg("snapshot of %s ended (it was %s): %" PRIu64 " chunks copied, %" PRIu64 " released, exception peak"
		    " use %s%s%s", s->name, state_name(st.state), st.chunks_copied, st.chunks_released,
		    fmt_size(sz, sizeof(sz), st.slots_used * st.chunk_sectors * 512ull),
		    strcmp(st.error, "none") ? ", error " : "", strcmp(st.error, "none") ? st.error : "");
	else
		msg("snapshot of %s ended", s->name);
	return EXIT_OK;
}

int cmd_end(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct end_opts o = { 0 };
	struct fleece_set s;
	int c, r;

	optind = 0;
	while ((c = getopt_long(argc, argv, "fh", lo, NULL)) != -1) {
		if (c == 'f')
			o.force = 1;
		else
			return EXIT_USAGE;
	}
	if (optind != argc - 1)
		return err(EXIT_USAGE, NULL, "end needs exactly one NAME (see %s end --help)", g_prog);
	o.name = argv[optind];
	if ((r = need_dm()))
		return r;
	if ((r = set_resolve(o.name, &s)))
		return r;
	if (!s.have_view) {
		export_stop(&s, 1);
		exception_cleanup(s.name);
		msg("%s has no snapshot; nothing to end", s.name);
		return EXIT_OK;
	}
	return snapshot_end(&s, o.force);
}
