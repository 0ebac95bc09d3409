#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Faults injected by the kernel's fault-injection framework (the debug
# kernel of `make debug-kernel` has it; Debian's kernels do not, and then
# the test is skipped and says why):
#
#  - failslab and fail_page_alloc failing every allocation that cannot
#    sleep, while guest writes make copies and the view is read: the copies
#    make progress from their mempools, the snapshot stays active, no bio
#    hangs and the view still equals the point in time;
#  - the same for sleeping allocations of the task that creates the view:
#    the view is refused cleanly and a second try works;
#  - fail_make_request on the exception device and on the origin device,
#    under both cbw_error policies: the policy is applied as documented
#    (Documentation/device-mapper/fleece.rst, "Copy failures").
# TIMEOUT: 600
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl
dbg=/sys/kernel/debug
mountpoint -q "$dbg" || mount -t debugfs none "$dbg" 2>/dev/null
for f in failslab fail_page_alloc fail_make_request; do
	[ -d "$dbg/$f" ] ||
		ktap_skip_all "this kernel has no $f (CONFIG_FAULT_INJECTION*): run it on the debug kernel (make debug-kernel; make check KERNELS=debug)"
done
fleece_load || ktap_bail "cannot load dm-fleece"

# inject WHAT PROBABILITY [IGNORE_GFP_WAIT [TASK_FILTER]]: arm a fault
# attribute with no limit on the count and no log spam; 0 disarms it.
inject() {
	local d=$dbg/$1
	echo 0 >"$d/probability"
	[ "$2" -eq 0 ] && return 0
	echo -1 >"$d/times"
	echo 1 >"$d/interval"
	echo 0 >"$d/verbose"
	echo 0 >"$d/space" 2>/dev/null
	[ -e "$d/ignore-gfp-wait" ] && echo "${3:-Y}" >"$d/ignore-gfp-wait"
	echo "${4:-N}" >"$d/task-filter"
	echo "$2" >"$d/probability"
}
disarm_all() {
	inject failslab 0
	inject fail_page_alloc 0
	inject fail_make_request 0
}
fleece_cleanup disarm_all

tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$o" 80
dd if="$o" of="$tmp/ref" bs=1M iflag=direct status=none

# 1. Allocations that cannot sleep fail half of the time while copies run.
origin=$(fleece_origin fi-o "$o" 8)
view=$(fleece_view fi-v fi-o "$e")
inject failslab 50 Y
inject fail_page_alloc 50 Y
write_rc=0
for ((c = 0; c < 2048; c += 16)); do
	fleece_write "$origin" $((c * 4096)) 4096 "fi$c" || write_rc=1
done
cmp_rc=0
timeout 120 cmp "$view" "$tmp/ref" || cmp_rc=1
disarm_all
ktap_result "non-sleeping allocations failing: every guest write succeeds" $write_rc
fleece_expect_field fi-v state active "non-sleeping allocations failing: the snapshot stays active"
fleece_expect_field fi-v copied 128 "non-sleeping allocations failing: every first write was copied"
ktap_result "non-sleeping allocations failing: the view still equals the snapshot" $cmp_rc
fleece_expect_field fi-o waiting 0 "non-sleeping allocations failing: no write is left waiting"
fleece_dm_remove fi-v

# 2. The task that creates the view gets no memory at all: refused cleanly.
inject failslab 100 N Y
inject fail_page_alloc 100 N Y
exc_table="0 $(blockdev --getsz "$origin") fleece-view /dev/mapper/fi-o $e"
(echo 1 >/proc/self/make-it-fail && exec dmsetup create fi-v2 --table "$exc_table") \
	>/dev/null 2>&1
rc=$?
disarm_all
dmsetup remove fi-v2 >/dev/null 2>&1
[ "$rc" -ne 0 ]
ktap_result "no memory for the view's task: the view is refused" $?
fleece_expect_field fi-o state idle "no memory for the view's task: the origin stays idle"
view=$(fleece_view fi-v2 fi-o "$e")
fleece_expect_field fi-v2 state active "a second try, with memory, starts the snapshot"
fleece_dm_remove fi-v2
fleece_dm_remove fi-o

# request_fault DEV: fail every request to block device DEV from now on.
request_fault() {
	echo 1 >"/sys/block/$(basename "$(readlink -f "$1")")/make-it-fail"
	inject fail_make_request 100
}
request_ok() {
	inject fail_make_request 0
	echo 0 >"/sys/block/$(basename "$(readlink -f "$1")")/make-it-fail"
}

# 3. The exception device fails every write.
for policy in break_snapshot break_write; do
	dd if="$tmp/ref" of="$o" bs=1M oflag=direct status=none
	origin=$(fleece_origin fe-o "$o" 8)
	view=$(fleece_view fe-v fe-o "$e" 2 cbw_error $policy)
	request_fault "$e"
	fleece_write "$origin" $((7 * 4096)) 4096 fe-$policy
	rc=$?
	fleece_wait_field fe-v error exception_io 10
	request_ok "$e"
	if [ $policy = break_snapshot ]; then
		ktap_result "exception device failing, $policy: the guest write succeeds" $rc
		fleece_expect_field fe-v state invalid "exception device failing, $policy: the snapshot is invalid"
	else
		[ $rc -ne 0 ]
		ktap_result "exception device failing, $policy: the guest write fails" $?
		fleece_expect_field fe-v state active "exception device failing, $policy: the snapshot stays valid"
		ktap_check "exception device failing, $policy: the view equals the snapshot" \
			cmp "$view" "$tmp/ref"
	fi
	fleece_expect_field fe-v error exception_io "exception device failing, $policy: the status says exception_io"
	fleece_dm_remove fe-v
	fleece_dm_remove fe-o
done

# 4. The origin device fails one request: the copy's read, which is
# submitted before the guest write it holds.
for policy in break_snapshot break_write; do
	dd if="$tmp/ref" of="$o" bs=1M oflag=direct status=none
	origin=$(fleece_origin fo-o "$o" 8)
	view=$(fleece_view fo-v fo-o "$e" 2 cbw_error $policy)
	request_fault "$o"
	echo 1 >"$dbg/fail_make_request/times"
	fleece_write "$origin" $((9 * 4096)) 4096 fo-$policy "" dsync
	rc=$?
	request_ok "$o"
	fleece_wait_field fo-v error origin_io 10
	fleece_expect_field fo-v error origin_io "origin read failing, $policy: the status says origin_io"
	if [ $policy = break_snapshot ]; then
		ktap_result "origin read failing, $policy: the guest write succeeds" $rc
		fleece_expect_field fo-v state invalid "origin read failing, $policy: the snapshot is invalid"
	else
		[ $rc -ne 0 ]
		ktap_result "origin read failing, $policy: the guest write fails" $?
		fleece_expect_field fo-v state active "origin read failing, $policy: the snapshot stays valid"
		ktap_check "origin read failing, $policy: the view equals the snapshot" \
			cmp "$view" "$tmp/ref"
	fi
	fleece_dm_remove fo-v
	fleece_dm_remove fo-o
done
ktap_finish
