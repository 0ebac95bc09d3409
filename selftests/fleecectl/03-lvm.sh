#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 240
#
# fleecectl attach/detach in place on an LVM logical volume (lvm2 on a loop
# PV) while fio keeps writing to the volume and verifies every block it
# wrote: no I/O error, no data lost.  Two rounds of attach -> snapshot ->
# backup --release -> end -> detach under the writer, then the volume has
# its own table again and LVM still knows it.
. "$(dirname "$0")/common.bash"

fleece_require fio lvm
ktap_plan 19
MIB=32
lvm_make fvg vol $MIB || ktap_bail "cannot make the volume group"
lv=/dev/fvg/vol
dir=$(fleece_tmpdir)
table0=$(dmsetup table fvg-vol)

# The writer: fio runs back to back, each one writing every 64 KiB block of
# the volume in random order with a checksum in it and reading them all
# back to verify, until the rounds are over.  Any failed run fails the test.
(
	n=0
	while [ ! -e "$dir/stop" ]; do
		n=$((n + 1))
		fio --name=lvmw --filename=$lv --rw=randwrite --bs=64k --direct=1 --ioengine=psync \
			--size=${MIB}M --verify=crc32c --verify_fatal=1 --output="$dir/fio.$n" >/dev/null 2>&1 ||
			echo "fio run $n failed" >>"$dir/fio.errors"
		echo $n >"$dir/fio.runs"
	done
) &
fio_loop=$!
stop_fio() { touch "$dir/stop"; wait $fio_loop 2>/dev/null; return 0; }
fleece_cleanup stop_fio
sleep 2

for round in 1 2; do
	fc_attach $lv --name lvm$round --chunk-size 32K
	ktap_result "round $round: attach $lv in place with fio writing" $FC_RC || ktap_diag "$FC_OUT"
	ktap_result "round $round: $lv now carries the fleece target over lvm$round-real" \
		"$(dmsetup table fvg-vol | grep -q " fleece $(dmsetup info -c --noheadings -o major,minor --separator : lvm$round-real) 64\$"; echo $?)" ||
		ktap_diag "$(dmsetup table)"
	fc snapshot lvm$round --exception "$dir/cow$round" --size 100%
	ktap_result "round $round: snapshot" $FC_RC || ktap_diag "$FC_OUT"
	if [ $round = 1 ] && command -v script >/dev/null; then
		# on a terminal: a progress bar
		FC_OUT=$(script -qec "'$FLEECECTL' backup $lv --to '$dir/backup$round.img' --release" /dev/null)
		FC_RC=$?
		ktap_result "round $round: backup --release on a tty shows a progress bar" \
			"$([ $FC_RC = 0 ] && [[ $FC_OUT == *'] 100%'*ETA* ]]; echo $?)" || ktap_diag "$FC_OUT"
	else
		fc backup $lv --to "$dir/backup$round.img" --release --no-progress
		ktap_result "round $round: backup --release" $FC_RC || ktap_diag "$FC_OUT"
	fi
	fc status --json lvm$round
	ktap_result "round $round: every chunk released, state active" "$(json_get "$FC_OUT" \
		'j["sets"][0]["state"] == "active" and j["sets"][0]["chunks_released"] == j["sets"][0]["snapshot_chunks"]' |
		grep -qx True; echo $?)" || ktap_diag "$FC_OUT"
	fc end lvm$round
	ktap_result "round $round: end" $FC_RC || ktap_diag "$FC_OUT"
	fc detach lvm$round
	ktap_result "round $round: detach" $FC_RC || ktap_diag "$FC_OUT"
	ktap_result "round $round: the volume has its own table again" \
		"$([ "$(dmsetup table fvg-vol)" = "$table0" ]; echo $?)" || ktap_diag "$(dmsetup table)"
done

stop_fio
runs=$(cat "$dir/fio.runs" 2>/dev/null || echo 0)
ktap_result "$runs fio runs (write + verify) without an I/O or verify error" \
	"$([ "$runs" -ge 2 ] && [ ! -s "$dir/fio.errors" ]; echo $?)" || {
	ktap_diag "$(cat "$dir/fio.errors" 2>/dev/null)"
	ktap_diag "$(grep -hE 'err|verify|bad' "$dir"/fio.[0-9]* | head -n 20)"
}
ktap_check "lvs still reports fvg/vol" lvs fvg/vol
ktap_check "no fleecectl device is left" bash -c "! dmsetup ls | grep -q -e lvm1 -e lvm2"
ktap_finish
