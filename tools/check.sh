#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# check.sh: the body of `make check` (the Makefile runs `make deps` first).
#
#  1. host: build dm-fleece.ko for each kernel (W=1; a warning fails), the
#     C selftests and tools/fleecectl; sparse per kernel; fleecectl's unit
#     tests (`make -C tools/fleecectl test`, TAP) and the exception map's
#     (`make -C tools/emap-test test`, TAP); dkms build per kernel;
#  2. guest: for each kernel, one QEMU boot that runs every selected
#     selftest (tools/vm/guest-run.sh), watched from here so that a panic,
#     a hang or a dead QEMU is a failure too.
#
# Ends with one line: "N passed, N failed" (", N skipped" when some were),
# counting TAP test points of everything above.  Exit 0 only with no
# failure.  Logs: build/check/ (host/, and KVER/console.log, results/ per
# kernel); build/check/results.tsv has one line per test program.
#
# Environment:
#   KERNELS   kernels to cover: "all" (default), "6.1", "6.12", full versions
#   TESTS     run only selftests whose name (group/NN-name) matches one of
#             these space/comma separated globs or substrings
#   STRESS    short (default) or long, passed to the tests
#   HOST      1: run sparse, host unit tests and dkms (default: 1, or 0
#             when TESTS is set); 0: only the builds and the guests
#   BENCH     1: end with `make bench QUICK=1` on the first kernel (default:
#             the value of HOST)
#   FLEECE_HARNESS_SELFTEST=1  add tools/vm/harness-selftests (tests that
#             must fail: see tools/check-harness.sh)
#   TIMEOUT_SCALE  multiply every test's timeout (default 1; e.g. 2 on a
#             machine shared with other guests)
#   VM_GRACE  seconds a guest may overrun a test's timeout before the host
#             declares it hung (60); VM_BOOT_TIMEOUT (300); VM_SMP, VM_MEM
#   PARALLEL_GUESTS  1: the guests of all kernels run at the same time (the
#             default with two or more kernels and no debug kernel); 0: one
#             after the other.  A TCG guest keeps only about 1.2 of the two
#             CPUs busy (its tests are mostly one bash, one dd or one dmsetup
#             at a time), so two at once take about 60% of the time of two in
#             a row.  The first kernel's results print as they come, the
#             others' once it is done.
#
# The debug kernel (KERNELS=debug, `make debug-kernel`: KASAN, lockdep,
# kmemleak...) runs several times slower: unless set, TIMEOUT_SCALE is 3,
# VM_GRACE 180 and VM_BOOT_TIMEOUT 900 for it (and VM_MEM 4G, in boot.sh),
# sparse does not run against it, and BENCH defaults to 0 when it is the
# first kernel (timings under KASAN mean nothing).
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src" || exit 2
# shellcheck source=vm/tally.sh
. tools/vm/tally.sh

KERNELS=${KERNELS:-all}
TESTS=${TESTS:-}
STRESS=${STRESS:-short}
if [ -n "$TESTS" ]; then HOST=${HOST:-0}; else HOST=${HOST:-1}; fi
HARNESS=${FLEECE_HARNESS_SELFTEST:-0}
# What the caller set, before the defaults: a debug kernel has its own.
USER_TIMEOUT_SCALE=${TIMEOUT_SCALE:-}
USER_VM_GRACE=${VM_GRACE:-}
USER_VM_BOOT_TIMEOUT=${VM_BOOT_TIMEOUT:-}
VM_GRACE=${VM_GRACE:-60}
VM_BOOT_TIMEOUT=${VM_BOOT_TIMEOUT:-300}
DEFAULT_TIMEOUT=300
export STRESS

case $STRESS in short | long) ;; *) echo "check: STRESS must be short or long" >&2; exit 2 ;; esac
mapfile -t kvers < <(tools/vm/kernels.sh $KERNELS)
[ ${#kvers[@]} -gt 0 ] || exit 2

# debug_kernel KVER: built by `make debug-kernel` (tools/debug-kernel.sh).
debug_kernel() { case $1 in *-fleece-debug) return 0 ;; esac; return 1; }
if debug_kernel "${kvers[0]}"; then BENCH=${BENCH:-0}; else BENCH=${BENCH:-$HOST}; fi

top=$src/build/check
mkdir -p "$top"
exec 7>"$top/.lock"
if ! flock -n 7; then
	echo "check: another 'make check' is running in this tree; waiting for it"
	flock 7
fi
rm -rf "$top/host" "$top/results.tsv"
mkdir -p "$top/host"
: >"$top/results.tsv"

P=0 F=0 S=0
T_START=$SECONDS
qpid= qkver=

# kill_guest: end boot.sh's process group and QEMU (by its pid file).
kill_guest() {
	local qemu
	[ -n "$qpid" ] || return 0
	qemu=$(cat "$top/${qkver:-none}/qemu.pid" 2>/dev/null)
	kill -TERM -- "-$qpid" ${qemu:+"$qemu"} 2>/dev/null
	sleep 3
	kill -KILL -- "-$qpid" ${qemu:+"$qemu"} 2>/dev/null
}
# nmi_guest RUN: a hung guest gets an NMI through the QEMU monitor, which
# panics it (unknown_nmi_panic) with all CPUs' backtraces on the console;
# wait a little for QEMU to exit by itself.
nmi_guest() {
	local i
	[ -S "$1/monitor.sock" ] || return 0
	python3 - "$1/monitor.sock" <<'PY' >/dev/null 2>&1
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
time.sleep(0.5)
s.sendall(b"nmi\n")
time.sleep(1)
PY
	for i in $(seq 20); do
		kill -0 "$qpid" 2>/dev/null || return 0
		sleep 1
	done
}
bg_pids=()
on_exit() {
	local p
	for p in "${bg_pids[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	[ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null && kill_guest
	for p in "${bg_pids[@]}"; do
		wait "$p" 2>/dev/null
	done
}
trap on_exit EXIT
trap 'echo "check: interrupted"; exit 130' INT TERM

hms() {
	local s=${1%.*}
	if [ "$s" -ge 60 ]; then
		printf '%dm%02ds' $((s / 60)) $((s % 60))
	else
		printf '%ss' "$1"
	fi
}

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# line VERDICT NAME DETAIL: one aligned result line.
line() { printf '%-5s %-44s %s\n' "$1" "$2" "$3"; }

counts() {
	local c="$1 passed, $2 failed"
	[ "$3" -gt 0 ] && c+=", $3 skipped"
	echo "$c"
}

indent() { sed 's/^/    | /'; }

# record KERNEL NAME VERDICT PASS FAIL SKIP SECS NOTES
record() {
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$top/results.tsv"
}

# step NAME CMD...: one host step that is one test point.
step() {
	local name=$1 log t0 secs
	shift
	log=$top/host/$(echo "$name" | tr -c 'A-Za-z0-9.+-' _).log
	t0=$EPOCHREALTIME
	if timeout 900 "$@" >"$log" 2>&1; then
		secs=$(since "$t0")
		line PASS "$name" "${secs}s"
		P=$((P + 1))
		record host "$name" PASS 1 0 0 "$secs" ""
		return 0
	fi
	secs=$(since "$t0")
	line FAIL "$name" "${secs}s (log: ${log#"$src"/})"
	tail -n 40 "$log" | indent
	F=$((F + 1))
	record host "$name" FAIL 0 1 0 "$secs" "see $log"
	return 1
}

# tap_step NAME CMD...: a host step that prints TAP; each point counts.
tap_step() {
	local name=$1 log t0 rc=0 secs
	shift
	log=$top/host/$(echo "$name" | tr -c 'A-Za-z0-9.+-' _).log
	t0=$EPOCHREALTIME
	timeout 900 "$@" >"$log" 2>&1 || rc=$?
	secs=$(since "$t0")
	tally "$log" "$rc" "$([ "$rc" = 124 ] && echo 900 || echo 0)" ""
	P=$((P + T_PASS)) F=$((F + T_FAIL)) S=$((S + T_SKIP))
	line "$T_VERDICT" "$name" "$(counts "$T_PASS" "$T_FAIL" "$T_SKIP")  ${secs}s"
	if [ "$T_VERDICT" = FAIL ]; then
		grep -E '^(not ok|#)' "$log" | tail -n 40 | indent
		printf '%s\n' "${T_NOTES[@]}" | sed '/^$/d; s/^/    # runner: /'
		echo "    (log: ${log#"$src"/})"
	fi
	record host "$name" "$T_VERDICT" "$T_PASS" "$T_FAIL" "$T_SKIP" "$secs" "$(printf '%s; ' "${T_NOTES[@]}")"
}

# ---- test discovery -----------------------------------------------------

# timeout_of FILE: "# TIMEOUT: N" (or TIMEOUT_LONG with STRESS=long) near
# the top of a test's source.
timeout_of() {
	local t l
	t=$(head -n 30 "$1" | sed -n 's/.*[^_]TIMEOUT: *\([0-9][0-9]*\).*/\1/p' | head -n1)
	t=${t:-$DEFAULT_TIMEOUT}
	if [ "$STRESS" = long ]; then
		l=$(head -n 30 "$1" | sed -n 's/.*TIMEOUT_LONG: *\([0-9][0-9]*\).*/\1/p' | head -n1)
		t=${l:-$((t * 4))}
	fi
	awk -v t="$t" -v s="${TIMEOUT_SCALE:-1}" 'BEGIN { printf "%d\n", t * s + 0.5 }'

}

# discover ROOT BINDIR: NAME<TAB>PATH<TAB>TIMEOUT for each test under ROOT.
discover() {
	local root=$1 bindir=$2 f group base
	for f in "$root"/*/*.sh "$root"/*/*.c; do
		[ -f "$f" ] || continue
		group=$(basename "$(dirname "$f")")
		[ "$group" = lib ] && continue
		base=$(basename "$f")
		case $base in
		*.sh) printf '%s\t%s\t%s\n' "$group/${base%.sh}" "$f" "$(timeout_of "$f")" ;;
		*.c) printf '%s\t%s\t%s\n' "$group/${base%.c}" "$bindir/$group/${base%.c}" "$(timeout_of "$f")" ;;
		esac
	done
}

selected() {
	local name=$1 p
	[ -z "$TESTS" ] && return 0
	for p in ${TESTS//,/ }; do
		# shellcheck disable=SC2053
		[[ $name == $p || $name == *"$p"* ]] && return 0
	done
	return 1
}

make_test_list() {
	{
		discover "$src/selftests" "$src/build/selftests" |
			awk -F'\t' '{ print ($1 ~ /^module\// ? "0" : "1") "\t" $0 }' |
			LC_ALL=C sort -t$'\t' -k1,1 -k2,2 | cut -f2-
		[ "$HARNESS" = 1 ] &&
			discover "$src/tools/vm/harness-selftests" "$src/build/harness-selftests" |
			LC_ALL=C sort
	} | while IFS=$'\t' read -r name path timeout; do
		selected "$name" && printf '%s\t%s\t%s\n' "$name" "$path" "$timeout"
	done
}

# ---- one guest per kernel -----------------------------------------------

BAD='WARNING:|BUG:|kernel BUG at|Oops|general protection|soft lockup|hard LOCKUP|hung_task|blocked for more than|KASAN|UBSAN|list_add corruption|list_del corruption|refcount_t|Kernel panic|detected stalls?|self-detected stall'
# The debug kernel's lockdep and debug-objects reports (as in guest-run.sh).
BAD+='|possible circular locking dependency|inconsistent lock state|possible recursive locking|lock inversion dependency|suspicious RCU usage|trying to register non-static key|turning off the locking correctness validator|ODEBUG:'

# Print and count the results.tsv lines of RUN not shown yet.
shown=0
show_results() {
	local k=$1 run=$2 idx name verdict p f s secs rc notes
	[ -f "$run/results.tsv" ] || return 0
	# Count what is read, not what the file holds afterwards: the guest
	# may append a line meanwhile, and it must be shown next time.  A
	# last line still without its newline is not read yet either.
	while IFS=$'\t' read -r idx name verdict p f s secs rc notes; do
		shown=$((shown + 1))
		P=$((P + p)) F=$((F + f)) S=$((S + s))
		line "$verdict" "$name" "$(counts "$p" "$f" "$s")  ${secs}s"
		record "$k" "$name" "$verdict" "$p" "$f" "$s" "$secs" "$notes"
		if [ "$verdict" = FAIL ]; then
			# Its "not ok" lines and diagnostics; or, when it has
			# none (timeout, crash), the last lines it printed.
			if grep -qE '^(not ok|Bail out)' "$run/results/$idx.out" 2>/dev/null; then
				grep -E '^(not ok|#|Bail out)' "$run/results/$idx.out" | tail -n 40 | indent
			else
				tail -n 15 "$run/results/$idx.out" 2>/dev/null | indent
			fi

			[ -n "$notes" ] && echo "$notes" | tr ';' '\n' | sed 's/^ *//; /^$/d; s/^/    # runner: /'
			if [ -s "$run/results/$idx.hits" ]; then
				echo "    # kernel log:"
				sed 's/^/    # dmesg: /' "$run/results/$idx.hits"
			fi
			echo "    (output: ${run#"$src"/}/results/$idx.out)"
		elif [ "$verdict" = SKIP ] && [ -n "$notes" ]; then
			echo "    # $notes"
		fi
	done < <(tail -n +$((shown + 1)) "$run/results.tsv")
}

run_guest() {
	local k=$1 run=$top/$1 ntests t0 st last= deadline hang= qrc booted_at=
	local idx name timeout p f s
	# Per kernel, seen by make_test_list (timeout_of) and the watchdog
	# below: the debug kernel's slower defaults, unless the caller set them.
	local TIMEOUT_SCALE=${USER_TIMEOUT_SCALE:-1} VM_GRACE=$VM_GRACE VM_BOOT_TIMEOUT=$VM_BOOT_TIMEOUT
	if debug_kernel "$k"; then
		TIMEOUT_SCALE=${USER_TIMEOUT_SCALE:-3}
		VM_GRACE=${USER_VM_GRACE:-180}
		VM_BOOT_TIMEOUT=${USER_VM_BOOT_TIMEOUT:-900}
	fi
	t0=$EPOCHREALTIME
	rm -rf "$run"
	mkdir -p "$run"
	make_test_list >"$run/tests.list"
	ntests=$(wc -l <"$run/tests.list")
	{
		printf 'KVER=%q\n' "$k"
		printf 'FLEECE_SRC=%q\n' "$src"
		printf 'FLEECE_KO=%q\n' "$src/build/$k/dm-fleece.ko"
		printf 'STRESS=%q\n' "$STRESS"
		printf 'TIMEOUT_SCALE=%q\n' "$TIMEOUT_SCALE"
		[ -n "${FLEECE_TRACE:-}" ] && printf 'FLEECE_TRACE=1\n'
	} >"$run/job.env"

	echo "== guest $k: $ntests test program(s), STRESS=$STRESS$(debug_kernel "$k" &&
		echo ", TIMEOUT_SCALE=$TIMEOUT_SCALE (debug kernel)")"
	# Own process group (for the watchdog), and without the lock's fd.
	setsid tools/vm/boot.sh "$k" "$run" "$src/tools/vm/guest-run.sh" \
		>"$run/boot.log" 2>&1 </dev/null 7>&- &
	qpid=$! qkver=$k
	shown=0
	deadline=$((SECONDS + VM_BOOT_TIMEOUT))
	while kill -0 "$qpid" 2>/dev/null; do
		show_results "$k" "$run"
		st=$(cat "$run/state" 2>/dev/null)
		if [ "$st" != "$last" ]; then
			last=$st
			case $st in
			booted)
				booted_at=$(since "$t0")
				deadline=$((SECONDS + 300))
				;;
			running*)
				read -r _ _ _ timeout <<<"$st"
				deadline=$((SECONDS + timeout + 30 + VM_GRACE))
				;;
			*) deadline=$((SECONDS + 300)) ;;
			esac
		fi
		if [ "$SECONDS" -gt "$deadline" ]; then
			hang="no progress from the guest (state: ${st:-not booted}) for too long: QEMU killed"
			nmi_guest "$run"
			kill_guest
			break
		fi
		sleep 1
	done
	wait "$qpid"
	qrc=$?
	qpid=
	show_results "$k" "$run"

	if [ -s "$run/boot.hits" ]; then
		echo "    # note: the kernel log of the boot itself has:"
		sed 's/^/    # dmesg: /' "$run/boot.hits" | head -n 20
	fi
	if [ ! -f "$run/exit" ]; then
		# The guest did not finish: panic, hang or QEMU died.
		local why
		if [ -n "$hang" ]; then
			why=$hang
		elif grep -q 'Kernel panic' "$run/console.log" 2>/dev/null; then
			why="kernel panic"

		elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
			why="QEMU timed out"
		else
			why="the guest died (QEMU exit status $qrc)"
		fi
		st=$(cat "$run/state" 2>/dev/null)
		if [[ $st == running* ]]; then
			read -r _ idx name _ <<<"$st"
			read -r p f s _ < <(awk -f tools/vm/tap.awk "$run/results/$idx.out" 2>/dev/null || echo 0 0 0)
			f=$((f + 1))
		else
			idx=0 name="boot $k" p=0 f=1 s=0
		fi
		P=$((P + p)) F=$((F + f)) S=$((S + s))
		line FAIL "$name" "$(counts "$p" "$f" "$s"): $why"
		record "$k" "$name" FAIL "$p" "$f" "$s" 0 "$why"
		[ "$idx" != 0 ] && grep -E '^(not ok|ok|#)' "$run/results/$idx.out" 2>/dev/null | tail -n 20 | indent
		# The console from the start of that test: the bad lines with
		# what follows them, or else its last lines.
		awk -v b="fleece-harness: begin $idx " 'index($0, b) { on = 1 } on' \
			"$run/console.log" 2>/dev/null >"$run/crash.log"
		[ -s "$run/crash.log" ] || cp "$run/console.log" "$run/crash.log" 2>/dev/null
		echo "    # console (${run#"$src"/}/console.log):"
		{ grep -E -A 30 "$BAD" "$run/crash.log" || tail -n 40 "$run/crash.log"; } |
			head -n 60 | sed 's/^/    # /'
		# What did not run is counted as skipped.
		while IFS=$'\t' read -r name _; do
			line SKIP "$name" "not run: the guest died"
			S=$((S + 1))
			record "$k" "$name" SKIP 0 0 1 0 "not run: the guest died"
		done < <(tail -n +$((idx + 1)) "$run/tests.list")
	fi
	GUEST_TIME[$k]="$(hms "$(since "$t0")") (boot ${booted_at:-?}s)"
}

# ---- main ---------------------------------------------------------------

declare -A BUILT GUEST_TIME
echo "dm-fleece check: kernels ${kvers[*]}; STRESS=$STRESS${TESTS:+; TESTS=$TESTS}"
echo "== host"
t_host=$EPOCHREALTIME
for k in "${kvers[@]}"; do
	step "build dm-fleece.ko $k (W=${W-1})" tools/kbuild.sh --quiet "$k" && BUILT[$k]=1
done
step "build C selftests" make -s -C selftests O="$src/build/selftests"
if [ -f tools/fleecectl/Makefile ]; then
	step "build tools/fleecectl" make -s -C tools/fleecectl
fi
step "build tools/fleece-md-check" make -s -C tools/fleece-md-check
if [ "$HARNESS" = 1 ]; then
	step "build harness C selftests" make -s -C selftests \
		SRCDIR="$src/tools/vm/harness-selftests" O="$src/build/harness-selftests"
	for k in "${kvers[@]}"; do
		step "build harness WARN module $k" tools/kbuild.sh --quiet \
			--src tools/vm/warn-module --items "Kbuild fleece_warn_test.c" \
			--out "build/harness/$k" "$k"
	done
fi
if [ "$HOST" = 1 ]; then
	for k in "${kvers[@]}"; do
		# The Debian 6.12 kernel covers sparse for the same API.
		debug_kernel "$k" && continue
		step "sparse $k" tools/kbuild.sh --quiet --sparse "$k"
	done
	if [ -f tools/fleecectl/Makefile ] && grep -qE '^test[[:space:]]*:' tools/fleecectl/Makefile; then
		tap_step "fleecectl unit tests" make -s -C tools/fleecectl test
	fi
	if [ -f tools/emap-test/Makefile ]; then
		tap_step "exception map unit tests" make -s -C tools/emap-test test
	fi
	tap_step "dkms build" tools/dkms-check.sh "${kvers[@]}"
fi
T_HOST=$(since "$t_host")

make_test_list >"$top/tests.list"
if [ -n "$TESTS" ] && [ ! -s "$top/tests.list" ]; then
	echo "check: TESTS='$TESTS' matches no selftest" >&2
	F=$((F + 1))
fi
guests=()
for k in "${kvers[@]}"; do
	if [ -z "${BUILT[$k]:-}" ]; then
		echo "== guest $k: not run (the module did not build)"
		continue
	fi
	guests+=("$k")
done
if [ -z "${PARALLEL_GUESTS:-}" ]; then
	PARALLEL_GUESTS=1
	for k in "${guests[@]}"; do
		debug_kernel "$k" && PARALLEL_GUESTS=0
	done
fi

# run_guest_in_background K: run_guest in a subshell, its output to
# $top/guest-K.out and its counts and time to $top/guest-K.tally.  Traps are
# reset in a subshell: it sets its own, to kill its guest when it ends.
run_guest_in_background() {
	local k=$1
	rm -f "$top/guest-$k.tally"
	(
		trap on_exit EXIT
		trap 'exit 130' INT TERM
		bg_pids=() P=0 F=0 S=0
		run_guest "$k"
		printf '%s %s %s %s\n' "$P" "$F" "$S" "${GUEST_TIME[$k]}" >"$top/guest-$k.tally"
	) >"$top/guest-$k.out" 2>&1 </dev/null 7>&- &
	bg_pids+=($!)
}

if [ "$PARALLEL_GUESTS" = 1 ] && [ ${#guests[@]} -gt 1 ]; then
	for k in "${guests[@]:1}"; do
		run_guest_in_background "$k"
	done
	run_guest "${guests[0]}"
	i=0
	for k in "${guests[@]:1}"; do
		pid=${bg_pids[$i]}
		i=$((i + 1))
		# Its output so far, then the rest as it comes, until it ends.
		tail -n +1 -f --pid="$pid" "$top/guest-$k.out"
		wait "$pid"
		if read -r p f s t <"$top/guest-$k.tally" 2>/dev/null; then
			P=$((P + p)) F=$((F + f)) S=$((S + s))
			GUEST_TIME[$k]=$t
		else
			line FAIL "guest $k" "its runner died without a result"
			F=$((F + 1))
		fi
	done
	bg_pids=()
else
	for k in "${guests[@]}"; do
		run_guest "$k"
	done
fi

# The bench in quick mode: proves `make bench` still works (it asserts no
# timing).  One guest, on the first kernel.
T_BENCH=
if [ "$BENCH" = 1 ] && [ -n "${BUILT[${kvers[0]}]:-}" ]; then
	t_bench=$EPOCHREALTIME
	tap_step "bench quick (${kvers[0]})" env QUICK=1 BENCH_KERNEL="${kvers[0]}" bash bench/run.sh
	T_BENCH=$(since "$t_bench")
fi

echo "== time: host $(hms "$T_HOST")$(for k in "${kvers[@]}"; do
	[ -n "${GUEST_TIME[$k]:-}" ] && printf ', %s %s' "$k" "${GUEST_TIME[$k]}"
done)${T_BENCH:+, bench $(hms "$T_BENCH")}; total $(hms $((SECONDS - T_START)))"
if [ "$S" -gt 0 ]; then
	echo "$P passed, $F failed, $S skipped"
else
	echo "$P passed, $F failed"
fi
[ "$F" -eq 0 ]
