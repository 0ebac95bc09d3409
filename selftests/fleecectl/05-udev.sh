#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 180
#
# fleecectl with udev running (systemd-udevd started for this test): every
# verb returns promptly (the udev cookie wait completes), udev makes the
# /dev/mapper nodes, LVM's /dev/VG/LV link survives the in-place swap, and
# the view is not scanned by blkid (no duplicate file system UUID).  Then
# --no-udev under a running udev, which must make its own nodes.
# (Every other fleecectl test runs without udev.)
. "$(dirname "$0")/common.bash"

fleece_require lvm udevadm mkfs.ext4
ktap_plan 15
# systemd's tools do nothing in a chroot (the guest runs in one) unless told
export SYSTEMD_IGNORE_CHROOT=1
fleece_udev_start || ktap_skip_all "cannot start systemd-udevd"

# LVM with udev: its own rules make /dev/VG/LV
LVM_SYSTEM_DIR=$(fleece_tmpdir)
export LVM_SYSTEM_DIR LVM_SUPPRESS_FD_WARNINGS=1
cat >"$LVM_SYSTEM_DIR/lvm.conf" <<'EOF'
devices { use_devicesfile = 0 global_filter = [ "a|^/dev/loop[0-9]+$|", "r|.*|" ] }
backup { backup = 0 archive = 0 }
activation { monitoring = 0 }
EOF
lvm_make uvg vol 32 || ktap_bail "cannot make the volume group"
udevadm settle
lv=/dev/uvg/vol
dir=$(fleece_tmpdir)
mkfs.ext4 -q "$lv"
udevadm settle

# fcu DESC ARGS..: fleecectl under a 60 s timeout (a lost udev cookie hangs)
fcu() {
	local desc=$1
	shift
	FC_OUT=$(timeout 60 "$FLEECECTL" "$@" 2>&1)
	FC_RC=$?
	[ $FC_RC -eq 124 ] && FC_OUT="timed out (udev cookie wait?): $FC_OUT"
	ktap_result "$desc" $FC_RC || ktap_diag "$FC_OUT"
}

fcu "attach in place with udev" attach $lv --name uvol
fleece_cleanup fc_teardown uvol
ktap_result "/dev/mapper/uvol-real made" "$([ -b /dev/mapper/uvol-real ]; echo $?)"
udevadm settle
ktap_result "$lv still resolves to the volume after the swap" \
	"$([ "$(readlink -f $lv)" = "$(readlink -f /dev/mapper/uvg-vol)" ] && [ -b $lv ]; echo $?)" ||
	ktap_diag "$(ls -l /dev/uvg/ /dev/mapper/ 2>&1)"
fcu "snapshot with udev" snapshot uvol --exception "$dir/u.cow"
ktap_result "/dev/mapper/uvol-view made" "$([ -b /dev/mapper/uvol-view ]; echo $?)"
udevadm settle
ktap_result "udev did not scan the view (no ID_FS_UUID, no by-uuid duplicate)" \
	"$(! udevadm info --query=property /dev/mapper/uvol-view | grep -q '^ID_FS_UUID='; echo $?)" ||
	ktap_diag "$(udevadm info --query=property /dev/mapper/uvol-view)"
fcu "backup with udev" backup uvol --to "$dir/u.img" --no-progress
fcu "end with udev" end uvol
ktap_result "/dev/mapper/uvol-view is gone" "$([ ! -e /dev/mapper/uvol-view ]; echo $?)"
fcu "detach with udev" detach uvol
udevadm settle
ktap_result "$lv still there, /dev/mapper/uvol-real gone" \
	"$([ -b $lv ] && [ ! -e /dev/mapper/uvol-real ]; echo $?)"

# --no-udev while udev runs: fleecectl makes the nodes itself
loop=$(fleece_loopdev 32M) || ktap_bail "no loop device"
fcu "--no-udev attach on top" --no-udev attach "$loop" --name unode
fleece_cleanup fc_teardown unode
fcu "--no-udev snapshot" --no-udev snapshot unode --exception "$dir/n.cow"
fcu "--no-udev end" --no-udev end unode
fcu "--no-udev detach" --no-udev detach unode
ktap_finish
