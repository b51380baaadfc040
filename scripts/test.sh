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
cargo nextest run --workspace --locked --no-fail-fast "$@"
