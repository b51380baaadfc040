#!/bin/sh
# Generic cleanup before capture (the hand-off does the stemcell-specific
# scrub: agent settings, keys, host keys, machine-id, history).
set -eu
log() { echo "appliance: $*"; }
[ "$(id -u)" -eq 0 ] || {
    echo "appliance: error: $0 must run as root" >&2
    exit 1
}

log "cleaning package caches and logs"
if command -v apt-get >/dev/null; then
    apt-get clean
fi
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin 2>/dev/null || true
# logs written during the build (journald keeps its directory)
find /var/log -type f \( -name '*.log' -o -name '*.gz' -o -name '*.[0-9]' \) -delete 2>/dev/null || true
if command -v journalctl >/dev/null; then
    journalctl --rotate >/dev/null 2>&1 || true
    journalctl --vacuum-time=1s >/dev/null 2>&1 || true
fi
# /tmp and /var/tmp may be the same directory (the BOSH agent bind-mounts both
# from /var/vcap/data): keep opsbake's staging dir, which the build still uses
# (the hand-off removes it at the end).
find /tmp -mindepth 1 -maxdepth 1 ! -name opsbake -exec rm -rf {} + 2>/dev/null || true
sync
log "clean"
