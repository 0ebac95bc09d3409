#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
# TIMEOUT: 120
#
# dm-fleece.ko loads for the running kernel, registers both targets, and
# unloads and reloads cleanly.  Leaves the module loaded.
. "$(dirname "$0")/../lib/ktap.sh"

fleece_require_root
fleece_require dmsetup insmod rmmod modinfo
ko=${FLEECE_KO:-$FLEECE_SRC/build/$(uname -r)/dm-fleece.ko}
[ -e "$ko" ] || ktap_skip_all "$ko is not built (make modules KVER=$(uname -r))"
loops=$(fleece_stress 3 50)
bad='WARNING:|BUG:|Oops|general protection|refcount_t|list_(add|del) corruption|kmem_cache|leak'
klog_start=$(dmesg | wc -l)

targets_listed() {
	local t
	for t in "$@"; do
		dmsetup targets | grep -q "^$t[[:space:]]" || return 1
	done
}

targets_gone() {
	! dmsetup targets | grep -Eq '^fleece(-view)?[[:space:]]'
}

ktap_plan 9
ktap_check "vermagic of dm-fleece.ko matches $(uname -r)" \
	bash -c "modinfo -F vermagic '$ko' | grep -q '^$(uname -r) '"
fleece_load >/dev/null 2>&1
ktap_check "dm-fleece is loaded" test -d /sys/module/dm_fleece
ktap_check "dmsetup targets lists fleece and fleece-view" targets_listed fleece fleece-view
ktap_diag "$(dmsetup targets | grep fleece)"
ktap_check "rmmod dm_fleece" rmmod dm_fleece
ktap_check "the targets are gone after rmmod" targets_gone
ktap_check "insmod dm-fleece.ko again" fleece_load
ktap_check "both targets are back" targets_listed fleece fleece-view

cycle() {
	local i
	for ((i = 0; i < loops; i++)); do
		rmmod dm_fleece || return 1
		fleece_load || return 1
	done
	targets_listed fleece fleece-view
}
ktap_check "rmmod/insmod $loops times" cycle

new_klog() { dmesg | tail -n +$((klog_start + 1)); }
if new_klog | grep -Eq "$bad"; then
	ktap_diag "$(new_klog | grep -E -A5 "$bad" | head -n 40)"
	ktap_fail "kernel log clean after load/unload"
else
	ktap_ok "kernel log clean after load/unload"
fi
ktap_finish
