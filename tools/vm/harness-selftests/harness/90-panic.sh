#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# Harness self-check: a kernel panic must be reported as a failure of the
# test that caused it, and the runner must not hang.  Ends the guest.
. "$FLEECE_SRC/selftests/lib/ktap.sh"
ktap_plan 1
ktap_ok "about to panic"
sync
echo 1 >/proc/sys/kernel/sysrq
echo c >/proc/sysrq-trigger
sleep 60
ktap_finish
