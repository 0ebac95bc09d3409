// SPDX-License-Identifier: GPL-2.0-only
/*
 * The status of a fleece device, the same for the origin and the view
 * targets: state and error names and the INFO and IMA fields.
 */
#include "fleece-core.h"

struct fleece_status {
	enum fleece_state state;
	enum fleece_error error, last_error;
	u32 nr_chunks;
	u64 discard_sectors, discards_dropped;
	u64 chunks_copied, chunks_released, writes_delayed;
	u32 slots_used, nr_slots;
	unsigned int copies_in_flight, writes_waiting;
};

static const char *fleece_state_name(enum fleece_state state)
{
	switch (state) {
	case FLEECE_ACTIVE:
		return "active";
	case FLEECE_INVALID:
		return "invalid";
	default:
		return "idle";
	}
}

const char *fleece_error_name(enum fleece_error error)
{
	static const char * const names[] = {
		[FLEECE_ERR_NONE] = "none",
		[FLEECE_ERR_FULL] = "full",
		[FLEECE_ERR_ORIGIN_IO] = "origin_io",
		[FLEECE_ERR_EXCEPTION_IO] = "exception_io",
		[FLEECE_ERR_TIMEOUT] = "timeout",
		[FLEECE_ERR_NOMEM] = "nomem",
		[FLEECE_ERR_DETACHED] = "detached",
	};

	return error < ARRAY_SIZE(names) ? names[error] : "unknown";
}

static void fleece_get_status(struct fleece_core *core, struct fleece_status *st)
{
	struct fleece_snapshot *s;

	memset(st, 0, sizeof(*st));
	spin_lock_irq(&core->lock);
	st->state = core->state;
	st->error = core->error;
	st->last_error = core->last_error;
	st->writes_waiting = core->writes_waiting;
	s = core->snap;
	if (s && core->state != FLEECE_IDLE) {
		st->nr_chunks = s->nr_chunks;
		st->chunks_copied = s->chunks_copied;
		st->chunks_released = s->chunks_released;
		st->writes_delayed = s->writes_delayed;
		st->slots_used = s->slots_used;
		st->nr_slots = s->nr_slots;
		st->copies_in_flight = s->copies_in_flight;
		st->discard_sectors = s->discard_sectors;
		st->discards_dropped = s->discards_dropped;
	}
	spin_unlock_irq(&core->lock);
}

/*
 * Status INFO, the same for both targets:
 *   <state> <chunk size> <snapshot chunks> <chunks copied> <chunks released>
 *   <slots used>/<slots total> <copies in flight> <writes waiting>
 *   <writes delayed> <error> <discard sectors deferred>
 *   <discard sectors dropped> <last error>
 *   <tracking> <tracking block sectors> <bitmaps> <inconsistent bitmaps>
 *   <tracking commits>
 * <error> is the running snapshot's, "none" when idle; <last error> is
 * that of the snapshot that ended last.
 * Returns the new length of @result.
 */
unsigned int fleece_emit_status(struct fleece_core *core, sector_t chunk_sectors,
				status_type_t type, char *result,
				unsigned int maxlen)
{
	struct fleece_status st;
	unsigned int sz = 0;

	fleece_get_status(core, &st);
	if (type == STATUSTYPE_INFO) {
		DMEMIT("%s %llu %u %llu %llu %u/%u %u %u %llu %s %llu %llu %s",
		       fleece_state_name(st.state),
		       (unsigned long long)chunk_sectors, st.nr_chunks,
		       st.chunks_copied, st.chunks_released,
		       st.slots_used, st.nr_slots, st.copies_in_flight,
		       st.writes_waiting, st.writes_delayed,
		       fleece_error_name(st.error), st.discard_sectors,
		       st.discards_dropped, fleece_error_name(st.last_error));
		if (sz < maxlen)
			sz += fleece_track_emit_status(core->tracker, result + sz,
						       maxlen - sz);
	} else if (type == STATUSTYPE_IMA) {
		DMEMIT(",state=%s,chunk_size=%llu,snapshot_chunks=%u",
		       fleece_state_name(st.state),
		       (unsigned long long)chunk_sectors, st.nr_chunks);
		DMEMIT(",chunks_copied=%llu,chunks_released=%llu",
		       st.chunks_copied, st.chunks_released);
		DMEMIT(",slots_used=%u,slots_total=%u,error=%s",
		       st.slots_used, st.nr_slots, fleece_error_name(st.error));
		DMEMIT(",discard_sectors=%llu,discards_dropped=%llu,last_error=%s;",
		       st.discard_sectors, st.discards_dropped,
		       fleece_error_name(st.last_error));
	}
	return sz;
}
