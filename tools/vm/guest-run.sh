#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# guest-run.sh OUTDIR: the test runner inside the guest (run by /init in
# the chroot of the host's /).  OUTDIR is the writable 9p share; the host
# (tools/check.sh) left in it:
#   job.env     variables to export (KVER, FLEECE_SRC, FLEECE_KO, STRESS,
#               TIMEOUT_SCALE...)
#   tests.list  NAME<TAB>PATH<TAB>TIMEOUT, one test program a line
# and reads back:
#   state        booted | running IDX NAME TIMEOUT | stuck IDX | done
#   results.tsv  IDX NAME VERDICT PASS FAIL SKIP SECONDS RC NOTES (tab separated)
#   results/IDX.out, IDX.dmesg, IDX.hits   output, kernel log, bad lines
#
# For every test program: (re)load dm-fleece if it is not loaded, run the
# program in its own cgroup with a timeout, clean up what it left behind
# (processes, mounts, dm devices, loop devices, modules), then scan the
# kernel log it produced.
set -u
out=${1:?usage: guest-run.sh OUTDIR}
set -a
# shellcheck disable=SC1091
. "$out/job.env"
set +a
here=$FLEECE_SRC/tools/vm
# shellcheck source=tally.sh
. "$here/tally.sh"

res=$out/results
mkdir -p "$res"
: >"$out/results.tsv"

state() { echo "$*" >"$out/state"; }
say() { echo "fleece-guest: $*" >/dev/console; }
kmsg() { echo "fleece-harness: $*" >/dev/kmsg; }

# Kernel-log lines that fail the test that produced them.  Most lockdep,
# debug-objects and RCU reports of the debug kernel start with "WARNING:"
# or "BUG:"; they are named too, and so are the ones that do not (an
# uninitialised lock: "trying to register non-static key").
BAD='WARNING:|BUG:|kernel BUG at|Oops|general protection|soft lockup|hard LOCKUP|hung_task|blocked for more than|KASAN|UBSAN|list_add corruption|list_del corruption|refcount_t|Kernel panic|detected stalls?|self-detected stall'
BAD+='|possible circular locking dependency|inconsistent lock state|possible recursive locking|lock inversion dependency|suspicious RCU usage|trying to register non-static key|turning off the locking correctness validator|ODEBUG:'

if [ -n "${FLEECE_TRACE:-}" ]; then
	PS4='+ $EPOCHREALTIME '
	set -x
fi
state booted
say "booted $(uname -r) in $(cut -d' ' -f1 /proc/uptime)s"

export HOME=/tmp/home TERM=dumb PYTHONDONTWRITEBYTECODE=1
# No udev here: let libdevmapper make /dev/mapper nodes itself.
# ktap.sh's fleece_udev_start starts udevd and unsets this for a test.
export DM_DISABLE_UDEV=1
export FLEECE_IN_GUEST=1
export FLEECE_BUILD=$FLEECE_SRC/build
export FLEECE_KBUILD=$FLEECE_BUILD/$KVER
export FLEECE_SELFTESTS_BIN=$FLEECE_BUILD/selftests
if [ -x "$FLEECE_SRC/tools/fleecectl/fleecectl" ]; then
	export FLEECE_FLEECECTL=$FLEECE_SRC/tools/fleecectl/fleecectl
	PATH=$FLEECE_SRC/tools/fleecectl:$PATH
fi
mkdir -p "$HOME"
hostname fleece-guest 2>/dev/null

# scaled N: N seconds times TIMEOUT_SCALE (3 on the debug kernel), for the
# runner's own tests and the kernel's hung task report (120 s), so that a
# slow kernel is not taken for a hung one.
scaled() { awk -v t="$1" -v s="${TIMEOUT_SCALE:-1}" 'BEGIN { printf "%d\n", t * s + 0.5 }'; }
if [ "$(scaled 120)" != 120 ] && [ -w /proc/sys/kernel/hung_task_timeout_secs ]; then
	scaled 120 >/proc/sys/kernel/hung_task_timeout_secs
fi

modprobe -q virtio_blk
modprobe -q configfs && { mountpoint -q /sys/kernel/config ||
	mount -t configfs configfs /sys/kernel/config; }
modprobe -q dm-mod
FLEECE_SCRATCH_DEV=
for d in /sys/block/vd*; do
	[ "$(cat "$d/serial" 2>/dev/null)" = fleece-scratch ] && FLEECE_SCRATCH_DEV=/dev/${d##*/}
done
export FLEECE_SCRATCH_DEV

# Kernel log of the boot itself: reported, not counted against a test.
dmesg | grep -E "$BAD" | grep -v 'fleece-harness:' >"$out/boot.hits"

load_module() {
	local d
	[ -d /sys/module/dm_fleece ] && return 0
	for d in $(modinfo -F depends "$FLEECE_KO" 2>/dev/null | tr , ' '); do
		modprobe "$d" || echo "# modprobe $d failed"
	done
	insmod "$FLEECE_KO" || { echo "# insmod $FLEECE_KO failed"; return 1; }
}

# Undo what a test left behind.  Prints one "# ..." line per thing found.
cleanup_after() {
	local cg=$1 mounts_before=$2 modules_before=$3 m i names
	# (cgroup files have no size: read them to see if they are empty.)
	if [ -n "$cg" ] && [ -n "$(cat "$cg/cgroup.procs")" ]; then
		echo "# left processes: $(xargs -r ps -o comm= -p <"$cg/cgroup.procs" | tr '\n' ' ')"
		xargs -r kill -TERM <"$cg/cgroup.procs" 2>/dev/null
		for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
			[ -n "$(cat "$cg/cgroup.procs")" ] || break
			[ "$i" = 4 ] && echo 1 >"$cg/cgroup.kill"
			sleep 0.5
		done
		[ -n "$(cat "$cg/cgroup.procs")" ] && return 1
	fi
	# Mounts: newest first.
	awk '{print $2}' /proc/mounts | grep -vxF -f "$mounts_before" | tac |
		while read -r m; do
			echo "# left mount: $m"
			umount -l "$m"
		done
	if [ -e /dev/mapper/control ]; then
		names=$(dmsetup ls 2>/dev/null | awk '$1 != "No" {print $1}')
		if [ -n "$names" ]; then
			echo "# left dm devices: $(echo $names)"
			dmsetup remove_all --force >/dev/null 2>&1
			dmsetup mknodes >/dev/null 2>&1
		fi
	fi
	if [ -n "$(losetup -a 2>/dev/null)" ]; then
		echo "# left loop devices: $(losetup -a | cut -d: -f1 | tr '\n' ' ')"
		losetup -D
	fi
	for m in /sys/block/nbd*; do
		[ -e "$m/pid" ] || continue
		echo "# left connected ${m##*/}"
		nbd-client -d "/dev/${m##*/}" >/dev/null 2>&1 || qemu-nbd -d "/dev/${m##*/}" >/dev/null 2>&1
	done
	# Modules the test loaded (not dm-fleece): unload, newest first.
	awk '{print $1}' /proc/modules | grep -vxF -f "$modules_before" |
		grep -vx dm_fleece | while read -r m; do
			modprobe -r "$m" >/dev/null 2>&1 || rmmod "$m" >/dev/null 2>&1
		done
	return 0
}

mkfifo /run/fleece-never 2>/dev/null
exec 9<>/run/fleece-never
stuck=0
trap 'stuck=1' USR1

cgroot=/sys/fs/cgroup
[ -e $cgroot/cgroup.procs ] || cgroot=
idx=0
ntests=$(wc -l <"$out/tests.list")

run_one() {
	local name=$1 path=$2 timeout=$3 cg=${cgroot:+$cgroot/fleece-test}
	local o=$res/$idx.out scratch=/tmp/fleece-selftest.$idx t0 rc=0 timedout=0 timer
	local mounts_before=/run/fleece-mounts modules_before=/run/fleece-modules

	state "running $idx $name $timeout"
	kmsg "begin $idx $name"
	t0=$EPOCHREALTIME
	{
		# The runner's own final checks run on the module as the
		# tests left it.
		case $name in final/*) ;; *) load_module || true ;; esac
		awk '{print $2}' /proc/mounts >$mounts_before
		awk '{print $1}' /proc/modules >$modules_before
	} >"$res/$idx.pre" 2>&1
	mkdir -p "$scratch" "$out/artifacts/${name//\//_}"
	[ -n "$cgroot" ] && { mkdir -p "$cg"; echo 1 >"$cg/cgroup.kill" 2>/dev/null; }

	(
		[ -n "$cgroot" ] && echo "$BASHPID" >"$cg/cgroup.procs"
		cd "$scratch" || exit 1
		export FLEECE_TEST_NAME=$name FLEECE_TEST_TIMEOUT=$timeout
		export FLEECE_ARTIFACTS=$out/artifacts/${name//\//_}
		trap - USR1
		# No runner fd reaches a test (lvm complains of leaked fds).
		exec 3<&- 9<&-

		if [ -x "$path" ]; then
			exec "$path"
		else
			exec bash "$path"
		fi
	) >"$o" 2>&1 </dev/null &
	local pid=$!
	(
		# The timer: TERM to everything of the test (a shell waiting
		# for a child runs its traps only once the child is gone),
		# then KILL, then give up on it (USR1 to the runner).
		read -r -t "$timeout" -u 9
		echo timeout >"$res/$idx.timeout"
		if [ -n "$cgroot" ]; then
			xargs -r kill -TERM <"$cg/cgroup.procs" 2>/dev/null
		else
			kill -TERM "$pid" 2>/dev/null
		fi
		read -r -t 10 -u 9
		[ -n "$cgroot" ] && echo 1 >"$cg/cgroup.kill"
		kill -KILL "$pid" 2>/dev/null
		read -r -t 15 -u 9
		kill -USR1 $$
	) &
	timer=$!
	wait "$pid"
	rc=$?
	kill "$timer" 2>/dev/null
	wait "$timer" 2>/dev/null
	[ -e "$res/$idx.timeout" ] && timedout=$timeout
	if [ "$stuck" = 1 ]; then
		echo "# $name cannot be killed (stuck in the kernel?): blocked tasks follow in the kernel log" >>"$o"
		echo w >/proc/sysrq-trigger
		rc=137
	elif ! cleanup_after "$cg" $mounts_before $modules_before >>"$o" 2>&1; then
		echo "# processes of $name cannot be killed (stuck in the kernel?)" >>"$o"
		echo w >/proc/sysrq-trigger
		stuck=1
	fi
	cat "$res/$idx.pre" >>"$o"
	rm -rf "$scratch"
	kmsg "end $idx $name"

	dmesg | awk -v b="fleece-harness: begin $idx $name" -v e="fleece-harness: end $idx $name" '
		index($0, b) { buf = ""; next }
		index($0, e) { exit }
		{ buf = buf $0 "\n" }
		END { printf "%s", buf }' >"$res/$idx.dmesg"
	grep -E -A 30 "$BAD" "$res/$idx.dmesg" | grep -v 'fleece-harness:' | head -n 80 >"$res/$idx.hits"

	grep -qE "$BAD" "$res/$idx.hits" || : >"$res/$idx.hits"

	tally "$o" "$rc" "$timedout" "$res/$idx.hits"
	local secs notes
	secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	notes=$(printf '%s; ' "${T_NOTES[@]}")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$idx" "$name" "$T_VERDICT" \
		"$T_PASS" "$T_FAIL" "$T_SKIP" "$secs" "$rc" "${notes%; }" >>"$out/results.tsv"
	say "[$idx/$ntests] $name: $T_VERDICT ($T_PASS passed, $T_FAIL failed, $T_SKIP skipped, ${secs}s)"
}

while IFS=$'\t' read -r name path timeout <&3; do
	idx=$((idx + 1))
	if [ "$stuck" = 1 ]; then
		printf '%s\t%s\tSKIP\t0\t0\t1\t0\t0\tnot run: an earlier test is stuck in the kernel\n' \
			"$idx" "$name" >>"$out/results.tsv"
		continue
	fi
	run_one "$name" "$path" "$timeout"
done 3<"$out/tests.list"

# kmemleak (the debug kernel, `make debug-kernel`; the Debian kernels have
# none, and get no extra test).  It has no scan thread there: scan now,
# while dm-fleece is still loaded so that its frames in a leak's backtrace
# have names (they are printed when the report is read).  A leak whose
# report mentions fleece fails; others are diagnostics.  "clear" then hides
# them from the scan after the unload below.
KMEMLEAK=/sys/kernel/debug/kmemleak
if [ "$stuck" = 0 ] && [ -e $KMEMLEAK ]; then
	cat >"$out/kmemleak.sh" <<'SH'
#!/bin/bash
# final/kmemleak: leaks of the whole run; final/kmemleak-unload: leaks the
# rmmod left (the module's frames have no names any more: a frame in module
# space without one is taken as dm-fleece's, the module just unloaded).
f=/sys/kernel/debug/kmemleak
echo "TAP version 13"
echo "1..1"
unload=0
what="kmemleak: no leak from dm-fleece after the tests"
if [ "$FLEECE_TEST_NAME" != final/kmemleak ]; then
	unload=1
	what="kmemleak: no leak left by rmmod dm_fleece"
fi
# An object is reported only once it is older than 5 s, and only after a
# second scan finds it unreferenced again (a first scan sees new objects
# as changed).
for i in 1 2; do
	if ! echo scan 2>/dev/null >$f; then
		echo "ok 1 - $what # SKIP kmemleak is off: $(dmesg | grep -m1 -i 'kmemleak.*disabled')"
		exit 0
	fi
	[ "$i" = 1 ] && sleep 6
done
cat $f >"$FLEECE_ARTIFACTS/kmemleak.txt"
# One record per "unreferenced object" paragraph.
# Ours: "fleece" anywhere in it (a frame "... [dm_fleece]", a cache name);
# after the unload also a frame printed as a bare address ("[<...>] 0x...").
awk -v unload="$unload" '
	/^unreferenced object/ { flush(); rec = $0 "\n"; next }
	{ rec = rec $0 "\n" }
	/fleece/ { mine = 1 }
	unload && /\] 0x[0-9a-f]+$/ { mine = 1 }
	function flush() {
		if (rec == "") return
		all++
		if (mine) { n++; if (n <= 3) bad = bad rec }
		rec = ""
		mine = 0
	}
	END {
		flush()
		printf "%d %d\n", all, n > "/dev/stderr"
		printf "%s", bad
	}' "$FLEECE_ARTIFACTS/kmemleak.txt" 2>"$FLEECE_ARTIFACTS/kmemleak.count" >"$FLEECE_ARTIFACTS/kmemleak.ours"
read -r all n <"$FLEECE_ARTIFACTS/kmemleak.count"
echo clear >$f
echo "# kmemleak: $all suspected leak(s) in all, $n of them dm-fleece's (report: artifacts/${FLEECE_TEST_NAME//\//_}/kmemleak.txt)"
if [ "$n" -gt 0 ]; then
	sed 's/^/# /' "$FLEECE_ARTIFACTS/kmemleak.ours"
	echo "not ok 1 - $what"
	exit 1
fi
echo "ok 1 - $what"
SH
	idx=$((idx + 1))
	run_one final/kmemleak "$out/kmemleak.sh" "$(scaled 300)"
fi

# Last check: the module unloads and that leaves the kernel log clean.
if [ "$stuck" = 0 ] && [ "${FLEECE_FINAL_UNLOAD:-1}" = 1 ]; then
	idx=$((idx + 1))
	cat >"$out/final-unload.sh" <<'SH'
#!/bin/bash
echo "TAP version 13"
echo "1..1"
if [ -d /sys/module/dm_fleece ]; then
	if out=$(rmmod dm_fleece 2>&1); then
		echo "ok 1 - rmmod dm_fleece"
	else
		echo "# $out"
		echo "not ok 1 - rmmod dm_fleece"
	fi
else
	echo "ok 1 - rmmod dm_fleece # SKIP not loaded"
fi
SH
	run_one final/unload "$out/final-unload.sh" "$(scaled 60)"
	if [ "$stuck" = 0 ] && [ -e "$out/kmemleak.sh" ] && [ ! -d /sys/module/dm_fleece ]; then
		idx=$((idx + 1))
		run_one final/kmemleak-unload "$out/kmemleak.sh" "$(scaled 300)"
	fi
fi
state done
echo 0 >"$out/exit"
