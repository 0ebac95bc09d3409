// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl export: serve the view over NBD and print its URI.
 *
 * qemu-nbd (default) runs without -r and with --discard=unmap: the view
 * fails every write with EIO, and a client's NBD_CMD_TRIM reaches the view
 * as BLKDISCARD, which releases the chunks it fully covers.  -r would make
 * qemu-nbd refuse the trims, so it is not used.
 *
 * nbd-server runs with readonly = true: it turns trims into
 * fallocate(PUNCH_HOLE), a zero-out that the view does not do, so trims
 * could never become releases there.  Release with "fleecectl release" or
 * "fleecectl backup --release" instead.
 *
 * The server runs as a daemon; its pid, URI and files are recorded in
 * <run dir>/<name>/export for status and unexport.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "fleecectl.h"

#define NBD_DEFAULT_PORT 10809
#define READY_TIMEOUT_MS 15000

int parse_export_opts(int argc, char **argv, struct export_opts *o)
{
	static const struct option lo[] = {
		{ "server", required_argument, NULL, 'S' },
		{ "socket", required_argument, NULL, 'k' },
		{ "port", required_argument, NULL, 'p' },
		{ "bind", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	uint64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((c = getopt_long(argc, argv, "k:p:b:h", lo, NULL)) != -1) {
		switch (c) {
		case 'S':
			if (!strcmp(optarg, "qemu-nbd"))
				o->server = SRV_QEMU_NBD;
			else if (!strcmp(optarg, "nbd-server"))
				o->server = SRV_NBD_SERVER;
			else
				return err(EXIT_USAGE, NULL, "invalid --server \"%s\": qemu-nbd or nbd-server", optarg);
			break;
		case 'k':
			if (optarg[0] != '/' || strlen(optarg) >= sizeof(((struct sockaddr_un *)0)->sun_path))
				return err(EXIT_USAGE, NULL, "invalid --socket \"%s\": an absolute path under 108 bytes",
					   optarg);
			o->socket = optarg;
			break;
		case 'p':
			if (parse_u64(optarg, &v) || v == 0 || v > 65535)
				return err(EXIT_USAGE, NULL, "invalid --port \"%s\": 1..65535", optarg);
			o->port = (unsigned)v;
			o->tcp = 1;
			break;
		case 'b':
			o->bind = optarg;
			o->tcp = 1;
			break;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1)
		return err(EXIT_USAGE, NULL, "export needs exactly one NAME (see %s export --help)", g_prog);
	o->name = argv[optind];
	if (o->tcp && o->socket)
		return err(EXIT_USAGE, o->name, "use either --socket or --port/--bind, not both");
	if (o->tcp && !o->port)
		o->port = NBD_DEFAULT_PORT;
	if (o->tcp && !o->bind)
		o->bind = "127.0.0.1";
	return 0;
}

/* Can we connect to the server yet? */
static int server_ready(const struct export_opts *o, const char *sock)
{
	int fd, ok = 0;

	if (!o->tcp) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return 0;
		ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(fd);
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
		char port[16];
		const char *host = o->bind;

		if (!strcmp(host, "0.0.0.0"))
			host = "127.0.0.1";
		else if (!strcmp(host, "::"))
			host = "::1";
		snprintf(port, sizeof(port), "%u", o->port);
		if (getaddrinfo(host, port, &hints, &res))
			return 0;
		for (ai = res; ai && !ok; ai = ai->ai_next) {
			fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
			if (fd < 0)
				continue;
			ok = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
			close(fd);
		}
		freeaddrinfo(res);
	}
	return ok;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void show_log(const char *log)
{
	char line[512];
	FILE *f = fopen(log, "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		fprintf(stderr, "%s:   | %s", g_prog, line);
	fclose(f);
}

/* Run argv with stdout/stderr to log; returns the exit status or -1. */
static int run_logged(char *const argv[], const char *log)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		int nul = open("/dev/null", O_RDONLY);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (nul >= 0)
			dup2(nul, 0);
		setsid();
		execv(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int read_pid(const char *path)
{
	FILE *f = fopen(path, "re");
	int pid = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%d", &pid) != 1)
		pid = 0;
	fclose(f);
	return pid;
}

static int prepare_socket(const char *sock)
{
	struct stat st;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, live;

	if (lstat(sock, &st))
		return 0;
	if (!S_ISSOCK(st.st_mode))
		return err(EXIT_BUSY, sock, "exists and is not a socket; pick another --socket");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	if (live)
		return err(EXIT_BUSY, sock, "a server listens on it already; pick another --socket");
	unlink(sock);	/* stale */
	return 0;
}

/* One export on its way: the server, its files and its command line. */
struct export {
	const char *srv;		/* "qemu-nbd" or "nbd-server" */
	char prog[PATH_MAX];		/* its path */
	char node[PATH_MAX];		/* the view's device node */
	char sock[PATH_MAX];
	char pidf[PATH_MAX], log[PATH_MAX], conf[PATH_MAX], statef[PATH_MAX];
	char uri[PATH_MAX + 64], desc[256], portstr[16], pidopt[PATH_MAX + 16];
	char *av[32];
	int pid;
};

/* There must be a snapshot, and a valid one. */
static int check_exportable(const struct fleece_set *s)
{
	if (!s->have_view) {
		err(EXIT_BUSY, s->name, "has no snapshot to export");
		hint("take one first: %s snapshot %s --exception FILE|DEVICE", g_prog, s->name);
		return EXIT_BUSY;
	}
	if (s->have_status && s->st.state == ST_INVALID) {
		err(EXIT_INVALID, s->view, "the snapshot is invalid (%s): every read fails", s->st.error);
		hint("end it and take a new one: %s end %s", g_prog, s->name);
		return EXIT_INVALID;
	}
	return 0;
}

/* Refuse a live export of the set; stop what a dead one left behind. */
static int check_not_exported(const struct fleece_set *s, struct export *x)
{
	struct kv kv = { 0 };

	set_path(x->statef, sizeof(x->statef), s->name, "export");
	if (!kv_load(&kv, x->statef)) {
		const char *p = kv_get(&kv, "pid"), *u = kv_get(&kv, "uri"), *sv = kv_get(&kv, "server");

		if (p && pid_matches(atoi(p), sv, NULL)) {
			err(EXIT_BUSY, s->name, "is exported already: %s (%s, pid %s)", u ? u : "?", sv ? sv : "?", p);
			hint("stop it first: %s unexport %s", g_prog, s->name);
			return EXIT_BUSY;
		}
		export_stop(s, 1);	/* stale state */
	}
	return 0;
}

static int find_server(const struct export_opts *o, const struct fleece_set *s, struct export *x)
{
	x->srv = o->server == SRV_NBD_SERVER ? "nbd-server" : "qemu-nbd";
	if (!find_program(x->srv, x->prog, sizeof(x->prog))) {
		err(EXIT_MISSING, s->name, "cannot export: %s is not installed (not found in PATH)", x->srv);
		hint(o->server == SRV_NBD_SERVER ? "install nbd-server, or use --server qemu-nbd"
						 : "install qemu-utils (qemu-nbd), or use --server nbd-server");
		return EXIT_MISSING;
	}
	return 0;
}

/* The view's node, the set's directory, the socket, fresh pid and log files. */
static int prepare_files(const struct export_opts *o, const struct fleece_set *s, struct export *x)
{
	int r;

	if (dm_node_path(x->node, sizeof(x->node), s->view))
		return err(EXIT_FAIL, s->view, "no device node in %s and cannot make one", dm_dir());
	if ((r = ensure_set_dir(s->name)))
		return r;
	if (o->socket)
		snprintf(x->sock, sizeof(x->sock), "%s", o->socket);
	else if (set_path(x->sock, sizeof(x->sock), s->name, "nbd.sock") || strlen(x->sock) >= 108)
		return err(EXIT_USAGE, x->sock, "socket path too long; pass --socket");
	if (!o->tcp && (r = prepare_socket(x->sock)))
		return r;
	set_path(x->pidf, sizeof(x->pidf), s->name, "export.pid");
	set_path(x->log, sizeof(x->log), s->name, "export.log");
	set_path(x->conf, sizeof(x->conf), s->name, "nbd-server.conf");
	unlink(x->pidf);
	unlink(x->log);
	return 0;
}

/* The server's command line in x->av; nbd-server also gets its config file. */
static int build_command(const struct export_opts *o, const struct fleece_set *s, struct export *x)
{
	int n = 0;

	snprintf(x->portstr, sizeof(x->portstr), "%u", o->port);
	snprintf(x->desc, sizeof(x->desc), "fleecectl snapshot of %s", s->origin);

	x->av[n++] = x->prog;
	if (o->server == SRV_QEMU_NBD) {
		snprintf(x->pidopt, sizeof(x->pidopt), "--pid-file=%s", x->pidf);
		x->av[n++] = "--fork";
		x->av[n++] = x->pidopt;
		x->av[n++] = "--format=raw";
		x->av[n++] = "--cache=none";		/* O_DIRECT: no page cache copy of the view */
		x->av[n++] = "--discard=unmap";	/* trims become releases */
		x->av[n++] = "--shared=8";
		x->av[n++] = "--persistent";
		x->av[n++] = "--export-name";
		x->av[n++] = (char *)s->name;
		x->av[n++] = "--description";
		x->av[n++] = x->desc;
		if (o->tcp) {
			x->av[n++] = "--bind";
			x->av[n++] = (char *)o->bind;
			x->av[n++] = "--port";
			x->av[n++] = x->portstr;
		} else {
			x->av[n++] = "--socket";
			x->av[n++] = x->sock;
		}
		x->av[n++] = x->node;
	} else {
		FILE *f = fopen(x->conf, "we");

		if (!f)
			return err(EXIT_FAIL, x->conf, "cannot write: %s", strerror(errno));
		fprintf(f, "# written by fleecectl export %s\n[generic]\n", s->name);
		if (o->tcp)
			fprintf(f, "\tlistenaddr = %s\n\tport = %u\n", o->bind, o->port);
		else
			fprintf(f, "\tunixsock = %s\n", x->sock);
		fprintf(f, "\tallowlist = true\n[%s]\n\texportname = %s\n\treadonly = true\n", s->name, x->node);
		if (fclose(f))
			return err(EXIT_FAIL, x->conf, "cannot write: %s", strerror(errno));
		x->av[n++] = "-C";
		x->av[n++] = x->conf;
		x->av[n++] = "-p";
		x->av[n++] = x->pidf;
	}
	x->av[n] = NULL;
	return 0;
}

/* Run the server; it daemonizes, its output goes to the log. */
static int start_server(const struct fleece_set *s, const struct export *x)
{
	int r;

	if (g_verbose) {
		fprintf(stderr, "%s: running", g_prog);
		for (int i = 0; x->av[i]; i++)
			fprintf(stderr, " %s", x->av[i]);
		fputc('\n', stderr);
	}
	r = run_logged(x->av, x->log);
	if (r != 0) {
		err(EXIT_FAIL, s->view, "%s failed (exit status %d):", x->srv, r);
		show_log(x->log);
		return EXIT_FAIL;
	}
	return 0;
}

/* qemu-nbd --fork returns once it listens; nbd-server may not. */
static int wait_ready(const struct export_opts *o, const struct fleece_set *s, struct export *x)
{
	int waited;

	x->pid = 0;
	for (waited = 0; waited < READY_TIMEOUT_MS; waited += 50) {
		x->pid = read_pid(x->pidf);
		if (x->pid > 0 && server_ready(o, x->sock))
			break;
		sleep_ms(50);
	}
	if (waited >= READY_TIMEOUT_MS) {
		err(EXIT_FAIL, s->view, "%s did not start listening within %d s:", x->srv, READY_TIMEOUT_MS / 1000);
		show_log(x->log);
		if (x->pid > 0 && pid_matches(x->pid, x->srv, NULL))
			kill(x->pid, SIGTERM);
		return EXIT_FAIL;
	}
	return 0;
}

/* The URI, and the state file for status and unexport. */
static int record_export(const struct export_opts *o, const struct fleece_set *s, struct export *x)
{
	struct kv kv = { 0 };

	if (o->tcp)
		nbd_uri_tcp(x->uri, sizeof(x->uri), s->name, o->bind, o->port);
	else
		nbd_uri_unix(x->uri, sizeof(x->uri), s->name, x->sock);

	kv_set(&kv, "server", "%s", x->srv);
	kv_set(&kv, "pid", "%d", x->pid);
	kv_set(&kv, "uri", "%s", x->uri);
	kv_set(&kv, "socket", "%s", o->tcp ? "" : x->sock);
	kv_set(&kv, "bind", "%s", o->tcp ? o->bind : "");
	kv_set(&kv, "port", "%u", o->tcp ? o->port : 0);
	kv_set(&kv, "device", "%s", x->node);
	if (kv_save(&kv, x->statef)) {
		kill(x->pid, SIGTERM);
		return err(EXIT_FAIL, x->statef, "cannot write state: %s", strerror(errno));
	}
	return 0;
}

static void print_export(const struct export_opts *o, const struct fleece_set *s, const struct export *x)
{
	/* the URI alone on stdout, for URI=$(fleecectl export NAME) */
	printf("%s\n", x->uri);
	fflush(stdout);
	if (!g_quiet) {
		fprintf(stderr, "%s: %s serves %s (pid %d)%s\n", g_prog, x->srv, x->node, x->pid,
			o->server == SRV_QEMU_NBD ? "; writes fail, trims release chunks" : ", read-only");
		if (o->server == SRV_NBD_SERVER && !o->tcp)
			fprintf(stderr, "%s: kernel client: nbd-client -unix %s /dev/nbd0 -N %s\n", g_prog, x->sock,
				s->name);
		else if (o->server == SRV_NBD_SERVER)
			fprintf(stderr, "%s: kernel client: nbd-client %s %u /dev/nbd0 -N %s\n", g_prog,
				strcmp(o->bind, "0.0.0.0") ? o->bind : "HOST", o->port, s->name);
	}
}

int cmd_export(int argc, char **argv)
{
	struct export_opts o;
	struct fleece_set s;
	struct export x;
	int r;

	if ((r = parse_export_opts(argc, argv, &o)))
		return r;
	if ((r = need_fleece_targets()))
		return r;
	if ((r = set_resolve(o.name, &s)))
		return r;
	if ((r = check_exportable(&s)))
		return r;
	if ((r = check_not_exported(&s, &x)))
		return r;
	if ((r = find_server(&o, &s, &x)))
		return r;
	if ((r = prepare_files(&o, &s, &x)))
		return r;
	if ((r = build_command(&o, &s, &x)))
		return r;
	if ((r = start_server(&s, &x)))
		return r;
	if ((r = wait_ready(&o, &s, &x)))
		return r;
	if ((r = record_export(&o, &s, &x)))
		return r;
	print_export(&o, &s, &x);
	return EXIT_OK;
}
