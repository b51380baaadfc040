#!/usr/bin/env bash
# Test peer for iaas-azure: azurite (npm), the Azure Blob storage emulator, pinned to 3.35.0
# (3.36+ declare Node >= 21; Debian bookworm's nodejs is 18, this image's Node is 20). Cached
# outside the clone, keyed by this script. The tests find it through OPSBAKE_AZURITE (the blob
# server's main.js), start `node` on it directly (so the PID is the server's) on 127.0.0.1 with
# a random port, --inMemoryPersistence --disableTelemetry --skipApiVersionCheck, and stop it by
# PID (crates/test-support/src/azurite.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
version=3.35.0
dir="$(cache_dir azurite "$(hash_inputs .ci/setup.d/36-azurite.sh)")"
if [ ! -e "$dir/.complete" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "azurite@$version" >/dev/null)
    touch "$dir/.complete"
fi
main="$dir/node_modules/azurite/dist/src/blob/main.js"
test -f "$main"
ci_env OPSBAKE_AZURITE "$main"
