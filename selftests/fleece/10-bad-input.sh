#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# Bad table lines and messages are rejected with a whole-sentence error and
# change nothing: hand-written cases for every argument, then a few hundred
# generated ones (mutations of valid lines and random tokens) against both
# targets, then bad messages.  The running snapshot must survive all of it.
# TIMEOUT: 600
. "$(dirname "$0")/../lib/ktap.sh"
. "$(dirname "$0")/../lib/fleece-target.sh"

fleece_require_root
fleece_require dmsetup losetup python3
fleece_load || ktap_bail "cannot load dm-fleece"

tmp=$(fleece_tmpdir)
o=$(fleece_loopdev 16M "$tmp/o.img")
e=$(fleece_loopdev 16M "$tmp/e.img")
tiny=$(fleece_loopdev 32K "$tmp/tiny.img")
fleece_fill "$o" 3
origin=$(fleece_origin bad-o "$o" 128)
fleece_snapshot_ref "$origin" "$tmp/ref"
sectors=$(blockdev --getsz "$o")

# expect_reject DESC TABLE: dmsetup create must fail and the kernel must log
# a whole sentence (capital first, full stop last) as the reason.
rejected=0 accepted=0 unclear=0
expect_reject() {
	local table=$1 log
	klog_mark
	if dmsetup create bad-x --table "$table" >/dev/null 2>&1; then
		accepted=$((accepted + 1))
		ktap_diag "accepted: '$table'"
		dmsetup remove bad-x >/dev/null 2>&1
		return 1
	fi
	rejected=$((rejected + 1))
	dmsetup remove bad-x >/dev/null 2>&1
	log=$(klog_new | grep -E 'fleece(-view)?: ' | grep -v 'error adding target' | tail -n1)
	# device-mapper: table: 254:3: fleece: Invalid chunk size: ... (-EINVAL)
	if ! [[ $log =~ fleece(-view)?:\ [A-Z][^:]*.*\.\ \(-E[A-Z]+\)$ ]]; then
		unclear=$((unclear + 1))
		ktap_diag "unclear reason for '$table': '$log'"
		return 1
	fi
	return 0
}

# Hand-written origin cases.
n0=$rejected
for t in \
	"0 $sectors fleece" \
	"0 $sectors fleece $o" \
	"0 $sectors fleece $o 0" \
	"0 $sectors fleece $o 7" \
	"0 $sectors fleece $o 12" \
	"0 $sectors fleece $o 4096" \
	"0 $sectors fleece $o -128" \
	"0 $sectors fleece $o 128k" \
	"0 $sectors fleece $o 0x80" \
	"0 $sectors fleece $o 99999999999999999999" \
	"0 $sectors fleece /dev/nonexistent 128" \
	"0 $sectors fleece $tmp/o.img 128" \
	"0 $((sectors * 2)) fleece $o 128" \
	"0 $sectors fleece $o 128 1" \
	"0 $sectors fleece $o 128 1 metadata" \
	"0 $sectors fleece $o 128 x" \
	"0 $sectors fleece $o 128 0 extra" \
	"0 $sectors fleece $o 128 2 discard_policy bogus" \
	"0 $sectors fleece $o 128 2 discard_policy" \
	"0 $sectors fleece $o 128 2 discard_mode copy" \
	"0 $sectors fleece $o 128 1 discard_policy" \
	"0 $sectors fleece $o 128 4 discard_policy defer discard_policy copy" \
	"0 $sectors fleece $o 128 2 metadata /dev/nonexistent" \
	"0 $sectors fleece $o 128 2 metadata $o" \
	"0 $sectors fleece $o 128 2 metadata $tiny" \
	"0 $sectors fleece $o 128 2 track_block 7" \
	"0 $sectors fleece $o 128 2 track_block 262144" \
	"0 $sectors fleece $o 128 2 track_block 64k" \
	"0 $sectors fleece $o 128 4 track_block 128 track_block 256" \
	"0 $sectors fleece $o 128 8 discard_policy copy track_block 8 metadata $tiny x y"; do
	expect_reject "$t"
done
[ "$rejected" -eq $((n0 + 30)) ] && [ "$unclear" -eq 0 ]
ktap_result "bad origin tables are rejected with a sentence ($((rejected - n0)) cases)" $?

# expect_reject_multi TABLE: a table with a fleece or fleece-view target and
# any other target.  Both targets are DM_TARGET_SINGLETON, so dm itself
# refuses it, in its own words (not a sentence of ours): "singleton target
# type must appear alone in table" when ours comes second, "target type
# fleece must appear alone in table" when another one follows it.
multi_ok=0
expect_reject_multi() {
	klog_mark
	if dmsetup create bad-x --table "$1" >/dev/null 2>&1; then
		ktap_diag "accepted: '$1'"
		dmsetup remove bad-x >/dev/null 2>&1
		return 1
	fi
	dmsetup remove bad-x >/dev/null 2>&1
	if ! klog_new | grep -q "must appear alone in table"; then
		ktap_diag "not refused as a singleton: '$1': '$(klog_new | grep -E 'device-mapper' | tail -n1)'"
		return 1
	fi
	multi_ok=$((multi_ok + 1))
}

# Multi-target tables, both orders, both targets.  An origin that comes
# first needs a free origin device, or its constructor would refuse it for
# another reason before dm looks at the next target.
free=$(fleece_loopdev 16M "$tmp/free.img")
expect_reject_multi "0 8 linear $o 0
8 $((sectors - 8)) fleece $o 128"
expect_reject_multi "0 $((sectors - 8)) fleece $free 128
$((sectors - 8)) 8 zero"
expect_reject_multi "0 8 zero
8 $((sectors - 8)) fleece-view $origin $e"
expect_reject_multi "0 $((sectors - 8)) fleece-view $origin $e
$((sectors - 8)) 8 zero"
[ "$multi_ok" -eq 4 ]
ktap_result "tables with another target next to fleece or fleece-view are refused as singletons (4 cases)" $?

# Hand-written view cases (bad-o is a live fleece origin).
n0=$rejected
for t in \
	"0 $sectors fleece-view" \
	"0 $sectors fleece-view $origin" \
	"0 $sectors fleece-view $o $e" \
	"0 $sectors fleece-view /dev/nonexistent $e" \
	"0 $sectors fleece-view $origin /dev/nonexistent" \
	"0 $sectors fleece-view $origin $o" \
	"0 $sectors fleece-view $origin $origin" \
	"0 $sectors fleece-view $origin $tiny 0" \
	"0 $((sectors * 2)) fleece-view $origin $e" \
	"0 $sectors fleece-view $origin $e 1" \
	"0 $sectors fleece-view $origin $e 1 cbw_error" \
	"0 $sectors fleece-view $origin $e 2 cbw_error sometimes" \
	"0 $sectors fleece-view $origin $e 2 cbw_timeout_ms -5" \
	"0 $sectors fleece-view $origin $e 2 cbw_timeout_ms 99999999" \
	"0 $sectors fleece-view $origin $e 2 max_copies 0" \
	"0 $sectors fleece-view $origin $e 2 max_copies 5000" \
	"0 $sectors fleece-view $origin $e 2 bogus 1" \
	"0 $sectors fleece-view $origin $e 7 a b c d e f g" \
	"0 $sectors fleece-view $origin $e 2 cbw_error break_write extra"; do
	expect_reject "$t"
done
[ "$rejected" -eq $((n0 + 19)) ] && [ "$unclear" -eq 0 ]
ktap_result "bad view tables are rejected with a sentence ($((rejected - n0)) cases)" $?

# A working view, then a second one on the same origin.
view=$(fleece_view bad-v bad-o "$e" 2 cbw_error break_write)
ktap_result "a valid view is accepted" $?
n0=$rejected
expect_reject "0 $sectors fleece-view $origin $tiny"
ktap_result "a second view of the same origin is refused" $?
klog_new | grep -q "already has a view" || ktap_diag "no 'already has a view' reason logged"
expect_reject "0 $sectors fleece $o 256"
[ $((rejected - n0)) -eq 2 ]
ktap_result "a second fleece device on the same origin device is refused" $?

# Reloading the origin with another chunk size is refused while the view lives.
dmsetup reload bad-o --table "0 $sectors fleece $o 256" >/dev/null 2>&1
ktap_result "reloading the origin with another chunk size is refused while a view is attached" $((! $?))
dmsetup clear bad-o >/dev/null 2>&1

# Generated cases: mutate valid lines token by token, plus random tokens.
python3 - "$o" "$e" "$origin" "$sectors" >"$tmp/fuzz" <<'PY'
import random, sys
o, e, origin, n = sys.argv[1:5]
rnd = random.Random(20261122)
junk = ["", "0", "-1", "1", "7", "8", "9", "128", "2048", "4096", "4294967296",
        "18446744073709551616", "abc", "0x10", "1e3", "%s", "\\", "'", "break_write",
        "cbw_error", "cbw_timeout_ms", "max_copies", "/dev/null", "/dev/zero", o, e,
        origin, "/dev/mapper/nonexistent", "99:99", "7:0", "-", "  ", "+1",
        "metadata", "track_block", "discard_policy", "131072", "262144"]
valid = [f"fleece {o} 128", f"fleece-view {origin} {e}",
         f"fleece {o} 128 4 discard_policy copy track_block 256",
         f"fleece-view {origin} {e} 2 cbw_error break_snapshot",
         f"fleece-view {origin} {e} 4 cbw_timeout_ms 100 max_copies 4"]
out = set()
while len(out) < 60:
    toks = rnd.choice(valid).split()
    op = rnd.randrange(4)
    i = rnd.randrange(1, len(toks)) if len(toks) > 1 else 0
    if op == 0:
        toks[i] = rnd.choice(junk)
    elif op == 1:
        del toks[i]
    elif op == 2:
        toks.insert(i, rnd.choice(junk))
    else:
        toks = toks[:1] + [rnd.choice(junk) for _ in range(rnd.randrange(0, 8))]
    line = " ".join(t for t in toks if t.strip())
    if line.split() in [v.split() for v in valid]:
        continue
    out.add(line)
for l in sorted(out):
    print(l)
PY
n0=$rejected a0=$accepted crashed=0
klog_mark
while IFS= read -r line; do
	if dmsetup create bad-x --table "0 $sectors $line" >/dev/null 2>&1; then
		# Some mutations are still valid lines (e.g. another number that is
		# a valid chunk size); they must work and go away cleanly.
		accepted=$((accepted + 1))
		dmsetup remove bad-x >/dev/null 2>&1 || crashed=$((crashed + 1))
		continue
	fi
	rejected=$((rejected + 1))
done <"$tmp/fuzz"
# A failed create removes its device again; make sure none is left.
! dmsetup info bad-x >/dev/null 2>&1 || crashed=$((crashed + 1))
# Every reason the targets logged must be a whole sentence.
klog_new | grep -E 'fleece(-view)?: ' | grep -v 'error adding target' >"$tmp/reasons"
grep -vE 'fleece(-view)?: [A-Z].*\. \(-E[A-Z]+\)$' "$tmp/reasons" >"$tmp/unclear"
unclear=$((unclear + $(wc -l <"$tmp/unclear")))
ktap_diag "generated: $((rejected - n0)) rejected, $((accepted - a0)) valid, $(wc -l <"$tmp/reasons") reasons logged"
[ -s "$tmp/unclear" ] && ktap_diag "unclear: $(head -n 5 "$tmp/unclear")"
[ "$crashed" -eq 0 ] && [ "$unclear" -eq 0 ] && [ $((rejected - n0)) -ge 45 ]
ktap_result "60 generated table lines: every rejection gives a sentence" $?

# Messages.
bad_msgs=0
for m in "" "release" "release 0" "release 0 0" "release x 8" "release 8 y" \
	"release -8 8" "release $sectors 8" "release 0 $((sectors + 1))" \
	"release 18446744073709551615 2" "release 0 8 8" "frobnicate" "RELEASE" \
	"release 0x10 8"; do
	if dmsetup message bad-v 0 $m >/dev/null 2>&1; then
		bad_msgs=$((bad_msgs + 1))
		ktap_diag "accepted message: '$m'"
	fi
done
ktap_result "bad messages to the view are rejected" $bad_msgs
dmsetup message bad-o 0 release 0 8 >/dev/null 2>&1
ktap_result "the origin refuses the view's release message" $((! $?))

# Bad bitmap messages to the origin; each one logs a sentence.
bad_msgs=0
dmsetup message bad-o 0 bitmap_add good >/dev/null 2>&1
klog_mark
for m in "bitmap_add" "bitmap_add a b" "bitmap_add a enabled" "bitmap_add good" \
	"bitmap_add $(printf 'n%.0s' {1..48})" "bitmap_add a,b" "bitmap_remove" \
	"bitmap_remove nosuch" "bitmap_clear" "bitmap_clear good extra" \
	"bitmap_enable nosuch" "bitmap_disable" "bitmap_merge good" \
	"bitmap_merge good nosuch" "bitmap_merge nosuch good" "bitmap_info good" \
	"bitmap_extents" "bitmap_extents good" "bitmap_extents nosuch 0" \
	"bitmap_extents good $sectors" "bitmap_extents good 1x" "bitmap_extents good 0 0" \
	"bitmap_extents good 0 x" "bitmap_extents good 0 1 2" "bitmap_frob good" "bitmap_"; do
	if dmsetup message bad-o 0 $m >/dev/null 2>&1; then
		bad_msgs=$((bad_msgs + 1))
		ktap_diag "accepted message: '$m'"
	fi
done
reasons=$(klog_new | grep -cE 'fleece: [A-Z].*\.$')
[ "$bad_msgs" -eq 0 ] && [ "$reasons" -eq 26 ]
ktap_result "26 bad bitmap messages to the origin are rejected with a sentence" $?
[ "$reasons" -eq 26 ] || ktap_diag "$reasons sentences logged; the rest: $(klog_new | grep 'fleece: ' | grep -vE 'fleece: [A-Z].*\.$')"
[ "$(dmsetup message bad-o 0 bitmap_extents good 0)" = end ]
ktap_result "a valid bitmap_extents message answers" $?

fleece_expect_field bad-v state active "the snapshot survived the bad input"
ktap_check "the view still equals the snapshot" cmp "$view" "$tmp/ref"
ktap_check "a valid release message is accepted" dmsetup message bad-v 0 release 0 256
fleece_expect_field bad-v released 2 "the release is counted (two whole 64 KiB chunks)"
ktap_finish
