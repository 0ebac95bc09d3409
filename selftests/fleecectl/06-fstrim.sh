#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 400
#
# A full fstrim during a backup costs no exception space (discard_policy
# defer, the default).  For ext4 and XFS on a fleece device over a loop
# file, with an exception store of 25% of the origin: files are written,
# half of them deleted, the snapshot taken, and fstrim run over all the
# free space.  The store use stays flat across the trim, the backup
# succeeds, its image is clean after a journal replay and holds the files
# as they were, and after `fleecectl end` the held-back discards reach the
# loop file, which gives its blocks back.
. "$(dirname "$0")/common.bash"

fleece_require fstrim mkfs.ext4 e2fsck mkfs.xfs xfs_repair sha256sum stat
ktap_plan 18
dir=$(fleece_tmpdir)
mnt=$dir/mnt
mkdir -p "$mnt"

allocated() { echo $(($(stat -c %b "$1") * $(stat -c %B "$1"))); }
slots_used() {
	fc status --json "$1" && json_get "$FC_OUT" 'j["sets"][0]["exception"]["slots_used"]'
}

# fstrim_case FS MIB MKFS CHECK: the whole scenario for one file system.
fstrim_case() {
	local fs=$1 mib=$2 mkfs=$3 check=$4 dev name=ft$1 before after deferred a b i
	dev=$(fleece_loopdev "${mib}M" "$dir/$fs.img")
	fc_attach "$dev" --name "$name" || { ktap_diag "$FC_OUT"; return 1; }
	$mkfs "/dev/mapper/$name" >/dev/null 2>&1 && mount "/dev/mapper/$name" "$mnt" || return 1
	for i in $(seq 1 48); do
		head -c 1M /dev/urandom >"$mnt/f$i" || return 1
	done
	sync
	rm -f "$mnt"/f*[02468]
	sync
	(cd "$mnt" && sha256sum f*) >"$dir/$fs.sums"

	fc snapshot "$name" --exception "$dir/$fs.cow" --size 25%
	ktap_result "$fs: snapshot with a store of 25% of the origin" $FC_RC || ktap_diag "$FC_OUT"
	before=$(slots_used "$name")
	fstrim "$mnt" || return 1
	sync
	after=$(slots_used "$name")
	fc status --json "$name"
	deferred=$(json_get "$FC_OUT" 'j["sets"][0]["discard_bytes_deferred"]')
	# A few metadata chunks may be written by the trim itself (ext4 marks
	# groups trimmed); the free space is far larger.
	[ "$before" -ge 0 ] && [ $((after - before)) -le 8 ] && [ "$deferred" -ge $((64 << 20)) ]
	ktap_result "$fs: fstrim of the free space left the store flat ($before -> $after slots; $((deferred >> 20)) MiB held back)" $?

	fc backup "$name" --to "$dir/$fs.backup" --no-progress
	ktap_result "$fs: the backup succeeds" $FC_RC || ktap_diag "$FC_OUT"
	umount "$mnt"
	# Replay the journal: mount the image, unmount it, then check it.
	mount -o loop "$dir/$fs.backup" "$mnt" && umount "$mnt" && $check "$dir/$fs.backup" >"$dir/$fs.fsck" 2>&1
	ktap_result "$fs: the backup image is clean after a journal replay" $? || ktap_diag "$(tail -n 20 "$dir/$fs.fsck")"
	mount -o loop,ro "$dir/$fs.backup" "$mnt" && (cd "$mnt" && sha256sum -c --quiet "$dir/$fs.sums")
	ktap_result "$fs: the files in the backup are the files at the snapshot" $?
	umount "$mnt" 2>/dev/null
	rm -f "$dir/$fs.backup"

	a=$(allocated "$dir/$fs.img")
	fc end "$name"
	ktap_result "$fs: end" $FC_RC || ktap_diag "$FC_OUT"
	b=$(allocated "$dir/$fs.img")
	# The loop file had blocks only where data was: the deleted files.
	[ $((a - b)) -ge $((20 << 20)) ]
	ktap_result "$fs: after end the held-back discards reached the loop file and freed the deleted files' 24 MiB ($((a >> 20)) -> $((b >> 20)) MiB allocated)" $?
	fc status --json "$name"
	ktap_result "$fs: the idle device reports no error and no last error" \
		"$(json_get "$FC_OUT" 'j["sets"][0]["error"] == "none" and j["sets"][0]["last_error"] == "none"' |
			grep -qx True; echo $?)" || ktap_diag "$FC_OUT"
	fc detach "$name"
	ktap_result "$fs: detach" $FC_RC || ktap_diag "$FC_OUT"
	rm -f "$dir/$fs.img" "$dir/$fs.cow"
	return 0
}

modprobe -q xfs 2>/dev/null
fstrim_case ext4 256 "mkfs.ext4 -q -F" "e2fsck -fn" || ktap_diag "ext4: setup failed"
if grep -qw xfs /proc/filesystems; then
	# mkfs.xfs refuses file systems under 300 MiB.
	fstrim_case xfs 320 "mkfs.xfs -q -f" "xfs_repair -n" || ktap_diag "xfs: setup failed"
else
	for i in $(seq 9); do ktap_skip "xfs: this kernel has no XFS"; done
fi
ktap_finish
