/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-fleece: what the kernel targets and their userspace tools must agree
 * on.  The module (dm-fleece/) and fleecectl (tools/fleecectl/) both include
 * this file, so that a limit changed on one side cannot drift from the
 * other.  Documentation/device-mapper/fleece.rst describes every item.
 *
 * Plain C preprocessor definitions only: no kernel or libc types.
 */
#ifndef DM_FLEECE_H
#define DM_FLEECE_H

/* Target names, as they appear in a table line. */
#define DM_FLEECE_ORIGIN_TARGET		"fleece"
#define DM_FLEECE_VIEW_TARGET		"fleece-view"

/* Chunk size, in 512-byte sectors: a power of two from 4 KiB to 1 MiB. */
#define DM_FLEECE_MIN_CHUNK_SECTORS	8U
#define DM_FLEECE_MAX_CHUNK_SECTORS	2048U

/* Ranges of the fleece-view feature arguments. */
#define DM_FLEECE_MAX_CBW_TIMEOUT_MS	3600000U	/* cbw_timeout_ms */
#define DM_FLEECE_MAX_COPIES		1024U		/* max_copies, from 1 */

/*
 * Status INFO of both targets has this many fields; a later version may
 * add fields at the end, never in between:
 *   <state> <chunk sectors> <snapshot chunks> <chunks copied>
 *   <chunks released> <slots used>/<slots total> <copies in flight>
 *   <writes waiting> <writes delayed> <error>
 *   <discard sectors deferred> <discard sectors dropped> <last error>
 *   <tracking> <tracking block sectors> <bitmaps> <inconsistent bitmaps>
 *   <tracking commits>
 * Versions 1.1 and older had only the first 10, 1.2 the first 13; a tool
 * that needs no more accepts DM_FLEECE_STATUS_FIELDS_V1.
 */
#define DM_FLEECE_STATUS_FIELDS		18
#define DM_FLEECE_STATUS_FIELDS_V1	10
#define DM_FLEECE_STATUS_FIELDS_V2	13

/*
 * The fleece target's discard_policy feature: what an origin discard does
 * to a chunk the snapshot still needs.
 */
#define DM_FLEECE_DISCARD_DEFER		"defer"		/* the default */
#define DM_FLEECE_DISCARD_COPY		"copy"
#define DM_FLEECE_DISCARD_IGNORE	"ignore"

/* The view's message that releases chunks: "release <start> <len>". */
#define DM_FLEECE_MSG_RELEASE		"release"

#endif /* DM_FLEECE_H */
