#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# The view equals the origin at the snapshot point, whatever is written to
# the origin afterwards: partial-chunk, whole-chunk, straddling, unaligned
# 512 B and multi-chunk writes, discards, write-zeroes, flush and FUA, with
# view reads running at the same time.  The origin ends up holding exactly
# what was written.  Swept over chunk sizes 4 KiB, 64 KiB and 1 MiB.
# TIMEOUT: 400
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl blkdiscard cmp
fleece_load || ktap_bail "cannot load dm-fleece"

SIZE_MB=24
KB=1024

# run_patterns CHUNK_SECTORS: one snapshot, every kind of write, checks.
run_patterns() {
	local cs=$1 cb=$(($1 * 512)) tmp o e origin view readers_pid mism
	tmp=$(fleece_tmpdir)
	o=$(fleece_loopdev ${SIZE_MB}M "$tmp/origin.img")
	e=$(fleece_loopdev ${SIZE_MB}M "$tmp/exception.img")
	fleece_fill "$o" "$cs"
	origin=$(fleece_origin pit-o-$cs "$o" "$cs") || { ktap_fail "chunk $cs: create origin"; return; }
	fleece_snapshot_ref "$origin" "$tmp/ref"
	cp "$tmp/ref" "$tmp/shadow"
	view=$(fleece_view pit-v-$cs pit-o-$cs "$e") || { ktap_fail "chunk $cs: create view"; return; }
	fleece_expect_field pit-v-$cs state active "chunk $cs: view is active after resume"

	# Readers of the view race the writers below.
	mism=$tmp/mismatch
	(
		while [ ! -e "$tmp/stop" ]; do
			dd if="$view" bs=256k iflag=direct status=none |
				cmp -s - "$tmp/ref" || echo x >>"$mism"
		done
	) &
	readers_pid=$!

	local fail=0
	fleece_write "$origin" 512 512 a1 "$tmp/shadow" || fail=1                 # partial chunk
	fleece_write "$origin" $((12345 * 512)) 512 a2 "$tmp/shadow" || fail=1     # unaligned 512 B
	fleece_write "$origin" $((5 * cb)) "$cb" a3 "$tmp/shadow" || fail=1        # whole chunk
	fleece_write "$origin" $((10 * cb - 2048)) 4096 a4 "$tmp/shadow" || fail=1 # straddles two
	fleece_write "$origin" $((8 * KB * KB)) $((4 * KB * KB)) a5 "$tmp/shadow" || fail=1 # multi-chunk
	fleece_write "$origin" $((7 * KB * KB + 512)) $((300 * KB)) a6 "$tmp/shadow" || fail=1 # unaligned large
	fleece_write "$origin" $((13 * KB * KB)) 8192 a7 "$tmp/shadow" dsync || fail=1 # FUA
	fleece_write "$origin" $((5 * cb + 4096)) 4096 a8 "$tmp/shadow" || fail=1  # copied chunk again
	ktap_result "chunk $cs: writes of every shape succeed" $fail

	blockdev --flushbufs "$origin"
	ktap_check "chunk $cs: flush of the origin succeeds" sync

	blkdiscard -f -o $((16 * KB * KB)) -l $((1 * KB * KB)) "$origin" &&
		fleece_zero_shadow "$tmp/shadow" $((16 * KB * KB)) $((1 * KB * KB))
	ktap_result "chunk $cs: discard of the origin succeeds" $?
	blkdiscard -f -z -o $((18 * KB * KB)) -l $((256 * KB)) "$origin" &&
		fleece_zero_shadow "$tmp/shadow" $((18 * KB * KB)) $((256 * KB))
	ktap_result "chunk $cs: write-zeroes of the origin succeeds" $?

	touch "$tmp/stop"
	wait "$readers_pid"
	if [ -s "$mism" ]; then
		ktap_fail "chunk $cs: view reads during the writes equal the snapshot"
		ktap_diag "$(wc -l <"$mism") full reads of the view differed"
	else
		ktap_ok "chunk $cs: view reads during the writes equal the snapshot"
	fi
	ktap_check "chunk $cs: view equals the origin at the snapshot point" \
		cmp "$view" "$tmp/ref"
	# The discard is held back while the snapshot needs its chunk
	# (discard_policy defer): the origin keeps the old data until the end.
	cp "$tmp/shadow" "$tmp/shadow-live"
	dd if="$tmp/ref" of="$tmp/shadow-live" bs=1M skip=16 seek=16 count=1 \
		conv=notrunc status=none
	ktap_check "chunk $cs: origin holds exactly what was written, the held-back discard aside" \
		cmp "$origin" "$tmp/shadow-live"
	local copied
	copied=$(fleece_field pit-v-$cs copied)
	if [ "$copied" -gt 0 ] && [ "$(fleece_field pit-v-$cs slots_used)" = "$copied" ]; then
		ktap_ok "chunk $cs: copies are counted ($copied chunks, as many slots)"
	else
		ktap_fail "chunk $cs: copies are counted"
		ktap_diag "status: $(dmsetup status pit-v-$cs)"
	fi
	fleece_expect_field pit-v-$cs error none "chunk $cs: no copy error"

	# Ending the snapshot frees everything; the origin keeps its data.
	fleece_dm_remove pit-v-$cs
	fleece_expect_field pit-o-$cs state idle "chunk $cs: origin is idle once the view is removed"
	ktap_check "chunk $cs: origin data intact after the view is removed, the discard applied" \
		cmp "$origin" "$tmp/shadow"
	fleece_dm_remove pit-o-$cs
}

for cs in 8 128 2048; do
	run_patterns $cs
done
ktap_finish
