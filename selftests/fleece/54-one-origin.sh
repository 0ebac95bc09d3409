#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# The rules that keep a snapshot sound are checked when a table is loaded,
# never only at resume: a resume that fails leaves the device suspended
# and its I/O hanging.  One fleece device per origin device (a reload onto
# a device another fleece device has, or an inactive table of a third
# device, are refused at load); a view is refused while its fleece device
# has a loaded table that would change the chunk size, and the origin then
# still resumes; a reload that would change what an attached view relies
# on is refused at load.  Zoned origin devices are refused.
# TIMEOUT: 180
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl
fleece_load || ktap_bail "cannot load dm-fleece"

ktap_plan 18

tmp=$(fleece_tmpdir)
x=$(fleece_loopdev 16M "$tmp/x.img")
y=$(fleece_loopdev 16M "$tmp/y.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$x" 54
sectors=$(blockdev --getsz "$x")

# not_suspended NAME: the device is live (I/O to it would not hang).
not_suspended() {
	dmsetup info "$1" | grep -qE '^State: +ACTIVE$'
}

# 3. Two fleece devices, one per origin device.  Moving one onto the other's
# origin device would let writes through one bypass the other's snapshot.
a=$(fleece_origin one-a "$x" 128)
fleece_origin one-b "$y" 128 >/dev/null
klog_mark
! dmsetup reload one-a --table "0 $sectors fleece $y 128" >/dev/null 2>&1
ktap_result "reloading a fleece device onto another fleece device's origin is refused at load" $?
klog_new | grep -q "fleece: The origin device is already under another fleece device\."
ktap_result "the kernel log says the origin is already under another fleece device" $? ||
	ktap_diag "logged: $(klog_new | grep fleece | tail -n 3)"
! dmsetup info one-a | grep -q INACTIVE
ktap_result "no inactive table is left on the refused device" $?
# (A refused reload loads nothing; clear anyway, so that a wrongly accepted
# one cannot go live below.)
dmsetup clear one-a >/dev/null 2>&1
dmsetup table one-a | grep -q " fleece $(lsblk -dno MAJ:MIN "$x" | tr -d ' ') 128$"
ktap_result "the device keeps its own origin" $? || ktap_diag "table: $(dmsetup table one-a)"
fleece_write "$a" 0 65536 54a && not_suspended one-a
ktap_result "the device keeps working" $?

# A third device: even an inactive fleece table on a taken origin device is
# refused, or a later resume would have to fail (or bypass a snapshot).
dmsetup create one-c --notable && fleece_cleanup fleece_dm_remove one-c
klog_mark
! dmsetup load one-c --table "0 $sectors fleece $x 128" >/dev/null 2>&1
ktap_result "an inactive fleece table on a taken origin device is refused at load" $?
klog_new | grep -q "fleece: The origin device is already under another fleece device\."
ktap_result "with the same reason" $?
fleece_dm_remove one-c
fleece_dm_remove one-b

# 4. A loaded table with another chunk size: a view created now would make
# that table's resume fail and leave the device suspended, so the view is
# refused instead, and the origin resumes.
dmsetup load one-a --table "0 $sectors fleece $x 256"
ktap_result "a table with another chunk size is loaded (inactive)" $?
klog_mark
if dmsetup create one-v --table "0 $sectors fleece-view $a $e" >/dev/null 2>&1; then
	ktap_fail "a view is refused while the fleece device has such a loaded table"
	fleece_cleanup fleece_dm_remove one-v
else
	ktap_ok "a view is refused while the fleece device has such a loaded table"
fi
klog_new | grep -q "fleece-view: .*conflicting loaded table; resume or clear it\."
ktap_result "the kernel log says to resume or clear the loaded table" $? ||
	ktap_diag "logged: $(klog_new | grep fleece | tail -n 3)"
timeout 60 dmsetup resume one-a
ktap_result "the origin resumes with the new table" $?
if not_suspended one-a; then
	ktap_ok "the origin is not left suspended"
else
	ktap_fail "the origin is not left suspended"
	ktap_diag "$(dmsetup info one-a)"
	# Guest I/O would hang on it: let it go, for the rest of the test.
	fleece_dm_remove one-v
	dmsetup resume one-a
fi
fleece_dm_remove one-v
timeout 30 dd if=/dev/zero of="$a" bs=4096 count=1 seek=100 oflag=direct conv=notrunc status=none
ktap_result "writes to the origin go on" $?
fleece_expect_field one-a chunk_size 256 "the new chunk size is in effect"

# With a view attached, a reload with another chunk size is refused at load.
fleece_view one-v one-a "$e" >/dev/null
ktap_result "a view is accepted once the origin has no other table loaded" $?
! dmsetup reload one-a --table "0 $sectors fleece $x 512" >/dev/null 2>&1
ktap_result "with a view, a reload with another chunk size is refused at load" $?
fleece_expect_field one-v state active "the snapshot stays active"

# 7. Zoned origins: a zone reset or append changes data that
# copy-before-write cannot copy first.
if ! [ -e /sys/module/null_blk ] &&
	modprobe null_blk nr_devices=1 zoned=1 zone_size=4 memory_backed=1 gb=1 2>/dev/null &&
	[ "$(cat /sys/block/nullb0/queue/zoned 2>/dev/null)" = host-managed ]; then
	fleece_cleanup modprobe -r null_blk
	klog_mark
	zsz=$(blockdev --getsz /dev/nullb0)
	if dmsetup create one-z --table "0 $zsz fleece /dev/nullb0 128" >/dev/null 2>&1; then
		ktap_fail "a zoned origin device is refused"
		fleece_dm_remove one-z
	else
		klog_new | grep -q "fleece: Zoned origin devices are not supported\."
		ktap_result "a zoned origin device is refused with a sentence" $? ||
			ktap_diag "logged: $(klog_new | grep -E 'fleece|device-mapper' | tail -n 3)"
	fi
	fleece_dm_remove one-z
	modprobe -r null_blk
else
	ktap_skip "a zoned origin device is refused" "null_blk cannot make a zoned device here"
	modprobe -r null_blk 2>/dev/null
fi
ktap_finish
