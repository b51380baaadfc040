#!/usr/bin/env bash
# The vbox builder (issue 6): QEMU engine, disk normalisation, OVA checks, the
# time-shifted reproducibility run. VirtualBox itself is not in Debian main and
# is not installed: the QEMU engine runs the builds.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
# QEMU engine and the overlay; OpenSSL for the settings password hash
install_qemu
apt_install openssl
# normalisation: loop mount in a private mount namespace, mkfs.ext4 -d, debugfs, fallocate, dd
apt_install e2fsprogs util-linux coreutils mount
# tests: the OpenSSH client and ssh-keygen (deploy-time login), GNU tar, libfaketime
apt_install openssh-client tar faketime
