# SPDX-License-Identifier: GPL-2.0-only
# shellcheck shell=bash
#
# fleece-target.sh: helpers for the dm-fleece target selftests.  Source it
# after ktap.sh.  Status fields are named after Documentation/device-mapper/
# fleece.rst, in the order the targets emit them.
[ -n "${__FLEECE_TARGET_SH:-}" ] && return 0
__FLEECE_TARGET_SH=1

FLEECE_IO=${FLEECE_SELFTESTS_BIN:-$FLEECE_SRC/build/selftests}/lib/fleece-io

# fleece_field NAME FIELD: one field of the status INFO line of dm device NAME.
fleece_field() {
	local -a f
	read -r -a f <<<"$(dmsetup status "$1")"
	case $2 in
	state) echo "${f[3]}" ;;
	chunk_size) echo "${f[4]}" ;;
	snapshot_chunks) echo "${f[5]}" ;;
	copied) echo "${f[6]}" ;;
	released) echo "${f[7]}" ;;
	slots) echo "${f[8]}" ;;
	slots_used) echo "${f[8]%/*}" ;;
	in_flight) echo "${f[9]}" ;;
	waiting) echo "${f[10]}" ;;
	delayed) echo "${f[11]}" ;;
	error) echo "${f[12]}" ;;
	discard_deferred) echo "${f[13]}" ;;
	discard_dropped) echo "${f[14]}" ;;
	last_error) echo "${f[15]}" ;;
	tracking) echo "${f[16]}" ;;
	track_block) echo "${f[17]}" ;;
	bitmaps) echo "${f[18]}" ;;
	bitmaps_inconsistent) echo "${f[19]}" ;;
	commits) echo "${f[20]}" ;;
	*) echo "fleece_field: unknown field $2" >&2; return 1 ;;
	esac
}

# fleece_extents DEV MESSAGE...: every extent that a paged extents message
# (bitmap_extents NAME, backup_extents) of dm device DEV returns, one
# "start+len" per line, asking again from each "next <sector>".
fleece_extents() {
	local dev=$1 next=0 out w
	shift
	while :; do
		out=$(dmsetup message "$dev" 0 "$@" "$next" 3) || return 1
		for w in $out; do
			case $w in
			end) return 0 ;;
			next) ;;
			*+*) echo "$w" ;;
			*) next=$w ;;
			esac
		done
		[[ $out == *next* ]] || return 1
	done
}

# klog_mark, then klog_new: the kernel log written since the mark (the
# harness reads the whole log after the test, so it must not be cleared).
# The mark is a line of its own in the log, not a line count: once the
# ring buffer is full, the count stays the same while old lines go.
klog_mark() {
	__klog_mark="fleece-selftest-mark-$$-$SRANDOM"
	echo "$__klog_mark" >/dev/kmsg
}
klog_new() { dmesg | awk -v m="$__klog_mark" 'seen { print } index($0, m) { seen = 1 }'; }

# fleece_events NAME: the dm event counter of NAME.
fleece_events() {
	dmsetup info -c --noheadings -o events "$1" | tr -d ' '
}

# fleece_expect_field NAME FIELD VALUE DESC: a TAP point for one field.
fleece_expect_field() {
	local got
	got=$(fleece_field "$1" "$2")
	if [ "$got" = "$3" ]; then
		ktap_ok "$4"
	else
		ktap_fail "$4"
		ktap_diag "$2 of $1 is '$got', expected '$3'; status: $(dmsetup status "$1")"
	fi
}

# fleece_wait_field NAME FIELD VALUE [SECONDS]: wait for a status field.
fleece_wait_field() {
	local i n=$((${4:-10} * 10))
	for ((i = 0; i < n; i++)); do
		[ "$(fleece_field "$1" "$2")" = "$3" ] && return 0
		sleep 0.1
	done
	return 1
}

# fleece_dump_hang DM_NAME...: diagnostics for a hung I/O, as TAP comments
# and in the kernel log (blocked tasks).
fleece_dump_hang() {
	local n p
	for n in "$@"; do
		ktap_diag "status $n: $(dmsetup status "$n" 2>&1)"
	done
	for p in /proc/[0-9]*; do
		grep -qE 'fleece-io|kworker.*fleece|kfleeced' "$p/comm" 2>/dev/null || continue
		ktap_diag "$(cat "$p/comm") $(cat "$p/wchan" 2>/dev/null): $(tr '\n' ' ' <"$p/stack" 2>/dev/null)"
	done
	echo w >/proc/sysrq-trigger 2>/dev/null
}

# fleece_fill DEV [SEED]: fill a block device with pseudo-random data.
fleece_fill() {
	"$FLEECE_IO" fill --dev "$1" --seed "${2:-1}"
}

# fleece_origin NAME DEV CHUNK: create the origin over DEV, print its path.
fleece_origin() {
	local sectors
	sectors=$(blockdev --getsz "$2") || return 1
	fleece_dm_create "$1" "0 $sectors fleece $2 $3"
}

# fleece_view NAME ORIGIN_NAME EXC_DEV [FEATURES...]: create a view.
fleece_view() {
	local name=$1 origin=$2 exc=$3 sectors
	shift 3
	sectors=$(blockdev --getsz "/dev/mapper/$origin") || return 1
	fleece_dm_create "$name" "0 $sectors fleece-view /dev/mapper/$origin $exc${*:+ $*}"
}

# fleece_snapshot_ref DEV FILE: copy DEV into FILE (the reference image).
fleece_snapshot_ref() {
	dd if="$1" of="$2" bs=1M iflag=direct status=none
}

# fleece_write DEV OFFSET LENGTH SEED [SHADOW] [FLAGS]: write LENGTH pseudo-
# random bytes at byte OFFSET (both multiples of 512) in one O_DIRECT write
# (FLAGS adds dd output flags, e.g. dsync for FUA), and the same bytes into
# the SHADOW file, which tracks what the origin should hold.
fleece_write() {
	local dev=$1 off=$2 len=$3 seed=$4 shadow=${5:-} flags=${6:-} data
	data=$(fleece_tmpdir)/data
	openssl enc -aes-128-ctr -nosalt -pass "pass:$seed" -pbkdf2 </dev/zero 2>/dev/null |
		head -c "$len" >"$data"
	dd if="$data" of="$dev" bs="$len" count=1 seek="$off" \
		oflag=direct,seek_bytes${flags:+,$flags} conv=notrunc status=none || return 1
	[ -z "$shadow" ] ||
		dd if="$data" of="$shadow" bs="$len" count=1 seek="$off" \
			oflag=seek_bytes conv=notrunc status=none
}

# fleece_zero_shadow SHADOW OFFSET LENGTH: the shadow of a discard or
# write-zeroes (the test devices read back zeroes after both).
fleece_zero_shadow() {
	dd if=/dev/zero of="$1" bs="$3" count=1 seek="$2" oflag=seek_bytes \
		conv=notrunc status=none
}
