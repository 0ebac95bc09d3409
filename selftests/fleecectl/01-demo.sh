#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 300
#
# The demo scenario (tools/demo-guest.sh, what `make demo` shows) as a
# selftest: an LVM volume with ext4 and a writer; attach in place,
# snapshot, export; backups over qemu-nbd (qemu-img convert) and
# nbd-server (nbd-client + dd) and with fleecectl backup, all equal to the
# point in time while the writer runs; fsck and a read-only mount of the
# backup; end and detach without a write error.  Every check is a TAP test
# point.  A 64 MiB volume keeps it short under TCG.
export DEMO_TAP=1
export DEMO_SIZE=${DEMO_SIZE:-64}
exec bash "$(dirname "$0")/../../tools/demo-guest.sh"
