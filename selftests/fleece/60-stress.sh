#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Stress: for a bounded time, random writers (writes of 512 B to 1 MiB at
# any sector, discards, write-zeroes) hit the origin while readers check
# every view read against a copy of the origin taken at the snapshot point,
# sector by sector.  Swept over chunk sizes 4 KiB, 64 KiB and 1 MiB, both
# policies.  STRESS=long runs it for minutes instead of seconds.
# TIMEOUT: 400
# TIMEOUT_LONG: 3000
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup
fleece_load || ktap_bail "cannot load dm-fleece"
[ -x "$FLEECE_IO" ] || ktap_bail "$FLEECE_IO is missing: build the selftests"

SECONDS_EACH=$(fleece_stress 15 240)
total_reads=0 total_mism=0

run() {
	local cs=$1 policy=$2 tmp o e origin view out
	tmp=$(fleece_tmpdir)
	o=$(fleece_loopdev 32M "$tmp/o.img")
	e=$(fleece_loopdev 40M "$tmp/e.img")
	fleece_fill "$o" "$cs"
	origin=$(fleece_origin st-o-$cs "$o" "$cs")
	fleece_snapshot_ref "$origin" "$tmp/ref"
	view=$(fleece_view st-v-$cs st-o-$cs "$e" 2 cbw_error "$policy")
	# A run that does not end on time has a hung bio: show where.
	out=$(timeout -s KILL $((SECONDS_EACH + 120)) "$FLEECE_IO" stress \
		--origin "$origin" --view "$view" --ref "$tmp/ref" \
		--seconds "$SECONDS_EACH" --writers 2 --readers 2 --seed "$cs" 2>&1)
	local rc=$?
	[ $rc -eq 137 ] && fleece_dump_hang st-o-$cs st-v-$cs
	ktap_result "chunk $cs, $policy: ${SECONDS_EACH}s of random writes, every view read equals the snapshot" $rc
	ktap_diag "$out"
	ktap_diag "status: $(dmsetup status st-v-$cs)"
	fleece_expect_field st-v-$cs state active "chunk $cs, $policy: the snapshot is still valid"
	ktap_check "chunk $cs, $policy: the whole view equals the snapshot afterwards" \
		cmp "$view" "$tmp/ref"
	local r m
	r=$(sed -n 's/.*reads_checked=\([0-9]*\).*/\1/p' <<<"$out")
	m=$(sed -n 's/.*mismatches=\([0-9]*\).*/\1/p' <<<"$out")
	total_reads=$((total_reads + ${r:-0}))
	total_mism=$((total_mism + ${m:-0}))
	fleece_dm_remove st-v-$cs
	fleece_dm_remove st-o-$cs
}

run 8 break_snapshot
run 128 break_write
run 2048 break_snapshot
ktap_diag "stress totals: $total_reads view reads checked, $total_mism mismatches"
ktap_finish
