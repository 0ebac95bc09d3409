#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Releases: they fail once the snapshot is not active; a discard and a
# release message of the same range release the same chunks, the last
# partial chunk of an origin that is not a whole number of chunks included
# (the range reaches the end of the image), and a range that covers part
# of a chunk elsewhere releases nothing of it.  Released exception slots
# are reused while exception reads are always in flight: a small exception
# store never fills however many chunks go through it.
# TIMEOUT: 300
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl blkdiscard fio
fleece_modprobe dm-delay
fleece_load || ktap_bail "cannot load dm-fleece"

ktap_plan 26

tmp=$(fleece_tmpdir)

# 8a. Nothing can be released from a snapshot that is no longer active (here
# invalid because the fleece table was replaced): the release would report
# success for chunks the snapshot no longer tracks.
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$o" 56
sectors=$(blockdev --getsz "$o")
fleece_origin rel-o "$o" 128 >/dev/null
view=$(fleece_view rel-v rel-o "$e")
dmsetup reload rel-o --table "0 $sectors linear $o 0" && dmsetup resume rel-o
fleece_expect_field rel-v state invalid "the snapshot is invalid once the fleece table is replaced"
! dmsetup message rel-v 0 release 0 256 >/dev/null 2>&1
ktap_result "a release message fails when the snapshot is not active" $?
! blkdiscard -o 0 -l 131072 "$view" 2>/dev/null
ktap_result "a discard on the view fails when the snapshot is not active" $?
fleece_expect_field rel-v released 0 "nothing was released"
fleece_dm_remove rel-v
fleece_dm_remove rel-o

# 8b. An origin of 16 MiB + 4 KiB at 64 KiB chunks: 256 whole chunks and a
# last partial one of 8 sectors.
p=$(fleece_loopdev $((16 * 1048576 + 4096)) "$tmp/p.img")
fleece_fill "$p" 57
psz=$(blockdev --getsz "$p")
porigin=$(fleece_origin rel-p "$p" 128)
fleece_snapshot_ref "$porigin" "$tmp/pref"

# release_case NAME HOW... : a fresh view, then HOW (a command, run with
# $pview set), and print the view's released and snapshot_chunks.
pview=
fresh_view() {
	fleece_dm_remove rel-pv
	pview=$(fleece_view rel-pv rel-p "$e")
}

fresh_view
fleece_expect_field rel-pv snapshot_chunks 257 "the image has 257 chunks, the last one partial"
ktap_check "a discard of the whole view" blkdiscard "$pview"
got=$(fleece_field rel-pv released)
[ "$got" = 257 ]
ktap_result "the discard released every chunk, the partial last one too" $? ||
	ktap_diag "released $got; status: $(dmsetup status rel-pv)"
! dd if="$pview" of=/dev/null bs=4096 count=1 skip=$((psz / 8 - 1)) iflag=direct status=none 2>/dev/null
ktap_result "a read of the released last chunk fails" $?

fresh_view
ktap_check "a release message of the whole view" dmsetup message rel-pv 0 release 0 "$psz"
got=$(fleece_field rel-pv released)
[ "$got" = 257 ]
ktap_result "the message released every chunk, the partial last one too" $? ||
	ktap_diag "released $got; status: $(dmsetup status rel-pv)"

# Only the last partial chunk: a range that reaches the end of the image.
fresh_view
dmsetup message rel-pv 0 release $((psz - 8)) 8 &&
	[ "$(fleece_field rel-pv released)" = 1 ]
ktap_result "a release of just the last 8 sectors releases the partial last chunk" $?
fresh_view
blkdiscard -o $(((psz - 8) * 512)) -l 4096 "$pview" &&
	[ "$(fleece_field rel-pv released)" = 1 ]
ktap_result "so does a discard of just the last 4 KiB" $?

# Parts of chunks that do not reach the end of the image release nothing:
# the rest of the chunk is still part of the image.  The third range ends
# 4 sectors short of the end, inside the partial last chunk.
fresh_view
dmsetup message rel-pv 0 release 8 120 &&
	dmsetup message rel-pv 0 release 192 128 &&
	dmsetup message rel-pv 0 release $((psz - 72)) 68
ktap_result "release messages of parts of chunks are accepted" $?
fleece_expect_field rel-pv released 0 "they release nothing"
blkdiscard -o 4096 -l 61440 "$pview" &&
	blkdiscard -o 98304 -l 65536 "$pview" &&
	blkdiscard -o $(((psz - 72) * 512)) -l $((68 * 512)) "$pview"
ktap_result "discards of parts of chunks succeed" $?
fleece_expect_field rel-pv released 0 "they release nothing either"
ktap_check "the whole image still reads back as the snapshot" cmp "$pview" "$tmp/pref"
dmsetup message rel-pv 0 release 64 192
fleece_expect_field rel-pv released 1 "a range over one whole chunk and two halves releases the whole one"
fleece_dm_remove rel-pv
fleece_dm_remove rel-p

# 9. Slot reuse with exception reads always in flight.  A 4 MiB exception
# store at 64 KiB chunks has 64 slots.  Chunks 0-3 are copied and never
# released; four fio readers (libaio, 4 reads in flight each) read them
# through the view all the time.  The exception device delays reads by
# 100 ms (dm-delay): the readers started at different moments, so their
# reads overlap and some are always in flight; with a plain loop device
# they would all complete at once, now and then, and leave none.  Each
# cycle copies 48 new chunks and releases them: 244 copies through 64
# slots, which only works if released slots come back while other slots
# are being read.  60 slots are free, so each cycle's writes need slots that
# the last cycle's release just put in quarantine: the writes wait for
# them, the store never counts as full.
r=$(fleece_loopdev 24M "$tmp/r.img")
re=$(fleece_loopdev 4M "$tmp/re.img")
fleece_fill "$r" 58
rdelay=$(fleece_dm_create rel-rd "0 $(blockdev --getsz "$re") delay $re 0 100 $re 0 0")
rorigin=$(fleece_origin rel-r "$r" 128)
fleece_snapshot_ref "$rorigin" "$tmp/rref"
rview=$(fleece_view rel-rv rel-r "$rdelay")
fleece_expect_field rel-rv slots "0/64" "the exception store has 64 slots"
head -c $((48 * 65536)) /dev/urandom >"$tmp/cycle"
dd if="$tmp/cycle" of="$rorigin" bs=65536 count=4 oflag=direct conv=notrunc status=none
fleece_wait_field rel-rv copied 4 10
fleece_expect_field rel-rv copied 4 "the four chunks the readers read are copied"
fpids=
for i in 1 2 3 4; do
	fio --name=exc-reader$i --filename="$rview" --direct=1 --ioengine=libaio \
		--iodepth=4 --rw=randread --bs=4k --offset=0 --size=256k \
		--time_based --runtime=600 --output="$tmp/fio$i.out" >/dev/null 2>&1 &
	fpids="$fpids $!"
	sleep 0.3
done
fleece_cleanup sh -c "kill $fpids 2>/dev/null; true"
sleep 2
bad=
for cycle in $(seq 0 4); do
	first=$((4 + cycle * 48))
	dd if="$tmp/cycle" of="$rorigin" bs=65536 seek=$first oflag=direct \
		conv=notrunc status=none || { bad="cycle $cycle: origin write failed"; break; }
	dmsetup message rel-rv 0 release $((first * 128)) $((48 * 128)) ||
		{ bad="cycle $cycle: release failed"; break; }
	if [ "$(fleece_field rel-rv state)" != active ] || [ "$(fleece_field rel-rv error)" != none ]; then
		bad="cycle $cycle: $(dmsetup status rel-rv)"
		break
	fi
done
running=0
for p in $fpids; do
	kill -0 "$p" 2>/dev/null && running=$((running + 1))
done
[ "$running" -eq 4 ]
ktap_result "the four exception readers ran all along" $?
[ -z "$bad" ]
ktap_result "5 cycles of 48 copies and releases with exception reads always in flight" $? ||
	ktap_diag "$bad"
fleece_expect_field rel-rv state active "the snapshot is still active"
fleece_expect_field rel-rv error none "no copy error (the store never filled)"
fleece_wait_field rel-rv copied 244 10
fleece_expect_field rel-rv copied 244 "244 chunks were copied through the 64 slots"
# shellcheck disable=SC2086
kill $fpids 2>/dev/null
wait
ktap_diag "final status: $(dmsetup status rel-rv)"
dd if="$rview" of="$tmp/rhead" bs=65536 count=4 iflag=direct status=none &&
	cmp "$tmp/rhead" <(head -c 262144 "$tmp/rref")
ktap_result "the chunks never released still read as the snapshot" $?
ktap_finish
