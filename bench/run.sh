#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# run.sh: the body of `make bench`.  Builds dm-fleece.ko for one kernel,
# boots one QEMU guest (tools/vm/boot.sh) that runs bench/guest.sh against
# dm-linear, dm-snapshot (N and P) and dm-fleece on the same null_blk
# devices, then turns the raw results into a report (bench/report.py):
#
#   OUT/results.md    ratio tables (median of REPS runs, with the spread)
#   OUT/results.json  every run and every aggregate, machine-readable
#   OUT/chart.png     ratios of dm-fleece to dm-linear and dm-snapshot N
#
# It prints TAP lines for what it checked of the harness itself (the guest
# ran, each contender produced results, the report was written) and exits 1
# only when one of those fails.  No timing is ever asserted.
#
# Environment:
#   QUICK=1        small devices, 1 s runs, 1 repetition (< 5 min; for
#                  `make check`): proves the harness works, measures nothing
#   BENCH_KERNEL   kernel to boot: a version or alias (default 6.1)
#   BENCH_OUT      output directory (default build/bench/{full,quick}-KVER)
#   BENCH_REF      benchmark the module of this git revision (exported with
#                  git archive and built under build/bench/) instead of the
#                  working tree
#   BENCH_SAVE=1   also copy results.{md,json} and chart.png to
#                  bench/results/KVER/ (to commit a reference run)
#   BENCH_REPS, BENCH_RUNTIME, BENCH_MODES ("mem ssd"), BENCH_SSD_NSEC,
#   BENCH_LOAD_IOPS: override repetitions, seconds per run, device modes,
#                  the ssd mode's completion latency and the rate of the
#                  writer under workload 5's loaded read (100/s)
#   BENCH_CHUNKS_KB, BENCH_SEQ_CHUNKS_KB: chunk sizes (KiB) of workloads 1
#                  and 3 ("4 64 1024"); "4" alone covers every target
#   BENCH_WORKLOADS  the mem-mode workloads (default: all of "passthrough
#                  firstwrite firstwrite-seq steady viewread release discard
#                  memory"; QUICK=1 leaves out release)
#   VM_MEM, VM_SMP, VM_TIMEOUT  passed to tools/vm/boot.sh
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src" || exit 2
QUICK=${QUICK:-0}
[ "$QUICK" = 1 ] || QUICK=0

T_START=$SECONDS
tap_n=0 tap_fail=0
echo "TAP version 13"
ok() { tap_n=$((tap_n + 1)); echo "ok $tap_n - $*"; }
notok() { tap_n=$((tap_n + 1)); tap_fail=$((tap_fail + 1)); echo "not ok $tap_n - $*"; }
check() {	# check DESC CMD...: ok when CMD succeeds
	local d=$1
	shift
	if "$@"; then ok "$d"; else notok "$d"; fi
}
diag() { sed 's/^/# /'; }
finish() {
	echo "1..$tap_n"
	echo "# bench: $((SECONDS - T_START))s wall time"
	[ "$tap_fail" -eq 0 ]
	exit $?
}

tag="bench"
[ "$QUICK" = 1 ] && tag="bench quick"

kver=$(tools/vm/kernels.sh "${BENCH_KERNEL:-6.1}" 2>/dev/null | head -n1)
if [ -z "$kver" ]; then
	notok "$tag: kernel ${BENCH_KERNEL:-6.1} is installed (run 'make deps')"
	finish
fi

# ---- parameters -------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
	ORIGIN_MB=64 EXC_MB=80 REGION_MB=48 STEADY_MB=16 RELEASE_GB=16
	MEM_RAND_MB=8 MEM_RAND_CHUNKS=1024 MEM_MB=8
	CHUNKS_KB="4" SEQ_CHUNKS_KB="64" W1_MAX_IOS=20000
	REPS=${BENCH_REPS:-1} MEM_REPS=1 RUNTIME=${BENCH_RUNTIME:-1}
	MEM_WORKLOADS=${BENCH_WORKLOADS:-passthrough firstwrite firstwrite-seq steady viewread discard tracking memory}
	SSD_WORKLOADS="passthrough"
	# One run of each code path is enough to prove the harness.
	SKIP_KINDS="firstwrite:lat-qd1 steady:iops-qd32 viewread:idle passthrough:randread-qd32"
	SKIP_KINDS+=" passthrough:randwrite-qd1 passthrough:seqwrite-1m tracking:firstgen-qd1"
	MEM_SETTLE=0
	# Past this many seconds in the guest, what has not started is skipped
	# (reported as TAP skips): a busy host must not fail `make check`.
	TIME_BUDGET=170
	: "${VM_MEM:=2G}" "${VM_TIMEOUT:=285}"
else
	ORIGIN_MB=1024 EXC_MB=1024 REGION_MB=768 STEADY_MB=128 RELEASE_GB=64
	MEM_RAND_MB=256 MEM_RAND_CHUNKS=16384 MEM_MB=256
	CHUNKS_KB=${BENCH_CHUNKS_KB:-4 64 1024} SEQ_CHUNKS_KB=${BENCH_SEQ_CHUNKS_KB:-4 64 1024}
	W1_MAX_IOS=40000
	REPS=${BENCH_REPS:-3} MEM_REPS=${BENCH_REPS:-3} RUNTIME=${BENCH_RUNTIME:-3}
	MEM_WORKLOADS=${BENCH_WORKLOADS:-passthrough firstwrite firstwrite-seq steady viewread release discard tracking memory}
	SSD_WORKLOADS="passthrough firstwrite steady"
	SKIP_KINDS="ssd:passthrough:randread-qd32 ssd:passthrough:seqwrite-1m"
	MEM_SETTLE=2
	TIME_BUDGET=0
	: "${VM_MEM:=4G}" "${VM_TIMEOUT:=3600}"
fi
# QUICK: ssd first, so that a busy host skips the memory probe, not a mode.
if [ "$QUICK" = 1 ]; then MODES=${BENCH_MODES:-ssd mem}; else MODES=${BENCH_MODES:-mem ssd}; fi
SSD_NSEC=${BENCH_SSD_NSEC:-50000}
# Workload 5's background writer: a fixed rate that every contender keeps up
# with (dm-snapshot P reaches ~170/s here), so that each image read is timed
# under the same write load, not under whatever load its contender lets in.
LOAD_IOPS=${BENCH_LOAD_IOPS:-100}
DEFAULT_CHUNK=8		# sectors: 4 KiB, the chunk of workloads 2, 4, 5
MEM_CHUNK=8
TRACK_SECTORS=128	# 64 KiB tracking blocks, fleece and dm-era, workload 9
export VM_MEM VM_TIMEOUT

if [ "$QUICK" = 1 ]; then
	out=${BENCH_OUT:-$src/build/bench/quick-$kver}
else
	out=${BENCH_OUT:-$src/build/bench/full-$kver}
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)
case $out in /tmp/* | /run/*)
	notok "$tag: BENCH_OUT=$out is under /tmp or /run, which the guest cannot see"
	finish
	;;
esac
rm -rf "$out/fio" "$out/slabinfo"
rm -f "$out"/{runs.tsv,mem.tsv,done,fatal,progress.log,guest.log,env.txt,module-loaded} \
	"$out"/{skipped-for-time,checks.tsv,host-load.txt} \
	"$out"/results.{md,json} "$out"/chart.{png,dat,gp} "$out/console.log"

echo "# bench: kernel $kver, QUICK=$QUICK, reps $REPS, ${RUNTIME}s per run, modes: $MODES; output in ${out#"$src"/}"

# ---- build ------------------------------------------------------------------
# What is measured: the working tree, or BENCH_REF.
kargs=()
if [ -n "${BENCH_REF:-}" ]; then
	rev=$(git rev-parse --verify --quiet "${BENCH_REF}^{commit}") || {
		notok "$tag: BENCH_REF=$BENCH_REF is a git revision"
		finish
	}
	ksrc=$src/build/bench/src-${rev:0:12}
	rm -rf "$ksrc" && mkdir -p "$ksrc"
	items=$(git ls-tree --name-only "$rev" -- Kbuild dm-fleece include | tr '\n' ' ')
	git archive "$rev" $items | tar -x -C "$ksrc"
	kout=$src/build/bench/ko-${rev:0:12}/$kver
	kargs=(--src "$ksrc" --out "$kout")
	ko=$kout/dm-fleece.ko
	source_desc="git $(git log -1 --format='%h %s' "$rev")"
else
	ko=$src/build/$kver/dm-fleece.ko
	rev=$(git rev-parse --short HEAD 2>/dev/null)
	dirty=$(git status --porcelain -- Kbuild dm-fleece include 2>/dev/null | wc -l)
	source_desc="working tree at $rev$([ "$dirty" -gt 0 ] && echo " + $dirty changed file(s)")"
fi
if tools/kbuild.sh --quiet "${kargs[@]}" "$kver" >"$out/build.log" 2>&1; then
	ok "$tag: dm-fleece.ko built for $kver ($source_desc)"
else
	tail -n 20 "$out/build.log" | diag
	notok "$tag: dm-fleece.ko built for $kver ($source_desc)"
	finish
fi

{
	for v in QUICK kver ORIGIN_MB EXC_MB REGION_MB STEADY_MB RELEASE_GB MEM_RAND_MB MEM_RAND_CHUNKS MEM_MB \
		CHUNKS_KB SEQ_CHUNKS_KB \
		W1_MAX_IOS REPS MEM_REPS RUNTIME MODES MEM_WORKLOADS SSD_WORKLOADS SSD_NSEC \
		DEFAULT_CHUNK MEM_CHUNK TRACK_SECTORS SKIP_KINDS MEM_SETTLE TIME_BUDGET LOAD_IOPS; do
		printf '%s=%q\n' "$v" "${!v}"
	done
	printf 'SRC=%q\n' "$src"
	printf 'FLEECE_KO=%q\n' "$ko"
	printf 'SOURCE=%q\n' "$source_desc"
} >"$out/bench.env"

# ---- the guest --------------------------------------------------------------
qpid=
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill -TERM -- "-$qpid" 2>/dev/null
		sleep 2
		kill -KILL -- "-$qpid" 2>/dev/null
	fi
}
trap cleanup EXIT
trap 'echo "# bench: interrupted"; exit 130' INT TERM

t_guest=$SECONDS
for attempt in 1 2; do
	setsid tools/vm/boot.sh "$kver" "$out" "$src/bench/guest.sh" >"$out/boot.log" 2>&1 </dev/null &
	qpid=$!
	shown=0
	while kill -0 "$qpid" 2>/dev/null; do
		if [ -f "$out/progress.log" ]; then
			n=$(wc -l <"$out/progress.log")
			if [ "$n" -gt "$shown" ]; then
				tail -n +$((shown + 1)) "$out/progress.log" | head -n $((n - shown)) |
					sed 's/^/# guest: /'
				shown=$n
			fi
		fi
		# The host's load: other guests on the same cores distort every
		# latency (a preempted vCPU looks like a slow I/O).
		cut -d' ' -f1 /proc/loadavg >>"$out/host-load.txt"
		sleep 2
	done
	wait "$qpid"
	qrc=$?
	qpid=
	[ -f "$out/progress.log" ] && tail -n +$((shown + 1)) "$out/progress.log" | sed 's/^/# guest: /'
	# QEMU never started (the initramfs step failed, say): once more.
	[ -s "$out/console.log" ] && break
	sed 's/^/# boot: /' "$out/boot.log"
	[ "$attempt" = 1 ] && echo "# bench: the guest did not start; trying once more"
done
guest_secs=$((SECONDS - t_guest))
echo "# bench: host load average during the guest run: $(awk '{ s += $1; if ($1 > m) m = $1 }
	END { if (NR) printf "mean %.1f, max %.1f", s / NR, m }' "$out/host-load.txt" 2>/dev/null) on $(nproc) CPUs"

if [ -f "$out/module-loaded" ]; then
	ok "$tag: guest booted $kver and loaded dm-fleece, dm-snapshot, null_blk"
else
	{
		[ -f "$out/fatal" ] && cat "$out/fatal"
		echo "QEMU exit status $qrc; console (${out#"$src"/}/console.log):"
		tail -n 30 "$out/console.log" 2>/dev/null
		tail -n 10 "$out/boot.log" 2>/dev/null
	} | diag
	notok "$tag: guest booted $kver and loaded dm-fleece, dm-snapshot, null_blk"
	finish
fi
if [ -f "$out/done" ]; then
	read -r nrun nfail <"$out/done"
	ok "$tag: guest ran every workload ($nrun fio runs in ${guest_secs}s)"
else
	{
		[ -f "$out/fatal" ] && cat "$out/fatal"
		echo "QEMU exit status $qrc after ${guest_secs}s (VM_TIMEOUT=$VM_TIMEOUT)"
		tail -n 5 "$out/guest.log" 2>/dev/null
		grep -E -A 20 'WARNING:|BUG:|Oops|Kernel panic|blocked for more than' \
			"$out/console.log" 2>/dev/null | head -n 40
	} | diag
	notok "$tag: guest ran every workload"
fi
if grep -qE 'WARNING:|BUG:|Oops|general protection|Kernel panic|blocked for more than' \
	"$out/console.log" 2>/dev/null; then
	grep -E -A 10 'WARNING:|BUG:|Oops|general protection|Kernel panic|blocked for more than' \
		"$out/console.log" | head -n 30 | diag
	notok "$tag: kernel log clean"
else
	ok "$tag: kernel log clean"
fi

# ---- the report ---------------------------------------------------------------
if python3 bench/report.py "$out" >"$out/report.log" 2>&1; then
	ok "$tag: report generated (results.md, results.json)"
else
	tail -n 20 "$out/report.log" | diag
	notok "$tag: report generated (results.md, results.json)"
	finish
fi
# The harness checks the report made: one TAP line each.
python3 bench/report.py --checks "$out" | while IFS=$'\t' read -r verdict desc; do
	echo "$verdict	$desc"
done >"$out/checks.tsv"
while IFS=$'\t' read -r verdict desc; do
	case $verdict in
	ok) ok "$tag: $desc" ;;
	skip) ok "$tag: $desc # SKIP the host was too slow to run it in time" ;;
	*) notok "$tag: $desc" ;;
	esac
done <"$out/checks.tsv"
check "$tag: chart.png written" test -s "$out/chart.png"

if [ "$QUICK" != 1 ]; then
	cat "$out/results.md"
fi
echo "# report: ${out#"$src"/}/results.md, results.json, chart.png"
if [ "${BENCH_SAVE:-0}" = 1 ]; then
	dest=$src/bench/results/$kver
	mkdir -p "$dest"
	cp "$out/results.md" "$out/results.json" "$out/chart.png" "$dest/"
	echo "# saved to ${dest#"$src"/}/"
fi
finish
