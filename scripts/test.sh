#!/usr/bin/env bash
# The test command: installs what the tests need (cached), then fmt, clippy and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPSBAKE_CI_ENV="$PWD/target/ci-env"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target_dir"
# Disk: a cold build of the workspace (clippy's check pass and the test build) takes about
# 12 GB under target/. CI machines share their disk; a run that ran out of it died half-way
# through the compile. Say how much there is before starting, and after each build.
disk_report() {
    df -h --output=avail,size,target "$target_dir" | sed "s/^/[disk $1] /" >&2
}
if [ -n "${CI:-}" ]; then
    # Incremental compilation only pays off on rebuilds; in CI it writes several GB of
    # session files that are never read again.
    export CARGO_INCREMENTAL=0
fi
disk_report start
trap 'disk_report end' EXIT
bash scripts/setup.sh
set -a
# shellcheck disable=SC1090
. "$OPSBAKE_CI_ENV"
set +a
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
disk_report "after clippy"
# The end-to-end tests (tests/) run the CLI that this very run builds (the opsbake package's
# own tests make nextest build and place it); without this they would run
# `cargo build -p opsbake`, whose different feature set recompiles about 3 minutes of crates.
export OPSBAKE_BIN="${OPSBAKE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/opsbake}"
cargo nextest run --workspace --locked --no-fail-fast "$@"
