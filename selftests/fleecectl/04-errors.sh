#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 180
#
# fleecectl refuses bad input with the documented exit code, a message that
# names the device, and no change to anything:
#   2 usage, 3 not found, 4 not ours, 5 busy / wrong state, 6 too small,
#   7 program missing, 8 snapshot invalid, 9 read error (released chunk).
. "$(dirname "$0")/common.bash"

ktap_plan 39
dir=$(fleece_tmpdir)
loop=$(fleece_loopdev 32M) || ktap_bail "no loop device"
other=$(fleece_loopdev 32M) || ktap_bail "no loop device"
tiny=$(fleece_loopdev 256K) || ktap_bail "no loop device"

# names the device and says what to do (a second, indented line)
says() {
	printf '%s\n' "$FC_OUT" | grep -q -- "$1" && printf '%s\n' "$FC_OUT" | grep -q '^fleecectl:   '
}

# ---- usage (2) ----
expect_rc "unknown verb" 2 frobnicate
expect_rc "snapshot without --exception" 2 snapshot x
expect_rc "attach with a chunk size that is not a power of two" 2 attach "$loop" --chunk-size 48K
expect_rc "attach with an invalid name" 2 attach "$loop" --name "a/b"
expect_rc "attach with an unknown discard policy" 2 attach "$loop" --discard-policy trim
ktap_result "... the message names the choices" "$([[ $FC_OUT == *"defer, copy or ignore"* ]]; echo $?)" ||
	ktap_diag "$FC_OUT"
expect_rc "release of an unaligned range" 2 release x 100 512
fc attach --help
ktap_result "attach --help prints usage and exits 0" \
	"$([ $FC_RC -eq 0 ] && [[ $FC_OUT == usage:* ]]; echo $?)"

# ---- unknown device (3) ----
expect_rc "snapshot of an unknown name" 3 snapshot nosuch --exception "$dir/x"
ktap_result "... the message names it and says what to do" "$(says nosuch; echo $?)" || ktap_diag "$FC_OUT"
expect_rc "attach of a missing device" 3 attach /dev/nosuch-fleece
expect_rc "status of an unknown name" 3 status nosuch

# ---- not ours (4) ----
foreign=$(fleece_dm_create foreign-t "0 2048 error") || ktap_bail "dmsetup create failed"
expect_rc "detach of a dm device fleecectl did not make" 4 detach foreign-t
ktap_result "... the message names it and says what to do" "$(says foreign-t; echo $?)" || ktap_diag "$FC_OUT"
expect_rc "end of a device given by path that is not ours" 4 end "$foreign"
expect_rc "snapshot of a plain block device (not attached)" 4 snapshot "$loop" --exception "$dir/x"
ktap_result "the foreign device is untouched" "$(dmsetup table foreign-t | grep -q '^0 2048 error'; echo $?)"

# ---- busy / wrong state (5) ----
fc_attach "$loop" --name errt
ktap_result "attach $loop" $FC_RC || ktap_diag "$FC_OUT"
expect_rc "attach the same device twice" 5 attach "$loop" --name errt2
expect_rc "attach a fleecectl device" 5 attach /dev/mapper/errt
expect_rc "export without a snapshot" 5 export errt
expect_rc "backup without a snapshot" 5 backup errt --to "$dir/b.img"

# ---- too small (6) ----
expect_rc "an exception device smaller than 16 chunks" 6 snapshot errt --exception "$tiny"
ktap_result "... nothing is left behind" "$(! dmsetup info errt-view >/dev/null 2>&1; echo $?)"
expect_rc "an exception file of 512K (8 chunks)" 6 snapshot errt --exception "$dir/small.cow" --size 512K
ktap_result "... the file fleecectl created is gone again" "$([ ! -e "$dir/small.cow" ]; echo $?)"

# ---- a real snapshot, then more wrong states ----
fc snapshot errt --exception "$other"
ktap_result "snapshot on an exception device" $FC_RC || ktap_diag "$FC_OUT"
expect_rc "a second snapshot" 5 snapshot errt --exception "$dir/second.cow"
expect_rc "detach while a snapshot is active" 5 detach errt

# ---- program missing (7) ----
PATH=/nonexistent expect_rc "export with qemu-nbd missing from PATH" 7 export errt
FC_OUT=$(PATH=/nonexistent "$FLEECECTL" export errt 2>&1)
ktap_result "... says to install qemu-utils or use nbd-server" \
	"$(printf '%s\n' "$FC_OUT" | grep -q 'qemu-utils'; echo $?)" || ktap_diag "$FC_OUT"

# ---- released chunks (9) and an invalid snapshot (8) ----
fc release errt 0 1M
expect_rc "backup that reads a released chunk" 9 backup errt --to "$dir/rel.img"
fc end errt
fc snapshot errt --exception "$dir/full.cow" --size 1M
ktap_result "a store of 3% of the origin: snapshot warns it is under the advised 10% and points to SIZING" \
	"$([ $FC_RC -eq 0 ] && [[ $FC_OUT == *"under the advised 10%"* && $FC_OUT == *SIZING* ]]; echo $?)" ||
	ktap_diag "$FC_OUT"
dd if=/dev/urandom of=/dev/mapper/errt bs=1M count=4 oflag=direct status=none
expect_rc "backup of a snapshot that overflowed" 8 backup errt --to "$dir/inv.img"

# ---- end while the view is open ----
exec {held}</dev/mapper/errt-view
expect_rc "end while the view is held open" 5 end errt
fc_ok "end --force while the view is held open" end --force errt
ktap_result "... the holder's reads fail" "$(! dd bs=4k count=1 iflag=direct status=none <&$held >/dev/null 2>&1; echo $?)"
exec {held}<&-
for _ in 1 2 3 4 5 6 7 8 9 10; do dmsetup info errt-view >/dev/null 2>&1 || break; sleep 0.5; done
ktap_result "... the view goes away on its last close" "$(! dmsetup info errt-view >/dev/null 2>&1; echo $?)"
fc_ok "detach" detach errt
ktap_finish
