#!/usr/bin/env bash
# Tools the stemcell crate's tests use: qemu-img (conversions, checks),
# isoinfo from genisoimage (reading the ISOs we write), GNU tar and python3
# (crafting hostile tarballs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
install_qemu
apt_install genisoimage tar gzip
command -v python3 >/dev/null 2>&1 || apt_install python3
