// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl unexport: stop the NBD server started by "fleecectl export".
 *
 * The pid comes from the state file and is only signalled when its command
 * line still names the server program, so a recycled pid is left alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fleecectl.h"

static int wait_gone(pid_t pid, const char *srv, unsigned ms)
{
	struct timespec ts = { 0, 20 * 1000000L };

	for (unsigned t = 0; t < ms; t += 20) {
		if (!pid_matches(pid, srv, NULL))
			return 1;
		nanosleep(&ts, NULL);
	}
	return !pid_matches(pid, srv, NULL);
}

int export_stop(const struct fleece_set *s, int quiet)
{
	char statef[PATH_MAX], p[PATH_MAX];
	struct kv kv;
	const char *pids, *srv, *sock, *uri;
	pid_t pid;

	set_path(statef, sizeof(statef), s->name, "export");
	if (kv_load(&kv, statef))
		return 0;	/* not exported */
	pids = kv_get(&kv, "pid");
	srv = kv_get(&kv, "server");
	sock = kv_get(&kv, "socket");
	uri = kv_get(&kv, "uri");
	pid = pids ? (pid_t)atoi(pids) : 0;
	if (srv && pid > 1 && pid_matches(pid, srv, NULL)) {
		kill(pid, SIGTERM);
		if (!wait_gone(pid, srv, 5000)) {
			warn_msg(s->name, "%s (pid %d) ignored SIGTERM; killing it", srv, (int)pid);
			kill(pid, SIGKILL);
			wait_gone(pid, srv, 2000);
		}
		if (!quiet)
			msg("stopped %s (pid %d) serving %s", srv, (int)pid, uri ? uri : s->view);
	} else if (!quiet) {
		msg("%s for %s was not running any more; cleaned up", srv ? srv : "the server", s->name);
	}
	if (sock && *sock)
		unlink(sock);
	set_path(p, sizeof(p), s->name, "export.pid");
	unlink(p);
	set_path(p, sizeof(p), s->name, "nbd-server.conf");
	unlink(p);
	unlink(statef);
	return 1;
}

int cmd_unexport(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct fleece_set s;
	int c, r;

	optind = 0;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1)
		return EXIT_USAGE;
	if (optind != argc - 1)
		return err(EXIT_USAGE, NULL, "unexport needs exactly one NAME (see %s unexport --help)", g_prog);
	if ((r = need_dm()))
		return r;
	if ((r = set_resolve(argv[optind], &s)))
		return r;
	if (!export_stop(&s, 0))
		msg("%s is not exported; nothing to do", s.name);
	return EXIT_OK;
}
