#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# Harness self-check: a kernel WARNING during a test must fail it, even
# though every assertion of the test itself passes.
. "$FLEECE_SRC/selftests/lib/ktap.sh"
ko=$FLEECE_BUILD/harness/$(uname -r)/fleece_warn_test.ko
[ -e "$ko" ] || ktap_skip_all "$ko not built (make check-harness builds it)"
ktap_plan 2
ktap_check "insmod fleece_warn_test (init does WARN_ON(1))" insmod "$ko"
ktap_check "rmmod fleece_warn_test" rmmod fleece_warn_test
ktap_finish
