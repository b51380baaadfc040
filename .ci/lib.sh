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
