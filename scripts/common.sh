# Sourced by the project's shell scripts, with PROG (the name messages
# carry) set first: the per-user cache directory, log and die. die exits
# with DIE_STATUS, 1 unless the script sets another.
# shellcheck shell=bash
CACHE="${AMDVI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/amdvi-bench}"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit "${DIE_STATUS:-1}"; }
