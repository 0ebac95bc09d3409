#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Origin discards while a snapshot is active (discard_policy): with the
# default, defer, a discard of a chunk the snapshot still needs costs no
# copy and no exception slot; the view keeps the point-in-time data; the
# held-back discards survive a table reload, lose every range that a later
# write covers (whole or partial chunks), and go down to the origin when
# the snapshot ends, so the loop file behind it gets its blocks back and
# the data written after the discards is intact byte for byte.  A broken
# snapshot drops them.  copy copies first, ignore drops them.  Discards
# racing view reads and first writes of the same chunks never give a wrong
# read.  An idle origin reports no current error; the last one is a field
# of its own.
# TIMEOUT: 400
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl blkdiscard cmp stat
fleece_load || ktap_bail "cannot load dm-fleece"

ktap_plan 39

tmp=$(fleece_tmpdir)
KB=1024
MB=1048576
CHUNK=65536

# allocated FILE: bytes the file has on disk.
allocated() { echo $(($(stat -c %b "$1") * $(stat -c %B "$1"))); }

# put DEV OFFSET LENGTH: an O_DIRECT write of random bytes, without the
# cost of fleece_write's key derivation (slow under TCG) in a loop.
put() {
	dd if="$tmp/rand" of="$1" bs="$3" count=1 seek="$2" oflag=direct,seek_bytes \
		conv=notrunc status=none
}

# same_range A B OFFSET LENGTH: A and B hold the same bytes there.
same_range() {
	cmp -s <(dd if="$1" bs=64K iflag=skip_bytes,count_bytes,direct skip="$3" count="$4" status=none) \
		<(dd if="$2" bs=64K iflag=skip_bytes,count_bytes skip="$3" count="$4" status=none)
}

head -c $CHUNK /dev/urandom >"$tmp/rand"
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$o" 62
sectors=$(blockdev --getsz "$o")
origin=$(fleece_origin dd-o "$o" 128)
fleece_snapshot_ref "$origin" "$tmp/ref"
cp "$tmp/ref" "$tmp/shadow"
view=$(fleece_view dd-v dd-o "$e")

# 1. Whole chunks (1 MiB .. 5 MiB, 64 chunks) and part of one chunk
# (4 KiB .. 36 KiB into the chunk at 8 MiB) are discarded: nothing copied.
blkdiscard -o $((1 * MB)) -l $((4 * MB)) "$origin" &&
	blkdiscard -o $((8 * MB + 4 * KB)) -l $((32 * KB)) "$origin"
ktap_result "discards of the origin succeed while the snapshot is active" $?
fleece_zero_shadow "$tmp/shadow" $((1 * MB)) $((4 * MB))
fleece_zero_shadow "$tmp/shadow" $((8 * MB + 4 * KB)) $((32 * KB))
fleece_expect_field dd-v slots_used 0 "the discards used no exception slot"
fleece_expect_field dd-v copied 0 "the discards copied no chunk"
fleece_expect_field dd-v discard_deferred $(((4 * MB + 32 * KB) / 512)) \
	"the status counts the sectors held back, partial chunk included"
same_range "$origin" "$tmp/ref" $((1 * MB)) $((4 * MB))
ktap_result "the origin still holds the discarded data while the snapshot needs it" $?
cmp -s "$view" "$tmp/ref"
ktap_result "the view serves the point-in-time data" $?
# Write-zeroes promises the content: it is copied first like a write.
blkdiscard -z -o $((10 * MB)) -l $CHUNK "$origin" &&
	fleece_zero_shadow "$tmp/shadow" $((10 * MB)) $CHUNK
fleece_expect_field dd-v copied 1 "a write-zeroes of an untouched chunk is copied first"

# 2. Writes after the discards, into them: a whole chunk at 2 MiB, and 4 KiB
# in the middle of the partial range (which splits it).
fleece_write "$origin" $((2 * MB)) $CHUNK 6201 "$tmp/shadow" &&
	fleece_write "$origin" $((8 * MB + 16 * KB)) $((4 * KB)) 6202 "$tmp/shadow"
ktap_result "writes into the discarded ranges succeed" $?
fleece_expect_field dd-v discard_deferred $(((4 * MB + 32 * KB - CHUNK - 4 * KB) / 512)) \
	"the writes took their ranges out of the held-back discards"
fleece_expect_field dd-v copied 3 "the writes copied their chunks first, as first writes do"
cmp -s "$view" "$tmp/ref"
ktap_result "the view still serves the point-in-time data after the writes" $?

# 3. A reload of the origin's table keeps them.
dmsetup reload dd-o --table "0 $sectors fleece $o 128" && dmsetup resume dd-o
fleece_expect_field dd-v discard_deferred $(((4 * MB + 32 * KB - CHUNK - 4 * KB) / 512)) \
	"the held-back discards survive a reload of the origin table"
fleece_expect_field dd-v state active "the snapshot stays active across the reload"

# 4. The end of the snapshot passes them down.
before=$(allocated "$tmp/o.img")
fleece_dm_remove dd-v
after=$(allocated "$tmp/o.img")
[ $((before - after)) -ge $((4 * MB - 64 * KB)) ]
ktap_result "after the snapshot ends the origin's file gave back the discarded blocks ($before -> $after bytes)" $?
cmp -s "$origin" "$tmp/shadow"
ktap_result "the origin holds, byte for byte, the writes made after the discards and nothing else discarded" $?
fleece_expect_field dd-o state idle "the origin is idle"
fleece_expect_field dd-o discard_deferred 0 "nothing is held back once idle"

# 5. A broken snapshot drops the held-back discards: writes through the
# table that replaced fleece are not checked against them.
cp "$tmp/shadow" "$tmp/shadow5"
view=$(fleece_view dd-v dd-o "$e")
blkdiscard -o 0 -l $MB "$origin"
fleece_expect_field dd-v discard_deferred $((MB / 512)) "a new snapshot holds back a new discard"
dmsetup reload dd-o --table "0 $sectors linear $o 0" && dmsetup resume dd-o
fleece_write "$origin" 0 $CHUNK 6205 "$tmp/shadow5"
fleece_expect_field dd-v discard_dropped $((MB / 512)) "the detached snapshot dropped them, and says so"
fleece_dm_remove dd-v
same_range "$origin" "$tmp/shadow5" 0 $MB
ktap_result "the dropped discard never reached the origin: the write made through the new table is intact" $?
dmsetup reload dd-o --table "0 $sectors fleece $o 128" && dmsetup resume dd-o

# 5b. So does a snapshot that broke because its store filled up; the idle
# origin then says so in <last error>, not in <error>.
small=$(fleece_loopdev 1M "$tmp/small.img")
fleece_snapshot_ref "$origin" "$tmp/ref5"
view=$(fleece_view dd-v dd-o "$small")
blkdiscard -o $((12 * MB)) -l $MB "$origin"
for ((c = 0; c < 17; c++)); do
	put "$origin" $((c * CHUNK)) 4096 || break
done
fleece_expect_field dd-v error full "17 first writes filled the 16-slot store"
fleece_expect_field dd-v discard_dropped $((MB / 512)) "the broken snapshot dropped the held-back discard"
fleece_dm_remove dd-v
same_range "$origin" "$tmp/ref5" $((12 * MB)) $MB
ktap_result "the dropped discard never reached the origin" $?
fleece_expect_field dd-o error none "the idle origin reports no current error"
fleece_expect_field dd-o last_error full "the last snapshot's error is in its own field"

# 5c. A snapshot that ends while the origin is suspended drops them too:
# another table may resume in the origin's place.
fleece_snapshot_ref "$origin" "$tmp/ref5c"
view=$(fleece_view dd-v dd-o "$e")
blkdiscard -o $((13 * MB)) -l $MB "$origin"
dmsetup suspend dd-o && fleece_dm_remove dd-v && dmsetup resume dd-o
ktap_result "the view can be removed while the origin is suspended" $?
same_range "$origin" "$tmp/ref5c" $((13 * MB)) $MB
ktap_result "a snapshot ending under a suspended origin passes no held discard down" $?

# 6. discard_policy copy: the chunks are copied first and the discard goes
# down at once.
dmsetup reload dd-o --table "0 $sectors fleece $o 128 2 discard_policy copy" &&
	dmsetup resume dd-o
[[ $(dmsetup table dd-o) == *" 2 discard_policy copy" ]]
ktap_result "the table line shows discard_policy copy" $?
fleece_snapshot_ref "$origin" "$tmp/ref6"
view=$(fleece_view dd-v dd-o "$e")
blkdiscard -o $((4 * MB)) -l $MB "$origin"
fleece_expect_field dd-v copied 16 "discard_policy copy copies the 16 discarded chunks first"
fleece_expect_field dd-v discard_deferred 0 "discard_policy copy holds nothing back"
cmp -s "$view" "$tmp/ref6" && cmp -s <(head -c $MB /dev/zero) \
	<(dd if="$origin" bs=1M skip=4 count=1 iflag=direct status=none)
ktap_result "the view keeps the data and the origin reads the discard's zeroes" $?
fleece_dm_remove dd-v

# 7. discard_policy ignore: nothing copied, nothing held, never passed down.
dmsetup reload dd-o --table "0 $sectors fleece $o 128 2 discard_policy ignore" &&
	dmsetup resume dd-o
fleece_snapshot_ref "$origin" "$tmp/ref7"
view=$(fleece_view dd-v dd-o "$e")
blkdiscard -o $((6 * MB)) -l $MB "$origin"
fleece_expect_field dd-v copied 0 "discard_policy ignore copies nothing"
fleece_expect_field dd-v discard_dropped $((MB / 512)) "discard_policy ignore counts the dropped sectors"
fleece_dm_remove dd-v
same_range "$origin" "$tmp/ref7" $((6 * MB)) $MB
ktap_result "discard_policy ignore never passes the discard down" $?

# 8. Races on fresh chunks: a discard against a view read of the same chunk,
# and a discard against a first write to it, a few in lock step; then
# readers of the view against writers that mostly discard, for a while.
# The view must always read the point-in-time data.
dmsetup reload dd-o --table "0 $sectors fleece $o 128" && dmsetup resume dd-o
fleece_snapshot_ref "$origin" "$tmp/ref8"
view=$(fleece_view dd-v dd-o "$e")
wrong=0
for ((c = 128; c < 136; c++)); do
	blkdiscard -o $((c * CHUNK)) -l $CHUNK "$origin" &
	same_range "$view" "$tmp/ref8" $((c * CHUNK)) $CHUNK || wrong=$((wrong + 1))
	wait
done
for ((c = 136; c < 144; c++)); do
	blkdiscard -o $((c * CHUNK)) -l $CHUNK "$origin" &
	put "$origin" $((c * CHUNK + 8 * KB)) $((8 * KB)) &
	wait
	same_range "$view" "$tmp/ref8" $((c * CHUNK)) $CHUNK || wrong=$((wrong + 1))
done
[ "$wrong" -eq 0 ]
ktap_result "8 discards racing view reads of their chunks, 8 racing first writes: $wrong wrong reads" $?
out=$("$FLEECE_IO" verify-loop --view "$view" --ref "$tmp/ref8" --origin "$origin" \
	--writers 2 --readers 2 --discards 8 --max-write 128 --seconds 20 --seed 62 2>&1)
rc=$?
ktap_diag "$out"
[ "$rc" -eq 0 ] && [[ $out == *" wrong=0 "* ]]
ktap_result "20 s of view reads against writers that are half discards: no wrong read" $?
cmp -s "$view" "$tmp/ref8"
ktap_result "the whole view is still the point-in-time image" $?
fleece_dm_remove dd-v
fleece_expect_field dd-o last_error none "a snapshot that ended well leaves no last error"
fleece_expect_field dd-o discard_dropped 0 "an idle origin counts no dropped discards"

ktap_finish
