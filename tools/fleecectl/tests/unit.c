// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl host unit tests: sizes, status and table lines, JSON, option
 * parsing, URIs, state files.  No kernel, no root.  Prints TAP 13.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fleecectl.h"

/* ---- a tiny TAP collector: the plan comes first, so results are kept ---- */
static char *results[1024];
static int ntests, nfailed;

static void ok(int cond, const char *fmt, ...)
{
	char desc[512], *line;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(desc, sizeof(desc), fmt, ap);
	va_end(ap);
	ntests++;
	if (!cond)
		nfailed++;
	if (asprintf(&line, "%sok %d - %s", cond ? "" : "not ", ntests, desc) < 0)
		exit(99);
	results[ntests - 1] = line;
}

/* err() messages from the code under test go nowhere */
static int saved_stderr = -1;

static void quiet_stderr(int on)
{
	if (on) {
		int fd = open("/dev/null", O_WRONLY);

		fflush(stderr);
		saved_stderr = dup(2);
		dup2(fd, 2);
		close(fd);
	} else if (saved_stderr >= 0) {
		fflush(stderr);
		dup2(saved_stderr, 2);
		close(saved_stderr);
		saved_stderr = -1;
	}
}

/* ---- sizes ---- */
static void size_ok(const char *s, uint64_t want)
{
	uint64_t b = 0;
	unsigned pct = 7;
	int r = parse_size(s, &b, &pct);

	ok(r == 0 && b == want && pct == 0, "parse_size(\"%s\") = %" PRIu64, s, want);
}

static void size_bad(const char *s)
{
	uint64_t b;
	unsigned pct;

	ok(parse_size(s, &b, &pct) != 0, "parse_size(\"%s\") is refused", s);
}

static void test_sizes(void)
{
	uint64_t b;
	unsigned pct, sec;

	size_ok("512", 512);
	size_ok("1b", 1);
	size_ok("8s", 4096);
	size_ok("8S", 4096);
	size_ok("64K", 65536);
	size_ok("64k", 65536);
	size_ok("64KiB", 65536);
	size_ok("64kb", 65536);
	size_ok("1M", 1 << 20);
	size_ok("2G", 2ull << 30);
	size_ok("3T", 3ull << 40);
	size_ok("1P", 1ull << 50);
	size_ok("16383P", 16383ull << 50);
	size_bad("");
	size_bad("0");
	size_bad("0K");
	size_bad("-1");
	size_bad("+1");
	size_bad(" 1");
	size_bad("1.5G");
	size_bad("12X");
	size_bad("1KiBx");
	size_bad("1Gi");
	size_bad("1sb");
	size_bad("99999999999999999999");
	size_bad("16384P");
	size_bad("101%");
	size_bad("%");
	size_bad("25%x");
	ok(parse_size("25%", &b, &pct) == 0 && pct == 25 && b == 0, "parse_size(\"25%%\") is 25 percent");
	ok(parse_size("100%", &b, &pct) == 0 && pct == 100, "parse_size(\"100%%\") is 100 percent");
	ok(parse_size("25%", &b, NULL) != 0, "a percentage is refused where none is allowed");

	ok(parse_chunk_size("64K", &sec) == 0 && sec == 128, "chunk 64K = 128 sectors");
	ok(parse_chunk_size("4K", &sec) == 0 && sec == 8, "chunk 4K = 8 sectors (minimum)");
	ok(parse_chunk_size("1M", &sec) == 0 && sec == 2048, "chunk 1M = 2048 sectors (maximum)");
	ok(parse_chunk_size("128s", &sec) == 0 && sec == 128, "chunk 128s = 128 sectors");
	ok(parse_chunk_size("2K", &sec) != 0, "chunk 2K is refused (below 4K)");
	ok(parse_chunk_size("2M", &sec) != 0, "chunk 2M is refused (above 1M)");
	ok(parse_chunk_size("48K", &sec) != 0, "chunk 48K is refused (not a power of two)");
	ok(parse_chunk_size("4097", &sec) != 0, "chunk 4097 is refused (not sectors)");
	ok(parse_chunk_size("25%", &sec) != 0, "chunk 25%% is refused");
}

static void test_formatting(void)
{
	char buf[64];

	ok(!strcmp(fmt_size(buf, sizeof(buf), 0), "0 B"), "fmt_size(0) = \"0 B\"");
	ok(!strcmp(fmt_size(buf, sizeof(buf), 1023), "1023 B"), "fmt_size(1023) = \"1023 B\"");
	ok(!strcmp(fmt_size(buf, sizeof(buf), 1024), "1 KiB"), "fmt_size(1024) = \"1 KiB\"");
	ok(!strcmp(fmt_size(buf, sizeof(buf), 1536), "1.5 KiB"), "fmt_size(1536) = \"1.5 KiB\"");
	ok(!strcmp(fmt_size(buf, sizeof(buf), 64ull << 20), "64 MiB"), "fmt_size(64 MiB) = \"64 MiB\"");
	ok(!strcmp(fmt_size(buf, sizeof(buf), 5ull << 40), "5 TiB"), "fmt_size(5 TiB) = \"5 TiB\"");
	ok(!strcmp(fmt_eta(buf, sizeof(buf), 0), "0:00"), "fmt_eta(0) = \"0:00\"");
	ok(!strcmp(fmt_eta(buf, sizeof(buf), 61.2), "1:01"), "fmt_eta(61.2) = \"1:01\"");
	ok(!strcmp(fmt_eta(buf, sizeof(buf), 3661), "1:01:01"), "fmt_eta(3661) = \"1:01:01\"");
	ok(!strcmp(fmt_eta(buf, sizeof(buf), -1), "--:--"), "fmt_eta(unknown) = \"--:--\"");
	ok(!strcmp(fmt_eta(buf, sizeof(buf), 1e9), "--:--"), "fmt_eta(huge) = \"--:--\"");

	ok(!strcmp(nbd_uri_unix(buf, sizeof(buf), "vm1", "/run/fleecectl/vm1/nbd.sock"),
		   "nbd+unix:///vm1?socket=/run/fleecectl/vm1/nbd.sock"), "unix NBD URI");
	ok(!strcmp(nbd_uri_tcp(buf, sizeof(buf), "vm1", "127.0.0.1", 10809), "nbd://127.0.0.1:10809/vm1"),
	   "TCP NBD URI");
	ok(!strcmp(nbd_uri_tcp(buf, sizeof(buf), "vm1", "::1", 10810), "nbd://[::1]:10810/vm1"),
	   "IPv6 NBD URI has brackets");
}

static void test_names(void)
{
	char longname[NAME_MAX_LEN + 2];

	ok(valid_name("vm1"), "name vm1 is valid");
	ok(valid_name("vg0-data_1.x+y"), "name with - _ . + is valid");
	ok(!valid_name(""), "empty name is refused");
	ok(!valid_name("-x"), "name starting with - is refused");
	ok(!valid_name(".x"), "name starting with . is refused");
	ok(!valid_name("a/b"), "name with / is refused");
	ok(!valid_name("a b"), "name with a blank is refused");
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	ok(!valid_name(longname), "name of %d characters is refused", NAME_MAX_LEN + 1);
	longname[NAME_MAX_LEN] = 0;
	ok(valid_name(longname), "name of %d characters is valid", NAME_MAX_LEN);
}

/* ---- status lines ---- */
static void test_status_lines(void)
{
	struct fleece_status st;
	struct origin_table ot;
	struct view_table vt, vt2;
	char buf[256];

	ok(parse_status_info("active 128 16384 812 40 772/8192 3 5 1204 none", &st) == 0 &&
	   st.state == ST_ACTIVE && st.chunk_sectors == 128 && st.snapshot_chunks == 16384 &&
	   st.chunks_copied == 812 && st.chunks_released == 40 && st.slots_used == 772 &&
	   st.slots_total == 8192 && st.copies_in_flight == 3 && st.writes_waiting == 5 &&
	   st.writes_delayed == 1204 && !strcmp(st.error, "none"),
	   "status: the contract's example line parses field by field");
	ok(parse_status_info("idle 8 0 0 0 0/0 0 0 0 none", &st) == 0 && st.state == ST_IDLE &&
	   st.slots_total == 0, "status: idle line");
	ok(parse_status_info("invalid 2048 512 512 0 64/64 0 0 9000 full", &st) == 0 &&
	   st.state == ST_INVALID && !strcmp(st.error, "full"), "status: invalid with error full");
	ok(parse_status_info("invalid 128 1 1 0 1/1 0 0 1 exception_io", &st) == 0 &&
	   !strcmp(st.error, "exception_io"), "status: error exception_io");
	ok(parse_status_info("  active\t128 1 2 3 4/5 6 7 8 timeout\n", &st) == 0 && st.writes_delayed == 8,
	   "status: extra blanks, tabs and newline are fine");
	ok(parse_status_info("active 128 1 2 3 4/5 6 7 8 none", &st) == 0 && st.discard_sectors == 0 &&
	   st.discards_dropped == 0 && !strcmp(st.last_error, "none"),
	   "status: a 1.1 module's 10 fields parse, with no discards and no last error");
	ok(parse_status_info("active 128 16384 812 40 772/8192 3 5 1204 none 18432 16 full", &st) == 0 &&
	   st.writes_delayed == 1204 && st.discard_sectors == 18432 && st.discards_dropped == 16 &&
	   !strcmp(st.error, "none") && !strcmp(st.last_error, "full"),
	   "status: the 1.2 fields (discards deferred, dropped, last error) parse");
	ok(parse_status_info("active 128 1 2 3 4/5 6 7 8 none 0 0 none newfield 42", &st) == 0 &&
	   st.writes_delayed == 8, "status: trailing fields of a newer kernel are ignored");
	ok(parse_status_info("active 128 1 2 3 4/5 6 7 8 none x 0 none", &st) != 0,
	   "status: a non-numeric discard count is refused");
	ok(parse_status_info("active 128 1 2 3 4/5 6 7 8 none 0 0 Bad-Word", &st) != 0,
	   "status: an odd last error word is refused");
	ok(parse_status_info("active 128 18446744073709551615 0 0 0/18446744073709551615 0 0 0 none", &st) == 0 &&
	   st.snapshot_chunks == UINT64_MAX, "status: full 64-bit counters");
	ok(parse_status_info("active 128 18446744073709551616 0 0 0/1 0 0 0 none", &st) != 0,
	   "status: counter overflow is refused");
	ok(parse_status_info("active 128 16384 812 40 772/8192 3 5 1204", &st) != 0, "status: missing error field");
	ok(parse_status_info("", &st) != 0, "status: empty line");
	ok(parse_status_info("Invalid", &st) != 0, "status: a bare word (dm-snap style) is refused");
	ok(parse_status_info("broken 128 1 1 0 1/1 0 0 1 none", &st) != 0, "status: unknown state is refused");
	ok(parse_status_info("active 128 1 1 0 1-1 0 0 1 none", &st) != 0, "status: slots without / is refused");
	ok(parse_status_info("active 128 1 1 0 /1 0 0 1 none", &st) != 0, "status: empty slots used is refused");
	ok(parse_status_info("active 128 1 1 0 1/ 0 0 1 none", &st) != 0, "status: empty slots total is refused");
	ok(parse_status_info("active 128 1 -1 0 1/1 0 0 1 none", &st) != 0, "status: negative count is refused");
	ok(parse_status_info("active 12x 1 1 0 1/1 0 0 1 none", &st) != 0, "status: non-numeric chunk is refused");
	ok(parse_status_info("active 128 1 1 0 1/1 0 0 1 No-Space", &st) != 0, "status: odd error word is refused");
	ok(!strcmp(state_name(ST_ACTIVE), "active") && !strcmp(state_name(ST_IDLE), "idle") &&
	   !strcmp(state_name(ST_INVALID), "invalid") && !strcmp(state_name(ST_UNKNOWN), "unknown"),
	   "state names");

	ok(parse_origin_table("253:3 128", &ot) == 0 && ot.major == 253 && ot.minor == 3 && ot.chunk_sectors == 128,
	   "origin table without features");
	ok(parse_origin_table("7:0 8 0", &ot) == 0 && ot.major == 7 && ot.chunk_sectors == 8,
	   "origin table with 0 features");
	ok(parse_origin_table("253:3 128 1", &ot) != 0, "origin table: feature count mismatch is refused");
	ok(parse_origin_table("253:3 128", &ot) == 0 && !strcmp(ot.discard_policy, "defer"),
	   "origin table: the discard policy defaults to defer");
	ok(parse_origin_table("253:3 128 2 discard_policy copy", &ot) == 0 && !strcmp(ot.discard_policy, "copy"),
	   "origin table: discard_policy copy");
	ok(parse_origin_table("253:3 128 2 discard_policy ignore", &ot) == 0 &&
	   !strcmp(ot.discard_policy, "ignore"), "origin table: discard_policy ignore");
	ok(parse_origin_table("/dev/sda 128", &ot) != 0, "origin table: a path instead of major:minor is refused");
	ok(parse_origin_table("253:3", &ot) != 0, "origin table: missing chunk size is refused");

	ok(parse_view_table("253:4 7:3", &vt) == 0 && vt.origin_major == 253 && vt.origin_minor == 4 &&
	   vt.exc_major == 7 && vt.exc_minor == 3 && vt.cbw_error == CBW_BREAK_SNAPSHOT && !vt.cbw_timeout_ms,
	   "view table without features: defaults");
	ok(parse_view_table("253:4 7:3 2 cbw_error break_write", &vt) == 0 && vt.cbw_error == CBW_BREAK_WRITE,
	   "view table: cbw_error break_write");
	ok(parse_view_table("253:4 7:3 6 cbw_error break_snapshot cbw_timeout_ms 500 max_copies 8", &vt) == 0 &&
	   vt.cbw_timeout_ms == 500 && vt.max_copies == 8, "view table: all features");
	ok(parse_view_table("253:4 7:3 2 cbw_error maybe", &vt) != 0, "view table: bad cbw_error is refused");
	ok(parse_view_table("253:4 7:3 3 cbw_error break_write", &vt) != 0, "view table: count mismatch is refused");
	ok(parse_view_table("253:4 7:3 2 frobnicate 1", &vt) != 0, "view table: unknown feature is refused");

	memset(&vt, 0, sizeof(vt));
	vt.origin_major = 253;
	vt.origin_minor = 1;
	vt.exc_major = 7;
	vt.exc_minor = 2;
	ok(format_view_params(buf, sizeof(buf), &vt) > 0 && !strcmp(buf, "253:1 7:2"),
	   "view params without features: \"%s\"", buf);
	vt.cbw_error = CBW_BREAK_WRITE;
	vt.cbw_timeout_ms = 250;
	vt.max_copies = 4;
	ok(format_view_params(buf, sizeof(buf), &vt) > 0 &&
	   !strcmp(buf, "253:1 7:2 6 cbw_error break_write cbw_timeout_ms 250 max_copies 4"),
	   "view params with features: \"%s\"", buf);
	ok(parse_view_table(buf, &vt2) == 0 && !memcmp(&vt, &vt2, sizeof(vt)), "view params round-trip");
	ok(format_view_params(buf, 8, &vt) < 0, "view params: short buffer is an error");
}

/* ---- JSON ---- */
static char *json_of(void (*fn)(struct json *))
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	struct json j;

	json_init(&j, f);
	fn(&j);
	json_finish(&j);
	fclose(f);
	return out;
}

static void doc_basic(struct json *j)
{
	json_begin_object(j, NULL);
	json_u64(j, "version", 1);
	json_string(j, "s", "a\"b\\c\nd\te\x01");
	json_string(j, "none", NULL);
	json_bool(j, "t", 1);
	json_bool(j, "f", 0);
	json_double(j, "pct", 12.345);
	json_begin_array(j, "list");
	json_u64(j, NULL, 1);
	json_string(j, NULL, "x");
	json_begin_object(j, NULL);
	json_null(j, "n");
	json_end_object(j);
	json_end_array(j);
	json_begin_array(j, "empty");
	json_end_array(j);
	json_begin_object(j, "eo");
	json_end_object(j);
	json_end_object(j);
}

static void test_json(void)
{
	char *s = json_of(doc_basic);
	const char *want =
		"{\n"
		"  \"version\": 1,\n"
		"  \"s\": \"a\\\"b\\\\c\\nd\\te\\u0001\",\n"
		"  \"none\": null,\n"
		"  \"t\": true,\n"
		"  \"f\": false,\n"
		"  \"pct\": 12.35,\n"
		"  \"list\": [\n"
		"    1,\n"
		"    \"x\",\n"
		"    {\n"
		"      \"n\": null\n"
		"    }\n"
		"  ],\n"
		"  \"empty\": [],\n"
		"  \"eo\": {}\n"
		"}\n";

	ok(!strcmp(s, want), "JSON writer: nesting, commas, escapes, null/bool/double");
	if (strcmp(s, want))
		fprintf(stderr, "got:\n%s\nwant:\n%s\n", s, want);
	free(s);
}

/* status --json of a made-up set, with state files in a scratch run dir */
static struct fleece_set fake;

static void doc_set(struct json *j)
{
	set_print_json(j, &fake);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

static int has(const char *s, const char *needle)
{
	return strstr(s, needle) != NULL;
}

static void test_status_json(void)
{
	char dir[] = "/tmp/fleecectl-unit-XXXXXX", p[PATH_MAX], text[512];
	char *s;

	if (!mkdtemp(dir)) {
		ok(0, "mkdtemp");
		return;
	}
	setenv("FLEECECTL_RUN_DIR", dir, 1);
	memset(&fake, 0, sizeof(fake));
	strcpy(fake.name, "vm1");
	strcpy(fake.origin, "vg0-vm1");
	strcpy(fake.real, "vm1-real");
	strcpy(fake.view, "vm1-view");
	fake.in_place = fake.have_origin = fake.have_real = fake.have_view = fake.have_status = 1;
	fake.backing_major = 253;
	fake.backing_minor = 7;
	fake.size_sectors = 2097152;
	fake.chunk_sectors = 128;
	fake.vt.cbw_error = CBW_BREAK_WRITE;
	parse_status_info("active 128 16384 812 40 772/8192 3 5 1204 none", &fake.st);

	ensure_set_dir("vm1");
	set_path(p, sizeof(p), "vm1", "exception");
	write_file(p, "device=/dev/loop3\nfile=/var/tmp/vm1.cow\nloop=1\ncreated=1\n");
	set_path(p, sizeof(p), "vm1", "export");
	snprintf(text, sizeof(text), "server=unit\npid=%d\nuri=nbd+unix:///vm1?socket=/s\n", (int)getpid());
	write_file(p, text);

	s = json_of(doc_set);
	ok(has(s, "\"name\": \"vm1\"") && has(s, "\"mode\": \"in-place\"") &&
	   has(s, "\"origin\": \"/dev/mapper/vg0-vm1\"") && has(s, "\"real\": \"/dev/mapper/vm1-real\"") &&
	   has(s, "\"backing\": \"253:7\""), "status JSON: identity keys");
	ok(has(s, "\"size_bytes\": 1073741824") && has(s, "\"chunk_bytes\": 65536") &&
	   has(s, "\"state\": \"active\"") && has(s, "\"error\": \"none\"") &&
	   has(s, "\"view\": \"/dev/mapper/vm1-view\""), "status JSON: size, chunk, state, error, view");
	ok(has(s, "\"snapshot_chunks\": 16384") && has(s, "\"chunks_copied\": 812") &&
	   has(s, "\"chunks_released\": 40") && has(s, "\"copies_in_flight\": 3") &&
	   has(s, "\"writes_waiting\": 5") && has(s, "\"writes_delayed\": 1204"), "status JSON: counters");
	ok(has(s, "\"cbw_error\": \"break_write\"") && has(s, "\"cbw_timeout_ms\": 0"), "status JSON: cbw settings");
	ok(has(s, "\"device\": \"/dev/loop3\"") && has(s, "\"file\": \"/var/tmp/vm1.cow\"") &&
	   has(s, "\"created\": true") && has(s, "\"slots_used\": 772") && has(s, "\"slots_total\": 8192") &&
	   has(s, "\"slots_free\": 7420") && has(s, "\"used_bytes\": 50593792") &&
	   has(s, "\"total_bytes\": 536870912") && has(s, "\"free_bytes\": 486277120") &&
	   has(s, "\"used_percent\": 9.42"), "status JSON: exception object");
	snprintf(text, sizeof(text), "\"pid\": %d", (int)getpid());
	ok(has(s, "\"server\": \"unit\"") && has(s, "\"uri\": \"nbd+unix:///vm1?socket=/s\"") && has(s, text) &&
	   has(s, "\"running\": true"), "status JSON: export object");
	free(s);

	/* no view, no export: nulls, not missing keys */
	fake.have_view = 0;
	set_path(p, sizeof(p), "vm1", "export");
	unlink(p);
	parse_status_info("idle 128 0 0 0 0/0 0 0 0 none", &fake.st);
	s = json_of(doc_set);
	ok(has(s, "\"view\": null") && has(s, "\"exception\": null") && has(s, "\"export\": null") &&
	   has(s, "\"cbw_error\": null") && has(s, "\"state\": \"idle\""), "status JSON: idle set has nulls");
	free(s);

	remove_set_dir("vm1");
	set_path(p, sizeof(p), "vm1", NULL);
	ok(access(p, F_OK) != 0, "remove_set_dir removes the state directory");
	rmdir(dir);
	unsetenv("FLEECECTL_RUN_DIR");
}

static void test_kv(void)
{
	struct kv kv = { 0 }, kv2;
	char path[] = "/tmp/fleecectl-kv-XXXXXX";
	int fd = mkstemp(path);

	if (fd >= 0)
		close(fd);
	kv_set(&kv, "server", "%s", "qemu-nbd");
	kv_set(&kv, "pid", "%d", 42);
	kv_set(&kv, "pid", "%d", 43);
	ok(kv.n == 2 && !strcmp(kv_get(&kv, "pid"), "43"), "kv_set replaces a key");
	ok(kv_save(&kv, path) == 0 && kv_load(&kv2, path) == 0 && kv2.n == 2 &&
	   !strcmp(kv_get(&kv2, "server"), "qemu-nbd") && !strcmp(kv_get(&kv2, "pid"), "43"),
	   "kv save/load round-trip");
	ok(kv_parse(&kv2, "# comment\n\na=1\nb=x=y\n") == 0 && kv2.n == 2 && !strcmp(kv_get(&kv2, "b"), "x=y"),
	   "kv_parse: comments, blank lines, '=' in values");
	ok(kv_parse(&kv2, "novalue\n") != 0, "kv_parse: a line without '=' is refused");
	ok(kv_get(&kv2, "missing") == NULL, "kv_get of a missing key is NULL");
	unlink(path);
}

static void test_misc(void)
{
	static char zero[8192], nz[8192];
	char path[PATH_MAX];

	nz[8191] = 1;
	ok(is_all_zero(zero, sizeof(zero)), "is_all_zero: zero buffer");
	ok(!is_all_zero(nz, sizeof(nz)), "is_all_zero: last byte set");
	nz[8191] = 0;
	nz[0] = 1;
	ok(!is_all_zero(nz, sizeof(nz)), "is_all_zero: first byte set");
	ok(is_all_zero(zero, 0), "is_all_zero: empty buffer");
	ok(find_program("sh", path, sizeof(path)) == 1, "find_program finds sh in PATH");
	ok(find_program("no-such-program-fleece", path, sizeof(path)) == 0, "find_program misses a missing one");
	ok(pid_matches(getpid(), "unit", NULL) == 1, "pid_matches: our own command line");
	ok(pid_matches(getpid(), "qemu-nbd", NULL) == 0, "pid_matches: another program's name");
}

/* ---- option parsing ---- */
#define ARGV(...) ((char *[]){ __VA_ARGS__, NULL })
#define ARGC(...) ((int)(sizeof((char *[]){ __VA_ARGS__ }) / sizeof(char *)))
#define PARSE(fn, opts, ...) fn(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), opts)

static void test_options(void)
{
	struct attach_opts a;
	struct detach_opts d;
	struct snapshot_opts s;
	struct export_opts e;
	struct backup_opts b;
	struct status_opts st;
	struct release_opts r;

	quiet_stderr(1);
	ok(PARSE(parse_attach_opts, &a, "attach", "/dev/vg0/lv") == 0 && !strcmp(a.device, "/dev/vg0/lv") &&
	   a.chunk_sectors == CHUNK_DEFAULT_SECTORS && !a.name && !a.on_top, "attach: defaults (64K chunks)");
	ok(PARSE(parse_attach_opts, &a, "attach", "--name", "vm1", "--chunk-size", "256K", "--on-top", "/dev/sdb") ==
	   0 && !strcmp(a.name, "vm1") && a.chunk_sectors == 512 && a.on_top, "attach: --name --chunk-size --on-top");
	ok(PARSE(parse_attach_opts, &a, "attach", "/dev/sdb", "-c", "4K", "-n", "x") == 0 && a.chunk_sectors == 8,
	   "attach: short options after the device");
	ok(PARSE(parse_attach_opts, &a, "attach", "/dev/sdb", "--chunk-size", "3K") == EXIT_USAGE,
	   "attach: bad chunk size is a usage error");
	ok(PARSE(parse_attach_opts, &a, "attach", "/dev/sdb", "--name", "a/b") == EXIT_USAGE,
	   "attach: bad name is a usage error");
	ok(PARSE(parse_attach_opts, &a, "attach") == EXIT_USAGE, "attach: missing device is a usage error");
	ok(PARSE(parse_attach_opts, &a, "attach", "a", "b") == EXIT_USAGE, "attach: two devices are a usage error");
	ok(PARSE(parse_attach_opts, &a, "attach", "--bogus", "a") == EXIT_USAGE, "attach: unknown option");

	ok(PARSE(parse_detach_opts, &d, "detach", "vm1") == 0 && !d.force, "detach: name");
	ok(PARSE(parse_detach_opts, &d, "detach", "--force", "vm1") == 0 && d.force, "detach: --force");
	ok(PARSE(parse_detach_opts, &d, "detach") == EXIT_USAGE, "detach: missing name");

	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "--exception", "/tmp/x.cow") == 0 &&
	   !strcmp(s.exception, "/tmp/x.cow") && !s.size_bytes && !s.size_percent &&
	   s.vt.cbw_error == CBW_BREAK_SNAPSHOT && !s.vt.cbw_timeout_ms, "snapshot: defaults");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--size", "10%", "--cbw-error",
		 "break_write", "--cbw-timeout", "500", "--max-copies", "4") == 0 &&
	   s.size_percent == 10 && s.vt.cbw_error == CBW_BREAK_WRITE && s.vt.cbw_timeout_ms == 500 &&
	   s.vt.max_copies == 4, "snapshot: all options");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "-s", "512M") == 0 &&
	   s.size_bytes == 512ull << 20, "snapshot: --size 512M");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1") == EXIT_USAGE, "snapshot: --exception is required");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--cbw-error", "maybe") == EXIT_USAGE,
	   "snapshot: bad --cbw-error");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--cbw-timeout", "-5") == EXIT_USAGE,
	   "snapshot: bad --cbw-timeout");
	/* The kernel's limits (include/dm-fleece.h): refused here, not by the table load. */
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--cbw-timeout", "3600000") == 0 &&
	   s.vt.cbw_timeout_ms == 3600000, "snapshot: --cbw-timeout at the kernel's limit");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--cbw-timeout", "3600001") == EXIT_USAGE,
	   "snapshot: --cbw-timeout past the kernel's limit");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--max-copies", "1024") == 0 &&
	   s.vt.max_copies == 1024, "snapshot: --max-copies at the kernel's limit");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--max-copies", "1025") == EXIT_USAGE,
	   "snapshot: --max-copies past the kernel's limit");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--max-copies", "0") == EXIT_USAGE,
	   "snapshot: --max-copies 0");
	ok(PARSE(parse_snapshot_opts, &s, "snapshot", "vm1", "-e", "/f", "--size", "0") == EXIT_USAGE,
	   "snapshot: --size 0 is refused");

	ok(PARSE(parse_export_opts, &e, "export", "vm1") == 0 && e.server == SRV_QEMU_NBD && !e.tcp && !e.socket,
	   "export: defaults (qemu-nbd, unix socket)");
	ok(PARSE(parse_export_opts, &e, "export", "vm1", "--port", "10810") == 0 && e.tcp && e.port == 10810 &&
	   !strcmp(e.bind, "127.0.0.1"), "export: --port binds to 127.0.0.1 by default");
	ok(PARSE(parse_export_opts, &e, "export", "vm1", "--bind", "0.0.0.0") == 0 && e.tcp && e.port == 10809,
	   "export: --bind uses port 10809 by default");
	ok(PARSE(parse_export_opts, &e, "export", "--server", "nbd-server", "--socket", "/run/x.sock", "vm1") == 0 &&
	   e.server == SRV_NBD_SERVER && !strcmp(e.socket, "/run/x.sock"), "export: nbd-server on a socket");
	ok(PARSE(parse_export_opts, &e, "export", "vm1", "--socket", "rel.sock") == EXIT_USAGE,
	   "export: relative socket path is refused");
	ok(PARSE(parse_export_opts, &e, "export", "vm1", "--socket", "/x", "--port", "1") == EXIT_USAGE,
	   "export: --socket and --port together are refused");
	ok(PARSE(parse_export_opts, &e, "export", "vm1", "--server", "nginx") == EXIT_USAGE,
	   "export: unknown server is refused");
	ok(PARSE(parse_export_opts, &e, "export", "vm1", "--port", "70000") == EXIT_USAGE,
	   "export: port out of range");

	ok(PARSE(parse_backup_opts, &b, "backup", "vm1", "--to", "/b.img") == 0 && !strcmp(b.to, "/b.img") &&
	   !b.release && b.progress == -1 && b.io_bytes == 1 << 20, "backup: defaults");
	ok(PARSE(parse_backup_opts, &b, "backup", "vm1", "-o", "/b.img", "--release", "--no-progress", "--force",
		 "--io-size", "4M") == 0 && b.release && b.progress == 0 && b.force && b.io_bytes == 4 << 20,
	   "backup: all options");
	ok(PARSE(parse_backup_opts, &b, "backup", "vm1") == EXIT_USAGE, "backup: --to is required");
	ok(PARSE(parse_backup_opts, &b, "backup", "vm1", "--to", "/b", "--io-size", "3M") == EXIT_USAGE,
	   "backup: --io-size must be a power of two");

	ok(PARSE(parse_status_opts, &st, "status") == 0 && !st.name && !st.json, "status: no arguments");
	ok(PARSE(parse_status_opts, &st, "status", "--json", "vm1") == 0 && st.json && !strcmp(st.name, "vm1"),
	   "status: --json NAME");
	ok(PARSE(parse_status_opts, &st, "status", "a", "b") == EXIT_USAGE, "status: two names are refused");

	ok(PARSE(parse_release_opts, &r, "release", "vm1", "64M", "1M") == 0 && r.offset == 64 << 20 &&
	   r.length == 1 << 20, "release: sizes");
	ok(PARSE(parse_release_opts, &r, "release", "vm1", "0", "128s") == 0 && r.offset == 0 && r.length == 65536,
	   "release: offset 0 and sectors");
	ok(PARSE(parse_release_opts, &r, "release", "vm1", "100", "512") == EXIT_USAGE,
	   "release: unaligned offset is refused");
	ok(PARSE(parse_release_opts, &r, "release", "vm1", "0") == EXIT_USAGE, "release: missing length");
	quiet_stderr(0);
}

int main(void)
{
	test_sizes();
	test_formatting();
	test_names();
	test_status_lines();
	test_json();
	test_status_json();
	test_kv();
	test_misc();
	test_options();

	printf("TAP version 13\n1..%d\n", ntests);
	for (int i = 0; i < ntests; i++) {
		puts(results[i]);
		free(results[i]);
	}
	if (nfailed)
		printf("# %d of %d failed\n", nfailed, ntests);
	return nfailed ? 1 : 0;
}
