#!/usr/bin/env bash
# Kernel mutant matrix: for the unmodified kernel (control) and each mutant
# guest-tests/mutants/NAME.patch, build the guest kernel, boot it under the
# bench and judge the named scenarios.
#
#   guest-tests/mutants/matrix.sh [NAME...]     (default: every *.patch)
#
# One build tree ($AMDVI_CACHE/build/base, from guest-tests/kernel/build.sh)
# serves all rows: a mutant is applied to the source with patch(1), the tree
# is rebuilt (only the patched file recompiles, then vmlinux relinks), the
# bzImage is copied to $AMDVI_CACHE/mutants/NAME/, and the patch is reverted.
# Reverting and applying the next mutant share one rebuild; ccache turns the
# recompiles of the reverted files into cache hits. The tree is pristine and
# rebuilt when the script exits (also on error or ^C).
#
# Rows:
#   control  the whole default suite on the unmodified kernel: must pass.
#   NAME     the scenarios named in the patch header (`# Scenarios: a,b`),
#            with `amdvi-run --expect-caught RULES` (`# Rules: r1,stale`):
#            caught when at least one of them fails with findings of those
#            rules.
#
# Environment: RUNS (runs per mutant, default 1), PAGING (4 or 5, default 5),
# AMDVI_RUN (runner command, default target/release/amdvi-run --daemon
# target/release/vhost-device-amdvi), OUT (results dir, default build/mutants).
# Writes OUT/matrix.txt and OUT/matrix.json. Exit status 1 when the control
# fails or any mutant escapes every scenario in some run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROG=mutants
DIE_STATUS=2
. "$ROOT/scripts/common.sh"
KSRC="${KSRC:-$CACHE/src/linux-6.12}"
KOUT="$CACHE/build/${KNAME:-base}"
RUNS="${RUNS:-1}"
PAGING="${PAGING:-5}"
OUT="${OUT:-$ROOT/build/mutants}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
read -r -a RUNNER <<<"${AMDVI_RUN:-$TARGET/release/amdvi-run --daemon $TARGET/release/vhost-device-amdvi}"
APPLIED="$CACHE/mutants/applied"	# the patch currently in the source, if any

header() { sed -n "s/^# $2: *//p" "$1" | head -n 1; }

revert() {
	[[ -f "$APPLIED" ]] || return 0
	local p
	p="$(cat "$APPLIED")"
	log "reverting $(basename "$p")"
	patch -d "$KSRC" -p1 -R -s <"$p" || die "cannot revert $p from $KSRC"
	rm -f "$APPLIED"
}

apply() {
	patch -d "$KSRC" -p1 --dry-run -s <"$1" >/dev/null || die "$(basename "$1") does not apply to $KSRC"
	patch -d "$KSRC" -p1 -s <"$1"
	printf '%s\n' "$1" >"$APPLIED"
}

kbuild() {
	KNAME="${KNAME:-base}" "$ROOT/guest-tests/kernel/build.sh" build >/dev/null
}

# Leave the tree unmutated and built, whatever happened.
cleanup() {
	local rc=$?
	if [[ -f "$APPLIED" ]]; then
		revert
		log "rebuilding the unmodified kernel"
		kbuild || rc=2
	fi
	exit "$rc"
}

[[ -f "$KOUT/Module.symvers" ]] || die "no built kernel in $KOUT (run: make kernel)"
[[ -x "${RUNNER[0]}" ]] || die "no ${RUNNER[0]} (run: make vm-bins)"
mkdir -p "$OUT" "$CACHE/mutants"
# one matrix at a time per cache: they share the source tree
exec 9>"$CACHE/mutants/lock"
flock -n 9 || die "another matrix run holds $CACHE/mutants/lock"
export AMDVI_MATRIX=1 # build.sh: the mutated source is ours
revert # an earlier run that was killed hard
trap cleanup EXIT
trap 'exit 130' INT TERM

if (($#)); then
	patches=()
	for n in "$@"; do
		[[ -f "$HERE/$n.patch" ]] || die "no mutant $HERE/$n.patch"
		patches+=("$HERE/$n.patch")
	done
else
	patches=("$HERE"/*.patch)
fi

ROWS="$OUT/rows.tsv"
: >"$ROWS"

# run ROW RUN BZIMAGE [runner args...]: one boot; appends a row.
run_row() {
	local row="$1" n="$2" img="$3" t0 rc
	shift 3
	local json="$OUT/$row-$n.json" logf="$OUT/$row-$n.log"
	t0=$(date +%s)
	set +e
	"${RUNNER[@]}" --kernel "$img" --headers "$KOUT" --paging "$PAGING" \
		--build-dir "$OUT/run" --json "$json" "$@" >"$logf" 2>&1
	rc=$?
	set -e
	printf '%s\t%s\t%s\t%s\t%s\n' "$row" "$n" "$rc" "$(($(date +%s) - t0))" "$json" >>"$ROWS"
	log "$row run $n: exit $rc in $(($(date +%s) - t0)) s ($(tail -n 1 "$logf"))"
}

log "control: the whole suite on the unmodified kernel"
for ((n = 1; n <= RUNS; n++)); do
	run_row control "$n" "$KOUT/arch/x86/boot/bzImage"
done

BUILDS="$OUT/builds.tsv"
: >"$BUILDS"
for p in "${patches[@]}"; do
	name="$(basename "$p" .patch)"
	scen="$(header "$p" Scenarios)"
	rules="$(header "$p" Rules)"
	[[ -n "$scen" && -n "$rules" ]] || die "$p: header lacks '# Scenarios:' or '# Rules:'"
	revert
	apply "$p"
	t0=$(date +%s)
	log "$name: building"
	kbuild || die "$name: kernel build failed (see above)"
	printf '%s\t%s\n' "$name" "$(($(date +%s) - t0))" >>"$BUILDS"
	mkdir -p "$CACHE/mutants/$name"
	cp "$KOUT/arch/x86/boot/bzImage" "$CACHE/mutants/$name/bzImage"
	fargs=""
	for s in ${scen//,/ }; do fargs+=" -f $s"; done
	for ((n = 1; n <= RUNS; n++)); do
		run_row "$name" "$n" "$CACHE/mutants/$name/bzImage" \
			--args "${fargs# }" --expect-caught "$rules"
	done
done
revert
log "rebuilding the unmodified kernel"
kbuild

python3 "$HERE/matrix.py" "$HERE" "$ROWS" "$BUILDS" "$OUT/matrix.json" | tee "$OUT/matrix.txt"
