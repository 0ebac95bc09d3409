#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# mkinitramfs.sh KVER OUT: build the guest's initramfs for kernel KVER at OUT
# (a gzip'ed newc cpio), unless OUT is already up to date.
#
# It holds busybox-static, tools/vm/init as /init, and the modules that let
# the guest mount the host's / over virtio-9p (virtio_pci, 9pnet_virtio, 9p
# and what they depend on), decompressed when the kernel ships .ko.xz,
# because busybox cannot load those.  /modules.load lists them in load
# order; depmod -b also runs so busybox modprobe works by hand.
#
# The cache key is the kernel version plus the hashes of this script, the
# init script, busybox and the kernel's modules.dep and modules.builtin
# (the debug kernel of `make debug-kernel` can be rebuilt under the same
# version with other modules): OUT.key holds it.  A kernel with virtio and
# 9p built in (the debug kernel) gets "builtin" lines from modprobe
# --show-depends and an initramfs without modules.
set -euo pipefail

kver=${1:?usage: mkinitramfs.sh KVER OUT}
out=${2:?usage: mkinitramfs.sh KVER OUT}
here=$(cd "$(dirname "$0")" && pwd)
busybox=/bin/busybox
modules="virtio_pci 9pnet_virtio 9p"

[ -x "$busybox" ] && "$busybox" --list | grep -x insmod >/dev/null ||
	{ echo "mkinitramfs: $busybox (busybox-static) missing: run 'make deps'" >&2; exit 1; }

key=$(printf '%s\n' "$kver" "$(cat "$0" "$here/init" "$busybox" | sha256sum)" \
	"$(cat "/lib/modules/$kver/modules.dep" "/lib/modules/$kver/modules.builtin" 2>/dev/null | sha256sum)" |
	sha256sum | cut -c1-16)
if [ -s "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
	exit 0
fi

mkdir -p "$(dirname "$out")"
stage=$(mktemp -d "$(dirname "$out")/initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,dev,proc,sys,newroot,lib/modules/"$kver"}
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
install -m 0755 "$here/init" "$stage/init"

: >"$stage/modules.load"
for m in $modules; do
	# "insmod PATH" per dependency, in load order; "builtin NAME" if built in.
	modprobe -S "$kver" --show-depends "$m" | while read -r verb path _; do
		[ "$verb" = insmod ] || continue
		rel=${path#/lib/modules/$kver/}
		dst=$stage/lib/modules/$kver/${rel%.xz}
		dst=${dst%.zst}
		dst=${dst%.gz}
		grep -qxF "${dst#$stage}" "$stage/modules.load" && continue
		mkdir -p "$(dirname "$dst")"
		case $path in
		*.xz) xz -dc "$path" >"$dst" ;;
		*.zst) zstd -qdc "$path" >"$dst" ;;
		*.gz) gzip -dc "$path" >"$dst" ;;
		*) cp "$path" "$dst" ;;
		esac
		echo "${dst#$stage}" >>"$stage/modules.load"
	done
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
	[ -e "/lib/modules/$kver/$f" ] && cp "/lib/modules/$kver/$f" "$stage/lib/modules/$kver/"
done
depmod -b "$stage" "$kver"

# Another boot may build the same file at the same time: rename atomically.
tmp=$(mktemp "$out.XXXXXX")
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) |
	gzip -1 >"$tmp"
chmod 644 "$tmp"
mv "$tmp" "$out"

echo "$key" >"$out.key"
echo "mkinitramfs: built $out ($(wc -l <"$stage/modules.load") modules)" >&2
