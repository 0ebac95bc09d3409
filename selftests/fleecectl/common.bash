# SPDX-License-Identifier: GPL-2.0-only
# shellcheck shell=bash
#
# common.bash: helpers for the fleecectl selftests (sourced; not a test
# itself, which is why it is not named *.sh).
#
#	fc ARGS..                 run fleecectl; output in $FC_OUT, status in $FC_RC
#	expect_rc DESC RC ARGS..  fleecectl ARGS exits with RC (a test point)
#	fc_ok DESC ARGS..         fleecectl ARGS exits 0 (a test point)
#	fc_teardown NAME          end --force + detach --force (registered by fc_attach)
#	fc_attach DEV ARGS..      fleecectl attach, undone at exit
#	lvm_setup                 LVM config for a guest without udev ($LVM_SYSTEM_DIR)
#	lvm_make VG LV MIB        a VG on a loop PV and an LV in it; removed at exit
#	writer_start DEV MIB      random 64 KiB O_DIRECT writes to DEV until writer_stop
#	writer_pause / writer_resume   hold the writer between two writes
#	writer_stop               stop it; returns non-zero if any write failed
#	dev_sha DEV               sha256 of a device, read with O_DIRECT
#	json_get JSON EXPR        python3: print EXPR evaluated on the parsed JSON (j)
. "$(dirname "${BASH_SOURCE[0]}")/../lib/ktap.sh"

fleece_require_root
fleece_require dmsetup losetup python3
FLEECECTL=${FLEECE_FLEECECTL:-$FLEECE_SRC/tools/fleecectl/fleecectl}
[ -x "$FLEECECTL" ] || ktap_skip_all "$FLEECECTL is not built (make -C tools/fleecectl)"
fleece_load || ktap_skip_all "cannot load dm-fleece.ko for $(uname -r)"
modprobe -q loop
# Each test gets its own state directory (the harness also wipes /run).
export FLEECECTL_RUN_DIR
FLEECECTL_RUN_DIR=$(fleece_tmpdir)/run

FC_OUT=
FC_RC=0

fc() {
	FC_OUT=$("$FLEECECTL" "$@" 2>&1)
	FC_RC=$?
	return $FC_RC
}

expect_rc() {
	local desc=$1 want=$2
	shift 2
	fc "$@"
	if [ "$FC_RC" -eq "$want" ]; then
		ktap_ok "$desc (exit $want)"
		return 0
	fi
	ktap_diag "$FC_OUT"
	ktap_diag "fleecectl $* exited $FC_RC, expected $want"
	ktap_fail "$desc"
	return 1
}

fc_ok() {
	local desc=$1
	shift
	expect_rc "$desc" 0 "$@"
}

fc_teardown() {
	"$FLEECECTL" -q end --force "$1" >/dev/null 2>&1
	"$FLEECECTL" -q detach --force "$1" >/dev/null 2>&1
	return 0
}

fc_attach() {
	local dev=$1 name
	shift
	fc attach "$dev" "$@" || return $?
	name=$(printf '%s\n' "$FC_OUT" | sed -n 's/.* as fleece "\([^"]*\)".*/\1/p' | head -n1)
	[ -n "$name" ] && fleece_cleanup fc_teardown "$name"
	return 0
}

lvm_setup() {
	fleece_require lvm
	LVM_SYSTEM_DIR=$(fleece_tmpdir)
	export LVM_SYSTEM_DIR LVM_SUPPRESS_FD_WARNINGS=1
	cat >"$LVM_SYSTEM_DIR/lvm.conf" <<'EOF'
devices { obtain_device_list_from_udev = 0 use_devicesfile = 0
	global_filter = [ "a|^/dev/loop[0-9]+$|", "r|.*|" ] }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
backup { backup = 0 archive = 0 }
EOF
}

__lvm_remove_vg() {
	vgchange -q -an "$1" >/dev/null 2>&1
	vgremove -q -f "$1" >/dev/null 2>&1
	return 0
}

lvm_make() {
	local vg=$1 lv=$2 mib=$3 pv
	[ -n "${LVM_SYSTEM_DIR:-}" ] || lvm_setup
	pv=$(fleece_loopdev $((mib + 8))M) || return 1
	pvcreate -q "$pv" >/dev/null && vgcreate -q "$vg" "$pv" >/dev/null || return 1
	fleece_cleanup __lvm_remove_vg "$vg"
	lvcreate -q -y -n "$lv" -L "${mib}M" "$vg" >/dev/null
}

WRITER_DIR=
WRITER_PID=

writer_start() {
	local dev=$1 mib=$2
	WRITER_DIR=$(fleece_tmpdir)
	(
		n=0
		while [ ! -e "$WRITER_DIR/stop" ]; do
			if [ -e "$WRITER_DIR/pause" ]; then
				touch "$WRITER_DIR/paused"
				sleep 0.05
				continue
			fi
			rm -f "$WRITER_DIR/paused"
			dd if=/dev/urandom of="$dev" bs=64k count=1 seek=$((RANDOM % (mib * 16))) \
				oflag=direct conv=notrunc status=none 2>>"$WRITER_DIR/errors" ||
				echo "write $n failed" >>"$WRITER_DIR/errors"
			n=$((n + 1))
			echo $n >"$WRITER_DIR/count"
		done
	) &
	WRITER_PID=$!
	fleece_cleanup writer_stop
}

writer_pause() {
	local _
	touch "$WRITER_DIR/pause"
	for _ in $(seq 200); do
		[ -e "$WRITER_DIR/paused" ] && return 0
		sleep 0.05
	done
	return 1
}

writer_resume() {
	rm -f "$WRITER_DIR/pause" "$WRITER_DIR/paused"
}

writer_count() {
	cat "$WRITER_DIR/count" 2>/dev/null || echo 0
}

writer_stop() {
	[ -n "$WRITER_PID" ] || return 0
	touch "$WRITER_DIR/stop"
	rm -f "$WRITER_DIR/pause"
	wait "$WRITER_PID" 2>/dev/null
	WRITER_PID=
	if [ -s "$WRITER_DIR/errors" ]; then
		ktap_diag "writer errors: $(head -n 5 "$WRITER_DIR/errors")"
		return 1
	fi
	return 0
}

dev_sha() {
	dd if="$1" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1
}

json_get() {
	python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}
