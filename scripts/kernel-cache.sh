#!/usr/bin/env bash
# The guest kernel cache: Debian's cloud kernels, fetched with `apt-get
# download` under a private apt configuration and unpacked with `dpkg-deb -x`
# into a per-user directory. Nothing is installed on the host: /boot,
# /lib/modules and the host's apt sources are never touched, and no root is
# needed. See README.md, "The kernel cache".
#
#   kernel-cache.sh fetch [SERIES|RELEASE]...  make a release of each present
#                                              (default: 6.12 6.1)
#   kernel-cache.sh list                       the cached releases
#   kernel-cache.sh dir                        print the cache directory
#   kernel-cache.sh clear                      remove the fetched kernels and apt state
#   kernel-cache.sh apt-get ARGS...            apt-get with the private config
#   kernel-cache.sh apt-cache ARGS...          apt-cache with the private config
#
# A SERIES (6.12, 6.1) takes the newest release whose image, headers,
# common headers and kbuild all have a candidate, and falls back to older
# ones when the newest is incomplete (signed images and the -unsigned ones
# can lag the headers by days). A RELEASE (6.12.117+deb12-cloud-amd64) is a
# pin: that release or an error. KVER in the environment (a space-separated
# list) pins the releases of its series for `fetch` and for amdvi-run.
#
# Layout: $CACHE/kernels/<release>/ holds vmlinuz, headers (the kbuild tree
# the test module is built against), modules (lib/modules/<release>, with
# modules.dep), manifest.json (packages and versions) and root/ (the
# unpacked packages).
set -euo pipefail

PROG=kernel-cache
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
KERNELS="$CACHE/kernels"
APTDIR="$CACHE/apt"
MIRROR="${AMDVI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${AMDVI_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
KEYRING="${AMDVI_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
# Package lists older than this are refreshed (seconds).
LISTS_MAX_AGE="${AMDVI_LISTS_MAX_AGE:-86400}"

# Debian 12's cloud kernels: the guest kernels the suite is written for.
series_regex() {
	case "$1" in
	6.12) printf '%s' '^6\.12\.[0-9]+\+deb12-cloud-amd64$' ;;
	6.1) printf '%s' '^6\.1\.0-[0-9]+-cloud-amd64$' ;;
	*) return 1 ;;
	esac
}

series_of() {
	case "$1" in
	6.12.*) printf '6.12' ;;
	6.1.*) printf '6.1' ;;
	*) return 1 ;;
	esac
}

apt_setup() {
	command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
		die "apt-get and dpkg-deb are needed to fetch Debian kernels; on other hosts pass --kernel/--headers to amdvi-run"
	[[ -r "$KEYRING" ]] || die "$KEYRING not found: install debian-archive-keyring, or set AMDVI_DEBIAN_KEYRING"
	mkdir -p "$APTDIR/lists/partial" "$APTDIR/archives/partial" "$APTDIR/parts" "$APTDIR/prefs"
	: >>"$APTDIR/status"
	cat >"$APTDIR/sources.list" <<-EOF
		deb [signed-by=$KEYRING] $MIRROR bookworm main
		deb [signed-by=$KEYRING] $MIRROR bookworm-updates main
		deb [signed-by=$KEYRING] $SECURITY_MIRROR bookworm-security main
	EOF
	APT_OPTS=(
		-o "Dir::State=$APTDIR"
		-o "Dir::State::Lists=$APTDIR/lists"
		-o "Dir::State::status=$APTDIR/status"
		-o "Dir::Cache=$APTDIR"
		-o "Dir::Cache::Archives=$APTDIR/archives"
		-o "Dir::Cache::pkgcache="
		-o "Dir::Cache::srcpkgcache="
		-o "Dir::Etc::SourceList=$APTDIR/sources.list"
		-o "Dir::Etc::SourceParts=$APTDIR/parts"
		-o "Dir::Etc::Preferences=$APTDIR/prefs/none"
		-o "Dir::Etc::PreferencesParts=$APTDIR/prefs"
		-o "APT::Architecture=amd64"
		-o "APT::Architectures=amd64"
		-o "Acquire::Languages=none"
		-o "Debug::NoLocking=1"
	)
	# As root apt drops to the _apt user, which cannot enter $HOME.
	if [[ "$(id -u)" == 0 ]]; then
		APT_OPTS+=(-o "APT::Sandbox::User=root")
	fi
}

papt_get() { apt-get "${APT_OPTS[@]}" "$@"; }
papt_cache() { apt-cache "${APT_OPTS[@]}" "$@"; }

lists_fresh() {
	local stamp="$APTDIR/lists/.updated"
	[[ -e "$stamp" ]] || return 1
	(($(date +%s) - $(stat -c %Y "$stamp") < LISTS_MAX_AGE))
}

# Refresh the private package lists. Fails only when there are none.
refresh_lists() {
	lists_fresh && return 0
	log "updating the package lists of Debian 12 ($MIRROR, $SECURITY_MIRROR)"
	if papt_get -q -q update >"$APTDIR/update.log" 2>&1; then
		touch "$APTDIR/lists/.updated"
	elif compgen -G "$APTDIR/lists/*Packages*" >/dev/null; then
		log "warning: apt-get update failed, using the lists from $(stat -c %y "$APTDIR/lists/.updated" 2>/dev/null || echo 'an earlier run'):"
		sed 's/^/  /' "$APTDIR/update.log" >&2
	else
		sed 's/^/  /' "$APTDIR/update.log" >&2
		die "apt-get update failed and no package lists are cached (see above)"
	fi
}

has_candidate() {
	local c
	c="$(papt_cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
	[[ -n "$c" && "$c" != "(none)" ]]
}

candidate_version() {
	papt_cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p'
}

# The packages a release needs: the unsigned image (the guest needs no
# signature), the headers, and the headers' own build dependencies on the
# common headers and kbuild.
packages_of() {
	local rel="$1" deps
	printf '%s\n' "linux-image-$rel-unsigned" "linux-headers-$rel"
	deps="$(papt_cache show --no-all-versions "linux-headers-$rel" 2>/dev/null |
		sed -n 's/^Depends: //p' | tr ',' '\n' | sed 's/^ *//; s/ .*//')"
	grep -E '^linux-(headers-.*-common|kbuild-)' <<<"$deps" || true
}

# Prints the packages of $1 when every one has a candidate; else names the
# missing one and fails.
complete_set() {
	local rel="$1" p pkgs
	has_candidate "linux-headers-$rel" || { log "$rel: linux-headers-$rel has no candidate"; return 1; }
	pkgs="$(packages_of "$rel")"
	while read -r p; do
		has_candidate "$p" || { log "$rel: $p has no candidate"; return 1; }
	done <<<"$pkgs"
	printf '%s\n' "$pkgs"
}

releases_of_series() {
	local re
	re="$(series_regex "$1")"
	papt_cache pkgnames linux-headers- 2>/dev/null | sed -n 's/^linux-headers-//p' |
		grep -E "$re" | sort -V -r || true
}

is_cached() { [[ -f "$KERNELS/$1/manifest.json" ]]; }

cached_of_series() {
	local re d
	re="$(series_regex "$1")"
	for d in "$KERNELS"/*/manifest.json; do
		[[ -e "$d" ]] || continue
		d="${d%/manifest.json}"
		d="${d##*/}"
		if [[ "$d" =~ $re ]]; then printf '%s\n' "$d"; fi
	done | sort -V -r
}

find_depmod() {
	command -v depmod 2>/dev/null || { [[ -x /usr/sbin/depmod ]] && echo /usr/sbin/depmod; } ||
		{ [[ -x /sbin/depmod ]] && echo /sbin/depmod; } || die "depmod not found: install kmod"
}

# Download, unpack and index one release whose package set is $2.
unpack_release() {
	local rel="$1" pkgs="$2" tmp p f hdr json="" depmod
	depmod="$(find_depmod)"
	tmp="$KERNELS/.tmp-$rel-$$"
	rm -rf "$tmp"
	mkdir -p "$tmp/debs" "$tmp/root"
	log "$rel: downloading $(tr '\n' ' ' <<<"$pkgs")"
	# shellcheck disable=SC2086 # one package per word
	(cd "$tmp/debs" && papt_get -q -q download $pkgs) || die "$rel: apt-get download failed"
	for f in "$tmp"/debs/*.deb; do
		dpkg-deb -x "$f" "$tmp/root"
	done
	hdr="$tmp/root/usr/src/linux-headers-$rel"
	[[ -f "$tmp/root/boot/vmlinuz-$rel" ]] || die "$rel: the image package has no boot/vmlinuz-$rel"
	[[ -f "$hdr/Makefile" ]] || die "$rel: the headers package has no usr/src/linux-headers-$rel/Makefile"
	# The packages expect to live in /: the headers' Makefile includes the
	# common tree by absolute path, and lib/modules/<rel>/{build,source}
	# point into /usr/src. The final location is $KERNELS/$rel.
	sed -i "s|^include /usr/src/|include $KERNELS/$rel/root/usr/src/|" "$hdr/Makefile"
	rm -f "$tmp/root/lib/modules/$rel/build" "$tmp/root/lib/modules/$rel/source"
	ln -s "../../../usr/src/linux-headers-$rel" "$tmp/root/lib/modules/$rel/build"
	"$depmod" -b "$tmp/root" "$rel" || die "$rel: depmod failed"
	ln -s "root/boot/vmlinuz-$rel" "$tmp/vmlinuz"
	ln -s "root/usr/src/linux-headers-$rel" "$tmp/headers"
	ln -s "root/lib/modules/$rel" "$tmp/modules"
	while read -r p; do
		json+="${json:+,}\"$p\": \"$(candidate_version "$p")\""
	done <<<"$pkgs"
	printf '{"release": "%s", "series": "%s", "packages": {%s}}\n' \
		"$rel" "$(series_of "$rel")" "$json" >"$tmp/manifest.json"
	rm -rf "$tmp/debs" "$KERNELS/$rel"
	mv "$tmp" "$KERNELS/$rel"
	log "$rel: ready in $KERNELS/$rel"
}

pin_of_series() {
	local s="$1" k
	for k in ${KVER:-}; do
		[[ "$(series_of "$k" 2>/dev/null)" == "$s" ]] && { printf '%s' "$k"; return 0; }
	done
	return 1
}

fetch_release() {
	local rel="$1" pkgs
	is_cached "$rel" && { log "$rel: cached"; return 0; }
	series_of "$rel" >/dev/null && [[ "$rel" =~ $(series_regex "$(series_of "$rel")") ]] ||
		die "$rel is not a Debian 12 cloud kernel release (like 6.12.117+deb12-cloud-amd64 or 6.1.0-41-cloud-amd64)"
	apt_setup
	refresh_lists
	pkgs="$(complete_set "$rel")" || die "$rel cannot be fetched: a package has no candidate (see above)"
	unpack_release "$rel" "$pkgs"
}

fetch_series() {
	local s="$1" rel pkgs cached newest=""
	series_regex "$s" >/dev/null || die "unknown kernel series '$s' (known: 6.12 6.1)"
	if rel="$(pin_of_series "$s")"; then
		fetch_release "$rel"
		return
	fi
	cached="$(cached_of_series "$s" | head -n 1)"
	apt_setup
	if [[ -n "$cached" ]] && lists_fresh; then
		log "$cached: cached (lists checked within ${LISTS_MAX_AGE}s)"
		return 0
	fi
	if [[ -n "$cached" ]]; then
		refresh_lists || true
	else
		refresh_lists
	fi
	for rel in $(releases_of_series "$s"); do
		if [[ -n "$cached" ]] && [[ "$(printf '%s\n%s\n' "$cached" "$rel" | sort -V | tail -n 1)" == "$cached" ]]; then
			log "$cached: cached, the newest complete release of $s"
			return 0
		fi
		if pkgs="$(complete_set "$rel")"; then
			[[ -z "$newest" ]] || log "$newest is incomplete, taking $rel"
			unpack_release "$rel" "$pkgs"
			return 0
		fi
		newest="${newest:-$rel}"
	done
	[[ -n "$cached" ]] && { log "$cached: cached"; return 0; }
	die "no release of series $s has every package it needs (image -unsigned, headers, common headers, kbuild)"
}

cmd="${1:-fetch}"
shift || true
case "$cmd" in
fetch)
	(($# > 0)) || set -- 6.12 6.1
	mkdir -p "$KERNELS"
	for k in "$@"; do
		if series_regex "$k" >/dev/null; then
			fetch_series "$k"
		else
			fetch_release "$k"
		fi
	done
	;;
list)
	for d in "$KERNELS"/*/manifest.json; do
		[[ -e "$d" ]] && cat "$d"
	done
	;;
dir) printf '%s\n' "$CACHE" ;;
clear)
	# The fetched kernels and the private apt state only: a source tree and
	# its ccache'd build (src/, build/, from make kernel) cost minutes.
	rm -rf "$CACHE/kernels" "$CACHE/apt"
	log "removed $CACHE/kernels and $CACHE/apt (make kernel's src/ and build/ are kept; rm -rf $CACHE removes all)"
	;;
apt-get)
	apt_setup
	refresh_lists
	papt_get "$@"
	;;
apt-cache)
	apt_setup
	refresh_lists
	papt_cache "$@"
	;;
*) die "unknown command '$cmd' (fetch, list, dir, clear, apt-get, apt-cache)" ;;
esac
