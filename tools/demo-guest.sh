#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# demo-guest.sh: the fleecing demo, run inside the test guest (tools/demo.sh
# boots one and runs this; selftests/fleecectl/01-demo.sh runs it as a test
# with DEMO_TAP=1).
#
#   1. an origin: an LVM volume on a loop PV, ext4, files on it
#   2. a writer that keeps changing it
#   3. fleecectl attach (in place: the writer keeps running) -> snapshot
#      (with the file system frozen around it, to checksum the point in
#      time) -> export
#   4. backups while the writes go on: qemu-img convert from the NBD URI,
#      and the kernel nbd client through nbd-server; fleecectl backup too
#   5. every backup's checksum against the point-in-time checksum
#   6. fsck and a read-only mount of a backup
#   7. end, detach; the writer saw no error, the origin is clean
#
# Every command is printed ("$ ...") with its real output.  Checks print
# "[ok] ..." or "[FAILED] ..."; with DEMO_TAP=1 they are TAP test points.
# Exit status: 0 when every check passed.
#
# Environment: FLEECE_SRC (the repository), FLEECE_KO (dm-fleece.ko; default
# build/$(uname -r)/dm-fleece.ko), DEMO_SIZE (LV size in MiB, 128),
# DEMO_DIR (work directory, /tmp/fleece-demo).
#
# demo-guest.sh OUTDIR: the form tools/vm/boot.sh runs (tools/demo.sh):
# variables come from OUTDIR/demo.env, the output goes to OUTDIR/demo.log
# (the host follows it), the exit status to OUTDIR/demo.rc.
set -uo pipefail

if [ $# -ge 1 ] && [ -d "$1" ] && [ -z "${DEMO_BOOTED:-}" ]; then
	set -a
	# shellcheck disable=SC1091
	. "$1/demo.env"
	set +a
	export DEMO_BOOTED=1 DM_DISABLE_UDEV=1 HOME=/tmp
	modprobe -q dm-mod
	bash "$0" >"$1/demo.log" 2>&1
	echo $? >"$1/demo.rc"
	exit 0
fi

: "${FLEECE_SRC:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${FLEECE_KO:=$FLEECE_SRC/build/$(uname -r)/dm-fleece.ko}"
: "${DEMO_SIZE:=128}"
: "${DEMO_DIR:=/tmp/fleece-demo}"
: "${DEMO_TAP:=0}"
export PATH=$FLEECE_SRC/tools/fleecectl:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

if [ "$DEMO_TAP" = 1 ]; then
	# shellcheck source=../selftests/lib/ktap.sh
	. "$FLEECE_SRC/selftests/lib/ktap.sh"
	fleece_require_root
	fleece_require fleecectl lvm mkfs.ext4 fsck.ext4 fsfreeze qemu-img qemu-nbd nbdinfo \
		nbd-server nbd-client
fi

W=$DEMO_DIR
MNT=$W/mnt
VG=demo
LV=data
DEV=/dev/$VG/$LV
FAILED=0
WRITER_PID=

# ---- output ---------------------------------------------------------------

if [ "$DEMO_TAP" = 1 ]; then
	say() { ktap_diag "$*"; }
	step() { ktap_diag ""; ktap_diag "== $* [${SECONDS}s]"; }
	show() { sed 's/^/# /'; }
else
	say() { echo "$*"; }
	step() { echo; echo "== $* [${SECONDS}s]"; }
	show() { cat; }
fi

# run CMD...: print the command and its output; a failure ends the demo.
run() {
	local out rc t0=$SECONDS
	say "\$ $*"
	out=$("$@" 2>&1)
	rc=$?
	[ -n "$out" ] && printf '%s\n' "$out" | show
	[ "$DEMO_TAP" = 1 ] && [ $((SECONDS - t0)) -gt 2 ] && say "(took $((SECONDS - t0))s)"
	if [ $rc -ne 0 ]; then
		check_result "$* (exit $rc)" 1
		finish
	fi
	return 0
}

# check_result DESC RC: one check.
check_result() {
	if [ "$DEMO_TAP" = 1 ]; then
		ktap_result "$1" "$2"
	elif [ "$2" -eq 0 ]; then
		echo "[ok] $1"
	else
		echo "[FAILED] $1"
	fi
	[ "$2" -eq 0 ] || FAILED=$((FAILED + 1))
	return "$2"
}

# check DESC CMD...: run CMD quietly; show its output only when it fails.
check() {
	local desc=$1 out rc
	shift
	out=$("$@" 2>&1)
	rc=$?
	[ $rc -ne 0 ] && [ -n "$out" ] && printf '%s\n' "$out" | tail -n 20 | show
	check_result "$desc" $rc
}

cleanup() {
	set +e
	# a failure between freeze and thaw must not leave the writer stuck
	mountpoint -q "$MNT" && fsfreeze -u "$MNT" 2>/dev/null
	if [ -n "$WRITER_PID" ]; then
		touch "$W/writer.stop"
		wait "$WRITER_PID" 2>/dev/null
	fi
	nbd-client -d /dev/nbd0 >/dev/null 2>&1
	fleecectl -q end --force $LV >/dev/null 2>&1
	fleecectl -q detach --force $LV >/dev/null 2>&1
	mountpoint -q "$W/backup-mnt" && umount "$W/backup-mnt"
	mountpoint -q "$MNT" && umount "$MNT"
	vgchange -q -an $VG >/dev/null 2>&1
	vgremove -q -f $VG >/dev/null 2>&1
	[ -n "${PV:-}" ] && losetup -d "$PV" 2>/dev/null
	rm -rf "$W"
}

finish() {
	cleanup
	if [ "$DEMO_TAP" = 1 ]; then
		ktap_finish
	fi
	echo
	if [ "$FAILED" -eq 0 ]; then
		echo "demo: every check passed (${SECONDS}s)"
		exit 0
	fi
	echo "demo: $FAILED check(s) FAILED (${SECONDS}s)"
	exit 1
}

sha() { dd if="$1" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1; }
sha_file() { sha256sum "$1" | cut -d' ' -f1; }

# ---- 1. the origin ---------------------------------------------------------

step "1. an origin with a file system ($(uname -r))"
if [ ! -d /sys/module/dm_fleece ]; then
	for m in $(modinfo -F depends "$FLEECE_KO" 2>/dev/null | tr , ' '); do modprobe "$m"; done
	run insmod "$FLEECE_KO"
fi
modprobe -q loop
modprobe -q ext4
modprobe -q nbd nbds_max=2
# nbd-client's TLS library waits for the kernel's random pool: feed it
modprobe -q virtio_rng 2>/dev/null
ip link set lo up 2>/dev/null
rm -rf "$W"
mkdir -p "$W/lvm" "$MNT"
# No udev here: LVM makes its own nodes; its metadata backups would go to
# the read-only /etc.
cat >"$W/lvm/lvm.conf" <<'EOF'
devices { obtain_device_list_from_udev = 0 use_devicesfile = 0
	global_filter = [ "a|^/dev/loop[0-9]+$|", "r|.*|" ] }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
backup { backup = 0 archive = 0 }
EOF
export LVM_SYSTEM_DIR=$W/lvm LVM_SUPPRESS_FD_WARNINGS=1
truncate -s $((DEMO_SIZE + 16))M "$W/pv.img"
PV=$(losetup -f --show "$W/pv.img") || finish
run pvcreate -q "$PV"
run vgcreate -q $VG "$PV"
run lvcreate -q -y -n $LV -L ${DEMO_SIZE}M $VG
run mkfs.ext4 -q -L demo "$DEV"
run mount "$DEV" "$MNT"
mkdir -p "$MNT/docs" "$MNT/data" "$MNT/writer"
cp -r /usr/share/common-licenses "$MNT/docs/" 2>/dev/null
for i in 1 2 3 4; do head -c 1M /dev/urandom >"$MNT/data/blob$i"; done
(cd "$MNT" && find docs data -type f -print0 | sort -z | xargs -0 sha256sum) >"$W/manifest"
sync
say "$(wc -l <"$W/manifest") files, $(du -sh "$MNT" | cut -f1) on $DEV"

# ---- 2. a writer -----------------------------------------------------------

step "2. a writer that keeps changing the volume"
(
	i=0
	while [ ! -e "$W/writer.stop" ]; do
		f=$MNT/writer/f$((i % 16))
		if ! head -c $((64 * 1024 * (1 + i % 4))) /dev/urandom >"$f.tmp" || ! sync "$f.tmp" ||
			! mv "$f.tmp" "$f"; then
			echo "write $i failed" >>"$W/writer.errors"
		fi
		echo "$i" >"$W/writer.count"
		i=$((i + 1))
		sleep 0.3
	done
) &
WRITER_PID=$!
sleep 2
say "writer running (pid $WRITER_PID): $(cat "$W/writer.count" 2>/dev/null || echo 0) files written so far"

# ---- 3. attach, snapshot, export -------------------------------------------

step "3. attach -> snapshot -> export, while the writer runs"
run fleecectl attach $DEV --name $LV
run dmsetup table
# Freeze the file system around the snapshot so that a checksum of the
# origin taken in the same window is the point in time, exactly.
run fsfreeze -f "$MNT"
REF=$(sha $DEV)
say "\$ fleecectl snapshot $LV --exception $W/$LV.cow"
out=$(fleecectl snapshot $LV --exception "$W/$LV.cow" 2>&1)
rc=$?
fsfreeze -u "$MNT"
printf '%s\n' "$out" | show
[ $rc -eq 0 ] || { check_result "fleecectl snapshot (exit $rc)" 1; finish; }
say "\$ fsfreeze -u $MNT"
say "point-in-time checksum (read while frozen): $REF"
say "\$ URI=\$(fleecectl export $LV)"
URI=$(fleecectl export $LV 2>"$W/stderr") || { show <"$W/stderr"; check_result "fleecectl export" 1; finish; }
show <"$W/stderr"
say "\$ echo \$URI"
say "$URI"
run fleecectl status $LV

# ---- 4. backups while the writes continue ----------------------------------

step "4. backups with standard NBD clients, the writer still running"
if [ "$DEMO_TAP" = 1 ]; then
	run nbdinfo --no-content "$URI"	# content detection is slow under TCG
else
	run nbdinfo "$URI"
fi
run qemu-img convert -f raw -O raw "$URI" "$W/backup-qemu.img"
run fleecectl unexport $LV
say "\$ URI=\$(fleecectl export $LV --server nbd-server)"
URI2=$(fleecectl export $LV --server nbd-server 2>"$W/stderr") ||
	{ show <"$W/stderr"; check_result "fleecectl export --server nbd-server" 1; finish; }
show <"$W/stderr"
SOCK=${URI2#*socket=}
run nbd-client -unix "$SOCK" /dev/nbd0 -N $LV
run dd if=/dev/nbd0 of="$W/backup-nbd.img" bs=1M iflag=direct conv=sparse status=none
run nbd-client -d /dev/nbd0
run fleecectl unexport $LV
run fleecectl backup $LV --to "$W/backup-fleecectl.img" --no-progress
run fleecectl status $LV
say "the writer has written $(cat "$W/writer.count") files by now"

# ---- 5. the backups are the point in time ----------------------------------

step "5. every backup matches the point-in-time checksum"
got=$(sha_file "$W/backup-qemu.img")
say "backup-qemu.img: $got"
check_result "backup over qemu-nbd (qemu-img convert) equals the point in time" "$([ "$got" = "$REF" ]; echo $?)"
for b in nbd fleecectl; do
	# the same bytes as backup-qemu.img, hence the same checksum
	cmp -s "$W/backup-qemu.img" "$W/backup-$b.img"
	rc=$?
	[ $rc -eq 0 ] && say "backup-$b.img: $got"
	check_result "backup over ${b/nbd/nbd-server (nbd-client)} equals the point in time" $rc
done
cmp -s "$DEV" "$W/backup-qemu.img"
check_result "the origin has moved on since (the writer kept writing)" "$([ $? -ne 0 ]; echo $?)"

# ---- 6. the backup is a clean file system ----------------------------------

step "6. fsck and a read-only mount of the backup"
run fsck.ext4 -fn "$W/backup-qemu.img"
mkdir -p "$W/backup-mnt"
run mount -o ro,loop "$W/backup-qemu.img" "$W/backup-mnt"
run ls "$W/backup-mnt" "$W/backup-mnt/data"
check "the backup's files match the originals" bash -c "cd '$W/backup-mnt' && sha256sum --quiet -c '$W/manifest'"
run umount "$W/backup-mnt"

# ---- 7. end and detach -----------------------------------------------------

step "7. end the snapshot and detach, the writer still running"
run fleecectl end $LV
run fleecectl detach $LV
run dmsetup table
check "no fleecectl device is left" bash -c "! dmsetup ls | grep -q -e '-real' -e '-view'"
sleep 1
touch "$W/writer.stop"
wait "$WRITER_PID" 2>/dev/null
WRITER_PID=
say "writer stopped after $(cat "$W/writer.count") files"
check "the writer saw no I/O error" test ! -s "$W/writer.errors"
run umount "$MNT"
check "the origin file system is clean" fsck.ext4 -fn "$DEV"
finish
