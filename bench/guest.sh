#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# guest.sh OUTDIR: the benchmark body, run inside the QEMU guest by
# tools/vm/boot.sh (bench/run.sh starts it).  OUTDIR is the writable share;
# bench/run.sh left OUTDIR/bench.env in it.  This script writes:
#
#   runs.tsv      one line per fio run (see record() for the columns)
#   mem.tsv       meminfo snapshots of the memory-per-chunk probe
#   fio/*.json    fio's JSON output of every run
#   slabinfo/     /proc/slabinfo around the memory probe
#   env.txt       kernel, CPUs, fio, device parameters
#   guest.log     what happened, with timings; progress.log: one line a step
#   done          written last, when everything ran
#
# Every contender runs on the same two null_blk devices (memory_backed=1):
# ORIGIN and EXCEPTION, prefilled so that no run pays for null_blk's page
# allocation.  Contenders, rebuilt from scratch for every run:
#   linear  dm-linear over ORIGIN
#   snapN   snapshot-origin over ORIGIN + snapshot ORIGIN EXCEPTION N <chunk>
#   snapP   the same with a persistent (P) snapshot
#   fleece  fleece over ORIGIN + fleece-view on it with EXCEPTION
# Nothing here judges a number: bench/report.py does the arithmetic.
set -u
out=${1:?usage: guest.sh OUTDIR}
# shellcheck disable=SC1091
. "$out/bench.env"

export DM_DISABLE_UDEV=1 HOME=/tmp/home LC_ALL=C
mkdir -p "$HOME" "$out/fio" "$out/slabinfo"
work=/tmp/bench
mkdir -p "$work"
: >"$out/runs.tsv"
: >"$out/mem.tsv"
: >"$out/guest.log"
t_start=$EPOCHREALTIME

log() {
	local t
	t=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%7.1f", b - a }')
	echo "[$t] $*" >>"$out/guest.log"
	echo "[$t] $*" >>"$out/progress.log"
}

die() {
	log "FATAL: $*"
	echo "$*" >"$out/fatal"
	exit 1
}

# ---- modules and devices --------------------------------------------------

modprobe -q configfs
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
modprobe dm-mod || die "modprobe dm-mod failed"
modprobe dm-snapshot || die "modprobe dm-snapshot failed"
modprobe dm-zero || die "modprobe dm-zero failed"
modprobe dm-bufio || die "modprobe dm-bufio failed"
ko=${FLEECE_KO:-$SRC/build/$(uname -r)/dm-fleece.ko}
[ -e "$ko" ] || die "$ko missing"
if [ ! -d /sys/module/dm_fleece ]; then
	insmod "$ko" || die "insmod $ko failed"
fi
dmsetup targets | grep -q '^fleece-view' || die "fleece-view target not registered"
modprobe null_blk nr_devices=0 || die "modprobe null_blk failed"
[ -d /sys/kernel/config/nullb ] || die "null_blk has no configfs interface"
echo fleece >"$out/module-loaded"

# nullb_create NAME SIZE_MB MODE: a memory-backed null_blk disk; prints /dev/X.
# MODE mem: completion in softirq, no added latency.  MODE ssd: completion
# from a timer after SSD_NSEC ns (irqmode=2), to model a device that takes
# time per I/O.
nullb_create() {
	local name=$1 mb=$2 mode=$3 d=/sys/kernel/config/nullb/$1 disk
	mkdir "$d" || return 1
	echo "$mb" >"$d/size"
	echo 1 >"$d/memory_backed"
	echo 512 >"$d/blocksize"
	# Discards free the backing pages: the discard workload needs them.
	echo 1 >"$d/discard" 2>/dev/null
	if [ "$mode" = ssd ]; then
		echo 2 >"$d/irqmode"
		echo "$SSD_NSEC" >"$d/completion_nsec"
	fi
	echo 1 >"$d/power" || return 1
	# 6.1 names the disk after the configfs directory, others nullb<index>.
	if [ -e "/sys/block/$name" ]; then
		disk=$name
	else
		disk=nullb$(cat "$d/index")
	fi
	[ -b "/dev/$disk" ] || mknod "/dev/$disk" b $(tr : ' ' <"/sys/block/$disk/dev")
	echo "/dev/$disk"
}

nullb_remove() {
	local d=/sys/kernel/config/nullb/$1
	[ -d "$d" ] || return 0
	echo 0 >"$d/power"
	rmdir "$d"
}

ORIG= EXC= META= ORIG_SYS= EXC_SYS=
devices_up() {
	local mode=$1 t0=$EPOCHREALTIME
	ORIG=$(nullb_create benchorig "$ORIGIN_MB" "$mode") || die "cannot create the origin null_blk"
	EXC=$(nullb_create benchexc "$EXC_MB" "$mode") || die "cannot create the exception null_blk"
	META=$(nullb_create benchmeta 64 "$mode") || die "cannot create the metadata null_blk"
	ORIG_SYS=/sys/block/${ORIG#/dev/}
	EXC_SYS=/sys/block/${EXC#/dev/}
	# Allocate every backing page now: no contender pays for it later.
	dd if=/dev/zero of="$ORIG" bs=1M oflag=direct status=none 2>/dev/null
	dd if=/dev/zero of="$EXC" bs=1M oflag=direct status=none 2>/dev/null
	SECTORS=$(blockdev --getsz "$ORIG")
	{
		echo "mode=$mode origin=$ORIG exception=$EXC origin_mb=$ORIGIN_MB exception_mb=$EXC_MB"
		for f in irqmode completion_nsec memory_backed blocksize queue_mode hw_queue_depth submit_queues; do
			printf '  %s=%s' "$f" "$(cat /sys/kernel/config/nullb/benchorig/$f 2>/dev/null)"
		done
		echo
	} >>"$out/env.txt"
	log "devices ($mode): $ORIG + $EXC, ${ORIGIN_MB}+${EXC_MB} MiB, prefilled in $(since "$t0")s"
}

devices_down() {
	teardown
	nullb_remove benchorig
	nullb_remove benchexc
	nullb_remove benchmeta
}

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# ---- contenders -----------------------------------------------------------

DMNAMES="bench-fv bench-ss bench-fo bench-so bench-lin bench-big bench-era"

teardown() {
	local n have
	have=" $(dmsetup ls 2>/dev/null | awk '{print $1}' | tr '\n' ' ') "
	for n in $DMNAMES; do
		[[ $have == *" $n "* ]] || continue
		dmsetup remove --retry "$n" >/dev/null 2>&1 ||
			{ log "cannot remove $n"; dmsetup remove --force "$n" >/dev/null 2>&1; }
	done
}

dmcreate() {
	local name=$1 table=$2
	if ! dmsetup create "$name" --table "$table" 2>"$work/dm.err"; then
		log "dmsetup create $name '$table' failed: $(tr '\n' ' ' <"$work/dm.err")"
		return 1
	fi
	# libdevmapper makes the node itself with DM_DISABLE_UDEV=1.
	[ -b "/dev/mapper/$name" ] || dmsetup mknodes "$name" >/dev/null 2>&1
	[ -b "/dev/mapper/$name" ]
}

# setup CONTENDER CHUNK_SECTORS [noview]: sets WDEV (where writes go), RDEV
# (the device that reads the image: the view, the snapshot, or linear
# itself) and STATUS_DEV (whose status line is recorded).
WDEV= RDEV= STATUS_DEV= CONTENDER=
setup() {
	local c=$1 chunk=$2 noview=${3:-}
	teardown
	CONTENDER=$c WDEV= RDEV= STATUS_DEV=
	case $c in
	linear)
		dmcreate bench-lin "0 $SECTORS linear $ORIG 0" || return 1
		WDEV=/dev/mapper/bench-lin RDEV=$WDEV
		;;
	snapN | snapP)
		# A zeroed first chunk: a P store must not find an old header.
		dd if=/dev/zero of="$EXC" bs=$((chunk * 512)) count=1 oflag=direct status=none || return 1
		# The snapshot first: snapshot-origin learns the chunk size it must
		# split writes at when it resumes (LVM suspends and resumes the
		# origin for that).  Created the other way round, a write that
		# spans chunks gets only its first chunk copied.
		if [ -z "$noview" ]; then
			dmcreate bench-ss "0 $SECTORS snapshot $ORIG $EXC ${c#snap} $chunk" || return 1
			RDEV=/dev/mapper/bench-ss STATUS_DEV=bench-ss
		fi
		dmcreate bench-so "0 $SECTORS snapshot-origin $ORIG" || return 1
		WDEV=/dev/mapper/bench-so
		if [ -n "$noview" ]; then RDEV=$WDEV; fi
		;;
	fleecetrack)
		# Change tracking on a fresh metadata device, one bitmap.
		dd if=/dev/zero of="$META" bs=1M count=1 oflag=direct status=none || return 1
		dmcreate bench-fo "0 $SECTORS fleece $ORIG $chunk 4 metadata $META track_block $TRACK_SECTORS" ||
			return 1
		dmsetup message bench-fo 0 bitmap_add bench || return 1
		WDEV=/dev/mapper/bench-fo RDEV=$WDEV STATUS_DEV=bench-fo
		;;
	era)
		dd if=/dev/zero of="$META" bs=1M count=1 oflag=direct status=none || return 1
		dmcreate bench-era "0 $SECTORS era $META $ORIG $TRACK_SECTORS" || return 1
		WDEV=/dev/mapper/bench-era RDEV=$WDEV STATUS_DEV=
		;;
	fleece | fleececopy)
		if [ "$c" = fleececopy ]; then
			dmcreate bench-fo "0 $SECTORS fleece $ORIG $chunk 2 discard_policy copy" || return 1
		else
			dmcreate bench-fo "0 $SECTORS fleece $ORIG $chunk" || return 1
		fi
		WDEV=/dev/mapper/bench-fo RDEV=$WDEV STATUS_DEV=bench-fo
		[ -n "$noview" ] && return 0
		dmcreate bench-fv "0 $SECTORS fleece-view /dev/mapper/bench-fo $EXC" || return 1
		RDEV=/dev/mapper/bench-fv STATUS_DEV=bench-fv
		;;
	*) return 1 ;;
	esac
}

LAST_STATUS=
status_line() {
	[ -n "$STATUS_DEV" ] || { echo -; return; }
	if [ -n "$LAST_STATUS" ]; then
		echo "$LAST_STATUS" | cut -d' ' -f3-
		return
	fi
	dmsetup status "$STATUS_DEV" 2>/dev/null | cut -d' ' -f3- || echo "status-failed"
}

# Copies finish after the writes they held (the old data may still be on
# its way to the exception device): wait for them before reading counters.
wait_idle() {
	local i st
	LAST_STATUS=
	[[ $CONTENDER == fleece* ]] && [ -n "$STATUS_DEV" ] || return 0
	for i in $(seq 1 300); do
		st=$(dmsetup status "$STATUS_DEV" 2>/dev/null) || return 0
		# <start> <len> <target> <state> <chunk> <chunks> <copied> <released>
		# <slots> <in flight> <waiting> <delayed> <error>
		set -- $st
		if [ "${10:-0}" = 0 ] && [ "${11:-0}" = 0 ]; then
			LAST_STATUS=$st
			return 0
		fi
		sleep 0.1
	done
	log "copies still in flight after 30s: $st"
}

# read_stats: "<origin rd sectors> <origin wr sectors> <exc rd> <exc wr>"
read_stats() {
	local a b
	read -r _ _ a _ _ _ b _ <"$ORIG_SYS/stat"
	echo -n "$a $b "
	read -r _ _ a _ _ _ b _ <"$EXC_SYS/stat"
	echo "$a $b"
}

# ---- running fio ------------------------------------------------------------

MODE= REP=0 NRUN=0 NFAIL=0

# record WORKLOAD CHUNK_KB KIND FIOFILE RC STATS_BEFORE STATS_AFTER STATUS
# Columns of runs.tsv (tab separated):
#   mode workload contender chunk_kb rep kind fio_json rc
#   orig_rd orig_wr exc_rd exc_wr (sectors moved during the run) status
record() {
	local w=$1 ckb=$2 kind=$3 f=$4 rc=$5 b=($6) a=($7) st=$8
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$MODE" "$w" "$CONTENDER" "$ckb" "$REP" "$kind" "${f#"$out"/}" "$rc" \
		$((a[0] - b[0])) $((a[1] - b[1])) $((a[2] - b[2])) $((a[3] - b[3])) "$st" \
		>>"$out/runs.tsv"
}

# runfio WORKLOAD CHUNK_KB KIND FIO-ARGS...: one measured fio run against the
# current contender, with device counters and status around it.  Skipped
# when "WORKLOAD:KIND" or "MODE:WORKLOAD:KIND" is in SKIP_KINDS.
runfio() {
	local w=$1 ckb=$2 kind=$3 f before after rc=0 t0=$EPOCHREALTIME
	shift 3
	skipped "$w" "$kind" && return 0
	NRUN=$((NRUN + 1))
	f=$out/fio/$(printf '%04d' "$NRUN")-$MODE-$w-$CONTENDER-$ckb-$kind-r$REP.json
	before=$(read_stats)
	# --thread and --disk_util=0: a second less of fio start-up under TCG.
	timeout $((RUNTIME * 3 + 120)) fio --output-format=json --output="$f" --direct=1 \
		--thread --disk_util=0 --randrepeat=1 "$@" >"$work/fio.err" 2>&1 || rc=$?
	wait_idle
	after=$(read_stats)
	record "$w" "$ckb" "$kind" "$f" "$rc" "$before" "$after" "$(status_line)"
	if [ "$rc" != 0 ]; then
		NFAIL=$((NFAIL + 1))
		log "fio failed (rc $rc): $w $CONTENDER ${ckb}K $kind: $(tail -n 3 "$work/fio.err" | tr '\n' ' ')"
	fi
	echo "    $w $CONTENDER ${ckb}K $kind rep $REP: $(since "$t0")s rc=$rc" >>"$out/guest.log"
}

skipped() {
	[[ " $SKIP_KINDS " == *" $1:$2 "* || " $SKIP_KINDS " == *" $MODE:$1:$2 "* ]]
}

# setup_or_log CONTENDER CHUNK [noview]: setup, or record a failed run.
setup_or_log() {
	if setup "$@"; then
		return 0
	fi
	NFAIL=$((NFAIL + 1))
	log "setup of $1 (chunk $2 sectors${3:+, $3}) failed"
	printf '%s\tsetup\t%s\t%s\t%s\tsetup\t-\t1\t0\t0\t0\t0\tsetup failed\n' \
		"$MODE" "$1" $(($2 / 2)) "$REP" >>"$out/runs.tsv"
	teardown
	return 1
}

# The replay log of the first-write workload for CHUNK_KB: one 4 KiB write
# at a random 4 KiB-aligned place in each of up to W1_MAX_IOS chunks of the
# first REGION_MB MiB, chunks in random order, so no write ever lands in a
# chunk copied before.  replay_redirect points it at the contender.
make_replay_log() {	# make_replay_log CHUNK_KB [REGION_MB MAX_IOS FILE]
	local ckb=$1
	python3 - "${4:-$work/w1-$ckb.iolog}" "$ckb" "${2:-$REGION_MB}" "${3:-$W1_MAX_IOS}" <<'PY'
import random, sys
path, ckb, region_mb, max_ios = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(20260 + ckb + max_ios)
chunk = ckb * 1024
nchunks = region_mb * 1024 * 1024 // chunk
picked = rnd.sample(range(nchunks), min(nchunks, max_ios))
per = chunk // 4096
with open(path, "w") as f:
    f.write("fio version 2 iolog\n/dev/bench-target add\n/dev/bench-target open\n")
    f.write("".join("/dev/bench-target write %d 4096\n" % (c * chunk + rnd.randrange(per) * 4096)
                    for c in picked))
    f.write("/dev/bench-target close\n")
PY
}

rotate() {	# rotate N WORD...: the words, starting at index N mod count
	local n=$1
	shift
	local a=("$@") i
	for ((i = 0; i < ${#a[@]}; i++)); do
		echo -n "${a[(i + n) % ${#a[@]}]} "
	done
}

# ---- workloads ----------------------------------------------------------------

RT=(--time_based --runtime="$RUNTIME")

# Workload 4: no snapshot; fleece is a pass-through, compared with linear.
w_passthrough() {
	local c ckb=$((DEFAULT_CHUNK / 2))
	for c in $(rotate "$REP" linear fleece); do
		setup_or_log "$c" "$DEFAULT_CHUNK" noview || continue
		runfio passthrough "$ckb" randwrite-qd32 --name=pt --filename="$WDEV" --rw=randwrite \
			--bs=4k --ioengine=libaio --iodepth=32 --size="${REGION_MB}M" "${RT[@]}"
		runfio passthrough "$ckb" randread-qd32 --name=pt --filename="$WDEV" --rw=randread \
			--bs=4k --ioengine=libaio --iodepth=32 --size="${REGION_MB}M" "${RT[@]}"
		runfio passthrough "$ckb" randwrite-qd1 --name=pt --filename="$WDEV" --rw=randwrite \
			--bs=4k --ioengine=psync --size="${REGION_MB}M" "${RT[@]}"
		runfio passthrough "$ckb" seqwrite-1m --name=pt --filename="$WDEV" --rw=write \
			--bs=1M --ioengine=psync --size="${REGION_MB}M" "${RT[@]}"
	done
	teardown
}

# Workloads 1 and 6: first writes, 4 KiB random, one per untouched chunk.
# A fresh snapshot for every run.  linear runs the same offsets.
w_firstwrite() {
	local ckb=$1 chunk=$(($1 * 2)) c log=$work/w1-$1.iolog
	for c in $(rotate "$REP" linear snapN snapP fleece); do
		skipped firstwrite lat-qd1 || setup_or_log "$c" "$chunk" || continue
		skipped firstwrite lat-qd1 || runfio firstwrite "$ckb" lat-qd1 --name=fw --read_iolog="$log" \
			--replay_redirect="$WDEV" --replay_no_stall=1 --ioengine=psync --runtime="$RUNTIME"
		setup_or_log "$c" "$chunk" || continue
		runfio firstwrite "$ckb" iops-qd32 --name=fw --read_iolog="$log" \
			--replay_redirect="$WDEV" --replay_no_stall=1 --ioengine=libaio --iodepth=32 \
			--runtime="$RUNTIME"
	done
	teardown
}

# Workloads 3 and 6: first writes, 1 MiB sequential from sector 0.
w_firstwrite_seq() {
	local ckb=$1 chunk=$(($1 * 2)) c
	for c in $(rotate "$REP" linear snapN snapP fleece); do
		setup_or_log "$c" "$chunk" || continue
		runfio firstwrite-seq "$ckb" seqwrite-1m --name=fws --filename="$WDEV" --rw=write \
			--bs=1M --ioengine=psync --size="${REGION_MB}M" --runtime="$RUNTIME"
	done
	teardown
}

# Workload 2: steady state.  Every chunk of the first STEADY_MB MiB is
# copied first (1 MiB sequential writes, not measured), then the same 4 KiB
# random writes run over that region only.
w_steady() {
	local ckb=$((DEFAULT_CHUNK / 2)) c
	for c in $(rotate "$REP" linear snapN snapP fleece); do
		setup_or_log "$c" "$DEFAULT_CHUNK" || continue
		dd if=/dev/zero of="$WDEV" bs=1M count="$STEADY_MB" oflag=direct status=none
		wait_idle
		runfio steady "$ckb" lat-qd1 --name=st --filename="$WDEV" --rw=randwrite \
			--bs=4k --ioengine=psync --size="${STEADY_MB}M" "${RT[@]}"
		runfio steady "$ckb" iops-qd32 --name=st --filename="$WDEV" --rw=randwrite \
			--bs=4k --ioengine=libaio --iodepth=32 --size="${STEADY_MB}M" "${RT[@]}"
	done
	teardown
}

# Workload 5: 1 MiB sequential reads of the image (linear: of the device
# itself), idle, then while 4 KiB random writes (psync, LOAD_IOPS a second
# for every contender) run on the origin.
w_viewread() {
	local ckb=$((DEFAULT_CHUNK / 2)) c
	for c in $(rotate "$REP" linear snapN snapP fleece); do
		skipped viewread idle || setup_or_log "$c" "$DEFAULT_CHUNK" || continue
		runfio viewread "$ckb" idle --name=reader --filename="$RDEV" --rw=read \
			--bs=1M --ioengine=libaio --iodepth=4 --size="${REGION_MB}M" "${RT[@]}"
		setup_or_log "$c" "$DEFAULT_CHUNK" || continue
		runfio viewread "$ckb" loaded "${RT[@]}" \
			--name=reader --filename="$RDEV" --rw=read --bs=1M --ioengine=libaio \
			--iodepth=4 --size="${REGION_MB}M" \
			--name=writer --filename="$WDEV" --rw=randwrite --bs=4k --ioengine=psync \
			--rate_iops="${LOAD_IOPS:-100}" --size="${REGION_MB}M"
	done
	teardown
}

# Workload 7: first writes while the backup releases the whole image.  The
# origin is a RELEASE_GB GiB dm-zero area followed by the null_blk disk, so
# that a release of the zero area walks millions of 4 KiB chunks while the
# first writes (4 KiB random, QD1, each to an untouched chunk) go to the
# disk.  fleece only: dm-snapshot has no release.  The p99 of the first
# writes with the release running, against the same without it, shows
# whether a large release holds them back.
w_release() {
	local ckb=$((DEFAULT_CHUNK / 2)) kind tail=$((RELEASE_GB * 2097152)) pid
	for kind in $(rotate "$REP" idle releasing); do
		teardown
		CONTENDER=fleece WDEV= RDEV= STATUS_DEV= pid=
		if ! dmcreate bench-big "0 $tail zero
$tail $SECTORS linear $ORIG 0" ||
			! dmcreate bench-fo "0 $((tail + SECTORS)) fleece /dev/mapper/bench-big $DEFAULT_CHUNK" ||
			! dmcreate bench-fv "0 $((tail + SECTORS)) fleece-view /dev/mapper/bench-fo $EXC"; then
			NFAIL=$((NFAIL + 1))
			log "setup of the release workload failed"
			continue
		fi
		WDEV=/dev/mapper/bench-fo RDEV=/dev/mapper/bench-fv STATUS_DEV=bench-fv
		rm -f "$work/release-stop"
		if [ "$kind" = releasing ]; then
			# Again and again: a second release of released chunks walks them
			# all the same.
			(while [ ! -e "$work/release-stop" ]; do
				dmsetup message bench-fv 0 release 0 "$tail" || break
			done) &
			pid=$!
		fi
		runfio release "$ckb" "lat-qd1-$kind" --name=rel --filename="$WDEV" --rw=randwrite \
			--bs=4k --ioengine=psync --offset=$((tail * 512)) --size="${REGION_MB}M" "${RT[@]}"
		touch "$work/release-stop"
		[ -n "$pid" ] && wait "$pid"
	done
	teardown
}

# Workload 8: a discard of the whole device during a snapshot, as an fstrim
# of an empty file system sends it (1 MiB trims).  fleece with its
# default discard_policy (defer) and with copy; linear for the time alone.
# The status after the run gives the exception slots it cost.  dm-snapshot's
# snapshot-origin takes no discards at all: that is recorded, not run.
# Discards free null_blk's backing pages, so they are allocated again last.
w_discard() {
	local ckb=$((DEFAULT_CHUNK / 2)) c sys
	for c in $(rotate "$REP" linear snapN fleece fleececopy); do
		setup_or_log "$c" "$DEFAULT_CHUNK" || continue
		# The node may be a plain node (mknodes), not a link: go by number.
		sys=/sys/dev/block/$(printf '%d:%d' "0x$(stat -c %t "$WDEV")" "0x$(stat -c %T "$WDEV")")
		if [ "$(cat "$sys/queue/discard_max_bytes" 2>/dev/null || echo 0)" = 0 ]; then
			echo "$MODE $c" >>"$out/discard-unsupported"
			log "$c: the device takes no discards ($WDEV)"
			continue
		fi
		runfio discard "$ckb" trim-1m --name=trim --filename="$WDEV" --rw=trim \
			--bs=1M --ioengine=psync
	done
	teardown
	dd if=/dev/zero of="$ORIG" bs=1M oflag=direct status=none 2>/dev/null
}

# Workload 9: change tracking, against dm-era at the same block size
# (TRACK_SECTORS), no snapshot.  dirty: 4K random writes to blocks already
# marked (every block of the region written first, not measured), against an
# untracked fleece.  firstgen: one 4K write per tracking block of a fresh
# generation (new metadata), each needing a commit, QD32 and QD1.
w_tracking() {
	local tkb=$((TRACK_SECTORS / 2)) c log=$work/w9.iolog
	[ -e "$log" ] || make_replay_log "$tkb" "$REGION_MB" "$W1_MAX_IOS" "$log"
	for c in $(rotate "$REP" fleece fleecetrack era); do
		setup_or_log "$c" "$DEFAULT_CHUNK" noview || continue
		dd if=/dev/zero of="$WDEV" bs=1M count="$REGION_MB" oflag=direct status=none
		runfio tracking "$tkb" dirty-qd32 --name=tr --filename="$WDEV" --rw=randwrite \
			--bs=4k --ioengine=libaio --iodepth=32 --size="${REGION_MB}M" "${RT[@]}"
		[ "$c" = fleece ] && continue
		setup_or_log "$c" "$DEFAULT_CHUNK" noview || continue
		runfio tracking "$tkb" firstgen-qd32 --name=tr --read_iolog="$log" \
			--replay_redirect="$WDEV" --replay_no_stall=1 --ioengine=libaio --iodepth=32 \
			--runtime="$RUNTIME"
		setup_or_log "$c" "$DEFAULT_CHUNK" noview || continue
		runfio tracking "$tkb" firstgen-qd1 --name=tr --read_iolog="$log" \
			--replay_redirect="$WDEV" --replay_no_stall=1 --ioengine=psync --runtime="$RUNTIME"
	done
	teardown
}

# Kernel memory per copied chunk: meminfo (after dropping caches) before the
# snapshot, after creating it, after copying MEM_MB MiB worth of chunks, and
# after removing it.
meminfo_line() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	# Let the per-cpu vmstat deltas fold into the global counters.
	sleep "$MEM_SETTLE"
	awk '/^(MemTotal|MemFree|Buffers|Cached|Shmem|Slab|SReclaimable|SUnreclaim|VmallocUsed|Percpu|KernelStack|PageTables):/ {
		sub(":", "", $1); printf "%s=%s ", $1, $2 }' /proc/meminfo
	# Free pages including those on the per-cpu lists, which MemFree leaves
	# out: otherwise a few MB of noise.
	awk '$1 == "pages" && $2 == "free" { f += $3 } $1 == "count:" { p += $2 }
		END { printf "FreeBuddy=%d FreePcp=%d", f * 4, p * 4 }' /proc/zoneinfo
}

# Two patterns, one after the other on the same snapshot: 4 KiB writes to
# MEM_RAND_CHUNKS chunks in random order within the first MEM_RAND_MB MiB
# (no two copies of neighbouring chunks in a row: dm-snapshot cannot merge
# its exceptions), then 1 MiB sequential writes over the next MEM_MB MiB
# (dm-snapshot merges runs of consecutive exceptions into one entry).
w_memory() {
	local ckb=$((MEM_CHUNK / 2)) c base setup_m rand seq removed st_rand st_seq tag
	for c in $(rotate "$REP" snapN snapP fleece); do
		teardown
		base=$(meminfo_line)
		setup_or_log "$c" "$MEM_CHUNK" || continue
		setup_m=$(meminfo_line)
		tag=$MODE-$c-$ckb-r$REP
		cp /proc/slabinfo "$out/slabinfo/$tag-0-setup" 2>/dev/null
		timeout 600 fio --name=mem --read_iolog="$work/mem.iolog" --replay_redirect="$WDEV" \
			--replay_no_stall=1 --ioengine=libaio --iodepth=32 --direct=1 --thread \
			--disk_util=0 --output="$work/mem-fio.out" >/dev/null 2>&1 ||
			log "memory: random writes on $c failed"
		wait_idle
		st_rand=$(status_line)
		rand=$(meminfo_line)
		cp /proc/slabinfo "$out/slabinfo/$tag-1-random" 2>/dev/null
		dd if=/dev/zero of="$WDEV" bs=1M seek="$MEM_RAND_MB" count="$MEM_MB" oflag=direct \
			status=none || log "memory: sequential writes on $c failed"
		wait_idle
		st_seq=$(status_line)
		seq=$(meminfo_line)
		cp /proc/slabinfo "$out/slabinfo/$tag-2-sequential" 2>/dev/null
		teardown
		removed=$(meminfo_line)
		printf '%s\t%s\t%s\t%s\t%s\t%s\tbase %s\tsetup %s\trandom %s\tsequential %s\tremoved %s\t%s\t%s\n' \
			"$MODE" "$c" "$ckb" "$REP" "$MEM_MB" "$SECTORS" \
			"$base" "$setup_m" "$rand" "$seq" "$removed" "$st_rand" "$st_seq" >>"$out/mem.tsv"
		log "  memory $c rep $REP: after random writes: $st_rand; after sequential: $st_seq"
	done
}

# ---- main -------------------------------------------------------------------------

{
	echo "kernel=$(uname -r)"
	echo "cpus=$(nproc) mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
	echo "fio=$(fio --version)"
	echo "dm-fleece=$(modinfo -F version "$ko" 2>/dev/null) srcversion=$(cat /sys/module/dm_fleece/srcversion 2>/dev/null)"
	dmsetup targets | sed 's/^/target /'
} >"$out/env.txt"
log "guest up: $(uname -r), $(nproc) CPUs; QUICK=$QUICK REPS=$REPS RUNTIME=${RUNTIME}s modes=$MODES"

for ckb in $CHUNKS_KB; do
	make_replay_log "$ckb" || die "cannot write the replay log for ${ckb}K chunks"
done
if [[ " $MEM_WORKLOADS " == *" memory "* ]]; then
	make_replay_log $((MEM_CHUNK / 2)) "$MEM_RAND_MB" "$MEM_RAND_CHUNKS" "$work/mem.iolog" ||
		die "cannot write the replay log of the memory probe"
fi

# has WORKLOAD: whether this mode runs WORKLOAD (MEM_WORKLOADS, SSD_WORKLOADS).
# Past TIME_BUDGET seconds (QUICK: a slow or busy host), the workloads not
# started yet are skipped and listed in OUTDIR/skipped-for-time.
over_budget() {
	[ "${TIME_BUDGET:-0}" -gt 0 ] &&
		awk -v a="$t_start" -v b="$EPOCHREALTIME" -v l="$TIME_BUDGET" 'BEGIN { exit !(b - a > l) }'
}

has() {
	local list
	if [ "$MODE" = ssd ]; then list=$SSD_WORKLOADS; else list=$MEM_WORKLOADS; fi
	[[ " $list " == *" $1 "* ]] || return 1
	if over_budget; then
		echo "$MODE $1" >>"$out/skipped-for-time"
		log "over the time budget (${TIME_BUDGET}s): $MODE $1 skipped"
		return 1
	fi
	return 0
}

for MODE in $MODES; do
	if over_budget; then
		if [ "$MODE" = ssd ]; then list=$SSD_WORKLOADS; else list=$MEM_WORKLOADS; fi
		for w in $list; do echo "$MODE $w" >>"$out/skipped-for-time"; done
		log "over the time budget (${TIME_BUDGET}s): mode $MODE skipped"
		continue
	fi
	devices_up "$MODE"
	for ((REP = 1; REP <= REPS; REP++)); do
		if has passthrough; then
			log "mode $MODE rep $REP/$REPS: pass-through"
			w_passthrough
		fi
		if has firstwrite; then
			for ckb in $CHUNKS_KB; do
				[ "$MODE" = ssd ] && [ "$ckb" != "$((DEFAULT_CHUNK / 2))" ] && continue
				log "mode $MODE rep $REP/$REPS: first write 4K random, ${ckb}K chunks"
				w_firstwrite "$ckb"
			done
		fi
		if has firstwrite-seq; then
			for ckb in $SEQ_CHUNKS_KB; do
				log "mode $MODE rep $REP/$REPS: first write 1M sequential, ${ckb}K chunks"
				w_firstwrite_seq "$ckb"
			done
		fi
		if has steady; then
			log "mode $MODE rep $REP/$REPS: steady state"
			w_steady
		fi
		if has viewread; then
			log "mode $MODE rep $REP/$REPS: view reads"
			w_viewread
		fi
		if has release; then
			log "mode $MODE rep $REP/$REPS: first writes during a whole-device release"
			w_release
		fi
		if has discard; then
			log "mode $MODE rep $REP/$REPS: a discard of the region during a snapshot"
			w_discard
		fi
		if has tracking; then
			log "mode $MODE rep $REP/$REPS: change tracking against dm-era"
			w_tracking
		fi
	done
	if has memory; then
		for ((REP = 1; REP <= MEM_REPS; REP++)); do
			log "mode $MODE: memory per copied chunk, rep $REP/$MEM_REPS"
			w_memory
		done
	fi
	devices_down
done

log "done: $NRUN fio runs, $NFAIL failures"
echo "$NRUN $NFAIL" >"$out/done"
