#!/usr/bin/env bash
# Install what the tests and the demo need (idempotent, cached), by running every .ci/setup.d/*.sh.
# Writes KEY=VALUE lines for the tests into $OPSBAKE_CI_ENV (default: target/ci-env).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
mkdir -p target
export OPSBAKE_CI_ENV="${OPSBAKE_CI_ENV:-$PWD/target/ci-env}"
: >"$OPSBAKE_CI_ENV"
for s in .ci/setup.d/*.sh; do
    [ -e "$s" ] || continue
    echo "== setup: $s" >&2
    start=$(date +%s)
    bash "$s"
    echo "== setup: $s done in $(( $(date +%s) - start ))s" >&2
done
# what the tests need, checked once at the end (fails early and clearly, naming each one)
# shellcheck disable=SC2046
require_commands $(grep -v '^#' .ci/required-commands)
echo "== setup: required commands present" >&2
