#!/usr/bin/env bash
# Install (or check) what only the host can provide for the VM test path:
# QEMU >= 10.0, a static busybox, cpio, kmod (depmod) and the C toolchain.
# The guest kernels are not host packages: scripts/kernel-cache.sh fetches
# them into a per-user cache, and nothing here touches /boot.
#
# Idempotent: when everything is present it runs a few local checks only.
# Debian 12: QEMU from bookworm-backports (10.0, gpio carrier).
# Debian 13: QEMU from trixie-backports (11.x, generic test-device carrier).
# As root, or through sudo; otherwise it prints the commands to run.
# Elsewhere it lists what to install and exits 1.
#
#   scripts/deps.sh                 the VM test path (make run, make test-vm)
#   scripts/deps.sh --kernel-build  also what make kernel and make mutants
#                                   need: kbuild's tools, libelf for objtool,
#                                   ccache, xz for the source tarball
#   scripts/deps.sh --plot          also matplotlib for the soak's plot
#                                   (make soak, scripts/soak-plot.py); on
#                                   another distribution only a note
# python3 runs the fault and mutant matrices (make matrix, make mutants);
# valgrind (callgrind) counts instructions for make bench-stable.
set -euo pipefail

KERNEL_BUILD=0
PLOT=0
for arg in "$@"; do
	case "$arg" in
	--kernel-build) KERNEL_BUILD=1 ;;
	--plot) PLOT=1 ;;
	*) printf 'deps: error: unknown argument %s (expected --kernel-build, --plot or nothing)\n' "$arg" >&2; exit 2 ;;
	esac
done

QEMU_MIN_MAJOR=10
QEMU_MIN_MINOR=0
BASE_PKGS=(busybox-static cpio build-essential kmod debian-archive-keyring python3 valgrind)
KERNEL_PKGS=(flex bison bc libelf-dev ccache xz-utils)
PLOT_PKGS=(python3-matplotlib)
APT_OPTS=(-o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)

PROG=deps
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pkg_installed() {
	[[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# Prints "MAJOR MINOR" of qemu-system-x86_64, or nothing.
qemu_version() {
	command -v qemu-system-x86_64 >/dev/null 2>&1 || return 0
	qemu-system-x86_64 -version 2>/dev/null |
		sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1
}

qemu_ok() {
	local v major minor
	v="$(qemu_version)"
	[[ -n "$v" ]] || return 1
	read -r major minor <<<"$v"
	((major > QEMU_MIN_MAJOR || (major == QEMU_MIN_MAJOR && minor >= QEMU_MIN_MINOR)))
}

# The host: bookworm, trixie or other.
codename=other
if [[ -r /etc/os-release ]]; then
	# shellcheck disable=SC1091
	. /etc/os-release
	if [[ "${ID:-}" == debian ]]; then
		case "${VERSION_ID:-}" in
		12) codename=bookworm ;;
		13) codename=trixie ;;
		esac
	fi
fi

missing=()
qemu_ok || missing+=("qemu-system-x86 (>= ${QEMU_MIN_MAJOR}.${QEMU_MIN_MINOR})")
[[ -x /bin/busybox ]] || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v python3 >/dev/null || missing+=(python3)
command -v depmod >/dev/null || [[ -x /usr/sbin/depmod || -x /sbin/depmod ]] || missing+=(kmod)
command -v gcc >/dev/null && command -v make >/dev/null || missing+=(build-essential)
if ((KERNEL_BUILD)); then
	for c in flex bison bc ccache xz; do
		command -v "$c" >/dev/null || missing+=("$c")
	done
	[[ -e /usr/include/gelf.h ]] || missing+=(libelf-dev)
fi
# matplotlib from pip or elsewhere does as well as Debian's. The python3 on
# the PATH may not be Debian's (pyenv): Debian's package serves
# /usr/bin/python3, which scripts/soak-plot.py falls back to.
plot_ok() {
	python3 -c 'import matplotlib' >/dev/null 2>&1 ||
		{ [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1; }
}
if ((PLOT)) && ! plot_ok; then
	if [[ "$codename" == other ]]; then
		log "note: python3 has no matplotlib: the soak runs, scripts/soak-plot.py cannot draw its plot"
	else
		missing+=("${PLOT_PKGS[@]}")
	fi
fi
if [[ "$codename" != other ]]; then
	for p in "${BASE_PKGS[@]}"; do
		pkg_installed "$p" || missing+=("$p")
	done
	if ((KERNEL_BUILD)); then
		for p in "${KERNEL_PKGS[@]}"; do
			pkg_installed "$p" || missing+=("$p")
		done
	fi
fi

if ((${#missing[@]} == 0)); then
	log "qemu: $(qemu-system-x86_64 -version | head -n 1)"
	log "all host dependencies present (guest kernels: scripts/kernel-cache.sh)"
	exit 0
fi

log "missing: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"

if [[ "$codename" == other ]]; then
	cat >&2 <<EOF
deps: this script installs packages on Debian 12 and 13 only. Install by hand:
  - QEMU >= ${QEMU_MIN_MAJOR}.${QEMU_MIN_MINOR} (qemu-system-x86_64; >= 10.2 for the generic carrier)
  - a static busybox at /bin/busybox, cpio, gcc, make, static libc, kmod (depmod),
    python3 (make matrix, make mutants)
  - for the guest kernels: apt-get, dpkg-deb and Debian's archive keyring
    (scripts/kernel-cache.sh), or pass your own --kernel/--headers to amdvi-run
  - for make kernel and make mutants: flex, bison, bc, libelf (headers),
    ccache and xz
  - for the soak's plot (make soak; optional): matplotlib for python3
EOF
	exit 1
fi

BACKPORTS="$codename-backports"
BACKPORTS_FILE="/etc/apt/sources.list.d/$BACKPORTS.sources"
backports_source() {
	printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' "Suites: $BACKPORTS" \
		'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'
}

SUDO=()
if ((EUID != 0)); then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		SUDO=(sudo)
	else
		{
			echo "deps: not root and no password-less sudo. Run as root:"
			echo "  cat > $BACKPORTS_FILE <<'END'"
			backports_source | sed 's/^/  /'
			echo "  END"
			echo "  apt-get update"
			echo "  DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install ${BASE_PKGS[*]}"
			echo "  DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install -t $BACKPORTS qemu-system-x86"
			((KERNEL_BUILD)) &&
				echo "  DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install -t $BACKPORTS ${KERNEL_PKGS[*]}"
			((PLOT)) && ! plot_ok &&
				echo "  DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install ${PLOT_PKGS[*]}"
		} >&2
		exit 1
	fi
fi

apt_get() {
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" "$@"
}

# install_missing WHAT [APT-GET OPTION...] -- PACKAGE...: installs those of
# the packages that are not installed yet, saying WHAT it does.
install_missing() {
	local what=$1 opts=() missing=() p
	shift
	while [[ $1 != -- ]]; do
		opts+=("$1")
		shift
	done
	shift
	for p; do
		pkg_installed "$p" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	log "$what: ${missing[*]}"
	apt_get install "${opts[@]}" "${missing[@]}"
}

if ! grep -rqs "^[^#]*$BACKPORTS" /etc/apt/sources.list /etc/apt/sources.list.d/; then
	log "adding $BACKPORTS_FILE"
	backports_source | "${SUDO[@]}" tee "$BACKPORTS_FILE" >/dev/null
fi

log "apt-get update"
apt_get update

install_missing installing -- "${BASE_PKGS[@]}"

# Debian 13's own QEMU is 10.0; trixie-backports has 11.x, which carries the
# generic vhost-user test device. Debian 12's is 7.2; bookworm-backports has 10.0.
if ! qemu_ok || [[ "$codename" == trixie && "$(qemu_version)" == "10 "[01] ]]; then
	log "installing qemu-system-x86 from $BACKPORTS"
	apt_get install -t "$BACKPORTS" qemu-system-x86
	qemu_ok || die "qemu-system-x86_64 is still older than ${QEMU_MIN_MAJOR}.${QEMU_MIN_MINOR}"
fi

# After QEMU, and from backports where they exist there: the backported QEMU
# pulls in a newer libelf1, and stable's libelf-dev pins the older one.
if ((KERNEL_BUILD)); then
	install_missing "installing for the kernel build" -t "$BACKPORTS" -- "${KERNEL_PKGS[@]}"
fi
if ((PLOT)) && ! plot_ok; then
	log "installing for the soak's plot: ${PLOT_PKGS[*]}"
	apt_get install "${PLOT_PKGS[@]}"
	plot_ok || die "python3 still cannot import matplotlib"
fi
log "qemu: $(qemu-system-x86_64 -version | head -n 1)"
log "all host dependencies present (guest kernels: scripts/kernel-cache.sh)"
