#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# Harness self-check: passes, and leaves a process, a dm device and a loop
# device behind, which the runner must remove (diagnostics only).
. "$FLEECE_SRC/selftests/lib/ktap.sh"
fleece_require_root
ktap_plan 3
ktap_ok "a passing point"
ktap_check "dmsetup create (left behind on purpose)" dmsetup create harness-leak --table "0 8 zero"
modprobe loop
img=/tmp/harness-leak.img
truncate -s 1M "$img"
ktap_check "losetup (left behind on purpose)" losetup -f "$img"
sleep 1000 &
ktap_finish
