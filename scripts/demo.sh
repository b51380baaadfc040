#!/usr/bin/env bash
# The README's first command: an offline VirtualBox build of the example appliance under
# QEMU (VirtualBox is not needed), from the cached test stemcell, then where the OVA is.
#
# On a fresh Debian bookworm machine (as root) it installs what is missing through the
# setup scripts (Debian packages; the test stemcell is built once and cached in
# $OPSBAKE_CACHE), builds the CLI, and runs
#   opsbake build images/appliance.yml --iaas vbox --offline
# The template reads the stemcell from OPSBAKE_TEST_STEMCELL_DIR (exported here).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
export OPSBAKE_CI_ENV="${OPSBAKE_CI_ENV:-$PWD/target/demo-env}"
mkdir -p target
: >"$OPSBAKE_CI_ENV"
for s in .ci/setup.d/00-base.sh .ci/setup.d/20-test-stemcell.sh .ci/setup.d/40-vbox.sh; do
    echo "== demo: $s" >&2
    bash "$s"
done
set -a
# shellcheck disable=SC1090
. "$OPSBAKE_CI_ENV"
set +a
if ! command -v cargo >/dev/null; then
    echo "demo.sh: cargo is missing (rustup or Debian's cargo >= 1.85)" >&2
    exit 1
fi
echo "== demo: building the CLI (cargo build --release -p opsbake)" >&2
cargo build --release -p opsbake
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/opsbake"
setup_done=$(date +%s)
out=${OPSBAKE_DEMO_OUT:-$PWD/target/demo}
mkdir -p "$out"
echo "== demo: opsbake build images/appliance.yml --iaas vbox --offline" >&2
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200} \
    "$bin" --state-dir "$out/state" build images/appliance.yml --iaas vbox --offline
end=$(date +%s)
# the template's outputs.directory, relative to the template's directory
# (images/out/appliance by default)
ova=$(ls -t "$PWD"/images/out/appliance/*.ova 2>/dev/null | head -1)
echo
echo "setup and compile: $((setup_done - start)) s; build: $((end - setup_done)) s"
if [ -n "$ova" ]; then
    echo "OVA: $ova"
    sha256sum "$ova"
else
    echo "demo.sh: no OVA found (see the build output above)" >&2
    exit 1
fi
