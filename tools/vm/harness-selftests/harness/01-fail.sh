#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# Harness self-check: a failing assertion must fail the run.
. "$FLEECE_SRC/selftests/lib/ktap.sh"
ktap_plan 2
ktap_check "true is true" true
ktap_check "deliberately failing assertion" test 1 -eq 2
ktap_finish
