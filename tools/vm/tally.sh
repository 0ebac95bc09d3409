# SPDX-License-Identifier: GPL-2.0-only
# shellcheck shell=bash
#
# tally OUTFILE RC TIMEDOUT HITSFILE: turn one test program's TAP output and
# fate into counts of test points, the same way on the host and in the
# guest.  Sets T_PASS T_FAIL T_SKIP T_VERDICT (PASS|FAIL|SKIP) and T_NOTES
# (an array: one line per failed point the runner adds itself).
#
# Rules (kselftest exit codes: 0 pass, 1 fail, 4 skip):
#   - each top-level "ok"/"not ok" line is one point (tools/vm/tap.awk);
#   - no result line at all: exit 0 is one pass, exit 4 one skip;
#   - a timeout, an exit status other than 0/4 with no failed point, fewer
#     results than planned, "Bail out!", and kernel-log hits each add one
#     failed point.
_tally_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

tally() {
	local out=$1 rc=$2 timedout=$3 hits=${4:-}
	local p f s plan ran bail
	read -r p f s plan ran bail < <(awk -f "$_tally_dir/tap.awk" "$out" 2>/dev/null ||
		echo 0 0 0 -1 0 0)
	T_NOTES=()
	if [ "$timedout" != 0 ]; then
		T_NOTES+=("timed out after ${timedout}s")
		f=$((f + 1))
	elif [ "$ran" -eq 0 ] && [ "$rc" -eq 0 ]; then
		p=1
	elif [ "$ran" -eq 0 ] && [ "$rc" -eq 4 ]; then
		s=1
	elif [ "$rc" -ne 0 ] && [ "$rc" -ne 4 ] && [ "$f" -eq 0 ]; then
		if [ "$rc" -gt 128 ]; then
			T_NOTES+=("exit status $rc (killed by signal $((rc - 128)))")
		else
			T_NOTES+=("exit status $rc")
		fi
		f=$((f + 1))
	fi
	if [ "$timedout" = 0 ] && [ "$plan" -ge 0 ] && [ "$ran" -ne "$plan" ]; then
		T_NOTES+=("planned $plan test points, reported $ran")
		f=$((f + 1))
	fi
	if [ "$bail" = 1 ] && [ "$timedout" = 0 ]; then
		T_NOTES+=("Bail out!")
		[ "$f" -eq 0 ] && f=1
	fi
	if [ -n "$hits" ] && [ -s "$hits" ]; then
		T_NOTES+=("kernel log clean (see diagnostics)")
		f=$((f + 1))
	fi
	T_PASS=$p T_FAIL=$f T_SKIP=$s
	if [ "$f" -gt 0 ]; then
		T_VERDICT=FAIL
	elif [ "$p" -eq 0 ] && [ "$s" -gt 0 ]; then
		T_VERDICT=SKIP
	else
		T_VERDICT=PASS
	fi
}
