#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 5
# Harness self-check: a test that runs past its timeout must fail.
. "$FLEECE_SRC/selftests/lib/ktap.sh"
ktap_plan 2
ktap_ok "before the sleep"
sleep 600
ktap_ok "after the sleep (never printed)"
ktap_finish
