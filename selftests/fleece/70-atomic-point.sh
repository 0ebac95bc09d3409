#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# The point in time is atomic even when the origin is not suspended: with
# a sequential writer stamping blocks running through the view's creation,
# the view holds exactly the state after some prefix of the writes, and
# that prefix covers every write that completed before the view was
# created and none that started after it was.
# TIMEOUT: 200
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup
fleece_load || ktap_bail "cannot load dm-fleece"

BLOCKS=512	# 2 MiB of 4 KiB blocks, written round-robin

for round in 1 2 3; do
	tmp=$(fleece_tmpdir)
	o=$(fleece_loopdev 4M "$tmp/o.img")
	e=$(fleece_loopdev 4M "$tmp/e.img")
	origin=$(fleece_origin at-o-$round "$o" 8)
	"$FLEECE_IO" stamp --dev "$origin" --blocks $BLOCKS --progress "$tmp/progress" &
	wpid=$!
	sleep 1.$round
	before=$(cat "$tmp/progress")
	view=$(fleece_view at-v-$round at-o-$round "$e")
	after=$(cat "$tmp/progress")
	sleep 1
	kill "$wpid"
	wait "$wpid" 2>/dev/null
	out=$("$FLEECE_IO" check-stamps --dev "$view" --blocks $BLOCKS \
		--min "$before" --max $((after + 1)) 2>&1)
	ktap_result "round $round: the view is the state after a prefix of the writes" $?
	ktap_diag "$out (writer progress before/after the view: $before/$after)"
	fleece_dm_remove at-v-$round
	fleece_dm_remove at-o-$round
done
ktap_finish
