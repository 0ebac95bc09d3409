#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# check-harness.sh: prove that the test harness reports failures (the body
# of `make check-harness`; not part of `make check`).  Runs the tests of
# tools/vm/harness-selftests, which are meant to fail, through
# tools/check.sh on each kernel of KERNELS (default: all) in two boots:
#   1. a failing assertion, a kernel WARNING, a timeout, the C harness,
#      a passing test that leaks a dm and a loop device, a skip, and last
#      a kernel panic;
#   2. a guest that stops making progress (host watchdog).
# Then checks that each run failed and that each test got the verdict it
# must.  Prints TAP and "N passed, N failed"; exit 0 when the harness
# behaved.
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src" || exit 2
export KERNELS=${KERNELS:-all} FLEECE_HARNESS_SELFTEST=1 HOST=0
mapfile -t kvers < <(tools/vm/kernels.sh $KERNELS)
out=$src/build/check-harness
rm -rf "$out"
mkdir -p "$out"

echo "== check-harness run 1: failures, WARNING, timeout, C harness, cleanup, skip, panic"
TESTS='harness/0*,harness/90-*' tools/check.sh 2>&1 | tee "$out/run1.log"
rc1=${PIPESTATUS[0]}
cp build/check/results.tsv "$out/run1.tsv"
for k in "${kvers[@]}"; do
	cp -r "build/check/$k" "$out/run1-$k"
done
echo "== check-harness run 2: a guest that stops making progress"
VM_GRACE=20 TESTS='harness/91-*' tools/check.sh 2>&1 | tee "$out/run2.log"
rc2=${PIPESTATUS[0]}
cp build/check/results.tsv "$out/run2.tsv"

n=0 pass=0 fail=0
expect() {
	local desc=$1
	shift
	n=$((n + 1))
	if "$@"; then
		echo "ok $n - $desc"
		pass=$((pass + 1))
	else
		echo "not ok $n - $desc"
		fail=$((fail + 1))
	fi
}
# field TSV KERNEL TEST COLUMN: one column of the results line of TEST.
field() {
	awk -F'\t' -v k="$2" -v t="$3" -v c="$4" '$1 == k && $2 == t { print $c; exit }' "$1"
}
# verdict TSV KERNEL TEST VERDICT PASS FAIL SKIP [NOTE]
verdict() {
	local got
	got="$(field "$1" "$2" "$3" 3) $(field "$1" "$2" "$3" 4) $(field "$1" "$2" "$3" 5) $(field "$1" "$2" "$3" 6)"
	[ "$got" = "$4 $5 $6 $7" ] || { echo "# $3: got '$got', want '$4 $5 $6 $7'"; return 1; }
	[ -z "${8:-}" ] || field "$1" "$2" "$3" 8 | grep -q "$8" ||
		{ echo "# $3: notes '$(field "$1" "$2" "$3" 8)' lack '$8'"; return 1; }
}
summary_line() { tail -n 1 "$1" | grep -Eq '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$'; }

echo "== check-harness: verdicts"
echo "TAP version 13"
echo "1..$((${#kvers[@]} * 14))"
for k in "${kvers[@]}"; do
	t1=$out/run1.tsv t2=$out/run2.tsv
	expect "$k: run 1 exits non-zero" test "$rc1" -ne 0
	expect "$k: run 1 ends with the summary line" summary_line "$out/run1.log"
	expect "$k: a failing assertion fails its test" verdict "$t1" "$k" harness/01-fail FAIL 1 1 0
	expect "$k: a kernel WARNING fails a passing test" verdict "$t1" "$k" harness/02-warn FAIL 2 1 0 "kernel log"
	expect "$k: the WARNING is shown as diagnostics" grep -q '# dmesg: .*WARNING: CPU' "$out/run1.log"
	expect "$k: a timeout fails its test" verdict "$t1" "$k" harness/03-timeout FAIL 1 1 0 "timed out"
	expect "$k: C harness counts 6 pass, 4 fail, 1 skip" verdict "$t1" "$k" harness/04-c-harness FAIL 6 4 1
	expect "$k: a passing test passes" verdict "$t1" "$k" harness/05-pass PASS 3 0 0
	expect "$k: the runner removed what it left" \
		grep -q 'left dm devices: harness-leak' "$out/run1-$k/results/5.out"
	expect "$k: the runner killed the process it left" \
		grep -q 'left processes: sleep' "$out/run1-$k/results/5.out"
	expect "$k: a skipping test is a skip" verdict "$t1" "$k" harness/06-skip SKIP 0 0 1
	expect "$k: a kernel panic fails its test" verdict "$t1" "$k" harness/90-panic FAIL 1 1 0 "kernel panic"
	expect "$k: run 2 exits non-zero" test "$rc2" -ne 0
	expect "$k: a guest that stops is killed and fails" verdict "$t2" "$k" harness/91-hang FAIL 1 1 0 "no progress"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
