#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# The race between view reads and a table swap on the origin: with random
# writes on the origin and readers on the view that check every read
# against the point-in-time image, a linear table replaces the fleece table.
# From the moment the linear table takes writes, no view read may succeed
# with data the snapshot did not have: reads in flight or held across the
# swap must fail (EIO), never return the new data.  Many short rounds, each
# with a fresh snapshot and the swap at a different moment.
# TIMEOUT: 480
# TIMEOUT_LONG: 1500
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup
fleece_load || ktap_bail "cannot load dm-fleece"
[ -x "$FLEECE_IO" ] || ktap_skip_all "fleece-io is not built (make selftests)"

ROUNDS=$(fleece_stress 30 100)
ktap_plan 6

tmp=$(fleece_tmpdir)
# 4 MiB at 4 KiB chunks: 1024 chunks, so that in a round of a few seconds
# the writes copy only part of them and most view reads still go to the
# origin, which is where the race is.  (fio would do for the writes, but it
# takes seconds to start in an emulated guest; fleece-io starts at once.)
o=$(fleece_loopdev 4M "$tmp/o.img")
e=$(fleece_loopdev 4M "$tmp/e.img")
fleece_fill "$o" 58
sectors=$(blockdev --getsz "$o")
origin=$(fleece_origin race-o "$o" 8)

# Each round runs a dozen commands, and under TCG every fork and exec of a
# binary over the guest's 9p root is slow: the loop forks only for what
# needs a binary.  nap SECONDS sleeps without forking (a read that times
# out on a FIFO that nobody writes to).
mkfifo "$tmp/nap"
exec {nap_fd}<>"$tmp/nap"
nap() { read -rt "$1" -u "$nap_fd"; }

# wait_done PID SECONDS: wait for PID, false (and diagnostics) if it hangs.
wait_done() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		nap 0.1
	done
	fleece_dump_hang race-o race-v
	return 1
}

fleece_cleanup fleece_dm_remove race-v
view=/dev/mapper/race-v
ok=0 eio=0 wrong=0 other=0 writes=0
hung=0 swap_failed=0 write_failed=0 not_detached=0 no_eio=0 restore_failed=0
for ((round = 1; round <= ROUNDS; round++)); do
	fleece_snapshot_ref "$origin" "$tmp/ref"
	dmsetup create race-v --table "0 $sectors fleece-view $origin $e" ||
		{ restore_failed=$((restore_failed + 1)); break; }

	# Two writers on the origin (O_DIRECT writes, discards and write-zeroes
	# of 512 B to 16 KiB) and three checking readers on the view, all in
	# one process that starts at once; it runs until told to stop.
	"$FLEECE_IO" verify-loop --view "$view" --ref "$tmp/ref" --origin "$origin" \
		--writers 2 --readers 3 --max-write 16 --seed "$round" --seconds 60 \
		>"$tmp/verify.out" 2>"$tmp/verify.err" &
	vpid=$!

	# The swap, 0.15 to 0.5 s in, at a different moment each round; the
	# readers go on for a quarter of a second after it.  Odd rounds suspend
	# first, so that writes queue up in the suspended device and land on
	# the linear table the moment it resumes, while the view's readers
	# wait; even rounds let the resume suspend and swap in one step.
	ms=$((150 + (round * 373) % 350))
	nap "0.$(printf '%03d' "$ms")"
	if ((round % 2)); then
		# (nap times out, so it is false: not part of the && chain.)
		dmsetup suspend race-o && { nap 0.1; true; } &&
			dmsetup reload race-o --table "0 $sectors linear $o 0" &&
			dmsetup resume race-o
	else
		dmsetup reload race-o --table "0 $sectors linear $o 0" && dmsetup resume race-o
	fi || swap_failed=$((swap_failed + 1))
	nap 0.25
	kill -TERM "$vpid" 2>/dev/null
	if ! wait_done "$vpid" 60; then
		hung=$((hung + 1))
		ktap_diag "round $round: I/O hangs"
		break
	fi
	wait "$vpid"
	read -r line <"$tmp/verify.out"
	if [[ $line =~ ^ok=([0-9]+)\ eio=([0-9]+)\ wrong=([0-9]+)\ other=([0-9]+)\ writes=([0-9]+)\ write_errors=([0-9]+)$ ]]; then
		ok=$((ok + BASH_REMATCH[1])) eio=$((eio + BASH_REMATCH[2]))
		wrong=$((wrong + BASH_REMATCH[3])) other=$((other + BASH_REMATCH[4]))
		writes=$((writes + BASH_REMATCH[5]))
		[ "${BASH_REMATCH[2]}" -gt 0 ] || no_eio=$((no_eio + 1))
		[ "${BASH_REMATCH[6]}" -eq 0 ] || write_failed=$((write_failed + 1))
		[ "${BASH_REMATCH[3]}${BASH_REMATCH[4]}${BASH_REMATCH[6]}" = 000 ] ||
			ktap_diag "round $round (swap at ${ms} ms): $line" "$(head -n 5 "$tmp/verify.err")"
	else
		ktap_diag "round $round: no counts from fleece-io: '$line'" "$(head -n 3 "$tmp/verify.err")"
		other=$((other + 1))
	fi
	st=$(dmsetup status race-v)
	if [ "$(fleece_field race-v state)" != invalid ] ||
		[ "$(fleece_field race-v error)" != detached ]; then
		not_detached=$((not_detached + 1))
		ktap_diag "round $round: $st"
	fi
	[ $((round % 10)) -eq 0 ] &&
		ktap_diag "after $round rounds: $ok reads ok, $eio EIO, $wrong wrong, $writes writes"

	# Back to a fleece table and no view, for the next round.
	if ! { dmsetup remove --retry race-v &&
		dmsetup reload race-o --table "0 $sectors fleece $o 8" &&
		dmsetup resume race-o; }; then
		restore_failed=$((restore_failed + 1))
		break
	fi
done
rounds=$((round > ROUNDS ? ROUNDS : round))
ktap_diag "$rounds rounds: $ok reads returned the snapshot, $eio failed (EIO), $wrong returned other data, $other failed otherwise; $writes origin writes"

[ "$hung" -eq 0 ] && [ "$restore_failed" -eq 0 ] && [ "$round" -gt "$ROUNDS" ]
ktap_result "$ROUNDS rounds ran to the end with no I/O hang" $?
[ "$wrong" -eq 0 ] && [ "$other" -eq 0 ]
ktap_result "no view read returned data other than the snapshot's ($wrong wrong, $other other errors)" $?
[ "$ok" -gt 0 ] && [ "$no_eio" -eq 0 ]
ktap_result "view reads succeeded, and failed after the swap in every round" $? ||
	ktap_diag "$no_eio rounds without a failed read"
[ "$not_detached" -eq 0 ]
ktap_result "the view ends invalid (detached) in every round" $?
[ "$swap_failed" -eq 0 ]
ktap_result "every swap to the linear table worked" $?
[ "$write_failed" -eq 0 ]
ktap_result "no origin write failed, before or after the swap" $?
ktap_finish
