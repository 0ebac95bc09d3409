#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# install.sh install|uninstall [KVER]: the body of `make install` and
# `make uninstall`.
#
# Module: with dkms and no DESTDIR, the sources go to /usr/src/NAME-VERSION
# and dkms builds and installs them for every supported kernel installed
# (and, AUTOINSTALL, for later ones).  Otherwise kbuild's modules_install
# puts build/KVER/dm-fleece.ko under $DESTDIR/lib/modules/KVER/updates.
# Tools: `make -C tools/fleecectl install` (DESTDIR, PREFIX), if present.
# Man pages: every Documentation/**/NAME.N.rst, through rst2man, into
# $DESTDIR$MANDIR/manN/NAME.N.gz.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
action=${1:?usage: install.sh install|uninstall [KVER]}
kver=${2:-$(tools/vm/kernels.sh default)}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
MANDIR=${MANDIR:-$PREFIX/share/man}
name=$(sed -n 's/^PACKAGE_NAME="\(.*\)"/\1/p' dkms.conf)
ver=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' dkms.conf)
use_dkms=
[ -z "$DESTDIR" ] && command -v dkms >/dev/null && use_dkms=1

man_pages() { find Documentation tools -name '*.[1-8].rst' 2>/dev/null | sort; }

fleecectl_has() {
	[ -f tools/fleecectl/Makefile ] && grep -qE "^$1[[:space:]]*:" tools/fleecectl/Makefile
}

case $action in
install)
	if [ -n "$use_dkms" ]; then
		usrc=/usr/src/$name-$ver
		dkms status -m "$name" -v "$ver" 2>/dev/null | grep -q . &&
			dkms remove -m "$name" -v "$ver" --all >/dev/null
		rm -rf "$usrc"
		mkdir -p "$usrc"
		for item in dkms.conf Kbuild dm-fleece include; do
			[ -e "$item" ] && cp -a "$item" "$usrc/"
		done

		find "$usrc" \( -name '*.o' -o -name '*.ko' -o -name '.*.cmd' \) -delete
		dkms add -m "$name" -v "$ver"
		for k in $(tools/vm/kernels.sh all); do
			dkms install -m "$name" -v "$ver" -k "$k"
		done
	else
		[ -e "build/$kver/dm-fleece.ko" ] || tools/kbuild.sh --quiet "$kver"
		make -C "/lib/modules/$kver/build" M="$src/build/$kver" \
			INSTALL_MOD_PATH="$DESTDIR" INSTALL_MOD_DIR=updates modules_install
		[ -z "$DESTDIR" ] && depmod "$kver"
	fi
	make -C tools/fleece-md-check install DESTDIR="$DESTDIR" PREFIX="$PREFIX"
	if fleecectl_has install; then
		make -C tools/fleecectl install DESTDIR="$DESTDIR" PREFIX="$PREFIX"
	fi
	for rst in $(man_pages); do
		page=$(basename "$rst" .rst)
		sec=${page##*.}
		install -d "$DESTDIR$MANDIR/man$sec"
		rst2man "$rst" | gzip -9n >"$DESTDIR$MANDIR/man$sec/$page.gz"
		echo "installed $DESTDIR$MANDIR/man$sec/$page.gz"
	done
	;;
uninstall)
	if [ -n "$use_dkms" ]; then
		dkms status -m "$name" -v "$ver" 2>/dev/null | grep -q . &&
			dkms remove -m "$name" -v "$ver" --all
		rm -rf "/usr/src/$name-$ver"
	else
		rm -f "$DESTDIR/lib/modules/$kver/updates/dm-fleece.ko"*
		[ -z "$DESTDIR" ] && depmod "$kver"
	fi
	rm -f "$DESTDIR$PREFIX/sbin/fleece-md-check"
	if fleecectl_has uninstall; then
		make -C tools/fleecectl uninstall DESTDIR="$DESTDIR" PREFIX="$PREFIX"
	fi
	for rst in $(man_pages); do
		page=$(basename "$rst" .rst)
		rm -f "$DESTDIR$MANDIR/man${page##*.}/$page.gz"
	done
	;;
*)
	echo "usage: install.sh install|uninstall [KVER]" >&2
	exit 2
	;;
esac
