// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl: shared helpers that do not touch device-mapper.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fleecectl.h"

int g_verbose;
int g_quiet;
const char *g_prog = "fleecectl";

void msg(const char *fmt, ...)
{
	va_list ap;

	if (g_quiet)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

void vmsg(const char *fmt, ...)
{
	va_list ap;

	if (!g_verbose)
		return;
	fprintf(stderr, "%s: ", g_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int err(int code, const char *dev, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	if (dev)
		fprintf(stderr, "%s: %s: ", g_prog, dev);
	else
		fprintf(stderr, "%s: ", g_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return code;
}

void hint(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s:   ", g_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void warn_msg(const char *dev, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "%s: warning: %s%s", g_prog, dev ? dev : "", dev ? ": " : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int parse_u64(const char *s, uint64_t *v)
{
	char *end;
	unsigned long long x;

	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (errno || *end)
		return -1;
	*v = x;
	return 0;
}

int parse_size(const char *s, uint64_t *bytes, unsigned *percent)
{
	char *end;
	unsigned long long n;
	uint64_t mult = 1;
	int shift = 0;

	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	n = strtoull(s, &end, 10);
	if (errno || n == 0)
		return -1;
	if (percent)
		*percent = 0;
	if (*end == '%') {
		if (!percent || end[1] || n > 100)
			return -1;
		*percent = (unsigned)n;
		*bytes = 0;
		return 0;
	}
	switch (tolower((unsigned char)*end)) {
	case '\0':
		break;
	case 'b':
		if (end[1])
			return -1;
		break;
	case 's':
		mult = 512;
		if (end[1])
			return -1;
		break;
	case 'k': shift = 10; break;
	case 'm': shift = 20; break;
	case 'g': shift = 30; break;
	case 't': shift = 40; break;
	case 'p': shift = 50; break;
	default:
		return -1;
	}
	if (shift) {
		const char *u = end + 1;

		if (*u && strcasecmp(u, "ib") && strcasecmp(u, "b"))
			return -1;
		mult = (uint64_t)1 << shift;
	}
	if (n > UINT64_MAX / mult)
		return -1;
	*bytes = n * mult;
	return 0;
}

int parse_chunk_size(const char *s, unsigned *sectors)
{
	uint64_t b;

	if (parse_size(s, &b, NULL))
		return -1;
	if (b % 512)
		return -1;
	b /= 512;
	if (b < CHUNK_MIN_SECTORS || b > CHUNK_MAX_SECTORS || (b & (b - 1)))
		return -1;
	*sectors = (unsigned)b;
	return 0;
}

char *fmt_size(char *buf, size_t len, uint64_t bytes)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	int u = 0;

	while (v >= 1024.0 && u < 6) {
		v /= 1024.0;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", bytes);
	else if (v == (double)(uint64_t)v)
		snprintf(buf, len, "%.0f %s", v, units[u]);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

char *fmt_eta(char *buf, size_t len, double seconds)
{
	unsigned long s;

	if (!(seconds >= 0) || seconds > 359999.0) {
		snprintf(buf, len, "--:--");
		return buf;
	}
	s = (unsigned long)(seconds + 0.5);
	if (s >= 3600)
		snprintf(buf, len, "%lu:%02lu:%02lu", s / 3600, (s / 60) % 60, s % 60);
	else
		snprintf(buf, len, "%lu:%02lu", s / 60, s % 60);
	return buf;
}

int valid_name(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > NAME_MAX_LEN || name[0] == '-' || name[0] == '.')
		return 0;
	for (const char *p = name; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("._+-", *p))
			return 0;
	return 1;
}

char *nbd_uri_unix(char *buf, size_t len, const char *export, const char *socket)
{
	snprintf(buf, len, "nbd+unix:///%s?socket=%s", export, socket);
	return buf;
}

char *nbd_uri_tcp(char *buf, size_t len, const char *export, const char *host, unsigned port)
{
	int v6 = strchr(host, ':') != NULL;

	snprintf(buf, len, "nbd://%s%s%s:%u/%s", v6 ? "[" : "", host, v6 ? "]" : "", port, export);
	return buf;
}

const char *run_dir(void)
{
	const char *d = getenv("FLEECECTL_RUN_DIR");

	return d && *d ? d : "/run/fleecectl";
}

int set_path(char *buf, size_t len, const char *name, const char *file)
{
	int n;

	if (file)
		n = snprintf(buf, len, "%s/%s/%s", run_dir(), name, file);
	else
		n = snprintf(buf, len, "%s/%s", run_dir(), name);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

int ensure_set_dir(const char *name)
{
	char p[PATH_MAX];

	if (mkdir(run_dir(), 0700) && errno != EEXIST)
		return err(EXIT_FAIL, run_dir(), "cannot create the state directory: %s", strerror(errno));
	set_path(p, sizeof(p), name, NULL);
	if (mkdir(p, 0700) && errno != EEXIST)
		return err(EXIT_FAIL, p, "cannot create the state directory: %s", strerror(errno));
	return 0;
}

void remove_set_dir(const char *name)
{
	char p[PATH_MAX], f[PATH_MAX + 256];
	DIR *d;
	struct dirent *e;

	set_path(p, sizeof(p), name, NULL);
	d = opendir(p);
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(f, sizeof(f), "%s/%s", p, e->d_name);
		unlink(f);
	}
	closedir(d);
	rmdir(p);
}

void kv_set(struct kv *kv, const char *key, const char *fmt, ...)
{
	va_list ap;
	int i;

	for (i = 0; i < kv->n; i++)
		if (!strcmp(kv->key[i], key))
			break;
	if (i == kv->n) {
		if (kv->n == 16)
			return;
		kv->n++;
		snprintf(kv->key[i], sizeof(kv->key[i]), "%s", key);
	}
	va_start(ap, fmt);
	vsnprintf(kv->val[i], sizeof(kv->val[i]), fmt, ap);
	va_end(ap);
}

const char *kv_get(const struct kv *kv, const char *key)
{
	for (int i = 0; i < kv->n; i++)
		if (!strcmp(kv->key[i], key))
			return kv->val[i];
	return NULL;
}

int kv_parse(struct kv *kv, const char *text)
{
	const char *p = text;

	kv->n = 0;
	while (*p) {
		const char *nl = strchr(p, '\n'), *eq;
		size_t l = nl ? (size_t)(nl - p) : strlen(p);
		char line[600];

		if (l >= sizeof(line))
			return -1;
		memcpy(line, p, l);
		line[l] = 0;
		p += l + (nl ? 1 : 0);
		if (!line[0] || line[0] == '#')
			continue;
		eq = strchr(line, '=');
		if (!eq || eq == line || (size_t)(eq - line) >= sizeof(kv->key[0]))
			return -1;
		line[eq - line] = 0;
		kv_set(kv, line, "%s", eq + 1);
	}
	return 0;
}

int kv_load(struct kv *kv, const char *path)
{
	char buf[16 * 600];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	kv->n = 0;
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return kv_parse(kv, buf);
}

int kv_save(const struct kv *kv, const char *path)
{
	char tmp[PATH_MAX];
	FILE *f;
	int ok;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return -1;
	for (int i = 0; i < kv->n; i++)
		fprintf(f, "%s=%s\n", kv->key[i], kv->val[i]);
	ok = !ferror(f);
	if (fclose(f) || !ok || rename(tmp, path)) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

int find_program(const char *prog, char *out, size_t len)
{
	const char *path = getenv("PATH");
	char dir[PATH_MAX];

	if (strchr(prog, '/')) {
		snprintf(out, len, "%s", prog);
		return access(out, X_OK) == 0;
	}
	if (!path)
		path = "/usr/sbin:/usr/bin:/sbin:/bin";
	while (*path) {
		const char *c = strchr(path, ':');
		size_t l = c ? (size_t)(c - path) : strlen(path);

		if (l && l < sizeof(dir)) {
			memcpy(dir, path, l);
			dir[l] = 0;
			snprintf(out, len, "%s/%s", dir, prog);
			if (access(out, X_OK) == 0)
				return 1;
		}
		path += l + (c ? 1 : 0);
	}
	return 0;
}

int pid_matches(pid_t pid, const char *needle1, const char *needle2)
{
	char p[64], buf[4096];
	ssize_t n;
	int fd;

	if (pid <= 1)
		return 0;
	snprintf(p, sizeof(p), "/proc/%d/cmdline", (int)pid);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;	/* zombie or kernel thread */
	for (ssize_t i = 0; i < n; i++)
		if (!buf[i])
			buf[i] = ' ';
	buf[n] = 0;
	if (needle1 && !strstr(buf, needle1))
		return 0;
	if (needle2 && !strstr(buf, needle2))
		return 0;
	return 1;
}

int is_all_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;

	if (!len)
		return 1;
	/* compare the buffer with itself shifted by one byte */
	return p[0] == 0 && memcmp(p, p + 1, len - 1) == 0;
}

int kmsg_last(const char *needle, char *out, size_t len)
{
	char rec[1024];
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC), found = 0;
	ssize_t n;

	if (fd < 0)
		return 0;
	for (;;) {
		n = read(fd, rec, sizeof(rec) - 1);
		if (n < 0 && errno == EPIPE)
			continue;	/* overwritten record: go on */
		if (n <= 0)
			break;
		rec[n] = 0;
		rec[strcspn(rec, "\n")] = 0;	/* drop continuation lines */
		if (strstr(rec, needle)) {
			const char *m = strchr(rec, ';');

			snprintf(out, len, "%s", m ? m + 1 : rec);
			found = 1;
		}
	}
	close(fd);
	return found;
}

static sigset_t crit_saved;
static int crit_depth;

void critical_begin(void)
{
	sigset_t block;

	if (crit_depth++)
		return;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGQUIT);
	sigaddset(&block, SIGTSTP);
	sigaddset(&block, SIGPIPE);
	sigprocmask(SIG_BLOCK, &block, &crit_saved);
	/* a page fault served by the suspended device would never return */
	if (mlockall(MCL_CURRENT | MCL_FUTURE))
		vmsg("mlockall: %s (continuing)", strerror(errno));
}

void critical_end(void)
{
	if (!crit_depth || --crit_depth)
		return;
	munlockall();
	sigprocmask(SIG_SETMASK, &crit_saved, NULL);
}
