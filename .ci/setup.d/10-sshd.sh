#!/usr/bin/env bash
# Test peers for comms-ssh: OpenSSH sshd/sftp-server (started by the tests, never the
# system's), sudo (sudo -S tests inside the sshd's private namespace), openssl (password
# hash), and for the benchmark: rsync, /usr/bin/time, packer (Debian 1.6.6).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
apt_install openssh-server openssh-client openssh-sftp-server util-linux openssl sudo rsync time
# The benchmark compares against Packer; the tests do not need it.
if [ "${OPSBAKE_BENCH:-0}" = 1 ]; then
    apt_install packer
fi
mkdir -p /run/sshd
