#!/usr/bin/env bash
# Run the cargo-fuzz targets of fuzz/ one after the other, each from its
# seed corpus (fuzz/corpus/<target>, read-only) into build/fuzz/<target>,
# and print one row per target: executions, new corpus units, crashes.
# Exits non-zero when a target crashes (its input is kept under
# fuzz/artifacts/<target>/) or cannot be built or run.
#
#   scripts/fuzz.sh [TARGET...]      default: every target in fuzz/Cargo.toml
#
# Environment: FUZZ_SECONDS (30) per target, FUZZ_RUNS (0: no limit) stops a
# target after that many executions, whichever comes first. Installs
# cargo-fuzz (cargo install --locked) when it is missing; needs the nightly
# toolchain (rustup toolchain install nightly).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROG=fuzz
. "$ROOT/scripts/common.sh"
CARGO="${CARGO:-cargo}"
SECONDS_EACH="${FUZZ_SECONDS:-30}"
RUNS="${FUZZ_RUNS:-0}"
OUT="$ROOT/build/fuzz"

[[ "$SECONDS_EACH" =~ ^[0-9]+$ ]] || die "FUZZ_SECONDS must be a number of seconds, not '$SECONDS_EACH'"
[[ "$RUNS" =~ ^[0-9]+$ ]] || die "FUZZ_RUNS must be a number of executions, not '$RUNS'"

if ! "$CARGO" +nightly --version >/dev/null 2>&1; then
	if command -v rustup >/dev/null 2>&1; then
		log "installing the nightly toolchain (rustup toolchain install nightly --profile minimal)"
		rustup toolchain install nightly --profile minimal >&2 ||
			die "no nightly toolchain, and rustup could not install it"
	else
		die "cargo-fuzz needs the nightly toolchain, and there is no rustup to install it"
	fi
fi
if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
	log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
	"$CARGO" install cargo-fuzz --locked >&2 || die "cargo install cargo-fuzz failed"
	PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
	"$CARGO" fuzz --version >/dev/null 2>&1 || die "cargo-fuzz installed, but cargo does not find it"
fi

cd "$ROOT/fuzz"
if (($# > 0)); then
	targets=("$@")
else
	mapfile -t targets < <("$CARGO" +nightly fuzz list)
fi
((${#targets[@]} > 0)) || die "no fuzz targets found in fuzz/"

log "building ${#targets[@]} targets"
"$CARGO" +nightly fuzz build -O >&2 || die "cargo fuzz build failed"

mkdir -p "$OUT"
failed=()
rows=()
for t in "${targets[@]}"; do
	[[ -d "corpus/$t" ]] || die "target $t has no seed corpus (fuzz/corpus/$t)"
	mkdir -p "$OUT/$t"
	logf="$OUT/$t.log"
	args=(-max_total_time="$SECONDS_EACH" -print_final_stats=1)
	((RUNS > 0)) && args+=(-runs="$RUNS")
	log "$t: ${SECONDS_EACH} s$( ((RUNS > 0)) && printf ' or %s executions' "$RUNS"), log $logf"
	start=$(date +%s)
	rc=0
	"$CARGO" +nightly fuzz run -O "$t" "$OUT/$t" "corpus/$t" -- "${args[@]}" >"$logf" 2>&1 || rc=$?
	secs=$(($(date +%s) - start))
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -n 1)
	units=$(sed -n 's/^stat::new_units_added: *//p' "$logf" | tail -n 1)
	crashes=0
	if ((rc != 0)) || grep -qE '^==[0-9]+== ERROR|^SUMMARY: |panicked at' "$logf"; then
		crashes=1
		failed+=("$t")
		grep -E '^==[0-9]+== ERROR|^SUMMARY: |panicked at|^artifact_prefix|Test unit written' "$logf" >&2 || tail -n 20 "$logf" >&2
	fi
	rows+=("$(printf '%-12s %12s %8s %8s %6s s' "$t" "${execs:-?}" "${units:-?}" "$crashes" "$secs")")
done

printf '%-12s %12s %8s %8s %8s\n' target executions new crashes time
printf '%s\n' "${rows[@]}"
if ((${#failed[@]} > 0)); then
	die "crashed or failed: ${failed[*]} (logs in build/fuzz/<target>.log, inputs in fuzz/artifacts/<target>/)"
fi
