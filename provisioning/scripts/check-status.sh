#!/bin/sh
# Check that the appliance's status page answers with the expected name.
# Called by name from setup.sh (the staging dir is on PATH) and run as its
# own step at the end of the build.
set -eu
# (busybox 1.35 wget segfaults with -T: coreutils timeout bounds it instead)
PORT=${APPLIANCE_PORT:-8080}
NAME=${APPLIANCE_NAME:-appliance}
waited=0
until timeout 5 busybox wget -q -O /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; do
    waited=$((waited + 1))
    if [ "$waited" -ge 30 ]; then
        echo "check-status: nothing answers on port $PORT after 30 s" >&2
        systemctl status --no-pager appliance-status.service >&2 || true
        exit 1
    fi
    sleep 1
done
body=$(timeout 10 busybox wget -q -O - "http://127.0.0.1:$PORT/cgi-bin/status")
case "$body" in
*"\"name\": \"$NAME\""*) echo "check-status: ok: $body" ;;
*)
    echo "check-status: unexpected status: $body" >&2
    exit 1
    ;;
esac
if [ "$(systemctl is-enabled appliance-status.service)" != enabled ]; then
    echo "check-status: appliance-status.service is not enabled: a later boot would not serve the page" >&2
    exit 1
fi
