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
# The network of the appliance: the BOSH agent configured it during the
# build, but the hand-off disables the agent, so the image brings up eth0
# with DHCP itself (stemcells boot with net.ifnames=0). The agent's own file
# goes, so that it does not shadow this one.
log "network: DHCP on eth0 through systemd-networkd"
mkdir -p /etc/systemd/network
rm -f /etc/systemd/network/10-bosh-agent.network
cat >/etc/systemd/network/10-appliance.network <<NET
[Match]
Name=eth0

[Network]
DHCP=ipv4
NET
chmod 0644 /etc/systemd/network/10-appliance.network
systemctl enable systemd-networkd.service >/dev/null 2>&1 || log "warning: cannot enable systemd-networkd"
[ "$(systemctl is-enabled systemd-networkd.service 2>/dev/null)" = enabled ] || {
    echo "appliance: error: systemd-networkd is not enabled: the image would boot without network" >&2
    exit 1
}

if [ -d /etc/systemd/system ]; then
    mkdir -p /etc/systemd/system/appliance-status.service.d
    cat >/etc/systemd/system/appliance-status.service.d/10-iaas.conf <<CONF
[Service]
Environment=APPLIANCE_IAAS=${APPLIANCE_IAAS:-unknown}
CONF
    systemctl daemon-reload 2>/dev/null || true
fi
