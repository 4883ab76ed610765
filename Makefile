# amdvi-bench: an emulated AMD IOMMUv2-like unit with ATS behind vhost-user,
# and a guest test suite for mmu_notifier ordering. See README.md.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test test-rust lint fmt bench clean sim deps kernels kernels-clear run shadow test-vm \
	test-negative vm-bins script-bin test-scripts-vm matrix matrix-stress fuzz-smoke soak bench-stable

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

test: lint test-rust bench-stable sim fuzz-smoke test-vm test-negative test-scripts-vm matrix shadow mutants

bench:
	$(CARGO) bench -p iommu-dev

# Instructions per operation (callgrind) of the model's hot paths: a walk,
# IOTLB and ATC hits, invalidations, 4 KiB and 64 KiB DMA
# (iommu-dev/examples/bench_stable.rs), against the counts checked in as
# iommu-dev/benches/stable-counts.toml. Fails when one grows by more than
# 10%. UPDATE=1 rewrites the counts after a deliberate change: commit them
# with it. Needs valgrind.
bench-stable: deps
	$(CARGO) build --release -p iommu-dev --example bench_stable
	python3 scripts/bench-stable.py --bin $(TARGET_DIR)/release/examples/bench_stable $(if $(UPDATE),--update)

# Every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each (FUZZ_RUNS stops a
# target earlier after that many executions), from its seed corpus into
# build/fuzz/<target>; a table of executions and crashes, non-zero on a
# crash. Installs cargo-fuzz when missing; needs the nightly toolchain.
FUZZ_SECONDS ?= 30
FUZZ_RUNS ?= 0
FUZZ_TARGETS ?= config_toml ktap sim_script dte_gcr3 walker commands dispatcher vhost_user

fuzz-smoke:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) scripts/fuzz.sh $(FUZZ_TARGETS)

clean:
	$(CARGO) clean

# ---- guest VM runs (guest-tests/runner, binary amdvi-run) ----------------
# make deps                       install/check QEMU >= 10, busybox, cpio, gcc
# make kernels                    guest kernels into the per-user kernel cache
# make run ARGS="--kver 6.1 --filter 'cow*' -v"    one guest run
# make test-vm                    6.12 with 5- and 4-level paging, 6.1
# make soak DURATION=30m          one daemon, the suite booted again and again
# KVER="6.12.117+deb12-cloud-amd64 6.1.0-41-cloud-amd64" pins guest kernels.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
AMDVI_RUN := $(TARGET_DIR)/release/amdvi-run --daemon $(TARGET_DIR)/release/vhost-device-amdvi
# kernel series:paging levels
TEST_VM_CONFIGS ?= 6.12:5 6.12:4 6.1:5
ARGS ?=
KVER ?=
export KVER
KERNEL_SERIES ?= 6.12 6.1

DEPS_ARGS ?=
deps:
	scripts/deps.sh $(DEPS_ARGS)

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

# Soak (README "Soak"): one daemon for DURATION, the default suite booted
# against it again and again, cycling 6.12/6.1 and 5-/4-level paging (a new
# QEMU on the same socket each time). Fails unless every boot passed with 0
# failing findings and 0 lost events and no fd leaked; then draws
# build/soak/soak.png from build/soak/samples.csv. The exit status is the
# soak's: a plot that cannot be drawn is a warning. DEPS_ARGS is
# target-specific, so the deps prerequisite also installs matplotlib.
#   make soak DURATION=30m ARGS="--soak-configs 6.12:5,6.12:4"
DURATION ?= 10m
soak: DEPS_ARGS += --plot
soak: deps kernels vm-bins
	@rc=0; $(AMDVI_RUN) --soak $(DURATION) $(ARGS) || rc=$$?; \
	python3 scripts/soak-plot.py build/soak/samples.csv build/soak/soak.png || \
		echo "make soak: warning: no plot (scripts/soak-plot.py failed); the soak's verdict stands"; \
	exit $$rc

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

# Shadow mode (docs/shadow.md): programs run with the device following their
# address space. Each workload must pass on the unmodified 6.12 (no failing
# finding), and the planted notifier_mode=end_only must be caught (R1) under
# the COW workload. Not part of make test (about a minute of QEMU).
SHADOW_RUNS ?= 'amdvi-churn cow 200' 'amdvi-churn dontneed 500' 'amdvi-churn munmap 500' \
	'amdvi-churn mprotect 500' "sh -c 'for i in 1 2; do ls -R / >/dev/null; done'"

shadow: deps kernels vm-bins
	@fail=0; for c in $(SHADOW_RUNS); do \
		echo "== shadow: $$c"; \
		$(AMDVI_RUN) --kver 6.12 --shadow "--rate 0 -- $$c" $(ARGS) || fail=1; \
	done; \
	echo "== shadow: amdvi-churn cow 200 with notifier_mode=end_only (must be caught)"; \
	$(AMDVI_RUN) --kver 6.12 --modparams notifier_mode=end_only \
		--shadow '--rate 0 -- amdvi-churn cow 200' --expect-caught r1 $(ARGS) || fail=1; \
	exit $$fail

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
