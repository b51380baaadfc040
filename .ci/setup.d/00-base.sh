#!/usr/bin/env bash
# Base packages every test needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
apt_install ca-certificates procps util-linux tmux
