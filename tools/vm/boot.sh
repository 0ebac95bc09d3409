#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# boot.sh [--shell] KVER [OUTDIR SCRIPT]: boot /boot/vmlinuz-KVER in QEMU
# (TCG: /dev/kvm hangs on these machines) with the host's / as a read-only
# 9p root and run SCRIPT (a host path) with bash inside it, OUTDIR shared
# writable at the same path.  The console goes to OUTDIR/console.log.
# With --shell it gives an interactive shell on the terminal instead
# (OUTDIR then defaults to build/vm/KVER/shell).
#
# The guest powers itself off at the end and reboots (so QEMU exits, with
# -no-reboot) on panic.  QEMU always runs under `timeout VM_TIMEOUT`.
#
# Environment: VM_SMP (2), VM_MEM (2G), VM_TIMEOUT (seconds, 3600),
# VM_APPEND (extra kernel command line), VM_SCRATCH_SIZE (4G: a sparse
# virtio disk, serial "fleece-scratch", fresh at every boot).  The debug
# kernel (`make debug-kernel`) gets VM_MEM 4G and VM_TIMEOUT 14400 unless
# they are set: KASAN's shadow, its quarantine and kmemleak's metadata eat
# memory, and everything runs several times slower.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)

shell=
if [ "${1:-}" = --shell ]; then
	shell=1
	shift
fi
kver=${1:?usage: boot.sh [--shell] KVER [OUTDIR SCRIPT]}
kver=$("$here/kernels.sh" "$kver" | head -n1) || exit 2

out=${2:-}
script=${3:-}

case $src in
/tmp/* | /run/*)
	echo "boot.sh: the repository is under $src: the guest mounts tmpfs on /tmp and /run" \
		"and would not see it; clone it elsewhere" >&2
	exit 2
	;;
*' '*)
	echo "boot.sh: the repository path must not contain spaces" >&2
	exit 2
	;;
esac

vmdir=$src/build/vm/$kver
mkdir -p "$vmdir"
if [ -n "$shell" ]; then
	out=${out:-$vmdir/shell}
	script=shell
fi
[ -n "$out" ] && [ -n "$script" ] || { echo "usage: boot.sh [--shell] KVER [OUTDIR SCRIPT]" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
case $out in /tmp/* | /run/*)
	echo "boot.sh: $out is under /tmp or /run, which the guest cannot see" >&2
	exit 2
	;;
esac

# The debug kernel: kasan_multi_shot, or KASAN reports only its first bug
# of the boot and a later test's would go unseen; the kernel's lockup
# watchdog stretched like the test timeouts (TIMEOUT_SCALE 3),
# since KASAN and lockdep slow every path down under TCG (the hung task
# timeout is guest-run.sh's, from TIMEOUT_SCALE).  acpi=noirq:
# under KASAN + lockdep the ACPI interpreter runs the PCI _PRT method of
# QEMU's pc machine past ACPICA's 30 s loop limit, once per device (two
# minutes of boot, then "PCI INT A: no GSI"); the BIOS's PIRQ table routes
# the same interrupts at once.
debug_append=
case $kver in *-fleece-debug)
	: "${VM_MEM:=4G}" "${VM_TIMEOUT:=14400}"
	debug_append="acpi=noirq kasan_multi_shot watchdog_thresh=30"
	;;
esac

kernel=/boot/vmlinuz-$kver
[ -r "$kernel" ] || { echo "boot.sh: $kernel missing (run 'make deps')" >&2; exit 2; }
initrd=$vmdir/initramfs.cpio.gz
"$here/mkinitramfs.sh" "$kver" "$initrd"

# One scratch disk per boot: several guests may run at once.
scratch=$vmdir/scratch.$$.img
trap 'rm -f "$scratch"' EXIT
truncate -s "${VM_SCRATCH_SIZE:-4G}" "$scratch"

# panic=-1: reboot at once on panic, which -no-reboot turns into an exit.
# loglevel=5: warnings and worse also reach the console log.
# unknown_nmi_panic + panic_print=0x40: an NMI from the monitor (a watchdog
# that finds the guest hung) panics it with every CPU's backtrace.
append="console=ttyS0 rdinit=/init panic=-1 softlockup_panic=0 loglevel=5"
append+=" unknown_nmi_panic panic_print=0x40"
append+=" mitigations=off${debug_append:+ $debug_append} fleece_out=$out fleece_run=$script ${VM_APPEND:-}"

qemu=(qemu-system-x86_64 -nodefaults -no-reboot -display none
	-machine pc -smp "${VM_SMP:-2}" -m "${VM_MEM:-2G}"
	-kernel "$kernel" -initrd "$initrd" -append "$append"
	-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
	-device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"
	-fsdev "local,id=fleeceout,path=$out,security_model=none,multidevs=remap"
	-device "virtio-9p-pci,fsdev=fleeceout,mount_tag=fleeceout"
	-drive "file=$scratch,if=none,id=scratch,format=raw,cache=unsafe"
	-device "virtio-blk-pci,drive=scratch,serial=fleece-scratch"
	-device virtio-rng-pci)

rc=0
if [ -n "$shell" ]; then
	timeout --foreground "${VM_TIMEOUT:-3600}" "${qemu[@]}" -serial mon:stdio || rc=$?
else
	# --foreground keeps QEMU in our process group, so whoever kills the
	# group (tools/check.sh's watchdog) kills QEMU too; OUT/qemu.pid names it.
	: >"$out/console.log"
	timeout --foreground -k 10 "${VM_TIMEOUT:-3600}" "${qemu[@]}" \
		-serial "file:$out/console.log" -pidfile "$out/qemu.pid" \
		-monitor "unix:$out/monitor.sock,server=on,wait=off" </dev/null || rc=$?

fi
exit $rc

