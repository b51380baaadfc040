# Shared helpers for .ci/setup.d/*.sh and scripts/*.sh. Source it; do not run it.
# shellcheck shell=bash

: "${OPSBAKE_CACHE:=/var/cache/opsbake}"
export OPSBAKE_CACHE

# apt_install PKG...: install the packages that are missing (apt-get update at most once per run).
apt_install() {
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ -z "${OPSBAKE_APT_UPDATED:-}" ]; then
        echo "apt-get update" >&2
        apt-get update -qq >/dev/null
        export OPSBAKE_APT_UPDATED=1
    fi
    echo "apt-get install ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# install_qemu: qemu-system-x86_64 and qemu-img from one QEMU release. Debian's
# qemu-system-x86 (7.2) and a newer backported qemu-utils (the machine image ships 10.0,
# whose package Breaks qemu-system-common << 8.0) cannot both be installed: apt resolves
# the conflict by REMOVING qemu-utils, and qemu-img disappears. So when the system
# emulator is missing, install it together with the qemu-utils of the same version
# (a downgrade of the backport when it is there), in one apt call, then check both
# commands exist.
install_qemu() {
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        if [ -z "${OPSBAKE_APT_UPDATED:-}" ]; then
            echo "apt-get update" >&2
            apt-get update -qq >/dev/null
            export OPSBAKE_APT_UPDATED=1
        fi
        local ver
        ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
            echo "install_qemu: apt has no candidate for qemu-system-x86" >&2
            return 1
        fi
        echo "apt-get install qemu-system-x86=$ver qemu-utils=$ver" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            --allow-downgrades "qemu-system-x86=$ver" "qemu-utils=$ver" >/dev/null
    elif ! command -v qemu-img >/dev/null 2>&1; then
        apt_install qemu-utils
    fi
    require_commands qemu-system-x86_64 qemu-img qemu-nbd
}

# require_commands CMD...: fail with one clear line naming every command that is missing.
require_commands() {
    local missing=()
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if [ "${#missing[@]}" -ne 0 ]; then
        echo "required command(s) missing after set-up: ${missing[*]}" >&2
        return 1
    fi
}

# hash_inputs FILE_OR_DIR...: a short sha256 over the contents of the inputs (sorted).
hash_inputs() {
    local f
    for f in "$@"; do
        if [ -d "$f" ]; then
            find "$f" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        else
            sha256sum "$f"
        fi
    done | sha256sum | cut -c1-16
}

# cache_dir NAME HASH: print (and create the parent of) the cache folder for NAME at HASH.
cache_dir() {
    mkdir -p "$OPSBAKE_CACHE/$1"
    echo "$OPSBAKE_CACHE/$1/$2"
}

# ci_env KEY VALUE: export KEY for the tests (written to $OPSBAKE_CI_ENV when set).
ci_env() {
    export "$1=$2"
    if [ -n "${OPSBAKE_CI_ENV:-}" ]; then
        echo "$1=$2" >>"$OPSBAKE_CI_ENV"
    fi
}
