#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# dkms-check.sh [KERNEL...]: prove that dkms builds dm-fleece from the
# files an install ships, for each kernel (default: all supported ones).
# Everything happens in a private dkms tree under build/dkms/ (its own
# source, dkms and install trees and its own module signing key), so the
# system's dkms state is never touched.  Prints TAP, one point per kernel.
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
command -v dkms >/dev/null || { echo "dkms-check: dkms is not installed (make deps)" >&2; exit 1; }
mapfile -t kernels < <("$src/tools/vm/kernels.sh" "${@:-all}") || exit 1
[ ${#kernels[@]} -gt 0 ] || exit 1

name=$(sed -n 's/^PACKAGE_NAME="\(.*\)"/\1/p' "$src/dkms.conf")
ver=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$src/dkms.conf")
top=$src/build/dkms
rm -rf "$top"
mkdir -p "$top/source/$name-$ver" "$top/tree" "$top/install" "$top/keys"
# Exactly what tools/install.sh puts in /usr/src/$name-$ver.
# (include/ may be absent: git keeps no empty directory.)
for item in dkms.conf Kbuild dm-fleece include; do
	[ -e "$src/$item" ] && cp -a "$src/$item" "$top/source/$name-$ver/"
done

find "$top/source" \( -name '*.o' -o -name '*.ko' -o -name '.*.cmd' \) -delete

# dkms reads these from the environment unless framework.conf sets them.
export mok_signing_key=$top/keys/mok.key mok_certificate=$top/keys/mok.pub
opts=(-m "$name" -v "$ver" --sourcetree "$top/source" --dkmstree "$top/tree"
	--installtree "$top/install")

echo "TAP version 13"
echo "1..${#kernels[@]}"
fail=0
dkms add "${opts[@]}" >"$top/add.log" 2>&1 || { sed 's/^/# /' "$top/add.log"; }
n=0
for k in "${kernels[@]}"; do
	n=$((n + 1))
	log=$top/build-$k.log
	t0=$SECONDS
	if dkms build "${opts[@]}" -k "$k" >"$log" 2>&1 &&
		ko=$(find "$top/tree/$name/$ver/$k" -name "$name.ko*" | head -n1) && [ -n "$ko" ] &&
		modinfo -F vermagic "$ko" | grep -q "^$k "; then
		echo "ok $n - dkms build $name/$ver for $k ($((SECONDS - t0))s)"
	else
		tail -n 30 "$log" | sed 's/^/# /'
		[ -f "$top/tree/$name/$ver/build/make.log" ] &&
			tail -n 30 "$top/tree/$name/$ver/build/make.log" | sed 's/^/# /'
		echo "not ok $n - dkms build $name/$ver for $k (log: $log)"
		fail=1
	fi
done
exit $fail
