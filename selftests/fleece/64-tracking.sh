#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Change tracking (Documentation/device-mapper/fleece.rst, "Change
# tracking"): named bitmaps driven by the bitmap_* messages of the fleece
# target, in memory and on a metadata device.
#
#  1. in memory: every write, discard and write-zeroes marks its tracking
#     blocks in each enabled bitmap, a flush does not; bitmap_extents
#     returns exactly the blocks written; disable, enable, clear, merge,
#     remove; bad names and commands are refused with a clear error;
#  2. on a metadata device: the bitmaps survive the removal of the device;
#     a copy of the metadata device taken while writes are acknowledged
#     (what a power cut leaves) covers every acknowledged write;
#  3. bad metadata: a corrupt superblock, another device's metadata and a
#     resized origin give "inconsistent", never an empty bitmap; a bitmap
#     that does not match its checksum is inconsistent and full; a metadata
#     device too small, or with another block size, is refused at load;
#  4. a metadata device that fails writes: a write that needs a new bit
#     fails, a write to a block already on disk passes, the status says
#     "failed".
# TIMEOUT: 300
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup blkdiscard
check=$FLEECE_SRC/tools/fleece-md-check/fleece-md-check
[ -x "$check" ] || ktap_bail "$check is not built (make -C tools/fleece-md-check)"

fleece_modprobe dm-flakey
fleece_load || ktap_bail "cannot load dm-fleece"

TB=128		# tracking block, sectors (64 KiB)
tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 64M "$tmp/o.img")
osz=$(blockdev --getsz "$o")

msg() { dmsetup message "$1" 0 "${@:2}"; }

# extents NAME BITMAP: every extent of BITMAP, one "start+len" per line.
extents() { fleece_extents "$1" bitmap_extents "$2"; }

# expect_extents DESC NAME BITMAP EXTENT...: the bitmap holds exactly these.
expect_extents() {
	local desc=$1 name=$2 bm=$3 got want
	shift 3
	got=$(extents "$name" "$bm" | tr '\n' ' ')
	want="$* "
	[ "$#" -eq 0 ] && want=""
	if [ "$got" = "$want" ]; then
		ktap_ok "$desc"
	else
		ktap_fail "$desc"
		ktap_diag "bitmap $bm of $name: '$got', expected '$want'"
	fi
}

# expect_msg_fails DESC ERRNO_TEXT MESSAGE...: dmsetup message fails.
expect_msg_fails() {
	local desc=$1 name=$2 out
	shift 2
	klog_mark
	if out=$(msg "$name" "$@" 2>&1); then
		ktap_fail "$desc"
		ktap_diag "message '$*' succeeded: $out"
		return
	fi
	if klog_new | grep -q "fleece: .*[A-Z].*\.$"; then
		ktap_ok "$desc"
	else
		ktap_fail "$desc"
		ktap_diag "no whole-sentence error in the kernel log: $(klog_new | tail -n 2)"
	fi
}

w() { fleece_write "/dev/mapper/$1" "$2" "$3" "w$2" >/dev/null; }

# ---- 1. in memory ---------------------------------------------------------
fleece_dm_create tv "0 $osz fleece $o 8" >/dev/null
fleece_expect_field tv tracking volatile "in memory: the status says volatile"
fleece_expect_field tv track_block $TB "in memory: the default tracking block is 64 KiB"
ktap_check "in memory: bitmap_add b1" msg tv bitmap_add b1
ktap_check "in memory: bitmap_add b2 disabled" msg tv bitmap_add b2 disabled
fleece_expect_field tv bitmaps 2 "in memory: the status counts 2 bitmaps"
w tv 0 4096						# block 0
w tv $((5 * 65536 - 4096)) 8192				# blocks 4 and 5
w tv $((100 * 65536)) 65536				# block 100
blkdiscard -o $((200 * 65536)) -l $((3 * 65536)) /dev/mapper/tv	# 200..202
blkdiscard -z -o $((300 * 65536)) -l 4096 /dev/mapper/tv		# 300
sync; blockdev --flushbufs /dev/mapper/tv
expect_extents "in memory: the extents are exactly the blocks written, discarded and zeroed" tv b1 \
	0+128 512+256 12800+128 25600+384 38400+128
expect_extents "in memory: a disabled bitmap stays empty" tv b2
ktap_check "in memory: bitmap_enable b2" msg tv bitmap_enable b2
ktap_check "in memory: bitmap_disable b1" msg tv bitmap_disable b1
w tv $((400 * 65536)) 4096
expect_extents "in memory: an enabled bitmap gets the new write" tv b2 51200+128
expect_extents "in memory: a disabled bitmap does not" tv b1 \
	0+128 512+256 12800+128 25600+384 38400+128
ktap_check "in memory: bitmap_merge b2 b1" msg tv bitmap_merge b2 b1
expect_extents "in memory: the merge is the union" tv b2 \
	0+128 512+256 12800+128 25600+384 38400+128 51200+128
info=$(msg tv bitmap_info)
if grep -qx "b1 disabled consistent 8" <<<"$info" && grep -qx "b2 enabled consistent 9" <<<"$info"; then
	ktap_ok "in memory: bitmap_info gives state and dirty blocks"
else
	ktap_fail "in memory: bitmap_info gives state and dirty blocks"
	ktap_diag "bitmap_info: $info"
fi
ktap_check "in memory: bitmap_clear b2" msg tv bitmap_clear b2
expect_extents "in memory: a cleared bitmap is empty" tv b2
w tv $((7 * 65536)) 4096
expect_extents "in memory: a cleared bitmap tracks again" tv b2 896+128
expect_msg_fails "bad input: a duplicate name is refused" tv bitmap_add b1
expect_msg_fails "bad input: a bad name is refused" tv bitmap_add 'a/b'
expect_msg_fails "bad input: a name of 48 characters is refused" tv bitmap_add "$(printf 'x%.0s' {1..48})"
expect_msg_fails "bad input: an unknown bitmap is refused" tv bitmap_clear nosuch
expect_msg_fails "bad input: an unknown message is refused" tv bitmap_frobnicate b1
expect_msg_fails "bad input: extents past the end are refused" tv bitmap_extents b1 "$osz"
expect_msg_fails "bad input: extents with 0 at most are refused" tv bitmap_extents b1 0 0
for i in $(seq 3 32); do msg tv bitmap_add "n$i" || break; done
expect_msg_fails "bad input: a 33rd bitmap is refused" tv bitmap_add n33
for i in $(seq 3 32); do msg tv bitmap_remove "n$i"; done
ktap_check "in memory: bitmap_remove b1" msg tv bitmap_remove b1
fleece_expect_field tv bitmaps 1 "in memory: the status counts 1 bitmap"
fleece_dm_remove tv

# ---- 2. on a metadata device ------------------------------------------------
m=$(fleece_loopdev 4M "$tmp/m.img")
table="0 $osz fleece $o 8 2 metadata $m"
fleece_dm_create tp "$table" >/dev/null
fleece_expect_field tp tracking persistent "metadata: the status says persistent"
ktap_check "metadata: bitmap_add b1" msg tp bitmap_add b1
w tp $((10 * 65536)) 4096
w tp $((1000 * 65536 - 512)) 1024
c0=$(fleece_field tp commits)
w tp $((10 * 65536 + 8192)) 4096			# block 10 again: no commit
[ "$(fleece_field tp commits)" = "$c0" ]
ktap_result "metadata: a second write to a block needs no commit" $?
expect_extents "metadata: the extents are the blocks written" tp b1 1280+128 127872+256
# What a power cut leaves: the device as it is while writes are acknowledged.
w tp $((600 * 65536)) 4096
dd if="$m" of="$tmp/crash.img" bs=1M iflag=direct status=none
fleece_dm_remove tp
ktap_check "checker: a cleanly closed device is valid" "$check" "$m"
ktap_check "checker: its extents are the kernel's" \
	cmp <("$check" --extents b1 "$m") <(printf '%s\n' 1280+128 76800+128 127872+256)
fleece_dm_create tp "$table" >/dev/null
expect_extents "metadata: the bitmap survives a removal" tp b1 1280+128 76800+128 127872+256
fleece_dm_remove tp
dd if="$tmp/crash.img" of="$m" bs=1M oflag=direct conv=notrunc status=none
fleece_dm_create tp "$table" >/dev/null
fleece_expect_field tp tracking persistent "after a crash: the metadata opens"
expect_extents "after a crash: every acknowledged write is in the bitmap" tp b1 1280+128 76800+128 127872+256
fleece_dm_remove tp

# A bitmap whose blocks no longer match the checksum of the clean close.
printf '\xff' | dd of="$m" bs=1 seek=$((2 * 4096 + 100)) conv=notrunc status=none
"$check" -q "$m"
[ $? = 1 ]
ktap_result "checker: a bitmap that does not match its checksum is inconsistent" $?
fleece_dm_create tp "$table" >/dev/null
fleece_expect_field tp bitmaps_inconsistent 1 "corrupt bitmap: it is inconsistent"
expect_extents "corrupt bitmap: it is full, never empty" tp b1 "0+$osz"
# A power cut now: the inconsistency must be on disk already.
dd if="$m" of="$tmp/crash2.img" bs=1M iflag=direct status=none
ktap_check "corrupt bitmap: bitmap_clear mends it" msg tp bitmap_clear b1
fleece_expect_field tp bitmaps_inconsistent 0 "corrupt bitmap: consistent after the clear"
fleece_dm_remove tp
cp "$m" "$tmp/m.cleared"
dd if="$tmp/crash2.img" of="$m" bs=1M oflag=direct conv=notrunc status=none
fleece_dm_create tp "$table" >/dev/null
fleece_expect_field tp bitmaps_inconsistent 1 "corrupt bitmap, then a crash: still inconsistent"
fleece_dm_remove tp
dd if="$tmp/m.cleared" of="$m" bs=1M oflag=direct conv=notrunc status=none

# A write that spans chunks, held for its commit while a snapshot runs,
# reaches the origin whole; the view keeps the old data.
e=$(fleece_loopdev 64M "$tmp/e.img")
fleece_dm_create tp "$table" >/dev/null
fleece_snapshot_ref /dev/mapper/tp "$tmp/ref"
fleece_dm_create tpv "0 $osz fleece-view /dev/mapper/tp $e" >/dev/null
head -c 131072 /dev/urandom >"$tmp/span"
dd if="$tmp/span" of=/dev/mapper/tp bs=131072 count=1 seek=$((300 * 65536 - 2048)) \
	oflag=direct,seek_bytes status=none
ktap_check "a held write across chunks reaches the origin whole" \
	cmp "$tmp/span" <(dd if=/dev/mapper/tp bs=131072 count=1 skip=$((300 * 65536 - 2048)) \
		iflag=direct,skip_bytes status=none)
ktap_check "and the view keeps the snapshot" cmp /dev/mapper/tpv "$tmp/ref"
# The fleece table leaves the device while the view holds it: writes go
# untracked from then on, so the bitmaps are inconsistent, also on disk.
dmsetup suspend tp && dmsetup load tp --table "0 $osz linear $o 0" && dmsetup resume tp
fleece_expect_field tpv tracking inconsistent "the fleece table replaced: tracking is inconsistent"
fleece_dm_remove tpv
fleece_dm_remove tp
fleece_dm_create tp "$table" >/dev/null
fleece_expect_field tp bitmaps_inconsistent 1 "and the bitmap opens inconsistent"
expect_extents "and full" tp b1 "0+$osz"
msg tp bitmap_clear b1
fleece_dm_remove tp

# ---- 3. bad metadata --------------------------------------------------------
cp "$tmp/m.img" "$tmp/m.good"
head -c 8192 /dev/urandom >"$tmp/garbage"
dd if="$tmp/garbage" of="$m" bs=4096 count=2 oflag=direct conv=notrunc status=none
"$check" -q "$m"
[ $? = 1 ]
ktap_result "checker: a corrupt superblock is inconsistent" $?
fleece_dm_create tp "$table" >/dev/null
fleece_expect_field tp tracking inconsistent "corrupt superblock: inconsistent"
expect_msg_fails "corrupt superblock: bitmap messages fail" tp bitmap_info
fleece_dm_remove tp
ktap_check "corrupt superblock: nothing was written to it" \
	cmp <(dd if="$m" bs=4096 count=2 status=none iflag=direct) "$tmp/garbage"
dd if="$tmp/m.good" of="$m" bs=1M oflag=direct conv=notrunc status=none
fleece_dm_create tq "$table" >/dev/null
fleece_expect_field tq tracking inconsistent "another device's metadata: inconsistent"
fleece_dm_remove tq
half=$((osz / 2))
fleece_dm_create tp "0 $half fleece $o 8 2 metadata $m" >/dev/null
fleece_expect_field tp tracking inconsistent "resized origin: inconsistent"
fleece_dm_remove tp
fleece_dm_create tp "$table" >/dev/null
fleece_expect_field tp tracking persistent "the right device and size: persistent again"
fleece_dm_remove tp
small=$(fleece_loopdev 32K "$tmp/small.img")	# room for 6 bitmaps
! dmsetup create tbad --table "0 $osz fleece $o 8 2 metadata $small" 2>/dev/null
ktap_result "a metadata device too small is refused" $?
! dmsetup create tp --table "0 $osz fleece $o 8 4 metadata $m track_block 256" 2>/dev/null
ktap_result "a metadata device of another tracking block size is refused" $?
dmsetup remove tbad tp 2>/dev/null

# ---- 4. a metadata device that fails writes ---------------------------------
msz=$(blockdev --getsz "$m")
fl=$(fleece_dm_create tmf "0 $msz linear $m 0")
fleece_dm_create tp "0 $osz fleece $o 8 2 metadata $fl" >/dev/null
msg tp bitmap_clear b1
w tp 0 4096
dmsetup suspend tmf
dmsetup load tmf --table "0 $msz flakey $m 0 0 3600 1 error_writes"
dmsetup resume tmf
! w tp $((50 * 65536)) 4096
ktap_result "failing metadata: a write that needs a new bit fails" $?
fleece_expect_field tp tracking failed "failing metadata: the status says failed"
w tp 4096 4096
ktap_result "failing metadata: a write to a block on disk passes" $?
fleece_dm_remove tp
fleece_dm_remove tmf

ktap_finish
