#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Incremental backups bound to a bitmap, after QEMU's iotest 257
# (../shared/seeds/002): a 64 MiB origin, 64 KiB tracking blocks and chunks,
# and its write groups.  For each bitmap mode (never, on-success, always) and
# each outcome of the first backup:
#   simulated:    the backup reads and releases everything, then says
#                 failure (257 cancels the finished job);
#   intermediate: the origin fails a read after the first extent (257's
#                 injected I/O error): the backup stops and says failure;
#   none:         the backup reads everything and says success.
# Asserted, in tracking blocks (257's "dirty sectors"):
#   - the frozen backup set (6) and the side set (7) while the backup runs;
#   - the bitmap after backup 1, after write group 3 and after backup 2
#     (e.g. never: 10/15/15, on-success: 7/12/0, always with an
#     intermediate failure: 5/13/0);
#   - the access restriction: only chunks of the backup set are copied, and
#     reads of other chunks fail;
#   - what the backup read equals the origin at the snapshot point.
# TIMEOUT: 1500
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup
fleece_load || ktap_bail "cannot load dm-fleece"

tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 64M "$tmp/o.img")
e=$(fleece_loopdev 64M "$tmp/e.img")
osz=$(blockdev --getsz "$o")

msg() { dmsetup message "$1" 0 "${@:2}"; }

# write_group N: 257's write groups (byte offset and length, hex).
write_group() {
	local w
	case $1 in
	0) w="0x0000000:0x10000 0x0100000:0x10000 0x2000000:0x10000 0x3ff0000:0x10000" ;;
	1) w="0x0000000:0x10000 0x00f8000:0x10000 0x2008000:0x10000 0x3fe0000:0x10000" ;;
	2) w="0x0010000:0x10000 0x00e8000:0x10000 0x2018000:0x10000 0x3fe0000:0x20000" ;;
	3) w="0x0010000:0x30000 0x00d8000:0x10000 0x2028000:0x10000 0x3fc0000:0x10000" ;;
	esac
	for x in $w; do
		dd if=/dev/urandom of=/dev/mapper/inc-o bs=$((${x#*:})) count=1 \
			seek=$((${x%:*})) oflag=direct,seek_bytes status=none || return 1
	done
}

# dirty: the bitmap's dirty blocks; frozen_side: "<backup set> <side set>".
dirty() { msg inc-o bitmap_info | awk '$1 == "bitmap0" { print $4 }'; }
frozen_side() { msg inc-o bitmap_info | awk '$1 == "bitmap0" && $5 == "backup" { print $6, $7 }'; }

# backup_extents VIEW: the backup set, "start+len" per line (bitmap_extents
# of bitmap0 with VIEW "-").
backup_extents() {
	if [ "$1" = - ]; then
		fleece_extents inc-o bitmap_extents bitmap0
	else
		fleece_extents "$1" backup_extents
	fi
}

# save_ref FILE: what the backup will read, from the origin before the
# snapshot: the extents of bitmap0, at their offsets in a sparse file.
save_ref() {
	local x
	rm -f "$1"
	for x in $(backup_extents -); do
		dd if=/dev/mapper/inc-o of="$1" bs=512 skip="${x%+*}" seek="${x%+*}" \
			count="${x#*+}" iflag=direct conv=notrunc status=none
	done
}

# run_backup VIEW REF HOW: read each extent of the backup set, check it
# against REF (the origin at the snapshot point) and release it.
# HOW: all (then success), cancel (all, then failure), fail (origin reads
# fail after the first extent).  Prints the number of extents read; returns
# 1 when data differed.
run_backup() {
	local view=$1 ref=$2 how=$3 x s n i=0 bad=0
	for x in $(backup_extents "$view"); do
		s=${x%+*} n=${x#*+}
		if [ "$how" = fail ] && [ $i = 1 ]; then
			# The origin under the fleece device fails reads from now on.
			dmsetup suspend inc-od && dmsetup load inc-od --table "0 $osz error" &&
				dmsetup resume inc-od
		fi
		if ! dd if="$view" of="$tmp/piece" bs=512 skip="$s" count="$n" iflag=direct status=none 2>/dev/null; then
			[ "$how" = fail ] || bad=1
			break
		fi
		cmp -s "$tmp/piece" <(dd if="$ref" bs=512 skip="$s" count="$n" status=none) || bad=1
		msg "$view" release "$s" "$n" || bad=1
		i=$((i + 1))
	done
	if [ "$how" = fail ]; then
		dmsetup suspend inc-od && dmsetup load inc-od --table "0 $osz linear $o 0" &&
			dmsetup resume inc-od
	fi
	if [ "$how" = all ]; then msg "$view" outcome success; else msg "$view" outcome failure; fi
	echo "$i"
	return $bad
}

# expect WHAT GOT WANT
expect() {
	if [ "$2" = "$3" ]; then
		ktap_ok "$1 ($3)"
	else
		ktap_fail "$1"
		ktap_diag "got '$2', expected '$3'"
	fi
}

# scenario MODE FAILURE AFTER1 AFTER3 AFTER2
scenario() {
	local mode=$1 failure=$2 t="$1, $2 failure" how n
	fleece_dm_create inc-od "0 $osz linear $o 0" >/dev/null
	fleece_dm_create inc-o "0 $osz fleece /dev/mapper/inc-od 128 2 track_block 128" >/dev/null
	write_group 0
	msg inc-o bitmap_add bitmap0
	write_group 1
	expect "$t: write group 1 dirties" "$(dirty)" 6

	save_ref "$tmp/ref1"
	fleece_dm_create inc-v "0 $osz fleece-view /dev/mapper/inc-o $e 4 bitmap bitmap0 bitmap_mode $mode" >/dev/null
	expect "$t: the backup set" "$(backup_extents inc-v | wc -l) extents, $(frozen_side)" "4 extents, 6 0"
	if [ "$failure" != intermediate ]; then
		write_group 2
		expect "$t: write group 2 goes to the side set" "$(frozen_side)" "6 7"
		expect "$t: only chunks of the backup set were copied" "$(fleece_field inc-v copied)" 3
		! dd if=/dev/mapper/inc-v of=/dev/null bs=64k skip=1 count=1 iflag=direct status=none 2>/dev/null
		ktap_result "$t: a chunk outside the backup set cannot be read" $?
	fi
	case $failure in
	simulated) how=cancel ;;
	intermediate) how=fail ;;
	*) how=all ;;
	esac
	n=$(run_backup /dev/mapper/inc-v "$tmp/ref1" $how)
	ktap_result "$t: backup 1 read the snapshot's data ($n extents)" $?
	fleece_dm_remove inc-v
	expect "$t: after backup 1" "$(dirty)" "$3"
	write_group 3
	expect "$t: after write group 3" "$(dirty)" "$4"

	save_ref "$tmp/ref2"
	fleece_dm_create inc-v "0 $osz fleece-view /dev/mapper/inc-o $e 4 bitmap bitmap0 bitmap_mode $mode" >/dev/null
	n=$(run_backup /dev/mapper/inc-v "$tmp/ref2" all)
	ktap_result "$t: backup 2 read the snapshot's data ($n extents)" $?
	fleece_dm_remove inc-v
	expect "$t: after backup 2" "$(dirty)" "$5"
	fleece_dm_remove inc-o
	fleece_dm_remove inc-od
}

scenario never simulated 10 15 15
scenario never intermediate 6 14 14
scenario never none 10 15 15
scenario on-success simulated 10 15 0
scenario on-success intermediate 6 14 0
scenario on-success none 7 12 0
scenario always simulated 7 12 0
scenario always intermediate 5 13 0
scenario always none 7 12 0

# A full backup with a bitmap starts a chain: every chunk is protected and
# readable, and on success the bitmap holds only what was written since.
fleece_dm_create inc-o "0 $osz fleece $o 128" >/dev/null
msg inc-o bitmap_add chain
dd if=/dev/urandom of=/dev/mapper/inc-o bs=64k count=1 oflag=direct status=none
fleece_dm_create inc-v "0 $osz fleece-view /dev/mapper/inc-o $e 6 bitmap chain backup full bitmap_mode on-success" >/dev/null
dd if=/dev/urandom of=/dev/mapper/inc-o bs=4k count=1 seek=1600 oflag=direct status=none
ktap_check "full backup with a bitmap: every chunk is readable" \
	dd if=/dev/mapper/inc-v of=/dev/null bs=1M iflag=direct status=none
msg inc-v outcome success
fleece_dm_remove inc-v
expect "full backup with a bitmap: on success only the later write is left" \
	"$(msg inc-o bitmap_extents chain 0)" "12800+128 end"
! dmsetup create inc-bad --table "0 $osz fleece-view /dev/mapper/inc-o $e 2 bitmap nosuch" 2>/dev/null
ktap_result "a view of a bitmap that does not exist is refused" $?
! dmsetup create inc-bad --table "0 $osz fleece-view /dev/mapper/inc-o $e 2 bitmap_mode never" 2>/dev/null
ktap_result "bitmap_mode without bitmap is refused" $?
dmsetup remove inc-bad 2>/dev/null
fleece_dm_create inc-v "0 $osz fleece-view /dev/mapper/inc-o $e 2 bitmap chain" >/dev/null
! msg inc-o bitmap_remove chain 2>/dev/null
ktap_result "a bitmap bound to a running backup cannot be removed" $?
! msg inc-o bitmap_clear chain 2>/dev/null
ktap_result "nor cleared" $?
fleece_dm_remove inc-v
expect "no outcome counts as failure: the bitmap keeps everything" \
	"$(msg inc-o bitmap_extents chain 0)" "12800+128 end"
fleece_dm_remove inc-o

ktap_finish
