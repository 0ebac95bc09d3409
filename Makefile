# SPDX-License-Identifier: GPL-2.0-only
#
# dm-fleece top-level Makefile.  The kernel module itself is described by
# ./Kbuild; this file drives kbuild in per-kernel build directories
# (build/<KVER>/), the userspace tools, the tests in QEMU guests, packaging
# and checks.  `make help` lists the targets.

SHELL := /bin/bash
SRC := $(CURDIR)

# The kernel to build against: KVER (a version, or a short alias such as
# 6.1 or 6.12), or KDIR (a kernel build tree).  Default: the running
# kernel if its headers are installed, else the newest installed kernel.
ifeq ($(KVER),)
ifneq ($(KDIR),)
KVER := $(shell sed -n 's/^\#define UTS_RELEASE "\(.*\)"/\1/p' $(KDIR)/include/generated/utsrelease.h 2>/dev/null)
endif
endif
ifeq ($(KVER),)
KVER := $(shell tools/vm/kernels.sh default 2>/dev/null)
endif
override KVER := $(firstword $(shell tools/vm/kernels.sh $(KVER) 2>/dev/null || echo $(KVER)))
KDIR ?= /lib/modules/$(KVER)/build

# kbuild W= (extra warnings): 1 by default; `make W=` turns it off.
W ?= 1
export W

# Which kernels `make check`, `make sparse` and `make dkms-check` cover
# (default: every supported kernel that is installed), and the tests.
KERNELS ?= all
export KERNELS TESTS STRESS

DESTDIR ?=
PREFIX ?= /usr/local
MANDIR ?= $(PREFIX)/share/man
export DESTDIR PREFIX MANDIR

CHECKPATCH ?= /usr/src/linux-source-6.1/scripts/checkpatch.pl
FLEECECTL := $(wildcard tools/fleecectl/Makefile)

.PHONY: all modules modules-all tools selftests sparse checkpatch deps \
	check check-harness stress demo bench dkms-check install uninstall \
	clean help debug-kernel

all: modules tools

## modules: build dm-fleece.ko for KVER in build/KVER/ (W=1, warnings fail)
modules:
	@test -n "$(KVER)" || { echo "no kernel headers found: run 'make deps'" >&2; exit 1; }
	@KDIR=$(KDIR) tools/kbuild.sh $(KVER)
	@echo "built build/$(KVER)/dm-fleece.ko"

## modules-all: build dm-fleece.ko for every kernel in KERNELS
modules-all:
	@set -e; for k in $$(tools/vm/kernels.sh $(KERNELS)); do \
		tools/kbuild.sh --quiet $$k; echo "built build/$$k/dm-fleece.ko"; done

## tools: userspace (tools/fleecectl, tools/fleece-md-check) and the C selftests
tools: selftests
ifneq ($(FLEECECTL),)
	$(MAKE) -C tools/fleecectl
endif
	$(MAKE) -C tools/fleece-md-check

selftests:
	@$(MAKE) --no-print-directory -s -C selftests O=$(SRC)/build/selftests

## sparse: sparse (kbuild C=2) on every file for every kernel in KERNELS
sparse:
	@set -e; for k in $$(tools/vm/kernels.sh $(KERNELS)); do \
		tools/kbuild.sh --quiet --sparse $$k; echo "sparse: $$k clean"; done

## checkpatch: the kernel's checkpatch.pl --strict on our kernel sources
checkpatch:
	@test -x $(CHECKPATCH) || { echo "$(CHECKPATCH) missing: run 'make deps'" >&2; exit 1; }
	$(CHECKPATCH) --strict --no-tree --terse --show-types -f \
		$(wildcard dm-fleece/*.[ch] include/*.h include/*/*.h)

## deps: install every package needed (Debian 12, root); quick when done
deps:
	@tools/deps.sh

## check: deps, builds, host tests, dkms, then every selftest in a guest per kernel
check: deps
	@tools/check.sh

## debug-kernel: build + install the KASAN/lockdep/kmemleak 6.12 kernel (cached); then KERNELS=debug
debug-kernel: deps
	@tools/debug-kernel.sh

## check-harness: prove the harness catches failures, WARNINGs, timeouts, panics, hangs
check-harness: deps
	@tools/check-harness.sh

## stress: `make check` with STRESS=long
stress: deps
	@STRESS=long tools/check.sh

## demo: the end-to-end demonstration (tools/demo.sh)
demo: deps
	@if [ -x tools/demo.sh ]; then tools/demo.sh; \
	elif [ -f tools/demo.sh ]; then bash tools/demo.sh; \
	else echo "tools/demo.sh does not exist yet" >&2; exit 1; fi

## bench: benchmarks (bench/run.sh)
bench: deps
	@if [ -f bench/run.sh ]; then bash bench/run.sh; \
	else echo "bench/run.sh does not exist yet" >&2; exit 1; fi

## dkms-check: dkms build for every kernel in KERNELS, in a private dkms tree
dkms-check:
	@tools/dkms-check.sh $(KERNELS)

## install: module (dkms, or modules_install with DESTDIR), fleecectl, man pages
install: all
	@tools/install.sh install $(KVER)

uninstall:
	@tools/install.sh uninstall $(KVER)

## clean: remove build/ and the tools' objects (the source tree stays clean)
clean:
	rm -rf build generated
	$(MAKE) -C tools/fleece-md-check clean
ifneq ($(FLEECECTL),)
	$(MAKE) -C tools/fleecectl clean
endif

help:
	@echo "dm-fleece make targets (KVER=$(KVER), KERNELS=$(KERNELS)):"
	@sed -n 's/^## /  /p' $(MAKEFILE_LIST)
	@echo "variables: KVER= or KDIR= (one kernel), KERNELS=\"6.1 6.12\" (or debug), TESTS=glob,"
	@echo "  STRESS=short|long, W= (kbuild warnings), DESTDIR= PREFIX= (install)"
