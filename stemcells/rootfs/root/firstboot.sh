#!/bin/sh
# opsbake test stemcell: regenerate the SSH host keys once, like a BOSH stemcell's
# /root/firstboot.sh. The stemcell build deletes the host keys and
# /root/firstboot_done together; so must a builder before it captures an image.
#
#   firstboot.sh        (firstboot.service, before ssh.service): the ed25519 and ECDSA keys
#   firstboot.sh rsa    (firstboot-rsa.service, after ssh.service): the RSA key (3072 bits
#                       take ~13 s under QEMU TCG), then reloads sshd and writes
#                       /root/firstboot_done
set -eu
if [ -e /root/firstboot_done ]; then
    exit 0
fi
case "${1:-}" in
"")
    rm -f /etc/ssh/ssh_host_*
    ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
    ssh-keygen -q -t ecdsa -b 256 -N '' -f /etc/ssh/ssh_host_ecdsa_key
    ;;
rsa)
    rm -f /etc/ssh/ssh_host_rsa_key /etc/ssh/ssh_host_rsa_key.pub
    ssh-keygen -q -t rsa -b 3072 -N '' -f /etc/ssh/ssh_host_rsa_key
    systemctl reload ssh.service 2>/dev/null || true
    sync
    touch /root/firstboot_done
    ;;
*)
    echo "usage: firstboot.sh [rsa]" >&2
    exit 2
    ;;
esac
