#!/usr/bin/env bash
# Run a command on a brand-new Debian system, the way a new user's machine
# would see this project: a minimal debootstrap root with git, make, gcc and
# ca-certificates, the host's Rust toolchain mounted read-only with an empty
# CARGO_HOME, and a clone of the committed HEAD (uncommitted work is not seen).
#
#   scripts/fresh-debian.sh [--suite bookworm|trixie] [--keep] [-- CMD...]
#
# CMD defaults to `make run` and runs as root in the clone. Needs root, the
# debootstrap package (installed if missing) and Debian's archive. The base
# system is built once per suite into $FRESH_CACHE (default
# /var/cache/amdvi-bench/fresh) and unpacked anew for every run. The mounts
# live in a private mount namespace, so they vanish with the command, even
# when it is killed. Exit status: the command's, or 2 for a set-up failure.
set -euo pipefail

suite=bookworm
keep=0
while (($#)); do
	case "$1" in
	--suite) suite=${2:?--suite needs bookworm or trixie}; shift 2 ;;
	--keep) keep=1; shift ;;
	--) shift; break ;;
	-h | --help) sed -n '2,14p' "$0"; exit 0 ;;
	*) echo "fresh-debian: unknown option $1" >&2; exit 2 ;;
	esac
done
(($#)) || set -- make run
case "$suite" in bookworm | trixie) ;; *) echo "fresh-debian: unsupported suite $suite" >&2; exit 2 ;; esac

die() { echo "fresh-debian: $*" >&2; exit 2; }
((EUID == 0)) || die "needs root (it debootstraps and chroots)"
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
command -v cargo >/dev/null || die "no Rust toolchain on this host"
toolchain_bin=$(dirname "$(readlink -f "$(command -v cargo)")")
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
[[ -d $rustup_home ]] || die "RUSTUP_HOME $rustup_home does not exist"

cache=${FRESH_CACHE:-/var/cache/amdvi-bench/fresh}
base=$cache/$suite.tar
mkdir -p "$cache"
if [[ ! -s $base ]]; then
	command -v debootstrap >/dev/null ||
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
		die "cannot install debootstrap"
	echo "fresh-debian: debootstrapping $suite (once; log in $cache/$suite.log)"
	staging=$(mktemp -d "$cache/$suite.XXXXXX")
	debootstrap --variant=minbase --include=ca-certificates,git,make,gcc,libc6-dev \
		"$suite" "$staging" http://deb.debian.org/debian >"$cache/$suite.log" 2>&1 ||
		{ rm -rf "$staging"; die "debootstrap $suite failed, see $cache/$suite.log"; }
	tar -C "$staging" -cf "$base.part" . && mv "$base.part" "$base"
	rm -rf "$staging"
fi

root=$(mktemp -d /tmp/fresh-debian.XXXXXX)
finish() {
	if ((keep)); then echo "fresh-debian: root kept in $root"; else rm -rf --one-file-system "$root"; fi
}
trap finish EXIT
tar -C "$root" -xf "$base"
chmod 755 "$root" # the archive's top is a mktemp directory (0700): users must reach /
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The sources a standard installation has.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb http://deb.debian.org/debian $suite main
deb http://deb.debian.org/debian $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SOURCES
# A host behind a local CA reaches the registries through it; so must the root.
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
	cp -r /usr/local/share/ca-certificates "$root/usr/local/share/"
	chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
fi
mkdir -p "$root/opt/rustup" "$root/opt/rust-bin" "$root/root/.cargo"
git clone -q "$repo" "$root/root/project"
echo "fresh-debian: $suite, project at $(git -C "$repo" rev-parse --short HEAD): $*"

# Everything below runs in a private mount namespace: the bind mounts need no
# cleanup and cannot outlive the command.
set +e
unshare --mount --propagation private -- bash -c '
	set -e
	root=$1 rustup=$2 bin=$3
	shift 3
	mount --rbind /dev "$root/dev"
	mount -t proc proc "$root/proc"
	mount --rbind /sys "$root/sys"
	mount -t tmpfs tmpfs "$root/dev/shm"
	mount --bind -o ro "$rustup" "$root/opt/rustup"
	mount --bind -o ro "$bin" "$root/opt/rust-bin"
	exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
		RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo \
		PATH=/opt/rust-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		bash -c "cd /root/project && \"\$@\"" fresh-debian "$@"
' fresh-debian "$root" "$rustup_home" "$toolchain_bin" "$@"
rc=$?
set -e
echo "fresh-debian: exit $rc"
exit "$rc"
