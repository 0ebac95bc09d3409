#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# kbuild.sh [options] KVER: build an out-of-tree module against kernel KVER
# in a separate build directory, so the source tree stays clean and builds
# for several kernels coexist.  The build directory mirrors the sources as
# symlinks (new, changed and deleted files are picked up; objects and
# generated/ stay in the build directory), then kbuild runs with M= there.
#
#   --src DIR      module source root (default: the repository)
#   --items "A B"  what to mirror from it (default: "Kbuild dm-fleece include")
#   --out DIR      build directory (default: build/KVER)
#   --sparse       also run sparse on every file (kbuild C=2)
#   --quiet        print only our warnings/errors (the full log is kept in
#                  OUT/build.log or OUT/sparse.log)
#
# Environment: KDIR (default /lib/modules/KVER/build), W (kbuild W=, default
# 1), V.  Fails when the build fails or when the compiler, modpost or sparse
# warns about one of our files.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
items="Kbuild dm-fleece include"
out=
sparse=
quiet=
while [ $# -gt 1 ]; do
	case $1 in
	--src) src=$(cd "$2" && pwd); shift 2 ;;
	--items) items=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--sparse) sparse=1; shift ;;
	--quiet) quiet=1; shift ;;
	*) break ;;
	esac
done
kver=${1:?usage: kbuild.sh [--src DIR] [--items LIST] [--out DIR] [--sparse] [--quiet] KVER}
kdir=${KDIR:-/lib/modules/$kver/build}
[ -e "$kdir/Makefile" ] || { echo "kbuild.sh: no kernel build tree at $kdir (make deps)" >&2; exit 1; }
out=${out:-$(cd "$(dirname "$0")/.." && pwd)/build/$kver}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Mirror: one relative symlink per source file; drop links whose source left.
for item in $items; do
	[ -e "$src/$item" ] || continue
	find "$src/$item" -type f ! -name '*.o' ! -name '*.ko' ! -name '*.mod' \
		! -name '*.mod.c' ! -name '.*.cmd' ! -name '*.a' ! -name 'modules.order' \
		! -name 'Module.symvers' ! -name '*.dwo' ! -name '*~' -print |
		while read -r f; do
			rel=${f#"$src"/}
			mkdir -p "$out/$(dirname "$rel")"
			[ "$(readlink -f "$out/$rel" 2>/dev/null)" = "$(readlink -f "$f")" ] ||
				ln -sfr "$f" "$out/$rel"
		done
done
find "$out" -xtype l -delete

args=(-C "$kdir" M="$out" W="${W-1}")
[ -n "${V:-}" ] && args+=(V="$V")
if [ -n "$sparse" ]; then
	command -v sparse >/dev/null || { echo "kbuild.sh: sparse is not installed (make deps)" >&2; exit 1; }
	args+=(C=2)
	log=$out/sparse.log
else
	log=$out/build.log
fi

rc=0
if [ -n "$quiet" ]; then
	make "${args[@]}" modules >"$log" 2>&1 || rc=$?
else
	make "${args[@]}" modules 2>&1 | tee "$log" || rc=$?
	rc=${PIPESTATUS[0]}
fi

# Our warnings: compiler and sparse lines naming a file of ours, and
# modpost's.  Warnings inside kernel headers are the kernel's business.
ours=$(grep -E "^($out/[^:]*|[^/:][^:]*):[0-9]+(:[0-9]+)?: (warning|error)|^(WARNING|ERROR): modpost" "$log" || true)
if [ "$rc" -ne 0 ]; then
	[ -n "$quiet" ] && tail -n 40 "$log" | sed "s|$out/||g"
	echo "kbuild.sh: build against $kver failed (log: $log)" >&2
	exit 1
fi
if [ -n "$ours" ]; then
	[ -n "$quiet" ] && grep -E -B2 -A4 "^($out/[^:]*|[^/:][^:]*):[0-9]+(:[0-9]+)?: (warning|error)|^(WARNING|ERROR): modpost" "$log" |
		sed "s|$out/||g" | head -n 80
	echo "kbuild.sh: $(echo "$ours" | wc -l) warning(s) from our files against $kver${sparse:+ (sparse)} (log: $log)" >&2
	exit 1
fi
exit 0
