#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Each chunk is copied at most once per snapshot: several writes racing on
# one uncopied chunk all wait for the same copy.  The exception device is
# slowed down (dm-delay) so that every write arrives while the copy is in
# flight; under break_write none of them may reach the origin before the
# old data is on the exception device.
# TIMEOUT: 200
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup openssl
fleece_load || ktap_bail "cannot load dm-fleece"
fleece_modprobe dm-delay

WRITERS=8
DELAY_MS=4000
tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
fleece_fill "$o" 30
esz=$(blockdev --getsz "$e")
slow=$(fleece_dm_create once-slow "0 $esz delay $e 0 0 $e 0 $DELAY_MS")
origin=$(fleece_origin once-o "$o" 2048)
fleece_snapshot_ref "$origin" "$tmp/ref"
cp "$tmp/ref" "$tmp/shadow"
view=$(fleece_view once-v once-o "$slow" 2 cbw_error break_write)

# Eight 4 KiB writes to eight places of chunk 3 (1 MiB chunks), at once;
# the data is made first so that the writers start together.
for ((i = 0; i < WRITERS; i++)); do
	head -c 4096 /dev/urandom >"$tmp/w$i"
done
start=$EPOCHREALTIME
for ((i = 0; i < WRITERS; i++)); do
	dd if="$tmp/w$i" of="$origin" bs=4096 seek=$((3 * 256 + i * 32)) \
		oflag=direct conv=notrunc status=none &
done
sleep 1
# While the copy is in flight, the origin must still hold the old data.
ktap_check "no write reached the origin while the copy was in flight" \
	cmp <(dd if="$o" bs=1M skip=3 count=1 iflag=direct status=none) \
	<(dd if="$tmp/ref" bs=1M skip=3 count=1 status=none)
fleece_expect_field once-v in_flight 1 "one copy is in flight for the eight writes"
wait
elapsed=$(echo "$EPOCHREALTIME - $start" | bc)

fleece_expect_field once-v copied 1 "the chunk was copied exactly once"
fleece_expect_field once-v delayed $WRITERS "all $WRITERS writes waited for the copy"
fleece_expect_field once-v waiting 0 "no write is still held"
if (($(echo "$elapsed >= $DELAY_MS / 1000" | bc))); then
	ktap_ok "the writes completed only after the exception write (${elapsed}s)"
else
	ktap_fail "the writes completed only after the exception write"
	ktap_diag "they took ${elapsed}s, the exception write takes ${DELAY_MS} ms"
fi
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
