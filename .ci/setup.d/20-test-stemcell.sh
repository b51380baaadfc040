#!/usr/bin/env bash
# The test stemcell (issue 4): tools to build it and to boot it under QEMU, then the
# build itself when the cache for the current inputs is missing (docs/test-stemcell.md).
# Exports OPSBAKE_TEST_STEMCELL_DIR for the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
# build: debootstrap, disk tools, GRUB (BIOS) images, image conversion
install_qemu
apt_install debootstrap debian-archive-keyring e2fsprogs fdisk grub-pc-bin grub-common coreutils tar gzip
# boot tests: QEMU, the settings ISO, the OpenSSH client and key generation, password hashes
apt_install genisoimage openssh-client openssl
out=$(bash stemcells/build-test-stemcell.sh | tail -1)
dir=${out#OPSBAKE_TEST_STEMCELL_DIR=}
if [ "$dir" = "$out" ] || [ ! -f "$dir/.complete" ]; then
    echo "20-test-stemcell.sh: the test stemcell build did not report its directory" >&2
    exit 1
fi
# a stable path for people and the README demo (tests use the variable)
ln -sfn "$dir" "$OPSBAKE_CACHE/test-stemcell/current"
ci_env OPSBAKE_TEST_STEMCELL_DIR "$dir"
