#!/bin/bash
# Install everything dm-fleece needs to build, test and demo on Debian 12.
#
# Idempotent: when every package is already present it only runs dpkg-query
# and exits.  bookworm-backports (for the 6.12 kernel) is added by copying
# the URIs: line of the machine's own Debian sources file, so no mirror host
# name lives in this repository.
set -euo pipefail

KVER_61_PKGS="linux-image-amd64 linux-headers-amd64"
BACKPORTS_KERNEL_PKGS="linux-image-6.12*+deb12-amd64 linux-headers-6.12*+deb12-amd64"
PKGS="build-essential sparse linux-source-6.1 qemu-system-x86 qemu-utils
busybox-static kmod cpio xz-utils dmsetup libdevmapper-dev nbd-client nbd-server
libnbd-bin fio dkms e2fsprogs xfsprogs lvm2 util-linux python3 python3-docutils
gnuplot-nox udev bc openssl procps coreutils perl"
# checkpatch.pl and the reference sources (drivers/md) come from this tarball.
LINUX_SOURCE_TAR=/usr/src/linux-source-6.1.tar.xz
LINUX_SOURCE_DIR=/usr/src/linux-source-6.1

unpack_linux_source() {
	[ -e "$LINUX_SOURCE_DIR/scripts/checkpatch.pl" ] && return 0
	[ -r "$LINUX_SOURCE_TAR" ] || return 0
	log "unpacking $LINUX_SOURCE_TAR"
	tar -C /usr/src -xf "$LINUX_SOURCE_TAR"
}

log() { echo "deps: $*" >&2; }

missing=()
for p in $PKGS $KVER_61_PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep '^install ok installed' >/dev/null ||
		missing+=("$p")
done
have_612=$(ls -d /lib/modules/6.12*/build 2>/dev/null | head -n1 || true)

if [ ${#missing[@]} -eq 0 ] && [ -n "$have_612" ]; then
	[ -e "$LINUX_SOURCE_DIR/scripts/checkpatch.pl" ] && exit 0
	[ "$(id -u)" -eq 0 ] || { log "run 'make deps' as root to unpack $LINUX_SOURCE_TAR"; exit 0; }
	unpack_linux_source
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	log "missing packages (${missing[*]:-6.12 kernel}); run 'make deps' as root"
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
BP=/etc/apt/sources.list.d/dm-fleece-backports.sources
if [ ! -e "$BP" ]; then
	src=/etc/apt/sources.list.d/debian.sources
	uri=$(awk '/^URIs:/ && !/security/ {print $2; exit}' "$src" 2>/dev/null || true)
	if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
		uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
	fi
	[ -n "$uri" ] || { log "cannot find the Debian mirror URI in $src"; exit 1; }
	cat >"$BP" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

log "installing: ${missing[*]:-} 6.12 kernel"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" $KVER_61_PKGS >/dev/null
if [ -z "$have_612" ]; then
	# Pick the newest 6.12 image that has matching headers.
	v=$(apt-cache -t bookworm-backports search --names-only '^linux-headers-6\.12\..*\+deb12-amd64$' |
		awk '{print $1}' | sed 's/^linux-headers-//' | sort -V | tail -n1)
	[ -n "$v" ] || { log "no 6.12 kernel found in bookworm-backports"; exit 1; }
	apt-get install -y -qq --no-install-recommends -t bookworm-backports \
		"linux-image-$v" "linux-headers-$v" >/dev/null
fi
unpack_linux_source
log "done"
