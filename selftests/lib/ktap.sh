# SPDX-License-Identifier: GPL-2.0-only
# shellcheck shell=bash
#
# ktap.sh: TAP output and housekeeping for dm-fleece's shell selftests.
# Source it first thing:
#
#	. "$(dirname "$0")/../lib/ktap.sh"
#
# TAP:
#	ktap_plan N                 "TAP version 13" and "1..N" (optional: with
#	                            no plan, ktap_finish prints the plan last)
#	ktap_ok DESC                "ok N - DESC"
#	ktap_fail DESC              "not ok N - DESC"
#	ktap_skip DESC REASON       "ok N - DESC # SKIP REASON"
#	ktap_result DESC RC         ok when RC is 0, not ok otherwise; returns RC
#	ktap_check DESC CMD [ARG..] run CMD; ok if it exits 0, else not ok with
#	                            its output as diagnostics; returns CMD's status
#	ktap_diag MSG...            "# MSG" (one "# " per line of MSG)
#	ktap_skip_all REASON        nothing can run here: skip the rest, exit 4
#	ktap_bail REASON            "Bail out! REASON", exit 1
#	ktap_finish                 print the plan if none was given and exit:
#	                            1 on any failure or plan mismatch, 4 when
#	                            every point was skipped, else 0
#
# Housekeeping (everything registered is undone when the script exits,
# however it exits; last registered, first undone; safe to call from
# $(...) subshells):
#	fleece_cleanup CMD [ARG..]  run CMD at exit
#	fleece_tmpdir               print a new empty directory (tmpfs), removed at exit
#	fleece_require CMD..        skip all unless every CMD is in PATH
#	fleece_require_root         skip all unless root
#	fleece_modprobe MOD [ARGS]  modprobe or skip all
#	fleece_load                 insmod dm-fleece.ko for this kernel unless loaded
#	fleece_loopdev SIZE [FILE]  print a new loop device over a sparse FILE
#	                            (default: in a fleece_tmpdir), detached at exit
#	fleece_dm_create NAME TABLE print /dev/mapper/NAME after dmsetup create;
#	                            removed at exit (fleece_dm_remove NAME earlier)
#	fleece_dm_remove NAME       dmsetup remove --retry NAME (if it exists)
#	fleece_udev_start           run systemd-udevd for this test (stopped at exit)
#	fleece_stress SHORT LONG    print SHORT, or LONG when STRESS=long
#
# Do not use "set -e" (a failed check must not end the script) and do not
# set an EXIT trap of your own: use fleece_cleanup.
[ -n "${__FLEECE_KTAP_SH:-}" ] && return 0
__FLEECE_KTAP_SH=1

: "${FLEECE_SRC:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
: "${STRESS:=short}"
export FLEECE_SRC STRESS

KTAP_PASS=0
KTAP_FAIL=0
KTAP_SKIP=0
KTAP_COUNT=0
KTAP_PLAN=
__ktap_header_done=

__ktap_header() {
	[ -n "$__ktap_header_done" ] && return
	echo "TAP version 13"
	__ktap_header_done=1
}

ktap_plan() {
	__ktap_header
	KTAP_PLAN=$1
	echo "1..$1"
}

ktap_diag() {
	local line
	while IFS= read -r line; do
		echo "# $line"
	done <<<"$*"
}

ktap_ok() {
	__ktap_header
	KTAP_COUNT=$((KTAP_COUNT + 1))
	KTAP_PASS=$((KTAP_PASS + 1))
	echo "ok $KTAP_COUNT - $*"
}

ktap_fail() {
	__ktap_header
	KTAP_COUNT=$((KTAP_COUNT + 1))
	KTAP_FAIL=$((KTAP_FAIL + 1))
	echo "not ok $KTAP_COUNT - $*"
}

ktap_skip() {
	__ktap_header
	KTAP_COUNT=$((KTAP_COUNT + 1))
	KTAP_SKIP=$((KTAP_SKIP + 1))
	echo "ok $KTAP_COUNT - $1 # SKIP ${2:-}"
}

ktap_result() {
	if [ "$2" -eq 0 ]; then
		ktap_ok "$1"
	else
		ktap_fail "$1"
	fi
	return "$2"
}

ktap_check() {
	local desc=$1 log=$__FLEECE_ROOT/ktap_check.log rc=0
	shift
	mkdir -p "$__FLEECE_ROOT"
	"$@" >"$log" 2>&1 || rc=$?
	if [ "$rc" -eq 0 ]; then
		ktap_ok "$desc"
	else
		[ -s "$log" ] && ktap_diag "$(tail -n 40 "$log")"
		ktap_diag "command failed (exit $rc): $*"
		ktap_fail "$desc"
	fi
	rm -f "$log"
	return "$rc"
}

ktap_skip_all() {
	__ktap_header
	if [ -z "$KTAP_PLAN" ] && [ "$KTAP_COUNT" -eq 0 ]; then
		echo "1..0 # SKIP $*"
		exit 4
	fi
	while [ -n "$KTAP_PLAN" ] && [ "$KTAP_COUNT" -lt "$KTAP_PLAN" ]; do
		ktap_skip "not run" "$*"
	done
	ktap_finish
}

ktap_bail() {
	__ktap_header
	echo "Bail out! $*"
	exit 1
}

ktap_finish() {
	__ktap_header
	local rc=0
	if [ -z "$KTAP_PLAN" ]; then
		echo "1..$KTAP_COUNT"
	elif [ "$KTAP_COUNT" -ne "$KTAP_PLAN" ]; then
		ktap_diag "planned $KTAP_PLAN tests, ran $KTAP_COUNT"
		rc=1
	fi
	[ "$KTAP_FAIL" -gt 0 ] && rc=1
	[ "$rc" -eq 0 ] && [ "$KTAP_PASS" -eq 0 ] && [ "$KTAP_SKIP" -gt 0 ] && rc=4
	exit "$rc"
}

# ---- housekeeping -------------------------------------------------------

# One directory per test script: $$ is the same in $(...) subshells, so
# helpers called there register cleanups in the same place.
__FLEECE_ROOT=${TMPDIR:-/tmp}/fleece-test.$$

fleece_cleanup() {
	mkdir -p "$__FLEECE_ROOT"
	printf '%q ' "$@" >>"$__FLEECE_ROOT/cleanup"
	echo >>"$__FLEECE_ROOT/cleanup"
}

__fleece_run_cleanup() {
	local rc=$? line out
	trap - EXIT
	if [ -s "$__FLEECE_ROOT/cleanup" ]; then
		while IFS= read -r line; do
			out=$(eval "$line" 2>&1) ||
				ktap_diag "cleanup failed: $line${out:+: $out}"
		done < <(tac "$__FLEECE_ROOT/cleanup")
	fi
	rm -rf --one-file-system "$__FLEECE_ROOT"
	exit "$rc"
}
trap __fleece_run_cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

fleece_tmpdir() {
	mkdir -p "$__FLEECE_ROOT" && mktemp -d "$__FLEECE_ROOT/tmp.XXXXXX"
}

fleece_require() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || ktap_skip_all "$c is not installed (make deps)"
	done
}

fleece_require_root() {
	[ "$(id -u)" -eq 0 ] || ktap_skip_all "must run as root"
}

fleece_modprobe() {
	[ -e /proc/modules ] || ktap_skip_all "this kernel cannot load modules: run through 'make check'"
	modprobe "$@" >/dev/null 2>&1 || ktap_skip_all "modprobe $* failed"
}

fleece_load() {
	local ko=${FLEECE_KO:-$FLEECE_SRC/build/$(uname -r)/dm-fleece.ko} d
	[ -d /sys/module/dm_fleece ] && return 0
	[ -e /proc/modules ] || ktap_skip_all "this kernel cannot load modules: run through 'make check'"
	for d in $(modinfo -F depends "$ko" 2>/dev/null | tr , ' '); do
		modprobe "$d" || return 1
	done
	insmod "$ko"
}

fleece_loopdev() {
	local size=$1 file=${2:-} dev
	[ -n "$file" ] || file=$(fleece_tmpdir)/loop.img
	modprobe loop 2>/dev/null
	truncate -s "$size" "$file" || return 1
	dev=$(losetup -f --show "$file") || return 1
	fleece_cleanup losetup -d "$dev"
	echo "$dev"
}

fleece_dm_remove() {
	dmsetup info "$1" >/dev/null 2>&1 || return 0
	dmsetup remove --retry "$1"
}

fleece_dm_create() {
	local name=$1
	shift
	dmsetup create "$name" --table "$*" || return 1
	fleece_cleanup fleece_dm_remove "$name"
	# Without udev (DM_DISABLE_UDEV=1) libdevmapper made the node itself;
	# make sure anyway, for a caller that started udev and raced it.
	[ -b "/dev/mapper/$name" ] || dmsetup mknodes "$name" >/dev/null 2>&1
	echo "/dev/mapper/$name"
}

fleece_udev_stop() {
	udevadm control --exit 2>/dev/null
	export DM_DISABLE_UDEV=1
}

fleece_udev_start() {
	local udevd=/lib/systemd/systemd-udevd
	[ -x "$udevd" ] || ktap_skip_all "systemd-udevd is not installed"
	if ! udevadm control --ping >/dev/null 2>&1; then
		"$udevd" --daemon || return 1
		fleece_cleanup fleece_udev_stop
	fi
	udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
	udevadm settle --timeout=60
	unset DM_DISABLE_UDEV
}

fleece_stress() {
	if [ "$STRESS" = long ]; then
		echo "$2"
	else
		echo "$1"
	fi
}
