#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# A view only ever reads an origin that writes cannot reach without passing
# copy-before-write: a fleece table that is loaded but not live is no
# origin; an origin table replaced between the view's load and its resume
# leaves the view invalid (detached); and while the origin is suspended,
# view reads of the origin are held until a fleece table resumes, and fail
# if another table was swapped in, so none of them can return data written
# after the swap.  Swapping the same fleece table in, or none, changes
# nothing.
# TIMEOUT: 240
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl
fleece_load || ktap_bail "cannot load dm-fleece"

ktap_plan 26

tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$o" 52
sectors=$(blockdev --getsz "$o")

# read_at DEV OFFSET OUT: one 64 KiB O_DIRECT read at byte OFFSET into OUT.
read_at() {
	dd if="$1" of="$3" bs=65536 count=1 skip="$2" iflag=direct,skip_bytes status=none
}

# ref_at OFFSET OUT: the same 64 KiB of the reference image.
ref_at() {
	dd if="$tmp/ref" of="$2" bs=65536 count=1 skip="$1" iflag=skip_bytes status=none
}

# still_running PID: true when PID has not exited (a held read).
still_running() {
	kill -0 "$1" 2>/dev/null
}

# reap PID: the exit status of the background read PID, waiting up to 30 s
# for it; 124 (and diagnostics) if it still hangs, without waiting on it.
reap() {
	timeout 30 sh -c "while kill -0 $1 2>/dev/null; do sleep 0.1; done"
	if still_running "$1"; then
		fleece_dump_hang lo-o lo-v
		return 124
	fi
	wait "$1"
}

# reset_origin: the origin back to a live fleece table with no view, and a
# fresh reference of its content.
reset_origin() {
	fleece_dm_remove lo-v
	dmsetup reload lo-o --table "0 $sectors fleece $o 128" &&
		dmsetup resume lo-o &&
		fleece_snapshot_ref /dev/mapper/lo-o "$tmp/ref"
}

# 1. A loaded but inactive fleece table is not a live origin: the view
# would read an origin that takes writes through the linear table, with no
# copy-before-write.
origin=$(fleece_dm_create lo-o "0 $sectors linear $o 0")
dmsetup load lo-o --table "0 $sectors fleece $o 128"
ktap_result "a fleece table is loaded, inactive, over a linear one" $?
klog_mark
if dmsetup create lo-v --table "0 $sectors fleece-view $origin $e" >/dev/null 2>&1; then
	ktap_fail "a view of a device whose fleece table is not live is refused"
	ktap_diag "view state: $(fleece_field lo-v state 2>&1)"
	fleece_dm_remove lo-v
else
	ktap_ok "a view of a device whose fleece table is not live is refused"
fi
log=$(klog_new | grep -E 'fleece-view: ' | grep -v 'error adding target' | tail -n1)
[[ $log =~ fleece-view:\ [A-Z].*\.\ \(-E[A-Z]+\)$ ]]
ktap_result "the refusal gives a sentence" $? || ktap_diag "logged: '$log'"
dmsetup resume lo-o
ktap_result "the loaded fleece table goes live" $?
fleece_snapshot_ref "$origin" "$tmp/ref"
view=$(fleece_dm_create lo-v "0 $sectors fleece-view $origin $e")
ktap_result "the view is accepted once the fleece table is live" $?
fleece_expect_field lo-v state active "the snapshot is active"

# 2. The origin table is replaced between the view's load and its resume:
# the view resumes, but onto an origin nothing protects any more, so it
# must come up invalid and never show a write made after the swap.
fleece_dm_remove lo-v
dmsetup create lo-v --notable && fleece_cleanup fleece_dm_remove lo-v
dmsetup load lo-v --table "0 $sectors fleece-view $origin $e"
ktap_result "a view table is loaded while the origin is a fleece table" $?
dmsetup reload lo-o --table "0 $sectors linear $o 0" && dmsetup resume lo-o
ktap_result "the origin table is replaced by a linear one before the view resumes" $?
ktap_check "the view resumes" dmsetup resume lo-v
dmsetup mknodes lo-v >/dev/null 2>&1
fleece_expect_field lo-v state invalid "the view is invalid: its origin is not under a fleece table"
fleece_expect_field lo-v error detached "the status says why (detached)"
fleece_write "$origin" 1048576 65536 52a
if read_at /dev/mapper/lo-v 1048576 "$tmp/got" 2>/dev/null; then
	ktap_fail "a view read after the swap fails"
	ref_at 1048576 "$tmp/want"
	cmp -s "$tmp/got" "$tmp/want" ||
		ktap_diag "the view returned data written after the swap"
else
	ktap_ok "a view read after the swap fails"
fi
reset_origin
ktap_result "the origin gets a fleece table again" $?

# 5a. Suspend the origin with a view active, read an untouched chunk of the
# view (the read is held: a new table may be swapped in at any time), swap
# a linear table in and write to it: the held read must fail, not return
# the new data.
view=$(fleece_dm_create lo-v "0 $sectors fleece-view $origin $e")
dmsetup suspend lo-o
read_at "$view" 2097152 "$tmp/held" 2>"$tmp/held.err" &
rpid=$!
fleece_cleanup sh -c "kill $rpid 2>/dev/null; true"
sleep 2
still_running "$rpid"
ktap_result "a view read of the origin is held while the origin is suspended" $?
dmsetup reload lo-o --table "0 $sectors linear $o 0" && dmsetup resume lo-o
ktap_result "a linear table replaces the suspended fleece table" $?
fleece_write "$origin" 2097152 65536 52b "" || ktap_diag "write to the linear origin failed"
reap "$rpid"
rc=$?
# dd exits 1 on a failed read; 124 is a read that still hangs.
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]
if ! ktap_result "the held read fails once another table took over" $?; then
	ref_at 2097152 "$tmp/want"
	cmp -s "$tmp/held" "$tmp/want" && what="the point-in-time data" || what="data written after the swap"
	[ "$rc" -eq 0 ] && ktap_diag "the read succeeded and returned $what"
fi
fleece_expect_field lo-v state invalid "the snapshot is invalid after the swap"
fleece_expect_field lo-v error detached "the status says detached"
reset_origin
ktap_result "the origin gets a fleece table again" $?

# 5b. The same with no swap: the held read goes on once the origin resumes,
# and returns the point-in-time data.
view=$(fleece_dm_create lo-v "0 $sectors fleece-view $origin $e")
dmsetup suspend lo-o
read_at "$view" 3145728 "$tmp/held" &
rpid=$!
fleece_cleanup sh -c "kill $rpid 2>/dev/null; true"
sleep 1
dmsetup resume lo-o
reap "$rpid"
ktap_result "a read held across a plain suspend/resume of the origin completes" $?
ref_at 3145728 "$tmp/want"
ktap_check "it returns the point-in-time data" cmp "$tmp/held" "$tmp/want"
fleece_expect_field lo-v state active "the snapshot stays active"

# 5c. Suspend, reload the same fleece table, resume: the new instance takes
# over the snapshot; a read held meanwhile completes with the right data.
fleece_write "$origin" 4194304 65536 52c
dmsetup suspend lo-o
read_at "$view" 5242880 "$tmp/held" &
rpid=$!
fleece_cleanup sh -c "kill $rpid 2>/dev/null; true"
sleep 1
dmsetup reload lo-o --table "0 $sectors fleece $o 128" && dmsetup resume lo-o
ktap_result "the suspended origin gets the same fleece table again" $?
reap "$rpid"
rc=$?
ref_at 5242880 "$tmp/want"
[ "$rc" -eq 0 ] && cmp -s "$tmp/held" "$tmp/want"
ktap_result "the read held across the reload returns the point-in-time data" $?
fleece_write "$origin" 6291456 65536 52d
fleece_expect_field lo-v state active "the snapshot stays active across the reload"
ktap_check "the view still equals the snapshot" cmp "$view" "$tmp/ref"
ktap_finish
