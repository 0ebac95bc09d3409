#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# No bio is lost or left hanging across the life-cycle operations, with a
# writer running on the origin all the time: view suspend/resume (the
# snapshot survives), origin suspend/resume, origin table reload, removal
# of the view during I/O, and module unload attempts while in use.  The
# writer's data must all be on the origin at the end.
# TIMEOUT: 300
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl
fleece_load || ktap_bail "cannot load dm-fleece"

tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$o" 50
osz=$(blockdev --getsz "$o")
origin=$(fleece_origin life-o "$o" 128)
fleece_snapshot_ref "$origin" "$tmp/ref"
view=$(fleece_view life-v life-o "$e")

# The writer: rounds of eight 64 KiB writes over the first 8 MiB (from four
# prepared data blocks), each round shifted by 4 KiB; it records the rounds
# it completed and any failed write, and mirrors every write into a shadow.
for b in 0 1 2 3; do
	head -c 65536 /dev/urandom >"$tmp/data$b"
done
writer() {
	local round=0 i off
	while [ ! -e "$tmp/stop" ]; do
		round=$((round + 1))
		for ((i = 0; i < 8; i++)); do
			off=$((i * 1048576 + (round % 16) * 4096))
			dd if="$tmp/data$(((round + i) % 4))" of="$origin" bs=65536 seek="$off" \
				oflag=direct,seek_bytes conv=notrunc status=none ||
				echo "round $round write $i" >>"$tmp/write-errors"
			dd if="$tmp/data$(((round + i) % 4))" of="$tmp/shadow" bs=65536 seek="$off" \
				oflag=seek_bytes conv=notrunc status=none
		done
		echo "$round" >"$tmp/rounds"
	done
}
cp "$tmp/ref" "$tmp/shadow"
writer &
wpid=$!
fleece_cleanup sh -c "kill $wpid 2>/dev/null; true"
sleep 2

ktap_check "view suspend and resume" sh -c "dmsetup suspend life-v && dmsetup resume life-v"
fleece_expect_field life-v state active "the snapshot survives a view suspend/resume"
ktap_check "origin suspend and resume during writes" \
	sh -c "dmsetup suspend life-o && sleep 0.5 && dmsetup resume life-o"
ktap_check "origin table reload (same table) during writes" \
	sh -c "dmsetup reload life-o --table '0 $osz fleece $o 128' && dmsetup resume life-o"
fleece_expect_field life-v state active "the snapshot survives an origin reload"
ktap_check "view still equals the snapshot after the reload" cmp "$view" "$tmp/ref"

! rmmod dm_fleece 2>/dev/null
ktap_result "rmmod is refused while the targets are in use" $?
[ -d /sys/module/dm_fleece ]
ktap_result "the module is still loaded" $?

copied=$(fleece_field life-v copied)
ktap_check "view removal during writes" fleece_dm_remove life-v
fleece_expect_field life-o state idle "the origin is idle after the view is gone"
sleep 1
touch "$tmp/stop"
wait "$wpid"
[ ! -s "$tmp/write-errors" ]
ktap_result "no origin write failed ($(cat "$tmp/rounds") rounds, $copied chunks copied)" $?
ktap_check "the origin holds every write" cmp "$origin" "$tmp/shadow"

# A new snapshot after the old one: starts from a clean state.
view=$(fleece_view life-v2 life-o "$e")
fleece_expect_field life-v2 copied 0 "a new snapshot starts with nothing copied"
ktap_check "the new view equals the origin" cmp "$view" "$origin"

# Replacing the fleece table by a plain linear one takes the origin out of
# the I/O path: the snapshot can no longer be trusted.
ktap_check "the origin table can be replaced by a linear one" \
	sh -c "dmsetup reload life-o --table '0 $osz linear $o 0' && dmsetup resume life-o"
fleece_expect_field life-v2 state invalid "the snapshot is invalid once writes bypass the fleece target"
fleece_expect_field life-v2 error detached "the status says why (detached)"
! dd if="$view" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null
ktap_result "view reads fail after the fleece target left" $?
fleece_dm_remove life-v2
fleece_dm_remove life-o
ktap_check "rmmod works once nothing uses the module" rmmod dm_fleece
fleece_load
ktap_result "the module loads again" $?
ktap_finish
