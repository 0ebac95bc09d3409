// SPDX-License-Identifier: GPL-2.0-only
/*
 * fleecectl: parsing the fleece targets' status and table lines.
 *
 * Status INFO, after "<start> <len> <target>", the same for both targets:
 *
 *   <state> <chunk sectors> <snapshot chunks> <chunks copied>
 *   <chunks released> <slots used>/<slots total> <copies in flight>
 *   <writes waiting> <writes delayed> <error>
 *
 * Fields added at the end by a later kernel are ignored; a missing or
 * malformed field makes the whole line invalid.
 *
 * Origin table:  <origin dev> <chunk sectors> [<#features> <feature>*]
 * View table:    <fleece dev> <exception dev> [<#features> <feature>*]
 *   features: cbw_error break_snapshot|break_write, cbw_timeout_ms N,
 *             max_copies N
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleecectl.h"

#define MAX_WORDS 32

/* Split s (copied into buf) on blanks; returns the number of words. */
static int split(const char *s, char *buf, size_t len, char **w, int max)
{
	int n = 0;
	char *p, *save = NULL;

	if (strlen(s) >= len)
		return -1;
	strcpy(buf, s);
	for (p = strtok_r(buf, " \t\n", &save); p; p = strtok_r(NULL, " \t\n", &save)) {
		if (n == max)
			return -1;
		w[n++] = p;
	}
	return n;
}

static int word_u64(const char *s, uint64_t *v)
{
	return parse_u64(s, v);
}

static int word_uint(const char *s, unsigned *v)
{
	uint64_t x;

	if (parse_u64(s, &x) || x > 0xffffffffu)
		return -1;
	*v = (unsigned)x;
	return 0;
}

const char *state_name(enum fleece_state s)
{
	switch (s) {
	case ST_IDLE: return "idle";
	case ST_ACTIVE: return "active";
	case ST_INVALID: return "invalid";
	default: return "unknown";
	}
}

/* An error name of the status: lower case and '_'; 0 or -1. */
static int copy_error_word(const char *word, char *dst, size_t size)
{
	if (strlen(word) >= size)
		return -1;
	for (const char *p = word; *p; p++)
		if (!(*p >= 'a' && *p <= 'z') && *p != '_')
			return -1;
	strcpy(dst, word);
	return 0;
}

int parse_status_info(const char *params, struct fleece_status *st)
{
	char buf[1024], *w[MAX_WORDS], *slash;
	int n = split(params, buf, sizeof(buf), w, MAX_WORDS);

	memset(st, 0, sizeof(*st));
	if (n < DM_FLEECE_STATUS_FIELDS_V1)
		return -1;
	if (!strcmp(w[0], "idle"))
		st->state = ST_IDLE;
	else if (!strcmp(w[0], "active"))
		st->state = ST_ACTIVE;
	else if (!strcmp(w[0], "invalid"))
		st->state = ST_INVALID;
	else
		return -1;
	slash = strchr(w[5], '/');
	if (!slash)
		return -1;
	*slash = 0;
	if (word_uint(w[1], &st->chunk_sectors) ||
	    word_u64(w[2], &st->snapshot_chunks) ||
	    word_u64(w[3], &st->chunks_copied) ||
	    word_u64(w[4], &st->chunks_released) ||
	    word_u64(w[5], &st->slots_used) ||
	    word_u64(slash + 1, &st->slots_total) ||
	    word_u64(w[6], &st->copies_in_flight) ||
	    word_u64(w[7], &st->writes_waiting) ||
	    word_u64(w[8], &st->writes_delayed))
		return -1;
	if (copy_error_word(w[9], st->error, sizeof(st->error)))
		return -1;
	strcpy(st->last_error, "none");
	if (n < DM_FLEECE_STATUS_FIELDS_V2)
		return 0;
	if (word_u64(w[10], &st->discard_sectors) ||
	    word_u64(w[11], &st->discards_dropped) ||
	    copy_error_word(w[12], st->last_error, sizeof(st->last_error)))
		return -1;
	return 0;
}

int valid_discard_policy(const char *s)
{
	return !strcmp(s, DM_FLEECE_DISCARD_DEFER) || !strcmp(s, DM_FLEECE_DISCARD_COPY) ||
	       !strcmp(s, DM_FLEECE_DISCARD_IGNORE);
}

int parse_devno(const char *s, unsigned *major, unsigned *minor)
{
	char *end;
	unsigned long ma, mi;

	errno = 0;
	ma = strtoul(s, &end, 10);
	if (errno || end == s || *end != ':')
		return -1;
	s = end + 1;
	mi = strtoul(s, &end, 10);
	if (errno || end == s || *end)
		return -1;
	*major = (unsigned)ma;
	*minor = (unsigned)mi;
	return 0;
}

int parse_origin_table(const char *params, struct origin_table *t)
{
	char buf[1024], *w[MAX_WORDS];
	int n = split(params, buf, sizeof(buf), w, MAX_WORDS);
	unsigned nf;

	memset(t, 0, sizeof(*t));
	strcpy(t->discard_policy, DM_FLEECE_DISCARD_DEFER);
	if (n < 2)
		return -1;
	if (parse_devno(w[0], &t->major, &t->minor) || word_uint(w[1], &t->chunk_sectors))
		return -1;
	if (n == 2)
		return 0;
	if (word_uint(w[2], &nf) || (int)nf != n - 3)
		return -1;
	for (int i = 3; i + 1 < n; i += 2) {
		if (!strcmp(w[i], "discard_policy") && valid_discard_policy(w[i + 1]))
			strcpy(t->discard_policy, w[i + 1]);
	}
	return 0;
}

int parse_cbw_error(const char *s, enum cbw_error *e)
{
	if (!strcmp(s, "break_snapshot"))
		*e = CBW_BREAK_SNAPSHOT;
	else if (!strcmp(s, "break_write"))
		*e = CBW_BREAK_WRITE;
	else
		return -1;
	return 0;
}

const char *cbw_error_name(enum cbw_error e)
{
	return e == CBW_BREAK_WRITE ? "break_write" : "break_snapshot";
}

int parse_view_table(const char *params, struct view_table *t)
{
	char buf[1024], *w[MAX_WORDS];
	int n = split(params, buf, sizeof(buf), w, MAX_WORDS);
	unsigned nf;
	int i;

	memset(t, 0, sizeof(*t));
	if (n < 2)
		return -1;
	if (parse_devno(w[0], &t->origin_major, &t->origin_minor) ||
	    parse_devno(w[1], &t->exc_major, &t->exc_minor))
		return -1;
	if (n == 2)
		return 0;
	if (word_uint(w[2], &nf) || (int)nf != n - 3)
		return -1;
	for (i = 3; i < n; i += 2) {
		if (i + 1 >= n)
			return -1;
		if (!strcmp(w[i], "cbw_error")) {
			if (parse_cbw_error(w[i + 1], &t->cbw_error))
				return -1;
		} else if (!strcmp(w[i], "cbw_timeout_ms")) {
			if (word_u64(w[i + 1], &t->cbw_timeout_ms))
				return -1;
		} else if (!strcmp(w[i], "max_copies")) {
			if (word_u64(w[i + 1], &t->max_copies))
				return -1;
		} else {
			return -1;
		}
	}
	return 0;
}

int format_view_params(char *buf, size_t len, const struct view_table *t)
{
	char feat[256] = "";
	int nf = 0, n;
	size_t fl = 0;

	if (t->cbw_error != CBW_BREAK_SNAPSHOT) {
		fl += snprintf(feat + fl, sizeof(feat) - fl, " cbw_error %s", cbw_error_name(t->cbw_error));
		nf += 2;
	}
	if (t->cbw_timeout_ms) {
		fl += snprintf(feat + fl, sizeof(feat) - fl, " cbw_timeout_ms %" PRIu64, t->cbw_timeout_ms);
		nf += 2;
	}
	if (t->max_copies) {
		fl += snprintf(feat + fl, sizeof(feat) - fl, " max_copies %" PRIu64, t->max_copies);
		nf += 2;
	}
	if (nf)
		n = snprintf(buf, len, "%u:%u %u:%u %d%s", t->origin_major, t->origin_minor,
			     t->exc_major, t->exc_minor, nf, feat);
	else
		n = snprintf(buf, len, "%u:%u %u:%u", t->origin_major, t->origin_minor,
			     t->exc_major, t->exc_minor);
	return n < 0 || (size_t)n >= len ? -1 : n;
}
