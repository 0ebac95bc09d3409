#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Each chunk is copied at most once per snapshot: several writes racing on
# one uncopied chunk all wait for the same copy.  The exception device is
# suspended so that every write arrives while the copy is in flight; under
# break_write none of them may reach the origin before the old data is on
# the exception device.
# TIMEOUT: 200
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl
fleece_load || ktap_bail "cannot load dm-fleece"

WRITERS=8
tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$o" 30
esz=$(blockdev --getsz "$e")
# The exception device is a linear device that the test suspends: the
# copy's exception write then waits until the test resumes it.
held=$(fleece_dm_create once-held "0 $esz linear $e 0")
origin=$(fleece_origin once-o "$o" 2048)
fleece_snapshot_ref "$origin" "$tmp/ref"
cp "$tmp/ref" "$tmp/shadow"
view=$(fleece_view once-v once-o "$held" 2 cbw_error break_write)
dmsetup suspend once-held

# Eight 4 KiB writes to eight places of chunk 3 (1 MiB chunks), at once.
for ((i = 0; i < WRITERS; i++)); do
	head -c 4096 /dev/urandom >"$tmp/w$i"
done
for ((i = 0; i < WRITERS; i++)); do
	dd if="$tmp/w$i" of="$origin" bs=4096 seek=$((3 * 256 + i * 32)) \
		oflag=direct conv=notrunc status=none &
done
fleece_wait_field once-v waiting $WRITERS 60
fleece_expect_field once-v waiting $WRITERS "all $WRITERS writes are held while the exception write cannot land"
fleece_expect_field once-v in_flight 1 "one copy is in flight for the eight writes"
fleece_expect_field once-v copied 0 "nothing counts as copied before the exception write"
ktap_check "no write reached the origin before the old data was safe" \
	cmp <(dd if="$o" bs=1M skip=3 count=1 iflag=direct status=none) \
	<(dd if="$tmp/ref" bs=1M skip=3 count=1 status=none)
dmsetup resume once-held
wait

fleece_expect_field once-v copied 1 "the chunk was copied exactly once"
fleece_expect_field once-v delayed $WRITERS "all $WRITERS writes waited for the copy"
fleece_expect_field once-v waiting 0 "no write is still held"
ktap_check "the view equals the snapshot" cmp "$view" "$tmp/ref"

# A second round on the same, now copied, chunk copies nothing more.
for ((i = 0; i < WRITERS; i++)); do
	dd if="$tmp/w$i" of="$origin" bs=4096 seek=$((3 * 256 + i * 32 + 1)) \
		oflag=direct conv=notrunc status=none &
done
wait
fleece_expect_field once-v copied 1 "writes to a copied chunk copy nothing"
fleece_expect_field once-v delayed $WRITERS "writes to a copied chunk do not wait"
ktap_finish
