# amdvi-bench: an emulated AMD IOMMUv2-like unit with ATS behind vhost-user,
# and a guest test suite for mmu_notifier ordering. See README.md.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test test-rust lint fmt bench clean

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

test: lint test-rust

bench:
	$(CARGO) bench -p iommu-dev

clean:
	$(CARGO) clean
