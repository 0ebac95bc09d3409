#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# kernels.sh [SPEC...]: print the full version of each kernel to build and
# test against, one per line.
#
# SPEC is a full version (6.1.0-56-amd64), a short alias (6.1, 6.12) that
# picks the newest installed kernel of that series, "all", or "default"
# (the running kernel if its headers are installed, else the newest one).  With no SPEC
# (or "all") it prints the newest 6.1.* and the newest 6.12.* kernel that
# have both headers (/lib/modules/V/build) and an image (/boot/vmlinuz-V).
# Nothing here names an exact ABI number: what deps.sh installed is used.
#
# "debug" is the newest *-fleece-debug kernel (`make debug-kernel`,
# tools/debug-kernel.sh).  It is only ever picked by that name or by its
# full version: "all", "default" and the series aliases skip it, so a
# plain `make check` never runs on it.
set -euo pipefail

usable() {
	[ -e "/lib/modules/$1/build/Makefile" ] && [ -e "/boot/vmlinuz-$1" ]
}

debug_kernel() { case $1 in *-fleece-debug) return 0 ;; esac; return 1; }

# newest SERIES: newest usable kernel whose version starts with SERIES,
# debug kernels excluded (SERIES "debug": only those).
newest() {
	local v best=
	for v in $(ls /lib/modules 2>/dev/null | sort -V); do
		if [ "$1" = debug ]; then
			debug_kernel "$v" || continue
		else
			debug_kernel "$v" && continue
			case $v in "$1".*) ;; *) continue ;; esac
		fi
		usable "$v" && best=$v
	done
	[ -n "$best" ] && echo "$best"
}

specs=("$@")
[ ${#specs[@]} -eq 0 ] && specs=(all)
out=()
for s in ${specs[@]//,/ }; do
	case $s in
	default)
		if usable "$(uname -r)"; then
			out+=("$(uname -r)")
		else
			v=$(for v in $(ls /lib/modules 2>/dev/null); do
				debug_kernel "$v" || ! usable "$v" || echo "$v"
			done | sort -V | tail -n1)
			[ -n "$v" ] && out+=("$v")
		fi
		;;
	all)
		for series in 6.1 6.12; do
			v=$(newest "$series") && out+=("$v")
		done
		;;
	debug)
		v=$(newest debug) || {
			echo "kernels.sh: no debug kernel is installed: run 'make debug-kernel' first" >&2
			exit 1
		}
		out+=("$v")
		;;
	*)
		if usable "$s"; then
			out+=("$s")
		elif v=$(newest "$s"); then
			out+=("$v")
		else
			echo "kernels.sh: no installed kernel matches '$s'" \
				"(need /lib/modules/V/build and /boot/vmlinuz-V)" >&2
			exit 1
		fi
		;;
	esac
done
[ ${#out[@]} -gt 0 ] || { echo "kernels.sh: no usable kernel installed (run 'make deps')" >&2; exit 1; }
printf '%s\n' "${out[@]}" | awk '!seen[$0]++'
