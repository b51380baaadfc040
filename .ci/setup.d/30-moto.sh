#!/usr/bin/env bash
# Test peer for iaas-aws: moto_server (PyPI moto[server]) in a venv cached outside the
# clone, keyed by a hash of the pinned requirements. The tests find it through
# OPSBAKE_MOTO_SERVER; they start it on 127.0.0.1 with a random port and stop it by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
apt_install python3 python3-venv
req=.ci/moto-requirements.txt
venv="$(cache_dir moto-venv "$(hash_inputs "$req")")"
# venv scripts carry the absolute path of their interpreter, so the venv is built in place;
# a marker written last tells a complete one from an interrupted install.
if [ ! -e "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    touch "$venv/.complete"
fi
"$venv/bin/python" -c 'import moto, flask' >/dev/null
ci_env OPSBAKE_MOTO_SERVER "$venv/bin/moto_server"
