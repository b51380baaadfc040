#!/usr/bin/env bash
# comms-ssh upload benchmark: opsbake vs OpenSSH (scp, sftp -b, rsync, tar | ssh,
# ControlMaster) vs Packer 1.6.6's null builder, against one hardened test sshd,
# at 0 ms (direct) and 50 ms RTT (userspace delay proxy). Needs root (the test
# sshd runs in a private mount namespace), Debian's openssh-server, rsync, time
# and packer: OPSBAKE_BENCH=1 .ci/setup.d/10-sshd.sh installs them.
#
#   crates/comms-ssh/bench/run.sh [--reps 3] [--rtt-ms 0,50] [--cases a,b,c] \
#       [--no-packer] [--no-packer-sftp] [--out results.md] [--quick] [--docs FILE]
#       [--serve]   (sshd and proxies kept up, commands printed, until stdin closes)
# OPSBAKE_BENCH_TRACE=russh=debug: the transport rows' log with times on stderr;
# OPSBAKE_BENCH_CURRENT_THREAD=1: the transport rows on a current-thread runtime.
#
# The issue-18 table in a few minutes, written into docs/benchmarks.md:
#   crates/comms-ssh/bench/run.sh --quick --docs docs/benchmarks.md
# (--quick leaves out the tools that take minutes at 50 ms: SFTP-protocol
# scp/sftp and legacy scp -r on 2000 files, Packer's sftp mode; Packer scp on
# 2000 files runs once at 50 ms.)
#
# Data (256 MiB file, 2000 small files) is generated once under
# /var/tmp/opsbake-bench (--work DIR to change). Results: a markdown table on
# stdout (and in --out); progress and per-run figures on stderr.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CHECKPOINT_DISABLE=1
# The test sshd's home (where every tool's uploads land) on tmpfs, as in issue 18's
# measurements: on this machine's disk, writeback and memory reclaim make the same run
# vary threefold. TMPDIR set by the caller wins.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
cargo build --release -q -p opsbake-comms-ssh --example bench
# The CLI too, for the `opsbake build` rows (the `ssh` builder with a `file`
# or `shell` step, as a user runs it). OPSBAKE_BENCH_NO_CLI=1 leaves them out.
if [ -z "${OPSBAKE_BENCH_NO_CLI:-}" ]; then
    cargo build --release -q -p opsbake
fi
exec target/release/examples/bench "$@"
