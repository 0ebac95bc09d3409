// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl: image fleecing with the dm-fleece targets.
 *
 *   fleecectl [-v] [-q] [--no-udev] VERB [options] ...
 *
 * main() handles the global options and hands the rest of the command line
 * to the verb (argv[0] is the verb).  Every verb has its own --help.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleecectl.h"

struct verb {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
	const char *usage;
};

static const struct verb verbs[] = {
	{ "attach", cmd_attach, "put the fleece origin on a device's I/O path",
	  "attach DEVICE [--name NAME] [--chunk-size SIZE] [--on-top]\n"
	  "       [--discard-policy defer|copy|ignore]\n"
	  "\n"
	  "A device-mapper device with a linear/striped table (an LVM logical volume)\n"
	  "is attached in place: its table moves to NAME-real and the device itself\n"
	  "gets the fleece origin table, so its path keeps working.  Any other block\n"
	  "device (or --on-top) gets /dev/mapper/NAME on top; its users must switch.\n"
	  "\n"
	  "  -n, --name NAME        fleece name (default: the dm name in place, the\n"
	  "                         device's base name on top)\n"
	  "  -c, --chunk-size SIZE  copy unit, a power of two from 4K to 1M (default 64K)\n"
	  "  -t, --on-top           create /dev/mapper/NAME on top even for a dm device\n"
	  "  -d, --discard-policy P what a discard of the device does to a chunk a\n"
	  "                         snapshot still needs: defer it to the snapshot's end\n"
	  "                         (default; costs no exception space), copy the chunk\n"
	  "                         first, or ignore the discard\n" },
	{ "detach", cmd_detach, "take the fleece origin off the I/O path",
	  "detach NAME [--force]\n"
	  "\n"
	  "Gives an in-place device its own table back and removes NAME-real, or\n"
	  "removes /dev/mapper/NAME created on top (it must be closed).\n"
	  "\n"
	  "  -f, --force  end an active snapshot first (otherwise detach refuses)\n" },
	{ "snapshot", cmd_snapshot, "take a point-in-time view NAME-view",
	  "snapshot NAME --exception FILE|DEVICE [--size SIZE] [--cbw-error MODE]\n"
	  "         [--cbw-timeout MS] [--max-copies N]\n"
	  "\n"
	  "Suspends the origin (freezing a mounted file system), starts the view\n"
	  "/dev/mapper/NAME-view, resumes the origin.  Old data of chunks written\n"
	  "from then on is copied to the exception store first.\n"
	  "\n"
	  "  -e, --exception PATH   a block device (used whole, overwritten) or a file,\n"
	  "                         attached through a loop device; a file that does\n"
	  "                         not exist is created and deleted again by 'end'\n"
	  "  -s, --size SIZE        size of the file: bytes with K/M/G/T suffix or N%\n"
	  "                         of the origin (default for a new file: 25%)\n"
	  "      --cbw-error MODE   when a copy fails or the store is full:\n"
	  "                         break_snapshot (default): the snapshot becomes\n"
	  "                           invalid, writes go on;\n"
	  "                         break_write: the write fails with EIO, the\n"
	  "                           snapshot stays valid\n"
	  "      --cbw-timeout MS   a copy taking longer counts as failed (0 = never)\n"
	  "      --max-copies N     copies in flight (default: the kernel's)\n" },
	{ "export", cmd_export, "serve the view over NBD, print its URI",
	  "export NAME [--server qemu-nbd|nbd-server] [--socket PATH | --port N [--bind ADDR]]\n"
	  "\n"
	  "Starts an NBD server for NAME-view (export name NAME) and prints its URI on\n"
	  "stdout.  Default: qemu-nbd on the unix socket <run dir>/NAME/nbd.sock.\n"
	  "qemu-nbd passes a client's trims on as releases; writes fail with EIO.\n"
	  "nbd-server exports read-only (it cannot pass trims on).\n"
	  "\n"
	  "      --server PROG  qemu-nbd (default) or nbd-server\n"
	  "  -k, --socket PATH  listen on this unix socket\n"
	  "  -p, --port N       listen on TCP port N (default 10809 with --bind)\n"
	  "  -b, --bind ADDR    TCP address to listen on (default 127.0.0.1)\n" },
	{ "unexport", cmd_unexport, "stop the NBD server",
	  "unexport NAME\n" },
	{ "backup", cmd_backup, "copy the view to a sparse raw image",
	  "backup NAME --to FILE [--release] [--force] [--progress|--no-progress]\n"
	  "       [--io-size SIZE]\n"
	  "\n"
	  "Reads NAME-view and writes a raw image; all-zero 4 KiB blocks are skipped,\n"
	  "so a file stays sparse.  Shows a progress bar on a terminal, plain lines\n"
	  "otherwise.\n"
	  "\n"
	  "  -o, --to FILE     output file (or block device); refuses to overwrite a\n"
	  "                    file unless --force\n"
	  "  -r, --release     release each chunk once it is safely written\n"
	  "  -f, --force       overwrite FILE\n"
	  "      --progress    force the progress bar; --no-progress: none\n"
	  "      --io-size N   read size (default 1M)\n"
	  "\n"
	  "Exit codes: 0 complete; 8 the snapshot is or became invalid; 9 read or\n"
	  "write error; 6 no space for the output.\n" },
	{ "release", cmd_release, "release a range of the snapshot",
	  "release NAME OFFSET LENGTH\n"
	  "\n"
	  "Chunks fully inside [OFFSET, OFFSET+LENGTH) stop being protected and their\n"
	  "exception space is freed; reading them later fails.  Sizes take K/M/G\n"
	  "suffixes or 's' for 512-byte sectors.\n" },
	{ "end", cmd_end, "end the snapshot: unexport, remove the view, free the store",
	  "end NAME [--force]\n"
	  "\n"
	  "  -f, --force  end it even while the view is open: readers get errors and\n"
	  "               the device goes away on its last close\n" },
	{ "status", cmd_status, "show fleece sets, in words or JSON",
	  "status [NAME] [--json]\n"
	  "\n"
	  "  -j, --json  machine-readable output with stable keys (see fleecectl(8))\n" },
	{ NULL, NULL, NULL, NULL }
};

static void usage(FILE *f)
{
	fprintf(f, "usage: %s [-v] [-q] [--no-udev] VERB [options]\n\nverbs:\n", g_prog);
	for (const struct verb *v = verbs; v->name; v++)
		fprintf(f, "  %-9s %s\n", v->name, v->summary);
	fprintf(f, "\nglobal options:\n"
		"  -v, --verbose  say what is done (twice: libdevmapper debug)\n"
		"  -q, --quiet    only errors\n"
		"      --no-udev  do not wait for udev; make /dev/mapper nodes directly\n"
		"                 (also: DM_DISABLE_UDEV=1)\n"
		"  -V, --version  print the version\n"
		"\n'%s VERB --help' describes a verb; 'man fleecectl' has the rest.\n", g_prog);
}

void verb_usage(const char *verb, FILE *f)
{
	for (const struct verb *v = verbs; v->name; v++)
		if (!strcmp(v->name, verb)) {
			fprintf(f, "usage: %s %s", g_prog, v->usage);
			return;
		}
	usage(f);
}

int wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--"))
			break;
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "no-udev", no_argument, NULL, 'U' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c, no_udev = 0, r;

	/* "+": stop at the verb; its options are its own */
	while ((c = getopt_long(argc, argv, "+vqVh", lo, NULL)) != -1) {
		switch (c) {
		case 'v':
			g_verbose++;
			break;
		case 'q':
			g_quiet = 1;
			break;
		case 'U':
			no_udev = 1;
			break;
		case 'V':
			printf("fleecectl %s\n", FLEECECTL_VERSION);
			return EXIT_OK;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (getenv("DM_DISABLE_UDEV"))
		no_udev = 1;
	argc -= optind;
	argv += optind;
	if (!strcmp(argv[0], "help")) {
		if (argc > 1)
			verb_usage(argv[1], stdout);
		else
			usage(stdout);
		return EXIT_OK;
	}
	for (const struct verb *v = verbs; v->name; v++) {
		if (strcmp(v->name, argv[0]))
			continue;
		if (wants_help(argc, argv)) {
			verb_usage(v->name, stdout);
			return EXIT_OK;
		}
		dmx_init(no_udev);
		r = v->fn(argc, argv);
		if (r == EXIT_USAGE)
			fprintf(stderr, "usage: %s %.*s\n", g_prog, (int)strcspn(v->usage, "\n"), v->usage);
		return r;
	}
	err(EXIT_USAGE, NULL, "unknown verb \"%s\"", argv[0]);
	usage(stderr);
	return EXIT_USAGE;
}
