#!/usr/bin/env bash
# Test peers for comms-ssh: OpenSSH sshd/sftp-server (started by the tests, never the
# system's), sudo (sudo -S tests inside the sshd's private namespace), openssl (password
# hash), and for the benchmark: rsync, /usr/bin/time; packer (Debian 1.6.6) for the
# benchmarks and for the import-packer equivalence test (crates/opsbake/tests/import_packer.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
apt_install openssh-server openssh-client openssh-sftp-server util-linux openssl sudo rsync time packer
# Packer never phones home (checkpoint) in tests or benchmarks.
ci_env CHECKPOINT_DISABLE 1
mkdir -p /run/sshd
