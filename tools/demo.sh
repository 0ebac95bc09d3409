#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# demo.sh [KVER]: the body of `make demo`.  Builds dm-fleece.ko for KVER
# (default: the newest 6.1 kernel installed, else the default one) and
# fleecectl, boots a test guest with tools/vm/boot.sh and runs
# tools/demo-guest.sh in it, printing each step as the guest runs it:
#
#   an LVM volume with ext4 and files -> a writer -> fleecectl attach ->
#   snapshot -> export -> backups over qemu-nbd and nbd-server/nbd-client
#   while the writer runs -> checksums against the point in time -> fsck
#   and mount of a backup -> end -> detach
#
# Exit status: 0 when the demo ran and every check passed.
# Environment: KVER, FLEECE_KO (a prebuilt module), DEMO_SIZE (MiB, 128),
# VM_TIMEOUT (seconds, 900),
# VM_SMP, VM_MEM (see tools/vm/boot.sh).
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src" || exit 2

kver=${1:-${KVER:-}}
if [ -z "$kver" ]; then
	kver=$(tools/vm/kernels.sh 6.1 2>/dev/null || tools/vm/kernels.sh default) || exit 2
else
	kver=$(tools/vm/kernels.sh "$kver") || exit 2
fi
kver=$(echo "$kver" | head -n1)
out=$src/build/demo/$kver

echo "demo: building dm-fleece.ko for $kver and fleecectl"
tools/kbuild.sh --quiet "$kver" || { echo "demo: the module does not build" >&2; exit 1; }
make -s -C tools/fleecectl || { echo "demo: fleecectl does not build" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
cat >"$out/demo.env" <<EOF
FLEECE_SRC=$src
FLEECE_KO=${FLEECE_KO:-$src/build/$kver/dm-fleece.ko}
DEMO_SIZE=${DEMO_SIZE:-128}
EOF
: >"$out/demo.log"

echo "demo: booting $kver in QEMU (TCG; takes a minute or two)"
VM_TIMEOUT=${VM_TIMEOUT:-900} tools/vm/boot.sh "$kver" "$out" "$src/tools/demo-guest.sh" &
qpid=$!
trap 'kill "$qpid" 2>/dev/null; exit 130' INT TERM
tail -n +1 -F --pid="$qpid" "$out/demo.log" 2>/dev/null
wait "$qpid"
vm_rc=$?

rc=$(cat "$out/demo.rc" 2>/dev/null)
if [ -z "$rc" ]; then
	echo "demo: the guest did not finish the demo (QEMU exit $vm_rc); end of its console:" >&2
	tail -n 30 "$out/console.log" >&2
	exit 1
fi
echo "demo: logs in ${out#"$src"/}/ (demo.log, console.log)"
exit "$rc"
