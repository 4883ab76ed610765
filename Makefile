# amdvi-bench: an emulated AMD IOMMUv2-like unit with ATS behind vhost-user,
# and a guest test suite for mmu_notifier ordering. See README.md.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test test-rust lint fmt bench clean sim deps kernels kernels-clear run test-vm \
	test-negative vm-bins script-bin test-scripts-vm matrix matrix-stress

all: build

build:
	$(CARGO) build --release --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

test-rust:
	$(CARGO) test --workspace --release

# Every shipped ordering script (sim/scripts), exhaustively: a verdict per
# script and each counterexample timeline; fails when a verdict differs from
# the script's expectation.
SIM_SCRIPTS ?= $(sort $(wildcard sim/scripts/*.amdvi))

sim:
	$(CARGO) run --release -q -p amdvi-sim -- $(SIM_SCRIPTS)

test: lint test-rust sim test-vm test-negative test-scripts-vm matrix mutants

bench:
	$(CARGO) bench -p iommu-dev

clean:
	$(CARGO) clean

# ---- guest VM runs (guest-tests/runner, binary amdvi-run) ----------------
# make deps                       install/check QEMU >= 10, busybox, cpio, gcc
# make kernels                    guest kernels into the per-user kernel cache
# make run ARGS="--kver 6.1 --filter 'cow*' -v"    one guest run
# make test-vm                    6.12 with 5- and 4-level paging, 6.1
# KVER="6.12.117+deb12-cloud-amd64 6.1.0-41-cloud-amd64" pins guest kernels.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
AMDVI_RUN := $(TARGET_DIR)/release/amdvi-run --daemon $(TARGET_DIR)/release/vhost-device-amdvi
# kernel series:paging levels
TEST_VM_CONFIGS ?= 6.12:5 6.12:4 6.1:5
ARGS ?=
KVER ?=
export KVER
KERNEL_SERIES ?= 6.12 6.1

deps:
	scripts/deps.sh

# Debian's cloud kernels, unpacked under ~/.cache/amdvi-bench (no root, and
# nothing under /boot or /lib/modules). amdvi-run also fetches on demand.
kernels:
	scripts/kernel-cache.sh fetch $(KERNEL_SERIES)

kernels-clear:
	scripts/kernel-cache.sh clear

vm-bins:
	$(CARGO) build --release --bin vhost-device-amdvi --bin amdvi-run

run: deps kernels vm-bins
	$(AMDVI_RUN) $(ARGS)

test-vm: deps kernels vm-bins
	@fail=0; for c in $(TEST_VM_CONFIGS); do \
		k=$${c%%:*}; p=$${c##*:}; \
		echo "== test-vm: kernel $$k, $$p-level paging"; \
		$(AMDVI_RUN) --kver $$k --paging $$p --json build/results-$$k-$${p}lvl.json $(ARGS) || fail=1; \
	done; exit $$fail

# Negative controls: the bench must catch the bugs it exists for.
# 1. notifier_mode=end_only (invalidate only in invalidate_range_end, the
#    ordering the 2017 thread rejects for COW): cow_notifier_order must fail
#    with R1 (stale page) findings.
# 2. configs/broken-atc.toml (the device ignores ATC invalidations): the COW
#    scenarios must fail with R1 or stale findings.
test-negative: deps kernels vm-bins
	$(AMDVI_RUN) --kver 6.12 --filter cow_notifier_order --modparams notifier_mode=end_only \
		--expect-caught r1 --json build/negative-end-only.json
	$(AMDVI_RUN) --kver 6.12 --filter 'cow_*' --config configs/broken-atc.toml \
		--expect-caught r1,stale --json build/negative-broken-atc.json

# Fault matrix: every planted device bug (configs/broken-*.toml) and driver
# bug (module parameters inv_bug=..., notifier_mode=...) against the
# scenarios its row names in guest-tests/faults/expected.json, one boot per
# row, plus the control (the correct configuration on the union of those
# scenarios). Fails when a cell differs from the expected matrix, a planted
# bug escapes, or the control shows a failing finding. Prints the matrix and
# writes build/matrix/matrix.{txt,json}.
#   make matrix ROWS=broken-atc,inv-first-page RUNS=3
MATRIX_ROWS ?= $(ROWS)
matrix: deps kernels vm-bins
	python3 guest-tests/faults/matrix.py $(if $(MATRIX_ROWS),--rows $(MATRIX_ROWS)) \
		$(if $(RUNS),--runs $(RUNS))

# Catch rate of a weak negative control with and without each stress
# config (delay rules that widen race windows, configs/stress-*.toml):
# build/matrix-stress/catch-rate.{txt,json}. Not part of make test.
STRESS_RUNS ?= 5
matrix-stress: deps kernels vm-bins
	python3 guest-tests/faults/stress.py --runs $(STRESS_RUNS)

# Ordering scripts in the guest: one 6.12 boot runs every shipped script's
# literal order on a private page table against the daemon (amdvi-script),
# and amdvi-run checks that each guest verdict equals amdvi-sim --literal's.
# Then the negative control: with configs/broken-atc.toml the correct-order
# COW script must turn UNSAFE in the guest (R1), agreeing with
# amdvi-sim --literal --fault atc_invalidate:drop.
SCRIPT_TARGET := x86_64-unknown-linux-gnu
SCRIPT_BIN := $(TARGET_DIR)/$(SCRIPT_TARGET)/release/amdvi-script

script-bin:
	RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
		$(CARGO) build --release --target $(SCRIPT_TARGET) -p amdvi-script

test-scripts-vm: deps kernels vm-bins script-bin
	$(AMDVI_RUN) --kver 6.12 --script-bin $(SCRIPT_BIN) --scripts $(SIM_SCRIPTS) \
		--json build/results-scripts.json
	$(AMDVI_RUN) --kver 6.12 --script-bin $(SCRIPT_BIN) --scripts sim/scripts/cow-correct.amdvi \
		--config configs/broken-atc.toml --sim-fault atc_invalidate:drop \
		--expect-caught r1 --json build/negative-scripts-broken-atc.json

include guest-tests/mutants/mutants.mk
