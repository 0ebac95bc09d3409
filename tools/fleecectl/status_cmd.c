// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl status: what every fleece set is doing, in words or as JSON.
 *
 * JSON (keys are stable; new keys may be added, none removed or renamed):
 *
 * { "version": 1,
 *   "sets": [ { "name", "mode" ("in-place"|"on-top"), "origin", "real",
 *               "backing", "size_bytes", "chunk_bytes", "state", "error",
 *               "view", "snapshot_chunks", "chunks_copied",
 *               "chunks_released", "copies_in_flight", "writes_waiting",
 *               "writes_delayed", "last_error", "discard_policy",
 *               "discard_bytes_deferred", "discard_bytes_dropped",
 *               "cbw_error", "cbw_timeout_ms",
 *               "exception": null | { "device", "file", "created",
 *                   "slots_used", "slots_total", "slots_free",
 *                   "used_bytes", "total_bytes", "free_bytes",
 *                   "used_percent" },
 *               "export": null | { "server", "uri", "pid", "running" } } ] }
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libdevmapper.h>

#include "fleecectl.h"

int parse_status_opts(int argc, char **argv, struct status_opts *o)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((c = getopt_long(argc, argv, "jh", lo, NULL)) != -1) {
		if (c == 'j')
			o->json = 1;
		else
			return EXIT_USAGE;
	}
	if (optind < argc - 1)
		return err(EXIT_USAGE, NULL, "status takes at most one NAME (see %s status --help)", g_prog);
	o->name = optind == argc - 1 ? argv[optind] : NULL;
	return 0;
}

struct extra {
	struct kv exc, exp;
	int have_exc, have_exp, running;
	char exc_dev[PATH_MAX];
};

static void load_extra(const struct fleece_set *s, struct extra *x)
{
	char p[PATH_MAX];

	memset(x, 0, sizeof(*x));
	set_path(p, sizeof(p), s->name, "exception");
	x->have_exc = s->have_view && !kv_load(&x->exc, p);
	if (x->have_exc)
		snprintf(x->exc_dev, sizeof(x->exc_dev), "%s", kv_get(&x->exc, "device") ?: "");
	else if (s->have_view)
		snprintf(x->exc_dev, sizeof(x->exc_dev), "%u:%u", s->vt.exc_major, s->vt.exc_minor);
	set_path(p, sizeof(p), s->name, "export");
	x->have_exp = !kv_load(&x->exp, p);
	if (x->have_exp) {
		const char *pid = kv_get(&x->exp, "pid");

		x->running = pid && pid_matches(atoi(pid), kv_get(&x->exp, "server"), NULL);
	}
}

static const char *nonempty(const char *s)
{
	return s && *s ? s : NULL;
}

void set_print_json(struct json *j, const struct fleece_set *s)
{
	struct extra x;
	char buf[PATH_MAX];
	const struct fleece_status *st = &s->st;
	uint64_t cb = (uint64_t)(s->chunk_sectors ? s->chunk_sectors : st->chunk_sectors) * 512;

	load_extra(s, &x);
	json_begin_object(j, NULL);
	json_string(j, "name", s->name);
	json_string(j, "mode", s->in_place ? "in-place" : "on-top");
	snprintf(buf, sizeof(buf), "%s/%s", dm_dir(), s->origin);
	json_string(j, "origin", s->have_origin ? buf : NULL);
	snprintf(buf, sizeof(buf), "%s/%s", dm_dir(), s->real);
	json_string(j, "real", s->have_real ? buf : NULL);
	snprintf(buf, sizeof(buf), "%u:%u", s->backing_major, s->backing_minor);
	json_string(j, "backing", s->have_origin ? buf : NULL);
	json_u64(j, "size_bytes", s->size_sectors * 512);
	json_u64(j, "chunk_bytes", cb);
	json_string(j, "state", s->have_status ? state_name(st->state) : "unknown");
	json_string(j, "error", s->have_status ? st->error : NULL);
	json_string(j, "last_error", s->have_status ? st->last_error : NULL);
	json_string(j, "discard_policy", s->have_origin ? s->discard_policy : NULL);
	json_u64(j, "discard_bytes_deferred", st->discard_sectors * 512);
	json_u64(j, "discard_bytes_dropped", st->discards_dropped * 512);
	snprintf(buf, sizeof(buf), "%s/%s", dm_dir(), s->view);
	json_string(j, "view", s->have_view ? buf : NULL);
	json_u64(j, "snapshot_chunks", st->snapshot_chunks);
	json_u64(j, "chunks_copied", st->chunks_copied);
	json_u64(j, "chunks_released", st->chunks_released);
	json_u64(j, "copies_in_flight", st->copies_in_flight);
	json_u64(j, "writes_waiting", st->writes_waiting);
	json_u64(j, "writes_delayed", st->writes_delayed);
	if (s->have_view) {
		json_string(j, "cbw_error", cbw_error_name(s->vt.cbw_error));
		json_u64(j, "cbw_timeout_ms", s->vt.cbw_timeout_ms);
		json_begin_object(j, "exception");
		json_string(j, "device", x.exc_dev);
		json_string(j, "file", x.have_exc ? nonempty(kv_get(&x.exc, "file")) : NULL);
		json_bool(j, "created", x.have_exc && kv_get(&x.exc, "created") &&
					!strcmp(kv_get(&x.exc, "created"), "1"));
		json_u64(j, "slots_used", st->slots_used);
		json_u64(j, "slots_total", st->slots_total);
		json_u64(j, "slots_free", st->slots_total - st->slots_used);
		json_u64(j, "used_bytes", st->slots_used * cb);
		json_u64(j, "total_bytes", st->slots_total * cb);
		json_u64(j, "free_bytes", (st->slots_total - st->slots_used) * cb);
		json_double(j, "used_percent", st->slots_total ? 100.0 * st->slots_used / st->slots_total : 0.0);
		json_end_object(j);
	} else {
		json_null(j, "cbw_error");
		json_null(j, "cbw_timeout_ms");
		json_null(j, "exception");
	}
	if (x.have_exp) {
		const char *pid = kv_get(&x.exp, "pid");

		json_begin_object(j, "export");
		json_string(j, "server", kv_get(&x.exp, "server"));
		json_string(j, "uri", kv_get(&x.exp, "uri"));
		json_u64(j, "pid", pid ? strtoull(pid, NULL, 10) : 0);
		json_bool(j, "running", x.running);
		json_end_object(j);
	} else {
		json_null(j, "export");
	}
	json_end_object(j);
}

/* What the origin does with a discard of a chunk a snapshot needs. */
static const char *discard_policy_words(const char *policy)
{
	if (!strcmp(policy, DM_FLEECE_DISCARD_COPY))
		return "copy (the chunk is copied first, like a write)";
	if (!strcmp(policy, DM_FLEECE_DISCARD_IGNORE))
		return "ignore (dropped while a snapshot needs the chunk)";
	return "defer (held back while a snapshot needs the chunk; no copy)";
}

void set_print_plain(FILE *f, const struct fleece_set *s)
{
	struct extra x;
	const struct fleece_status *st = &s->st;
	uint64_t cb = (uint64_t)(s->chunk_sectors ? s->chunk_sectors : st->chunk_sectors) * 512;
	char a[32], b[32];

	load_extra(s, &x);
	fprintf(f, "fleece %s\n", s->name);
	if (s->have_origin)
		fprintf(f, "  origin:      %s/%s, %s, %s\n", dm_dir(), s->origin,
			fmt_size(a, sizeof(a), s->size_sectors * 512),
			s->in_place ? "in place" : "on top of the device");
	else
		fprintf(f, "  origin:      missing (half set up: run '%s detach %s')\n", g_prog, s->name);
	if (s->have_real)
		fprintf(f, "  old table:   %s/%s\n", dm_dir(), s->real);
	else if (s->have_origin)
		fprintf(f, "  device:      %u:%u\n", s->backing_major, s->backing_minor);
	fprintf(f, "  chunk size:  %s\n", fmt_size(a, sizeof(a), cb));
	if (s->have_origin)
		fprintf(f, "  on discard:  %s\n", discard_policy_words(s->discard_policy));
	fprintf(f, "  state:       %s%s%s\n", s->have_status ? state_name(st->state) : "unknown",
		s->have_status && strcmp(st->error, "none") ? ", error: " : "",
		s->have_status && strcmp(st->error, "none") ? st->error : "");
	if (s->have_status && st->state == ST_IDLE && strcmp(st->last_error, "none"))
		fprintf(f, "  last error:  %s (of the snapshot that ended last)\n", st->last_error);
	if (!s->have_view) {
		fprintf(f, "  snapshot:    none\n");
	} else {
		fprintf(f, "  view:        %s/%s\n", dm_dir(), s->view);
		fprintf(f, "  snapshot:    %" PRIu64 " chunks (%s); %" PRIu64 " copied, %" PRIu64 " released\n",
			st->snapshot_chunks, fmt_size(a, sizeof(a), st->snapshot_chunks * cb), st->chunks_copied,
			st->chunks_released);
		fprintf(f, "  exception:   %s%s%s%s\n", x.exc_dev,
			x.have_exc && nonempty(kv_get(&x.exc, "file")) ? " on " : "",
			x.have_exc && nonempty(kv_get(&x.exc, "file")) ? kv_get(&x.exc, "file") : "",
			x.have_exc && kv_get(&x.exc, "created") && !strcmp(kv_get(&x.exc, "created"), "1")
				? " (made by fleecectl, deleted at end)" : "");
		fprintf(f, "  usage:       %" PRIu64 " of %" PRIu64 " slots (%.0f%%), %s used, %s free\n",
			st->slots_used, st->slots_total,
			st->slots_total ? 100.0 * st->slots_used / st->slots_total : 0.0,
			fmt_size(a, sizeof(a), st->slots_used * cb),
			fmt_size(b, sizeof(b), (st->slots_total - st->slots_used) * cb));
		fprintf(f, "  on error:    %s%s", cbw_error_name(s->vt.cbw_error),
			s->vt.cbw_timeout_ms ? "" : "\n");
		if (s->vt.cbw_timeout_ms)
			fprintf(f, ", copy timeout %" PRIu64 " ms\n", s->vt.cbw_timeout_ms);
		fprintf(f, "  writes:      %" PRIu64 " waiting, %" PRIu64 " delayed so far; %" PRIu64
			" copies in flight\n", st->writes_waiting, st->writes_delayed, st->copies_in_flight);
		fprintf(f, "  discards:    %s held back until the end, %s dropped\n",
			fmt_size(a, sizeof(a), st->discard_sectors * 512),
			fmt_size(b, sizeof(b), st->discards_dropped * 512));
	}
	if (x.have_exp)
		fprintf(f, "  export:      %s (%s, pid %s%s)\n", kv_get(&x.exp, "uri") ?: "?",
			kv_get(&x.exp, "server") ?: "?", kv_get(&x.exp, "pid") ?: "?",
			x.running ? "" : ", NOT RUNNING");
	else
		fprintf(f, "  export:      none\n");
}

int cmd_status(int argc, char **argv)
{
	struct status_opts o;
	struct fleece_set s;
	struct json j;
	char **names = NULL;
	int n, r = EXIT_OK;

	if ((r = parse_status_opts(argc, argv, &o)))
		return r;
	if ((r = need_dm()))
		return r;
	if (o.name) {
		if ((r = set_resolve(o.name, &s)))
			return r;
		names = calloc(1, sizeof(*names));
		if (!names)
			return err(EXIT_FAIL, NULL, "out of memory");
		names[0] = strdup(s.name);
		n = 1;
	} else {
		n = set_list(&names);
		if (n < 0)
			return err(EXIT_ENV, "/dev/mapper/control", "cannot list device-mapper devices: %s",
				   strerror(dmx_errno));
	}
	if (o.json) {
		json_init(&j, stdout);
		json_begin_object(&j, NULL);
		json_u64(&j, "version", 1);
		json_begin_array(&j, "sets");
	} else if (n == 0) {
		printf("no fleece devices (set one up with '%s attach DEVICE')\n", g_prog);
	}
	for (int i = 0; i < n; i++) {
		if (set_resolve(names[i], &s)) {
			r = EXIT_FAIL;
			continue;
		}
		if (o.json)
			set_print_json(&j, &s);
		else
			set_print_plain(stdout, &s);
	}
	if (o.json) {
		json_end_array(&j);
		json_end_object(&j);
		json_finish(&j);
	}
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return r;
}
