#!/usr/bin/env bash
# The test command: installs what the tests need (cached), then fmt, clippy and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPSBAKE_CI_ENV="$PWD/target/ci-env"
bash scripts/setup.sh
set -a
# shellcheck disable=SC1090
. "$OPSBAKE_CI_ENV"
set +a
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests (tests/) run the CLI that this very run builds (the opsbake package's
# own tests make nextest build and place it); without this they would run
# `cargo build -p opsbake`, whose different feature set recompiles about 3 minutes of crates.
export OPSBAKE_BIN="${OPSBAKE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/opsbake}"
cargo nextest run --workspace --locked --no-fail-fast "$@"
