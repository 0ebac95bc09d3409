// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl release: tell the view that a byte range has been backed up.
 * Chunks the range covers fully stop being protected, their exception slots
 * are freed, and later reads of them fail with EIO.  The same as a discard
 * on the view; useful with nbd-server, which cannot pass discards on.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <libdevmapper.h>

#include "fleecectl.h"

int parse_release_opts(int argc, char **argv, struct release_opts *o)
{
	static const struct option lo[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1)
		return EXIT_USAGE;
	if (optind != argc - 3)
		return err(EXIT_USAGE, NULL, "release needs NAME OFFSET LENGTH (see %s release --help)", g_prog);
	o->name = argv[optind];
	if (!strcmp(argv[optind + 1], "0"))
		o->offset = 0;
	else if (parse_size(argv[optind + 1], &o->offset, NULL))
		return err(EXIT_USAGE, NULL, "invalid OFFSET \"%s\": e.g. 0, 64M, 2048s", argv[optind + 1]);
	if (parse_size(argv[optind + 2], &o->length, NULL))
		return err(EXIT_USAGE, NULL, "invalid LENGTH \"%s\": e.g. 1G, 128s", argv[optind + 2]);
	if (o->offset % 512 || o->length % 512)
		return err(EXIT_USAGE, NULL, "OFFSET and LENGTH must be multiples of 512 bytes");
	return 0;
}

int cmd_release(int argc, char **argv)
{
	struct release_opts o;
	struct fleece_set s;
	uint64_t before;
	char m[96], a[32], b[32];
	int r;

	if ((r = parse_release_opts(argc, argv, &o)))
		return r;
	if ((r = need_fleece_targets()))
		return r;
	if ((r = set_resolve(o.name, &s)))
		return r;
	if (!s.have_view) {
		err(EXIT_BUSY, s.name, "has no snapshot; nothing to release");
		return EXIT_BUSY;
	}
	if (o.offset >= s.size_sectors * 512 || o.length > s.size_sectors * 512 - o.offset)
		return err(EXIT_USAGE, s.view, "range %" PRIu64 "+%" PRIu64 " is beyond its end (%" PRIu64 " bytes)",
			   o.offset, o.length, s.size_sectors * 512);
	before = s.st.chunks_released;
	snprintf(m, sizeof(m), DM_FLEECE_MSG_RELEASE " %" PRIu64 " %" PRIu64, o.offset / 512, o.length / 512);
	if (dmx_message(s.view, m, NULL, 0))
		return err(EXIT_FAIL, s.view, "the kernel refused \"%s\": %s", m, strerror(dmx_errno));
	set_refresh(&s);
	msg("released %s at %s of %s: %" PRIu64 " more chunks released (%" PRIu64 " in all)",
	    fmt_size(a, sizeof(a), o.length), fmt_size(b, sizeof(b), o.offset), s.view,
	    s.st.chunks_released - before, s.st.chunks_released);
	return EXIT_OK;
}
