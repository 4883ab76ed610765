#!/usr/bin/env bash
# Builds the amdvi-bench guest kernel from Debian's linux-source-6.12.
#
#   guest-tests/kernel/build.sh [fetch|config|build|all]   (default: all)
#
# fetch   apt-get download linux-source-6.12 through scripts/kernel-cache.sh
#         (private apt state, no root) and unpack it once to
#         $AMDVI_CACHE/src/linux-6.12
# config  tinyconfig + guest-tests/kernel/amdvi.config (merge_config.sh) in
#         the out-of-tree build dir $AMDVI_CACHE/build/$KNAME, then checks that
#         every option of the fragment survived olddefconfig
# build   make (bzImage + modules, hence Module.symvers) through ccache
#
# Environment: AMDVI_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/amdvi-bench),
# KNAME (build dir name, default base), KJOBS (default 2), KSRC (source tree).
# Prints the bzImage and the build tree to pass to amdvi-run --kernel/--headers.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROG=kernel
. "$ROOT/scripts/common.sh"
FRAGMENT="$HERE/amdvi.config"
SERIES=6.12
KSRC="${KSRC:-$CACHE/src/linux-$SERIES}"
KNAME="${KNAME:-base}"
KOUT="$CACHE/build/$KNAME"
KJOBS="${KJOBS:-2}"

kmake() {
	nice -n 10 make -s -C "$KSRC" O="$KOUT" CC="ccache gcc" HOSTCC="ccache gcc" \
		LOCALVERSION=-amdvi -j"$KJOBS" "$@"
}

fetch() {
	if [[ -f "$KSRC/Makefile" ]]; then
		log "source present: $KSRC"
		return
	fi
	local dl="$CACHE/dl"
	mkdir -p "$dl" "$(dirname "$KSRC")"
	# bookworm-security carries linux-source-6.12; the kernel cache's private
	# apt configuration (no root, the host's apt state untouched) fetches it
	log "apt-get download linux-source-$SERIES"
	(cd "$dl" && AMDVI_CACHE="$CACHE" "$ROOT/scripts/kernel-cache.sh" apt-get -q -q download "linux-source-$SERIES")
	local deb x
	deb="$(ls -t "$dl"/linux-source-"$SERIES"_*.deb | head -n 1)"
	x="$(mktemp -d "$dl/x.XXXXXX")"
	dpkg-deb -x "$deb" "$x"
	log "unpacking $(basename "$deb")"
	tar -xaf "$x/usr/src/linux-source-$SERIES.tar.xz" -C "$x"
	mv "$x/linux-source-$SERIES" "$KSRC"
	rm -rf "$x"
}

# Every CONFIG_X=v (and '# CONFIG_X is not set') line of the fragment must
# hold in the final .config
# (olddefconfig drops options whose dependencies are missing, silently).
check_config() {
	local bad=0 line key
	while IFS= read -r line; do
		if [[ "$line" =~ ^(CONFIG_[A-Z0-9_]+)= ]]; then
			key="${BASH_REMATCH[1]}"
		elif [[ "$line" =~ ^#\ (CONFIG_[A-Z0-9_]+)\ is\ not\ set$ ]]; then
			key="${BASH_REMATCH[1]}"
			grep -q "^$key=" "$KOUT/.config" || continue
		else
			continue
		fi
		if ! grep -qx -- "$line" "$KOUT/.config"; then
			log "fragment asks $line, .config has: $(grep -- "^$key=\|# $key is not set" "$KOUT/.config" || echo nothing)"
			bad=1
		fi
	done <"$FRAGMENT"
	((bad == 0)) || die "config fragment not satisfied (missing dependency in $FRAGMENT)"
}

config() {
	[[ -f "$KSRC/Makefile" ]] || die "no source in $KSRC (run: $0 fetch)"
	mkdir -p "$KOUT"
	if [[ -f "$KOUT/.config" && "$KOUT/.config" -nt "$FRAGMENT" ]]; then
		return
	fi
	log "config: tinyconfig + $(basename "$FRAGMENT") in $KOUT"
	kmake tinyconfig >/dev/null
	(cd "$KOUT" && "$KSRC/scripts/kconfig/merge_config.sh" -m -O "$KOUT" "$KOUT/.config" "$FRAGMENT" >/dev/null)
	kmake olddefconfig >/dev/null
	check_config
}

build() {
	if [[ -f "$CACHE/mutants/applied" && -z "${AMDVI_MATRIX:-}" ]]; then
		die "a kernel mutant is applied to $KSRC ($(cat "$CACHE/mutants/applied")): wait for make mutants, or revert it (patch -R) and remove $CACHE/mutants/applied"
	fi
	config
	log "make (bzImage + modules) in $KOUT"
	kmake
	[[ -f "$KOUT/Module.symvers" ]] || die "no Module.symvers in $KOUT after make"
	printf 'bzImage: %s\nheaders: %s\n' "$KOUT/arch/x86/boot/bzImage" "$KOUT"
}

case "${1:-all}" in
fetch) fetch ;;
config) config ;;
build) build ;;
all) fetch && build ;;
*) die "usage: $0 [fetch|config|build|all]" ;;
esac
