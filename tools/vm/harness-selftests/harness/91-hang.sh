#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 5
# Harness self-check: if the guest stops making progress (here: the guest
# runner is stopped, so even its own timeout cannot report), the host's
# watchdog must kill QEMU and fail the test.
. "$FLEECE_SRC/selftests/lib/ktap.sh"
ktap_plan 1
ktap_ok "stopping the guest runner"
kill -STOP "$PPID"
sleep 600
ktap_finish
