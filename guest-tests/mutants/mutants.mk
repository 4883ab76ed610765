# Source-built guest kernel and kernel mutants (included from the Makefile).
#
# make kernel        linux-source-6.12 from Debian, tinyconfig +
#                    guest-tests/kernel/amdvi.config, built out of tree with
#                    ccache in $(AMDVI_CACHE)/build/base
# make run-kernel    the default suite on that kernel (ARGS as for make run)
# make mutants       control + every guest-tests/mutants/*.patch: build, boot,
#                    judge; build/mutants/matrix.{txt,json}
#                    (MUTANTS="a b" for a subset, RUNS=3 for catch rates)
# make mutants-ci    the CI sample: control + $(MUTANTS_CI)

AMDVI_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/amdvi-bench
export AMDVI_CACHE
KERNEL_TREE := $(AMDVI_CACHE)/build/base
KERNEL_IMAGE := $(KERNEL_TREE)/arch/x86/boot/bzImage
MUTANTS ?=
MUTANTS_CI ?= wp-page-copy-set-before-flush x86-ranged-flush-no-secondary \
	mprotect-wrprotect-no-flush fork-wrprotect-local-flush

.PHONY: kernel kernel-deps run-kernel mutants mutants-ci

# What the kernel build needs on the host (flex, bison, libelf, ccache, ...).
kernel-deps:
	scripts/deps.sh --kernel-build

kernel: kernel-deps
	guest-tests/kernel/build.sh all

run-kernel: deps kernel vm-bins
	$(AMDVI_RUN) --kernel $(KERNEL_IMAGE) --headers $(KERNEL_TREE) $(ARGS)

mutants: deps kernel vm-bins
	guest-tests/mutants/matrix.sh $(MUTANTS)

mutants-ci: deps kernel vm-bins
	guest-tests/mutants/matrix.sh $(MUTANTS_CI)
