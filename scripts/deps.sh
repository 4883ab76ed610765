#!/usr/bin/env bash
# Install (or check) what the VM test path needs: QEMU >= 10.0, a static
# busybox, cpio, a C toolchain, kmod, and the Debian cloud kernels 6.12 and 6.1
# with their headers (the guest kernels, and the trees the test module is
# built against).
#
# Idempotent: when everything is present it only runs a few local checks
# (no network, no apt-get update) and prints the kernels it found.
# On Debian 12 it installs what is missing (as root, or through sudo).
# Elsewhere it lists what to install and exits 1.
set -euo pipefail

QEMU_MIN_MAJOR=10
QEMU_MIN_MINOR=0
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources
BASE_PKGS=(busybox-static cpio build-essential kmod)
APT_OPTS=(-o DPkg::Lock::Timeout=600 -y -q)

log() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

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

# Newest installed kernel version of a series whose image and build tree
# are both present. $1 is an extended regex for the version string.
installed_kernel() {
	local re="$1" f v best=""
	for f in /boot/vmlinuz-*; do
		[[ -e "$f" ]] || continue
		v="${f#/boot/vmlinuz-}"
		[[ "$v" =~ $re ]] || continue
		[[ -d "/lib/modules/$v/build" ]] || continue
		best="$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n 1)"
	done
	printf '%s' "$best"
}

RE_612='^6\.12\.[0-9]+\+deb12-cloud-amd64$'
RE_61='^6\.1\.0-[0-9]+-cloud-amd64$'

missing=()
qemu_ok || missing+=("qemu-system-x86 (>= ${QEMU_MIN_MAJOR}.${QEMU_MIN_MINOR}, from bookworm-backports)")
for p in "${BASE_PKGS[@]}"; do
	pkg_installed "$p" || missing+=("$p")
done
k612="$(installed_kernel "$RE_612")"
k61="$(installed_kernel "$RE_61")"
[[ -n "$k612" ]] || missing+=("linux-headers-6.12.*+deb12-cloud-amd64 + its linux-image")
[[ -n "$k61" ]] || missing+=("linux-headers-6.1.0-*-cloud-amd64 + its linux-image")

report() {
	log "qemu: $(qemu-system-x86_64 -version | head -n 1)"
	log "kernel 6.12: /boot/vmlinuz-$k612 (headers /lib/modules/$k612/build)"
	log "kernel 6.1:  /boot/vmlinuz-$k61 (headers /lib/modules/$k61/build)"
}

if ((${#missing[@]} == 0)); then
	report
	log "all dependencies present"
	exit 0
fi

log "missing:"
printf '  - %s\n' "${missing[@]}"

is_bookworm=0
if [[ -r /etc/os-release ]]; then
	# shellcheck disable=SC1091
	. /etc/os-release
	[[ "${ID:-}" == debian && "${VERSION_ID:-}" == 12 ]] && is_bookworm=1
fi
if ((!is_bookworm)); then
	cat >&2 <<EOF
deps: this script installs packages on Debian 12 (bookworm) only.
deps: install by hand:
  - QEMU >= ${QEMU_MIN_MAJOR}.${QEMU_MIN_MINOR} (qemu-system-x86_64)
  - a static busybox (/bin/busybox), cpio, gcc/make/libc static libs, kmod
  - guest kernels with their build trees: Debian's 6.12 cloud kernel
    (/boot/vmlinuz-6.12.*+deb12-cloud-amd64, /lib/modules/<ver>/build) and 6.1
    cloud kernel (/boot/vmlinuz-6.1.0-*-cloud-amd64), or pass --kernel/--headers
    to amdvi-run.
EOF
	exit 1
fi

SUDO=()
if ((EUID != 0)); then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		cat >&2 <<EOF
deps: not root and no sudo. Run as root:
  test -e $BACKPORTS_FILE || printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $BACKPORTS_FILE
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install -t bookworm-backports qemu-system-x86
  DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install ${BASE_PKGS[*]}
  DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install \\
    \$(apt-cache pkgnames linux-headers-6.12. | grep -E '^linux-headers-6\\.12\\.[0-9]+\\+deb12-cloud-amd64\$' | sort -V | tail -n 1) \\
    \$(apt-cache pkgnames linux-headers-6.1.0- | grep -E '^linux-headers-6\\.1\\.0-[0-9]+-cloud-amd64\$' | sort -V | tail -n 1)
EOF
		exit 1
	fi
fi

apt_get() {
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" "$@"
}

if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	log "adding $BACKPORTS_FILE"
	printf '%s\n' \
		'Types: deb' \
		'URIs: http://deb.debian.org/debian' \
		'Suites: bookworm-backports' \
		'Components: main' \
		'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
		"${SUDO[@]}" tee "$BACKPORTS_FILE" >/dev/null
fi

log "apt-get update"
apt_get update

if ! qemu_ok; then
	log "installing qemu-system-x86 from bookworm-backports"
	apt_get install -t bookworm-backports qemu-system-x86
	qemu_ok || die "qemu-system-x86_64 is still older than ${QEMU_MIN_MAJOR}.${QEMU_MIN_MINOR}"
fi

to_install=()
for p in "${BASE_PKGS[@]}"; do
	pkg_installed "$p" || to_install+=("$p")
done

# Newest package of a series known to apt. $1: prefix for apt-cache, $2: regex.
newest_pkg() {
	apt-cache pkgnames "$1" | grep -E "$2" | sort -V | tail -n 1 || true
}

if [[ -z "$k612" ]]; then
	h="$(newest_pkg linux-headers-6.12. '^linux-headers-6\.12\.[0-9]+\+deb12-cloud-amd64$')"
	[[ -n "$h" ]] || die "no linux-headers-6.12.*+deb12-cloud-amd64 package known to apt (is bookworm-security in the sources?)"
	to_install+=("$h" "linux-image-${h#linux-headers-}")
fi
if [[ -z "$k61" ]]; then
	h="$(newest_pkg linux-headers-6.1.0- '^linux-headers-6\.1\.0-[0-9]+-cloud-amd64$')"
	[[ -n "$h" ]] || die "no linux-headers-6.1.0-*-cloud-amd64 package known to apt"
	to_install+=("$h" "linux-image-${h#linux-headers-}")
fi

if ((${#to_install[@]})); then
	log "installing: ${to_install[*]}"
	apt_get install "${to_install[@]}"
fi

k612="$(installed_kernel "$RE_612")"
k61="$(installed_kernel "$RE_61")"
[[ -n "$k612" && -n "$k61" ]] || die "kernels still missing after install"
report
log "all dependencies present"
