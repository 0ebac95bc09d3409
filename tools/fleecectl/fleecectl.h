/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * fleecectl: shared declarations.
 *
 * One file per verb (attach.c, snapshot.c, ...), plus shared helpers:
 *   util.c    errors, exit codes, sizes, names, state files, processes
 *   dm.c      small wrappers around the libdevmapper dm_task life cycle
 *   set.c     finding a fleece set (origin, -real, -view) by name or path
 *   status.c  parsing the targets' status and table lines
 *   json.c    a tiny JSON writer for "status --json"
 *   loop.c    loop devices for exception files
 *
 * util.c, status.c and json.c do not touch device-mapper, so the host unit
 * tests (tests/unit.c) exercise them without a kernel.
 */
#ifndef FLEECECTL_H
#define FLEECECTL_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* What the kernel targets and fleecectl share (../../include). */
#include <dm-fleece.h>

#define FLEECECTL_VERSION "0.1.0"

/* ---- exit codes (documented in Documentation/fleecectl.rst) ---- */
enum fleece_exit {
	EXIT_OK = 0,
	EXIT_FAIL = 1,		/* an operation failed (ioctl, system call) */
	EXIT_USAGE = 2,		/* bad command line */
	EXIT_NOTFOUND = 3,	/* no such device or fleece set */
	EXIT_NOTOURS = 4,	/* the device exists but fleecectl does not own it */
	EXIT_BUSY = 5,		/* wrong state: already attached, snapshot active, in use */
	EXIT_NOSPACE = 6,	/* exception store too small / no space */
	EXIT_MISSING = 7,	/* a required program (qemu-nbd, nbd-server) is missing */
	EXIT_INVALID = 8,	/* the snapshot is (or became) invalid */
	EXIT_IO = 9,		/* I/O error while reading the view or writing a backup */
	EXIT_ENV = 10,		/* no device-mapper, no fleece target, not root */
};

/* ---- names ---- */
#define UUID_PREFIX "FLEECE-"
#define UUID_ORIGIN UUID_PREFIX "ORIGIN-"	/* origin created on top of a device */
#define UUID_REAL UUID_PREFIX "REAL-"		/* old table of an in-place origin */
#define UUID_VIEW UUID_PREFIX "VIEW-"		/* the snapshot view */
#define SUFFIX_REAL "-real"
#define SUFFIX_VIEW "-view"
#define NAME_MAX_LEN 100	/* keeps name + suffix and UUID within DM limits */
#define DMNAME_LEN 128

#define TARGET_ORIGIN DM_FLEECE_ORIGIN_TARGET
#define TARGET_VIEW DM_FLEECE_VIEW_TARGET

/* ---- chunk sizes, in 512-byte sectors ---- */
#define CHUNK_MIN_SECTORS DM_FLEECE_MIN_CHUNK_SECTORS
#define CHUNK_MAX_SECTORS DM_FLEECE_MAX_CHUNK_SECTORS
#define CHUNK_DEFAULT_SECTORS 128u	/* 64 KiB */
/* A new exception file is this percentage of the origin unless --size. */
#define EXCEPTION_DEFAULT_PERCENT 25u
/* An exception store must hold at least this many chunks. */
#define EXCEPTION_MIN_CHUNKS 16u
/* The smallest store fleecectl(8) SIZING advises, in % of the origin. */
#define EXCEPTION_ADVISED_PERCENT 10u

/* ---- globals set by main.c ---- */
extern int g_verbose;
extern int g_quiet;
extern const char *g_prog;

/* ---- util.c ---- */
void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* err() prints "fleecectl: DEV: what went wrong"; hint() prints "  what to do". */
int err(int code, const char *dev, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void hint(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void warn_msg(const char *dev, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * parse_size() accepts "<n>[unit]" with unit one of (case-insensitive)
 * "" or "b" (bytes), "s" (512-byte sectors), "k", "m", "g", "t", "p"
 * optionally followed by "ib" or "b" (all binary: 1K = 1024), and, when
 * percent is not NULL, "<n>%".  A percentage is returned in *percent
 * (1..100) with *bytes = 0.  Returns 0 or -1 (bad syntax, overflow, zero).
 */
int parse_size(const char *s, uint64_t *bytes, unsigned *percent);
/* Chunk size: parse_size() plus power of two, 4 KiB..1 MiB; sectors out. */
int parse_chunk_size(const char *s, unsigned *sectors);
int parse_u64(const char *s, uint64_t *v);
/* "1.5 GiB", "64 KiB", "512 B" */
char *fmt_size(char *buf, size_t len, uint64_t bytes);
/* "0:42", "1:02:03", "--:--" for unknown */
char *fmt_eta(char *buf, size_t len, double seconds);
/* Valid set name: [A-Za-z0-9._+-], 1..NAME_MAX_LEN, not starting with '-' or '.' */
int valid_name(const char *name);
/* nbd URIs: "nbd+unix:///NAME?socket=PATH" or "nbd://HOST:PORT/NAME" */
char *nbd_uri_unix(char *buf, size_t len, const char *export, const char *socket);
char *nbd_uri_tcp(char *buf, size_t len, const char *export, const char *host, unsigned port);
/* "rundir/name[/file]"; rundir is $FLEECECTL_RUN_DIR or /run/fleecectl */
const char *run_dir(void);
int set_path(char *buf, size_t len, const char *name, const char *file);
int ensure_set_dir(const char *name);
void remove_set_dir(const char *name);
/* key=value state files, written atomically */
struct kv {
	int n;
	char key[16][32];
	char val[16][512];
};
void kv_set(struct kv *kv, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *kv_get(const struct kv *kv, const char *key);
int kv_parse(struct kv *kv, const char *text);
int kv_load(struct kv *kv, const char *path);
int kv_save(const struct kv *kv, const char *path);
/* Look a program up in $PATH; returns 1 and fills out when found. */
int find_program(const char *prog, char *out, size_t len);
/* Is pid alive, and does its command line mention both needles (NULL = any)? */
int pid_matches(pid_t pid, const char *needle1, const char *needle2);
/* Node path of a dm device: dm_dir()/name, created if missing. */
int dm_node_path(char *buf, size_t len, const char *name);
int is_all_zero(const void *buf, size_t len);
/*
 * Around a suspend/resume pair: no signal may leave a device suspended,
 * and no page fault may wait for it (fleecectl itself may live on it).
 */
void critical_begin(void);
void critical_end(void);
/* The last kernel log line containing needle (e.g. "253:2: fleece"); 1 if any. */
int kmsg_last(const char *needle, char *out, size_t len);
/* After a refused table load of dm device major:minor: print the kernel's reason. */
void kernel_reason(unsigned major, unsigned minor);

/* ---- status.c: the targets' status and table lines ---- */
enum fleece_state { ST_UNKNOWN = 0, ST_IDLE, ST_ACTIVE, ST_INVALID };

struct fleece_status {
	enum fleece_state state;
	unsigned chunk_sectors;
	uint64_t snapshot_chunks;
	uint64_t chunks_copied;
	uint64_t chunks_released;
	uint64_t slots_used;
	uint64_t slots_total;
	uint64_t copies_in_flight;
	uint64_t writes_waiting;
	uint64_t writes_delayed;
	char error[32];			/* of the running snapshot */
	/* Module 1.2 and later; zero and "none" from older modules. */
	uint64_t discard_sectors;	/* origin discards held back */
	uint64_t discards_dropped;	/* ... and dropped (sectors) */
	char last_error[32];		/* of the snapshot that ended last */
};

/* Parse the INFO params (after "<start> <len> <target>"); 0 or -1. */
int parse_status_info(const char *params, struct fleece_status *st);
const char *state_name(enum fleece_state s);

struct origin_table {
	unsigned major, minor;		/* the device under the origin */
	unsigned chunk_sectors;
	char discard_policy[8];		/* defer (default), copy or ignore */
};
int valid_discard_policy(const char *s);
int parse_origin_table(const char *params, struct origin_table *t);

enum cbw_error { CBW_BREAK_SNAPSHOT = 0, CBW_BREAK_WRITE };
struct view_table {
	unsigned origin_major, origin_minor;
	unsigned exc_major, exc_minor;
	enum cbw_error cbw_error;
	uint64_t cbw_timeout_ms;
	uint64_t max_copies;		/* 0 = kernel default */
};
int parse_view_table(const char *params, struct view_table *t);
/* Build the view's params string; returns the length or -1. */
int format_view_params(char *buf, size_t len, const struct view_table *t);
int parse_devno(const char *s, unsigned *major, unsigned *minor);
int parse_cbw_error(const char *s, enum cbw_error *e);
const char *cbw_error_name(enum cbw_error e);

/* ---- json.c ---- */
struct json {
	FILE *f;
	int depth;
	int first[16];
	int in_array[16];
};
void json_init(struct json *j, FILE *f);
void json_begin_object(struct json *j, const char *key);
void json_end_object(struct json *j);
void json_begin_array(struct json *j, const char *key);
void json_end_array(struct json *j);
void json_string(struct json *j, const char *key, const char *val);	/* NULL -> null */
void json_u64(struct json *j, const char *key, uint64_t val);
void json_double(struct json *j, const char *key, double val);
void json_bool(struct json *j, const char *key, int val);
void json_null(struct json *j, const char *key);
void json_finish(struct json *j);
void json_escape(FILE *f, const char *s);

/* ---- dm.c ---- */
struct dm_target_line {
	uint64_t start, len;
	char type[32];
	char *params;
};
struct dm_table_lines {
	int n;
	struct dm_target_line t[64];
};
void dm_table_free(struct dm_table_lines *tbl);
uint64_t dm_table_size(const struct dm_table_lines *tbl);

struct dmx_info {
	int exists;
	int suspended;
	int live_table;
	int inactive_table;
	int open_count;
	unsigned major, minor;
	char name[DMNAME_LEN];
	char uuid[DMNAME_LEN + 1];
};

/* Udev flags for devices that only fleecectl uses (-real). */
#define UDEV_FLAGS_PRIVATE \
	(DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG | DM_UDEV_DISABLE_DISK_RULES_FLAG | DM_UDEV_DISABLE_OTHER_RULES_FLAG)
/* The view: a /dev/mapper node, but no blkid/by-uuid duplicates. */
#define UDEV_FLAGS_VIEW (DM_UDEV_DISABLE_DISK_RULES_FLAG | DM_UDEV_DISABLE_OTHER_RULES_FLAG)

int dmx_init(int no_udev);
int dmx_udev_in_use(void);
int dmx_info(const char *name, struct dmx_info *info);
int dmx_info_devno(unsigned major, unsigned minor, struct dmx_info *info);
/* dmx_info() errors: -1 failed, 0 no such device, 1 found */
int dmx_table(const char *name, int info_status, struct dm_table_lines *tbl);
int dmx_create(const char *name, const char *uuid, const struct dm_table_lines *tbl, uint16_t udev_flags);
int dmx_load(const char *name, const struct dm_table_lines *tbl);
int dmx_clear(const char *name);
int dmx_suspend(const char *name, int lockfs);
int dmx_resume(const char *name, uint16_t udev_flags);
/*
 * Resume without waiting for udev: the cookie is added to *cookie (0 for a
 * new one) and waited on later with dmx_udev_wait().  Needed while another
 * device is suspended that udev's rules for this one might read through.
 */
int dmx_resume_nowait(const char *name, uint16_t udev_flags, uint32_t *cookie);
void dmx_udev_wait(uint32_t cookie);
int dmx_remove(const char *name, int deferred, uint16_t udev_flags);
int dmx_message(const char *name, const char *message, char *reply, size_t len);
int dmx_deps(const char *name, unsigned (*devs)[2], int max);
/* Fills names (malloc'd array of malloc'd strings); returns count or -1. */
int dmx_list(char ***names);
void dmx_list_free(char **names, int n);
/* 1 if the kernel knows the target (loads dm-fleece if needed), 0 if not */
int dmx_have_target(const char *target, unsigned version[3]);
/* errno of the last failed ioctl (0 if unknown) */
extern int dmx_errno;
/* Checks device-mapper access and the fleece targets; prints errors. */
int need_fleece_targets(void);
int need_root(void);
int need_dm(void);		/* root + a working /dev/mapper/control */

/* ---- set.c: a fleece set ---- */
struct fleece_set {
	char name[DMNAME_LEN];
	int in_place;			/* origin is the user's own dm device */
	char origin[DMNAME_LEN];	/* dm name of the device with the fleece target */
	unsigned origin_major, origin_minor;
	int have_origin;
	char real[DMNAME_LEN + 16];		/* in place: the device holding the old table */
	unsigned real_major, real_minor;
	int have_real;
	unsigned backing_major, backing_minor;	/* device under the fleece target */
	uint64_t size_sectors;
	unsigned chunk_sectors;
	char discard_policy[8];		/* the origin table's discard_policy */
	char view[DMNAME_LEN + 16];
	unsigned view_major, view_minor;
	int have_view;
	int view_open_count;
	struct view_table vt;		/* valid when have_view */
	struct fleece_status st;	/* origin's (or the view's) status */
	int have_status;
};

/*
 * Resolve a set by name, dm name, or device path.  Prints an error and
 * returns an exit code when not found / not ours; EXIT_OK on success.
 */
int set_resolve(const char *arg, struct fleece_set *s);
/* Fill the status fields of a resolved set. */
int set_refresh(struct fleece_set *s);
/* All sets; returns count or -1; *names is malloc'd. */
int set_list(char ***names);
/* Path of the device that holds the fleece target, e.g. /dev/mapper/x */
int set_origin_path(const struct fleece_set *s, char *buf, size_t len);

/* ---- loop.c ---- */
/* Attach path to a free loop device with autoclear; returns an open fd. */
int loop_attach(const char *path, char *dev, size_t len, unsigned *major, unsigned *minor);
/* Detach a loop device if it is still bound to path. */
int loop_detach(const char *dev, const char *path);
/* Backing file of a loop device, "" if none. */
int loop_backing_file(unsigned major, unsigned minor, char *buf, size_t len);

/* ---- shared verb helpers ---- */
int export_stop(const struct fleece_set *s, int quiet);	/* unexport.c */
int snapshot_end(struct fleece_set *s, int force);	/* end.c */
int exception_cleanup(const char *name);		/* end.c */

/* ---- verbs: parse_*_opts() are separate so the unit tests can run them ---- */
struct attach_opts {
	const char *device;
	const char *name;
	unsigned chunk_sectors;
	const char *discard_policy;	/* NULL: the kernel's default */
	int on_top;
};
int parse_attach_opts(int argc, char **argv, struct attach_opts *o);
int cmd_attach(int argc, char **argv);

struct detach_opts {
	const char *name;
	int force;
};
int parse_detach_opts(int argc, char **argv, struct detach_opts *o);
int cmd_detach(int argc, char **argv);

struct snapshot_opts {
	const char *name;
	const char *exception;
	uint64_t size_bytes;
	unsigned size_percent;
	struct view_table vt;		/* cbw_error, cbw_timeout_ms, max_copies */
};
int parse_snapshot_opts(int argc, char **argv, struct snapshot_opts *o);
int cmd_snapshot(int argc, char **argv);

enum nbd_server { SRV_QEMU_NBD = 0, SRV_NBD_SERVER };
struct export_opts {
	const char *name;
	enum nbd_server server;
	const char *socket;
	unsigned port;
	const char *bind;
	int tcp;
};
int parse_export_opts(int argc, char **argv, struct export_opts *o);
int cmd_export(int argc, char **argv);

struct unexport_opts {
	const char *name;
};
int cmd_unexport(int argc, char **argv);

struct backup_opts {
	const char *name;
	const char *to;
	int release;
	int force;
	int progress;			/* -1 auto, 0 off, 1 on */
	uint64_t io_bytes;
};
int parse_backup_opts(int argc, char **argv, struct backup_opts *o);
int cmd_backup(int argc, char **argv);

struct end_opts {
	const char *name;
	int force;
};
int cmd_end(int argc, char **argv);

struct status_opts {
	const char *name;
	int json;
};
int parse_status_opts(int argc, char **argv, struct status_opts *o);
int cmd_status(int argc, char **argv);

struct release_opts {
	const char *name;
	uint64_t offset, length;	/* bytes */
};
int parse_release_opts(int argc, char **argv, struct release_opts *o);
int cmd_release(int argc, char **argv);

/* Per-verb help text (main.c) */
void verb_usage(const char *verb, FILE *f);
/* Common "--help" handling: returns 1 if argv asked for help. */
int wants_help(int argc, char **argv);

/* status_cmd.c: also used by the demo/tests through "status --json" */
void set_print_json(struct json *j, const struct fleece_set *s);
void set_print_plain(FILE *f, const struct fleece_set *s);

#endif
