#!/bin/sh
# IaaS-specific touches; run with APPLIANCE_IAAS set (the template passes
# ${build.iaas}). Only what works offline: no package installs.
set -eu
log() { echo "appliance: $*"; }
[ "$(id -u)" -eq 0 ] || {
    echo "appliance: error: $0 must run as root" >&2
    exit 1
}

case "${APPLIANCE_IAAS:-}" in
aws | gcp | azure)
    log "cloud build ($APPLIANCE_IAAS): the login user's key comes from the IaaS at deploy time"
    ;;
vsphere | vbox)
    log "$APPLIANCE_IAAS build: the login user's key comes from the OVF property public_ssh_key (first-boot unit of the hand-off)"
    ;;
*)
    log "no IaaS-specific setup for '${APPLIANCE_IAAS:-}'"
    ;;
esac
# The console is where a VM without network tells what went wrong.
if [ -d /etc/systemd/system ]; then
    mkdir -p /etc/systemd/system/appliance-status.service.d
    cat >/etc/systemd/system/appliance-status.service.d/10-iaas.conf <<CONF
[Service]
Environment=APPLIANCE_IAAS=${APPLIANCE_IAAS:-unknown}
CONF
    systemctl daemon-reload 2>/dev/null || true
fi
