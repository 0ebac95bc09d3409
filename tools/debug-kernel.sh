#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# debug-kernel.sh: `make debug-kernel`.  Builds Debian's linux-source-6.12
# with KASAN, lockdep, UBSAN, kmemleak, debug objects and fault injection
# (tools/debug-kernel.config on top of x86_64_defconfig + kvm_guest.config),
# and installs it where tools/vm/kernels.sh finds it, as the kernel
# release 6.12.N-fleece-debug (KVER alias "debug"):
#
#   /boot/vmlinuz-KVER          the bzImage (plus config-KVER, System.map-KVER)
#   /lib/modules/KVER/          `make modules_install` (modules.builtin lets
#                               kmod's modprobe treat built-in ones as loaded)
#   /lib/modules/KVER/build ->  the build tree in the cache: KDIR for
#                               tools/kbuild.sh (`make -C KDIR M=...`)
#
# The build lives outside the checkout, in CACHE/KEY/ (CACHE defaults to
# /var/cache/dm-fleece/debug-kernel), so every checkout and CI run on the
# machine shares it.  KEY hashes what decides the binary: the fragment, the
# linux-source-6.12 package version, the compiler version and the text of
# this script's configure and build functions (editing a comment or the
# install step elsewhere does not rebuild).  When CACHE/KEY/complete exists
# only the install step runs: a rerun takes seconds.  An interrupted build
# resumes where it stopped (kbuild is incremental).
#
# Environment: DEBUG_KERNEL_CACHE (the cache root), JOBS (make -j, default:
# the number of CPUs), DEBUG_KERNEL_KEEP (cache entries kept, default 2;
# older ones are removed after a successful build).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
fragment=$src/tools/debug-kernel.config
cache=${DEBUG_KERNEL_CACHE:-/var/cache/dm-fleece/debug-kernel}
jobs=${JOBS:-$(nproc)}
keep=${DEBUG_KERNEL_KEEP:-2}
tarball=/usr/src/linux-source-6.12.tar.xz
PKGS="linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev
dwarves cpio rsync kmod xz-utils"

log() { echo "debug-kernel: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and writes /boot, /lib/modules)"

# ---- packages ------------------------------------------------------------

missing=()
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Without -t: the newest linux-source-6.12 wins, which is the one
	# matching the installed 6.12 kernel (bookworm-security carries newer
	# 6.12 releases than bookworm-backports).  With only backports
	# configured, apt still takes it from there.
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	}
fi
[ -r "$tarball" ] || die "$tarball missing after installing linux-source-6.12"
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)

# ---- configure and build (their text is part of the cache key) -----------

# configure_tree TREE: defconfig + kvm_guest.config + our fragment, then
# check that every line of the fragment made it into .config.
configure_tree() {
	local tree=$1 line opt want bad=0
	make -C "$tree" -s x86_64_defconfig
	make -C "$tree" -s kvm_guest.config
	(cd "$tree" && scripts/kconfig/merge_config.sh -m .config "$fragment") >/dev/null
	make -C "$tree" -s olddefconfig
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qxF "$line" "$tree/.config" && continue
			opt=${line%%=*}
			;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			opt=${opt%% *}
			grep -q "^$opt=" "$tree/.config" || continue
			;;
		*) continue ;;
		esac
		want=$line
		# shellcheck disable=SC1087 # $opt is a string, [= ] a bracket expression
		log "config: wanted '$want', got '$(grep -E "^(# )?$opt[= ]" "$tree/.config" || echo "$opt absent (unmet dependency)")'"
		bad=1
	done <"$fragment"
	[ "$bad" = 0 ] || die "the config fragment did not apply: fix $fragment"
}

# build_tree TREE STAGE: the kernel and modules, at the lowest CPU priority
# (QEMU guests of `make check` share the machine), then modules_install
# into STAGE.
build_tree() {
	local tree=$1 stage=$2
	# (&&: the caller's || turns set -e off in here.)
	nice -n 19 make -C "$tree" -j"$jobs" all &&
		rm -rf "$stage" &&
		make -C "$tree" -s INSTALL_MOD_PATH="$stage" modules_install
}

key=$( {
	echo "linux-source-6.12 $srcver"
	gcc --version | head -n1
	cat "$fragment"
	declare -f configure_tree build_tree
} | sha256sum | cut -c1-16)
dir=$cache/$key
tree=$dir/linux-source-6.12

mkdir -p "$cache"
exec 8>"$cache/.lock"
flock -n 8 || { log "another debug kernel build is running; waiting for it"; flock 8; }

if [ ! -e "$dir/complete" ]; then
	t0=$SECONDS
	log "building linux-source-6.12 $srcver in $dir (key $key), make -j$jobs under nice 19"
	log "this takes 30 to 60 minutes on 2 cores; log: $dir/build.log"
	mkdir -p "$dir"
	if [ ! -e "$dir/unpacked" ]; then
		rm -rf "$tree"
		tar -C "$dir" -xf "$tarball"
		touch "$dir/unpacked"
	fi
	if [ ! -e "$dir/configured" ]; then
		configure_tree "$tree"
		touch "$dir/configured"
	fi
	build_tree "$tree" "$dir/stage" >"$dir/build.log" 2>&1 ||
		{ tail -n 30 "$dir/build.log" >&2; die "build failed (log: $dir/build.log)"; }
	cp "$tree/arch/x86/boot/bzImage" "$dir/vmlinuz"
	echo "$((SECONDS - t0))" >"$dir/build-seconds"
	cat "$tree/include/config/kernel.release" >"$dir/complete"
	log "built in $(((SECONDS - t0) / 60)) min $(((SECONDS - t0) % 60)) s"

	# Old cache entries (another fragment or source version): keep the
	# newest $keep, the one just built among them.
	ls -1dt "$cache"/*/complete 2>/dev/null | tail -n +$((keep + 1)) |
		while read -r old; do
			old=$(dirname "$old")
			[ "$old" = "$dir" ] && continue
			log "removing the old cache entry $old"
			rm -rf "$old"
		done
fi

# ---- install (every run: cheap, and repairs a half-installed kernel) -----

kver=$(cat "$dir/complete")
[ -d "$dir/stage/lib/modules/$kver" ] || die "$dir/stage/lib/modules/$kver missing: remove $dir and rerun"
cmp -s "$dir/vmlinuz" "/boot/vmlinuz-$kver" || install -m 0644 "$dir/vmlinuz" "/boot/vmlinuz-$kver"
cmp -s "$tree/.config" "/boot/config-$kver" || install -m 0644 "$tree/.config" "/boot/config-$kver"
cmp -s "$tree/System.map" "/boot/System.map-$kver" || install -m 0644 "$tree/System.map" "/boot/System.map-$kver"
mkdir -p "/lib/modules/$kver"
rsync -a --delete --exclude=/build --exclude=/source \
	"$dir/stage/lib/modules/$kver/" "/lib/modules/$kver/"
ln -sfn "$tree" "/lib/modules/$kver/build"
ln -sfn "$tree" "/lib/modules/$kver/source"
echo "$key" >"/lib/modules/$kver/fleece-debug-key"

got=$("$src/tools/vm/kernels.sh" debug) || die "tools/vm/kernels.sh does not find the debug kernel"
[ "$got" = "$kver" ] ||
	log "note: kernels.sh picks $got for 'debug' (a newer debug kernel is installed)"
echo "debug kernel $kver: /boot/vmlinuz-$kver, KDIR /lib/modules/$kver/build"
echo "cache: $dir (key $key, built in $(($(cat "$dir/build-seconds") / 60)) min)"
echo "next: make check KERNELS=debug"
