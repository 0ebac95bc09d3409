# SPDX-License-Identifier: GPL-2.0-only
#
# Count the top-level TAP/KTAP result lines of one test program's output.
# Prints: PASS FAIL SKIP PLANNED RAN BAILED
#   PLANNED is -1 when there was no plan line.  Indented (nested) results
#   are not counted: only a program's own top-level lines are.
#   "ok ... # SKIP" and "not ok ... # SKIP|TODO" count as skipped.
BEGIN { pass = fail = skip = ran = bail = 0; planned = -1 }
/^1\.\.[0-9]+/ {
	planned = $1
	sub(/^1\.\./, "", planned)
	planned += 0
	next
}
/^ok( |$)/ {
	ran++
	if ($0 ~ /#[ \t]*[Ss][Kk][Ii][Pp]/)
		skip++
	else
		pass++
	next
}
/^not ok( |$)/ {
	ran++
	if ($0 ~ /#[ \t]*([Ss][Kk][Ii][Pp]|[Tt][Oo][Dd][Oo])/)
		skip++
	else
		fail++
	next
}
/^Bail out!/ { bail = 1 }
END { print pass, fail, skip, planned, ran, bail }
