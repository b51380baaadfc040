#!/bin/sh
# Install the appliance's status page: a busybox httpd served by the systemd
# unit appliance-status.service on APPLIANCE_PORT (default 8080), from the
# files the `file` step uploaded to APPLIANCE_FILES. Enabled, so that every
# later boot of the exported image answers.
set -eu
log() { echo "appliance: $*"; }
die() {
    echo "appliance: error: $*" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || die "setup.sh must run as root (the shell step uses sudo by default)"

FILES=${APPLIANCE_FILES:?APPLIANCE_FILES must name the uploaded appliance-status directory}
NAME=${APPLIANCE_NAME:-appliance}
VERSION=${APPLIANCE_VERSION:-0.0.0}
PORT=${APPLIANCE_PORT:-8080}
IAAS=${APPLIANCE_IAAS:-unknown}
WWW=/srv/appliance/www

[ -d "$FILES/www" ] || die "$FILES/www is missing (the file step uploads it)"
command -v busybox >/dev/null || die "busybox is not installed"

log "installing the status page into $WWW"
rm -rf "$WWW"
mkdir -p "$WWW"
cp -R "$FILES/www/." "$WWW/"
chmod -R u=rwX,go=rX "$WWW"
chmod 0755 "$WWW/cgi-bin/status"

# The build time: SOURCE_DATE_EPOCH when the build has one (reproducible
# builds: two builds must write the same bytes), else the VM's clock.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    BUILT_AT=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ) ||
        die "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH is not a number of seconds"
else
    BUILT_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
fi
log "writing /etc/appliance-release"
cat >/etc/appliance-release <<REL
NAME="$NAME"
VERSION="$VERSION"
BUILT_FOR="$IAAS"
BUILT_AT="$BUILT_AT"
REL
chmod 0644 /etc/appliance-release

log "installing appliance-status.service on port $PORT"
sed "s/@PORT@/$PORT/g" "$FILES/appliance-status.service" >/etc/systemd/system/appliance-status.service
chmod 0644 /etc/systemd/system/appliance-status.service
systemctl daemon-reload
systemctl enable appliance-status.service
systemctl restart appliance-status.service

log "checking that it answers"
# a script of the same build, called by its name through the staging dir
check-status.sh
