#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 240
#
# fleecectl export over NBD, on top of a plain block device, while a writer
# keeps writing to the origin:
#  - nbdinfo sees the export (name, size, trim);
#  - qemu-img convert from the qemu-nbd URI equals the point in time;
#  - a client's trim through qemu-nbd releases chunks;
#  - TCP export (--port) works;
#  - nbd-server + the kernel nbd client (nbd-client, dd) equals the point
#    in time;
#  - status --json reports the export; unexport stops the servers.
. "$(dirname "$0")/common.bash"

fleece_require qemu-nbd qemu-img qemu-io nbdinfo nbd-server nbd-client
fleece_modprobe nbd nbds_max=2
# nbd-client's TLS library waits for the kernel's random pool: feed it
modprobe -q virtio_rng 2>/dev/null
ip link set lo up 2>/dev/null

MIB=32
ktap_plan 23
dir=$(fleece_tmpdir)
loop=$(fleece_loopdev ${MIB}M) || ktap_bail "no loop device"

fc_attach "$loop" --name nbdt
ktap_result "attach on top of $loop creates /dev/mapper/nbdt" $FC_RC || ktap_diag "$FC_OUT"
origin=/dev/mapper/nbdt

writer_start $origin $MIB
sleep 1

# The point in time: the writer is held between two writes, so the origin
# read right after the snapshot is the snapshot's content.
writer_pause || ktap_diag "writer did not pause"
fc snapshot nbdt --exception "$dir/nbdt.cow" --size 100%
rc=$FC_RC
ref=$(dev_sha $origin)
writer_resume
ktap_result "snapshot with a writer running" $rc || ktap_diag "$FC_OUT"
sleep 1

uri=$("$FLEECECTL" export nbdt 2>"$dir/err")
ktap_result "export prints an NBD URI" "$([[ $uri == nbd+unix:///nbdt\?socket=* ]]; echo $?)" ||
	ktap_diag "$uri $(cat "$dir/err")"

info=$(nbdinfo --json --no-content "$uri" 2>&1)
ktap_result "nbdinfo: export nbdt, size $MIB MiB, trim supported" "$(python3 - "$info" $((MIB << 20)) <<'EOF'
import json, sys
j = json.loads(sys.argv[1])
e = j["exports"][0]
ok = e["export-name"] == "nbdt" and e["export-size"] == int(sys.argv[2]) and e["can_trim"]
sys.exit(0 if ok else 1)
EOF
echo $?)" || ktap_diag "$info"

qemu-img convert -f raw -O raw "$uri" "$dir/qemu.img" 2>"$dir/err"
ktap_result "qemu-img convert from the URI" $? || ktap_diag "$(cat "$dir/err")"
ktap_result "the qemu-nbd backup equals the point in time" \
	"$([ "$(sha256sum <"$dir/qemu.img" | cut -d' ' -f1)" = "$ref" ]; echo $?)"
fc backup nbdt --to "$dir/fc.img" --no-progress
ktap_result "fleecectl backup equals the point in time too" \
	"$([ $FC_RC = 0 ] && [ "$(sha256sum <"$dir/fc.img" | cut -d' ' -f1)" = "$ref" ]; echo $?)" ||
	ktap_diag "$FC_OUT"
ktap_result "... and is sparse ($(du -k "$dir/fc.img" | cut -f1) KiB allocated of $((MIB * 1024)))" \
	"$([ "$(du -k "$dir/fc.img" | cut -f1)" -lt $((MIB * 1024 / 2)) ]; echo $?)"
ktap_result "the origin has changed since (the writer ran: $(writer_count) writes)" \
	"$([ "$(dev_sha $origin)" != "$ref" ]; echo $?)"

fc status --json nbdt
ktap_result "status --json shows the qemu-nbd export running" "$(json_get "$FC_OUT" \
	'j["sets"][0]["export"]["server"] == "qemu-nbd" and j["sets"][0]["export"]["running"]' |
	grep -qx True; echo $?)" || ktap_diag "$FC_OUT"
before=$(json_get "$FC_OUT" 'j["sets"][0]["chunks_released"]')

# a client's trim is a release
qemu-io -f raw -c 'discard 0 4M' "$uri" >"$dir/err" 2>&1
ktap_result "a trim through qemu-nbd is accepted" $? || ktap_diag "$(cat "$dir/err")"
fc status --json nbdt
after=$(json_get "$FC_OUT" 'j["sets"][0]["chunks_released"]')
ktap_result "the trim released 64 chunks of 64 KiB ($before -> $after)" \
	"$([ "$((after - before))" -eq 64 ]; echo $?)"
qemu-io -f raw -c 'read 0 64k' "$uri" >"$dir/err" 2>&1
ktap_result "reading a released chunk fails" "$([ $? -ne 0 ]; echo $?)"
qemu-io -f raw -c 'write 8M 4k' "$uri" >"$dir/err" 2>&1
ktap_result "writing to the export fails" "$([ $? -ne 0 ]; echo $?)"

fc_ok "unexport stops qemu-nbd" unexport nbdt

# TCP
uri=$("$FLEECECTL" export nbdt --port 10899 2>"$dir/err")
ktap_result "export --port 10899 gives nbd://127.0.0.1:10899/nbdt" \
	"$([ "$uri" = nbd://127.0.0.1:10899/nbdt ]; echo $?)" || ktap_diag "$uri $(cat "$dir/err")"
ktap_check "nbdinfo over TCP" nbdinfo --size "$uri"
fc unexport nbdt

# nbd-server and the kernel client
uri=$("$FLEECECTL" export nbdt --server nbd-server 2>"$dir/err")
ktap_result "export --server nbd-server" $? || ktap_diag "$uri $(cat "$dir/err")"
sock=${uri#*socket=}
nbd-client -unix "$sock" /dev/nbd0 -N nbdt >"$dir/err" 2>&1
ktap_result "nbd-client connects /dev/nbd0" $? || ktap_diag "$(cat "$dir/err")"
fleece_cleanup nbd-client -d /dev/nbd0
# the first 4 MiB were released above: compare the next 16 MiB
got=$(dd if=/dev/nbd0 bs=1M skip=4 count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1)
want=$(dd if="$dir/qemu.img" bs=1M skip=4 count=16 status=none | sha256sum | cut -d' ' -f1)
ktap_result "the nbd-client copy equals the point in time (MiB 4 to 20)" \
	"$([ "$got" = "$want" ]; echo $?)"
nbd-client -d /dev/nbd0 >/dev/null 2>&1
fc_ok "unexport stops nbd-server" unexport nbdt

writer_stop
ktap_result "the writer saw no I/O error" $?
fc_ok "end" end nbdt
ktap_finish
